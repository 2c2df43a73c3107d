package transport

import (
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/pool"
)

// Liveness without the kernel on the data path: every side increments the
// heartbeat word of its control block every beatInterval, and watches its
// peer's. A peer whose heartbeat has not moved for the liveness timeout is
// dead or hung, and the connection fails with Unavailable. Where the
// peer's pid is of this process's pid domain (one host and pid namespace,
// in a pool that is not cross-host: F14) it is also checked, which
// notices a killed process within one beat. One goroutine per process does this for all its connections, so an
// idle process wakes beatInterval times a second whatever its number of
// connections.

// beatInterval is how often heartbeats are incremented and checked.
const beatInterval = 100 * time.Millisecond

// watchable is a connection the liveness goroutine keeps: a frame
// connection (conn) or a byte stream (StreamConn).
type watchable interface {
	// closeErr is why the connection closed, or nil while it is open.
	closeErr() error
	// heartbeat increments this side's heartbeat and returns the peer's,
	// unless the segment has been unmapped (ok false).
	heartbeat() (peer uint64, ok bool)
	// fail closes the connection with err; it must not block.
	fail(err error)
}

// watched is a connection under the liveness watch.
type watched struct {
	c        watchable
	timeout  time.Duration
	pid      int       // the peer's pid on this host, or 0 not to check it
	start    uint64    // the peer process's start time, to tell it from a reuse of its pid
	lastBeat uint64    // the peer's heartbeat when last seen to move
	lastSeen time.Time // when it was last seen to move
}

// liveness is the process's registry of watched connections. Its lock is
// taken before a connection's mapMu, never with any other lock.
var liveness struct {
	sync.Mutex
	conns     map[watchable]*watched
	listeners map[*Listener]bool // open listeners, whose heartbeat clients read (PROTOCOL.md 10.6)
	running   bool
}

// watchListener keeps l's heartbeat until unwatchListener.
func watchListener(l *Listener) {
	liveness.Lock()
	defer liveness.Unlock()
	if liveness.listeners == nil {
		liveness.listeners = make(map[*Listener]bool)
	}
	liveness.listeners[l] = true
	startBeat()
}

// unwatchListener stops l's heartbeat.
func unwatchListener(l *Listener) {
	liveness.Lock()
	defer liveness.Unlock()
	delete(liveness.listeners, l)
}

// startBeat starts the beating goroutine if it is not running. The caller
// holds the liveness lock.
func startBeat() {
	if !liveness.running {
		liveness.running = true
		go beat()
	}
}

// peerAlive reports whether the peer's process, when its pid is known, is
// still the one that was watched.
func (w *watched) peerAlive() bool {
	if w.pid == 0 {
		return true
	}
	start, ok := pool.ProcessStart(w.pid)
	return ok && start == w.start
}

// watch puts c under the liveness watch until it closes: its heartbeat is
// kept, and, unless timeout is 0, its peer's checked.
func watch(c watchable, timeout time.Duration, peerPID int) {
	// The segment is touched only by beatOnce, under mapMu: the connection
	// may already be closing.
	w := &watched{c: c, timeout: timeout, pid: peerPID, lastSeen: time.Now()}
	if peerPID != 0 {
		w.start, _ = pool.ProcessStart(peerPID)
	}
	liveness.Lock()
	defer liveness.Unlock()
	if liveness.conns == nil {
		liveness.conns = make(map[watchable]*watched)
	}
	liveness.conns[c] = w
	startBeat()
}

// beat runs while any connection is watched.
func beat() {
	t := time.NewTicker(beatInterval)
	defer t.Stop()
	for now := range t.C {
		if !beatOnce(now) {
			return
		}
	}
}

// beatOnce increments every watched connection's heartbeat and fails those
// whose peer is gone. It reports whether any connection is still watched.
func beatOnce(now time.Time) bool {
	liveness.Lock()
	var dead []*watched
	// Whether each peer process checked in this beat is alive: many
	// connections to one process cost one read of /proc.
	checked := map[[2]uint64]bool{}
	alive := func(w *watched) bool {
		k := [2]uint64{uint64(w.pid), w.start}
		a, ok := checked[k]
		if !ok {
			a = w.peerAlive()
			checked[k] = a
		}
		return a
	}
	for c, w := range liveness.conns {
		if c.closeErr() != nil {
			delete(liveness.conns, c)
			continue
		}
		b, ok := c.heartbeat()
		if !ok {
			continue
		}
		if b != w.lastBeat {
			// It beat since the last look: alive, and no need to read
			// /proc (about 20 us a read; 100 idle connections read it
			// 1,000 times a second when every beat did).
			w.lastBeat, w.lastSeen = b, now
			continue
		}
		if w.timeout <= 0 {
			continue
		}
		if !alive(w) || now.Sub(w.lastSeen) > w.timeout {
			dead = append(dead, w)
			delete(liveness.conns, c)
		}
	}
	for l := range liveness.listeners {
		l.lay.Server.Heartbeat.Add(1) // mapped until l is unreachable
	}
	running := len(liveness.conns) > 0 || len(liveness.listeners) > 0
	liveness.running = running
	liveness.Unlock()
	for _, w := range dead {
		msg := "notnets: peer stopped answering (no heartbeat for " + w.timeout.String() + ")"
		if !w.peerAlive() {
			msg = fmt.Sprintf("notnets: peer process %d has exited", w.pid)
		}
		w.c.fail(status.Error(codes.Unavailable, msg))
	}
	return running
}
