package notnets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

// The credentialed handshake (docs/PROTOCOL.md 10.4). On one host a
// listener also listens on a Unix socket, <name>.sock in the pool. A client
// creates its connection segment as a sealed memfd, which has no name
// anyone could open, and hands the descriptor to the server over the
// socket (SCM_RIGHTS). Each side learns the other's pid, uid and gid from
// the kernel (SO_PEERCRED), so no member of a shared pool can pass as
// another, and nobody but the two peers can ever open the segment. The
// socket carries one byte and one descriptor per connection, never a call.
// Pools shared across hosts (WithPollOnly) use the listener's slots.

// handshakeTimeout bounds how long the server waits for a client that has
// connected to the socket to send its segment.
const handshakeTimeout = 2 * time.Second

// requiredSeals are the seals a memfd segment must carry: its size can
// then never change, so neither side can be made to fault (SIGBUS) by the
// other truncating it.
const requiredSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// sockName is the file name of the listener socket for name.
func sockName(name string) string { return name + ".sock" }

// sockPath returns a path for the listener socket for name that fits a
// Unix socket address (108 bytes) and names it in the checked pool
// directory whose descriptor is dirFD (/proc/self/fd/N/...), or, without
// /proc, the plain path if short enough; "" if neither works.
func sockPath(dir string, dirFD int, name string) string {
	if dirFD >= 0 {
		p := fmt.Sprintf("/proc/self/fd/%d/%s", dirFD, sockName(name))
		if _, err := os.Stat("/proc/self/fd"); err == nil && len(p) < 108 {
			return p
		}
	}
	if p := filepath.Join(dir, sockName(name)); len(p) < 108 {
		return p
	}
	return ""
}

// listenCreds starts the listener's socket, unless the pool is shared
// across hosts (clients then use the slots).
func (l *Listener) listenCreds() error {
	if l.wait.pollOnly {
		return nil
	}
	dfd, err := pool.OpenDir(l.dir, l.access)
	if err != nil {
		return err
	}
	path := sockPath(l.dir, dfd, l.name)
	if path == "" {
		unix.Close(dfd)
		return nil
	}
	// The listener file is ours now, so a socket of the same name is a
	// dead listener's.
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, sockName(l.name), &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			unix.Close(dfd)
			return fmt.Errorf("notnets: listen: %s exists and is not a socket", filepath.Join(l.dir, sockName(l.name)))
		}
		if err := unix.Unlinkat(dfd, sockName(l.name), 0); err != nil {
			unix.Close(dfd)
			return fmt.Errorf("notnets: listen: remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err == nil {
		err = l.access.ProtectSocket(dfd, sockName(l.name))
		if err == nil {
			// Connections inherit it: every message then carries its
			// sender's credentials, checked against the connecting
			// process's in receiveSegment.
			err = setPassCred(ln)
		}
		if err != nil {
			ln.Close()
		}
	}
	if err != nil {
		unix.Close(dfd)
		return fmt.Errorf("notnets: listen: %w", err)
	}
	// Closing the listener removes the socket by the same path: the
	// directory descriptor stays open until then.
	l.creds, l.credsDir = ln, dfd
	l.incoming = make(chan *accepted, 16)
	l.hsConns = make(map[*net.UnixConn]bool)
	return nil
}

// startCreds starts taking connections on the socket, once the listener
// segment is mapped.
func (l *Listener) startCreds() {
	if l.creds == nil {
		return
	}
	l.handshakes.Add(1) // before Close can Wait: acceptCreds adds the handshakes
	go l.acceptCreds(l.creds)
}

// stopCreds closes the socket (which removes its file), ends the
// handshakes in progress and waits for them.
func (l *Listener) stopCreds() {
	if l.creds == nil {
		return
	}
	l.creds.Close()
	l.hsMu.Lock()
	l.hsClosed = true
	for c := range l.hsConns {
		c.SetDeadline(time.Now()) // a silent client holds up Close no longer
	}
	l.hsMu.Unlock()
	l.handshakes.Wait()
	unix.Close(l.credsDir)
}

