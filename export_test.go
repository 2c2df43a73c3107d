package notnets

import (
	"fmt"
	"strings"
)

// HeapRefs returns how many messages cc's current connection has sent and
// received as heap references, for tests in package notnets_test.
func HeapRefs(cc *ClientConn) (sent, recv uint64) {
	c := cc.conn()
	return c.refsSent.Load(), c.refsRecv.Load()
}

// SizeName names a message size in benchmarks: 16B, 64KiB, 1MiB.
var SizeName = sizeName

// SegmentPath returns the file name of cc's connection segment: empty for
// a memfd handed over through the listener's socket.
func SegmentPath(cc *ClientConn) string { return cc.conn().seg.Path }

// ClientState describes cc's connection and its streams, for a test that
// finds a call stalled.
func ClientState(cc *ClientConn) string {
	cc.mu.Lock()
	t := cc.cur
	cc.mu.Unlock()
	if t == nil {
		return "no connection"
	}
	var b strings.Builder
	b.WriteString(t.c.state())
	t.mu.Lock()
	for id, s := range t.streams {
		s.mu.Lock()
		fmt.Fprintf(&b, " stream %d{%s ended=%v}", id, s.streamBase.stateLocked(), s.st != nil)
		s.mu.Unlock()
	}
	t.mu.Unlock()
	return b.String()
}

// ServerState describes s's connections and their streams.
func ServerState(s *Server) string {
	var b strings.Builder
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		b.WriteString(sc.c.state())
		fmt.Fprintf(&b, " inline=%v", sc.inlineSince.Load() != 0)
		sc.mu.Lock()
		for id, st := range sc.streams {
			st.mu.Lock()
			fmt.Fprintf(&b, " stream %d{%s}", id, st.streamBase.stateLocked())
			st.mu.Unlock()
		}
		sc.mu.Unlock()
		b.WriteString("; ")
	}
	return b.String()
}

func (c *conn) state() string {
	c.heapMu.Lock()
	inUse := 0
	if c.own != nil {
		inUse = c.own.InUse()
	}
	c.heapMu.Unlock()
	c.viewMu.Lock()
	held, pins := 0, c.pins
	if c.held != nil {
		held = c.held.Count()
	}
	c.viewMu.Unlock()
	return fmt.Sprintf("conn{err=%v %v %v selfSleeping=%d peerSleeping=%d peerState=%d pollers=%d readerSleeping=%v heapInUse=%d held=%d pins=%d refs=%d/%d}",
		c.closeErr(), c.out, c.in, c.self.Sleeping.Load(), c.peer.Sleeping.Load(), c.peer.State.Load(),
		c.pollers.Load(), c.sleeping.Load(), inUse, held, pins, c.refsSent.Load(), c.refsRecv.Load())
}

// stateLocked describes the stream's receive side and window; the caller
// holds s.mu.
func (s *streamBase) stateLocked() string {
	return fmt.Sprintf("quota=%d queued=%d closed=%v waiters=%d", s.quota, len(s.msgs), s.closed, s.waiters)
}
