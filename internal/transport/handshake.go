package transport

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/pool"
)

// The credentialed handshake (docs/PROTOCOL.md 10.4). On one host a
// listener also listens on a Unix socket, <name>.sock in the pool. A client
// creates its connection segment as a sealed memfd, which has no name
// anyone could open, and hands the descriptor to the server over the
// socket (SCM_RIGHTS). Each side learns the other's pid, uid and gid from
// the kernel (SO_PEERCRED), so no member of a shared pool can pass as
// another, and nobody but the two peers can ever open the segment. The
// socket carries one byte and one descriptor per connection, never a call.
// Cross-host pools (their marker, PROTOCOL.md 3.7) use the listener's
// slots.

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
	// Its own descriptor, to reserve the blocks of its heap before
	// writing them (PROTOCOL.md 3.4).
	seg, err := pool.NewSegmentFD(fd, mem, pool.FileOwner{Dev: st.Dev, Ino: st.Ino})
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return seg, nil
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
// the credentials the kernel attached to it (PROTOCOL.md 10.4 server step
// 2). The buffer has room for two bytes so that a longer message is seen
// and refused: a Unix stream socket returns the bytes of one sendmsg with
// its descriptor together, and stops after them.
func receiveFD(conn *net.UnixConn) (int, *unix.Ucred, error) {
	buf := make([]byte, 2)
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

// credIdentity is the identity of a peer the kernel reported.
func credIdentity(c *unix.Ucred) Identity {
	a := Identity{
		UID:         c.Uid,
		GID:         c.Gid,
		PID:         int(c.Pid),
		PIDVerified: c.Pid > 0, // 0: a process in another pid namespace
	}
	if fsuid, groups := procIDs(a.PID); fsuid == c.Uid {
		a.Groups = groups
	}
	return a
}