// acceptCreds takes connections on the socket until it closes, and hands
// every segment received to accept.
func (l *Listener) acceptCreds(ln *net.UnixListener) {
	defer l.handshakes.Done()
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // out of descriptors, say: do not spin
			continue
		}
		// One goroutine each: a client that connects and sends nothing
		// holds up nobody else for its 2 s.
		l.handshakes.Add(1)
		go l.handshake(conn)
	}
}

// handshake receives one client's segment and hands it to accept.
func (l *Listener) handshake(conn *net.UnixConn) {
	defer l.handshakes.Done()
	l.hsMu.Lock()
	if l.hsClosed {
		l.hsMu.Unlock()
		conn.Close()
		return
	}
	l.hsConns[conn] = true
	l.hsMu.Unlock()
	a, err := l.receiveSegment(conn)
	l.hsMu.Lock()
	delete(l.hsConns, conn)
	l.hsMu.Unlock()
	conn.Close()
	if err != nil {
		return // the client learns it from the server state, or its deadline
	}
	select {
	case l.incoming <- a:
		l.lay.Knock.Add(1) // wake accept
		pool.FutexWake(l.lay.Knock, 1)
	case <-l.done:
		a.lay.Server.State.Store(pool.StateClosed)
		a.seg.Close()
	}
}

// receiveSegment reads one segment descriptor from conn and maps and
// checks it as take does a named one.
func (l *Listener) receiveSegment(conn *net.UnixConn) (*accepted, error) {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	cred, err := peerCred(conn)
	if err != nil {
		return nil, err
	}
	fd, sender, err := receiveFD(conn)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	// SO_PEERCRED names who connected; the descriptor must come from that
	// very process, not one it passed the connection to.
	if sender == nil || sender.Pid != cred.Pid || sender.Uid != cred.Uid || sender.Gid != cred.Gid {
		return nil, fmt.Errorf("notnets: handshake: the segment was not sent by the process that connected (pid %d)", cred.Pid)
	}
	seg, err := mapSealed(fd, ring.MinCap, maxConnSize)
	if err != nil {
		return nil, err
	}
	seg.Owner.UID, seg.Owner.GID = cred.Uid, cred.Gid
	auth := credAuthInfo(cred)
	return acceptSegment(seg, &auth)
}

// maxConnSize is the largest connection segment a server maps.
var maxConnSize = pool.ConnSpec{C2S: 1 << 30, S2C: 1 << 30, C2SHeap: pool.MaxHeap, S2CHeap: pool.MaxHeap}.Size()

// mapSealed maps the segment behind fd, which must be a regular file of
// size between min and max, sealed against any change of size.
func mapSealed(fd, min, max int) (*pool.Segment, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("notnets: stat the received segment: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < int64(min) || st.Size > int64(max) {
		return nil, fmt.Errorf("notnets: the received segment is not a regular file of %d to %d bytes", min, max)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&requiredSeals != requiredSeals {
		return nil, fmt.Errorf("notnets: the received segment is not sealed against resizing (seals %#x, %v)", seals, err)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("notnets: map the received segment: %w", err)
	}
	return &pool.Segment{Mem: mem, Owner: pool.FileOwner{Dev: st.Dev, Ino: st.Ino}}, nil
}

// peerCred returns the kernel's record of the process at the other end of
// conn, taken when the connection was made.
func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// setPassCred asks the kernel to attach the sender's credentials to every
// message on the listener's connections (SO_PASSCRED).
func setPassCred(ln *net.UnixListener) error {
	raw, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return err
	}
	return serr
}

// receiveFD reads a one-byte message carrying exactly one descriptor, and
// the credentials the kernel attached to it.
func receiveFD(conn *net.UnixConn) (int, *unix.Ucred, error) {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4)+unix.CmsgSpace(unix.SizeofUcred))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return -1, nil, err
	}
	var fds []int
	var sender *unix.Ucred
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for i := range msgs {
			if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
				fds = append(fds, got...)
			} else if c, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
				sender = c
			}
		}
	}
	if n != 1 || len(fds) != 1 || flags&unix.MSG_CTRUNC != 0 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return -1, nil, fmt.Errorf("notnets: handshake message of %d bytes with %d descriptors", n, len(fds))
	}
	return fds[0], sender, nil
}

