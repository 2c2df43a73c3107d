package transport

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// dialCreds connects through the listener's socket if there is one, and
// fills d. It reports tried false when there is none (or this process
// cannot make a memfd), for the caller to use the slots if the listener
// allows; the caller does not call it in a cross-host pool. The process
// holding the socket must be the one that published the listener lis,
// whose file belongs to owner; remote says that the listener's pid is
// not of this process's pid domain (F14).
func dialCreds(ctx context.Context, o *DialConfig, d *dialed, name string, lis *pool.ListenerLayout, owner uint32, remote bool) (tried bool, err error) {
	dfd, err := pool.OpenDir(o.Pool, o.Access)
	if err != nil {
		return false, nil // the slots' path says why
	}
	defer unix.Close(dfd)
	path := sockPath(o.Pool, dfd, name)
	if path == "" {
		return false, nil
	}
	var dl net.Dialer
	nc, err := dl.DialContext(ctx, "unix", path)
	if err != nil {
		if ctx.Err() != nil {
			return true, status.Errorf(status.FromContextError(ctx.Err()).Code(), "notnets: connect: %v", ctx.Err())
		}
		return false, nil
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	cred, err := peerCred(conn)
	if err != nil {
		return true, status.Errorf(codes.Unavailable, "notnets: listener %q: %v", name, err)
	}
	if err := socketHolder(cred, name, lis, owner, remote); err != nil {
		return true, err
	}
	server := credIdentity(cred)
	seg, lay, fd, err := newSealedSegment(o)
	if err != nil {
		// No memfd here (a sandbox, say): the slots, where the listener
		// offers them.
		return lis.Flags&pool.ListenerSocketOnly != 0, err
	}
	fail := func(err error) (bool, error) {
		lay.Client.State.Store(pool.StateClosed)
		seg.Close()
		return true, err
	}
	lay.Client.State.Store(pool.StateOpen)
	if dl, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(dl)
	}
	_, _, err = conn.WriteMsgUnix([]byte{1}, unix.UnixRights(fd), nil)
	unix.Close(fd) // the mapping stays; the server gets its own descriptor
	if err != nil {
		return fail(status.Errorf(codes.Unavailable, "notnets: hand the segment to listener %q: %v", name, err))
	}
	hung := hangUp(conn)
	err = waitAccepted(ctx, o, lay, func() error {
		// The kernel's pid is of this pid namespace, or 0 for a server in
		// one this process cannot see into.
		if cred.Pid != 0 && !pool.ProcessAlive(int(cred.Pid)) {
			return status.Errorf(codes.Unavailable, "notnets: server process %d exited before accepting", cred.Pid)
		}
		select {
		case <-hung:
			// The server stores its state before it closes the
			// connection (PROTOCOL.md 10.4 server step 5): load it once
			// more.
			if lay.Server.State.Load() == pool.StateNew {
				return status.Errorf(codes.Unavailable, "notnets: server refused the connection: listener %q closed the handshake without accepting the segment", name)
			}
		default:
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	d.seg, d.lay, d.server, d.livePID = seg, lay, server, int(cred.Pid)
	return true, nil
}

// socketHolder checks that the process holding the socket of the
// listener lis, as the kernel reports it (cred), is the listener's
// (PROTOCOL.md 10.4 client step 1): the listener file's owner, and the
// listener's pid. A listener of another pid namespace of this host
// (remote, F14) wrote a pid of its namespace: the kernel's pid is then
// this namespace's number for the same process, compared through
// /proc/<pid>/status (NSpid) and /proc/<pid>/ns/pid where this process
// can see into the server's namespace; where it cannot (the kernel
// reports pid 0: the server's namespace is not below this one), the
// owner alone is checked: only the owner can bind a socket of its
// listener's name in the pool (3.6), and the pool's users are trusted
// with their own files (docs/SECURITY.md).
func socketHolder(cred *unix.Ucred, name string, lis *pool.ListenerLayout, owner uint32, remote bool) error {
	switch {
	case cred.Uid != owner:
		return status.Errorf(codes.PermissionDenied, "notnets: the socket of listener %q is held by pid %d (uid %d), not by the listener's owner (uid %d)", name, cred.Pid, cred.Uid, owner)
	case !remote && int(cred.Pid) != lis.PID:
		return status.Errorf(codes.PermissionDenied, "notnets: the socket of listener %q is held by pid %d (uid %d), not by the listener's pid %d (uid %d)", name, cred.Pid, cred.Uid, lis.PID, owner)
	case remote && cred.Pid != 0:
		ns, inner, err := nsPID(int(cred.Pid))
		if err != nil || ns != lis.Host.PIDNS || inner != lis.PID {
			return status.Errorf(codes.PermissionDenied, "notnets: the socket of listener %q is held by pid %d (uid %d), which is not the listener's process (pid %d of pid namespace %d; the holder is pid %d of pid namespace %d, %v)", name, cred.Pid, cred.Uid, lis.PID, lis.Host.PIDNS, inner, ns, err)
		}
	}
	return nil
}

// nsPID returns the pid namespace (its inode) of process pid of this
// namespace, and its pid in that namespace (the last NSpid of its
// status).
func nsPID(pid int) (ns uint64, inner int, err error) {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid), &st); err != nil {
		return 0, 0, err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			inner, err = strconv.Atoi(f[len(f)-1])
			return st.Ino, inner, err
		}
	}
	return 0, 0, fmt.Errorf("no NSpid in /proc/%d/status", pid)
}

