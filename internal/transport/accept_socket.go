package transport

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/notnets/notnets/internal/doorbell"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"golang.org/x/sys/unix"
)

// handshakeTimeout bounds how long the server waits for a client that has
// connected to the socket to send its segment.
const handshakeTimeout = 2 * time.Second

// maxHandshakes bounds the handshakes a listener receives at once: each
// costs a goroutine and a descriptor for up to handshakeTimeout, and a
// local user could otherwise open connections to the socket faster than
// they time out. A client beyond it is refused at once.
const maxHandshakes = 128

// listenCreds starts the listener's socket, unless the pool is
// cross-host (clients then use the slots: a socket connects only
// processes of one kernel, PROTOCOL.md 3.7).
func (l *Listener) listenCreds() error {
	if l.cross {
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
	l.incoming = make(chan *Accepted, 16)
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
		l.hsMu.Lock()
		if l.hsClosed || len(l.hsConns) >= maxHandshakes {
			// Closed at once, the server state still 0: the client
			// fails with Unavailable and tries again later (PROTOCOL.md
			// 10.4 step 5, 16).
			l.hsMu.Unlock()
			conn.Close()
			continue
		}
		l.hsConns[conn] = true
		l.hsMu.Unlock()
		// One goroutine each: a client that connects and sends nothing
		// holds up nobody else for its 2 s.
		l.handshakes.Add(1)
		go l.handshake(conn)
	}
}

// handshake receives one client's segment and hands it to accept.
func (l *Listener) handshake(conn *net.UnixConn) {
	defer l.handshakes.Done()
	// acceptCreds registered conn in hsConns; it counts against
	// maxHandshakes until Accept can take the segment.
	defer func() {
		l.hsMu.Lock()
		delete(l.hsConns, conn)
		l.hsMu.Unlock()
	}()
	a, err := l.receiveSegment(conn)
	if err != nil {
		// Dropped without writing to the segment: the closed connection
		// with server state 0 tells the client (PROTOCOL.md 10.4 step 5).
		conn.Close()
		return
	}
	a.hs = conn // closed once the server state is stored (a.settled)
	select {
	case l.incoming <- a:
		doorbell.KnockWord(l.lay.Knock, 1) // wake Accept
	case <-l.done:
		a.Refuse()
	}
}

// receiveSegment reads one segment descriptor from conn and maps and
// checks it as take does a named one.
func (l *Listener) receiveSegment(conn *net.UnixConn) (*Accepted, error) {
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
	auth := credIdentity(cred)
	return acceptSegment(seg, &auth, l.stream)
}

// maxConnSize is the largest connection segment a server maps.
var maxConnSize = pool.ConnSpec{C2S: 1 << 30, S2C: 1 << 30, C2SHeap: pool.MaxHeap, S2CHeap: pool.MaxHeap}.Size()