// credAuthInfo is the identity of a peer the kernel reported.
func credAuthInfo(c *unix.Ucred) AuthInfo {
	a := AuthInfo{
		CommonAuthInfo: securityLevel,
		UID:            c.Uid,
		GID:            c.Gid,
		PID:            int(c.Pid),
		PIDVerified:    c.Pid > 0, // 0: a process in another pid namespace
	}
	if fsuid, groups := procIDs(a.PID); fsuid == c.Uid {
		a.Groups = groups
	}
	return a
}

// dialCreds connects through the listener's socket if there is one. It
// reports tried false when there is none (or the pool is shared across
// hosts, or this process cannot make a memfd), for the caller to use the
// slots if the listener allows. The process holding the socket must be
// the one that published the listener lis, whose file belongs to owner.
func dialCreds(ctx context.Context, o *dialOptions, name string, lis *pool.ListenerLayout, owner uint32) (seg *pool.Segment, lay *pool.ConnLayout, server AuthInfo, tried bool, err error) {
	if o.wait.pollOnly {
		return nil, nil, AuthInfo{}, false, nil
	}
	dfd, err := pool.OpenDir(o.pool, o.access)
	if err != nil {
		return nil, nil, AuthInfo{}, false, nil // the slots' path says why
	}
	defer unix.Close(dfd)
	path := sockPath(o.pool, dfd, name)
	if path == "" {
		return nil, nil, AuthInfo{}, false, nil
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, AuthInfo{}, true, status.Errorf(status.FromContextError(ctx.Err()).Code(), "notnets: connect: %v", ctx.Err())
		}
		return nil, nil, AuthInfo{}, false, nil
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	cred, err := peerCred(conn)
	if err != nil {
		return nil, nil, AuthInfo{}, true, status.Errorf(codes.Unavailable, "notnets: listener %q: %v", name, err)
	}
	if int(cred.Pid) != lis.PID || cred.Uid != owner {
		return nil, nil, AuthInfo{}, true, status.Errorf(codes.PermissionDenied, "notnets: the socket of listener %q is held by pid %d (uid %d), not by the listener's pid %d (uid %d)", name, cred.Pid, cred.Uid, lis.PID, owner)
	}
	server = credAuthInfo(cred)
	seg, lay, fd, err := newSealedSegment(o)
	if err != nil {
		// No memfd here (a sandbox, say): the slots, where the listener
		// offers them.
		return nil, nil, AuthInfo{}, lis.Flags&pool.ListenerSocketOnly != 0, err
	}
	fail := func(err error) (*pool.Segment, *pool.ConnLayout, AuthInfo, bool, error) {
		lay.Client.State.Store(pool.StateClosed)
		seg.Close()
		return nil, nil, AuthInfo{}, true, err
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
	err = waitAccepted(ctx, o, lay, func() error {
		if !pool.ProcessAlive(int(cred.Pid)) {
			return status.Errorf(codes.Unavailable, "notnets: server process %d exited before accepting", cred.Pid)
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	return seg, lay, server, true, nil
}

// newSealedSegment creates a connection segment as an anonymous memfd
// sealed against resizing, maps it, and returns it with its descriptor.
func newSealedSegment(o *dialOptions) (*pool.Segment, *pool.ConnLayout, int, error) {
	spec := pool.ConnSpec{C2S: o.ringSize, S2C: o.ringSize, C2SHeap: o.arenaSize, S2CHeap: o.arenaSize}
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
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, requiredSeals); err != nil {
		return fail("seal", err)
	}
	mem, err := unix.Mmap(fd, 0, spec.Size(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("map", err)
	}
	pool.InitConnSpec(mem, spec, os.Getpid())
	seg := &pool.Segment{Mem: mem}
	lay, err := pool.MapConn(mem, ring.CheckCap)
	if err == nil {
		err = protectPeer(seg, lay, true)
	}
	if err != nil {
		seg.Close()
		return fail("check", err)
	}
	return seg, lay, fd, nil
}