// hangUp returns a channel closed when the server closes the handshake
// connection (or it fails); the server never writes on it. The reading
// goroutine ends when the caller closes conn.
func hangUp(conn *net.UnixConn) <-chan struct{} {
	hung := make(chan struct{})
	go func() {
		var b [1]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				break // end-of-file, ECONNRESET, or our own Close
			}
		}
		close(hung)
	}()
	return hung
}

// newSealedSegment creates a connection segment as an anonymous memfd
// sealed against resizing, maps it, and returns it with its descriptor.
func newSealedSegment(o *DialConfig) (*pool.Segment, *pool.ConnLayout, int, error) {
	spec := o.spec()
	fd, err := unix.MemfdCreate("notnets-conn", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, nil, -1, status.Errorf(codes.Unavailable, "notnets: create segment: %v", err)
	}
	fail := func(what string, err error) (*pool.Segment, *pool.ConnLayout, int, error) {
		unix.Close(fd)
		return nil, nil, -1, status.Errorf(codes.Unavailable, "notnets: %s segment: %v", what, err)
	}
	if err := unix.Ftruncate(fd, int64(spec.Size())); err != nil {
		return fail("size", err)
	}
	// Before mapping: every page this side writes at once is allocated
	// (PROTOCOL.md 3.4), the heaps stay holes until reserved block by
	// block. A memfd's pages are charged to the memory cgroup, where a
	// store beyond the limit would fault instead of failing.
	if err := pool.Allocate(fd, spec.Fixed()...); err != nil {
		unix.Close(fd)
		return nil, nil, -1, createError(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, requiredSeals); err != nil {
		return fail("seal", err)
	}
	mem, err := unix.Mmap(fd, 0, spec.Size(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("map", err)
	}
	seg, err := pool.NewSegmentFD(fd, mem, pool.FileOwner{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())})
	if err != nil {
		unix.Munmap(mem)
		return fail("keep", err)
	}
	if err := seg.ReserveRanges(spec.Fixed()...); err != nil { // recorded: no system call
		seg.Close()
		return fail("reserve", err)
	}
	pool.InitConnSpec(mem, spec, os.Getpid())
	err = pool.WriteConnInfo(mem, o.Info)
	var lay *pool.ConnLayout
	if err == nil {
		lay, err = pool.MapConn(mem, ring.CheckCap)
	}
	if err == nil {
		err = protectPeer(seg, lay, true)
	}
	if err != nil {
		seg.Close()
		return fail("check", err)
	}
	return seg, lay, fd, nil
}
