package notnets

import (
	"fmt"
	"strings"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/transport"
)

// conn is one side of a connection, as the tests reach into it.
type conn = transport.Conn

// current returns the connection the first instance's calls go to, or
// nil, for tests (which run one instance).
func (cc *ClientConn) current() transport.ClientTransport {
	if es := cc.pickable(); len(es) > 0 {
		return es[0].t
	}
	return nil
}

// conn returns the current connection's side, or nil, for tests.
func (cc *ClientConn) conn() *conn {
	t := cc.current()
	if t == nil {
		return nil
	}
	return transport.ConnOf(t)
}

// HeapRefs returns how many messages cc's current connection has sent and
// received as heap references, for tests in package notnets_test.
func HeapRefs(cc *ClientConn) (sent, recv uint64) { return cc.conn().Refs() }

// SizeName names a message size in benchmarks: 16B, 64KiB, 1MiB.
var SizeName = sizeName

// SegmentPath returns the file name of cc's connection segment: empty for
// a memfd handed over through the listener's socket.
func SegmentPath(cc *ClientConn) string { return cc.conn().Seg().Path }

// ClientState describes cc's connection and its streams, for a test that
// finds a call stalled.
func ClientState(cc *ClientConn) string {
	t := cc.current()
	if t == nil {
		return "no connection"
	}
	return transport.ClientState(t)
}

// ServerState describes s's connections and their streams.
func ServerState(s *Server) string {
	var b strings.Builder
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		fmt.Fprintf(&b, "%s; ", sc.t.State())
	}
	return b.String()
}

// OpenStreams returns the streams open on all of s's connections.
func OpenStreams(s *Server) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for sc := range s.conns {
		n += sc.t.OpenStreams()
	}
	return n
}

// StreamLimit returns the stream limit the server told cc's connection.
func StreamLimit(cc *ClientConn) uint32 { return cc.conn().PeerCtl().MaxStreams.Load() }

// ConnOf returns cc's current connection, for tests that write frames a
// well-behaved client would not.
func ConnOf(cc *ClientConn) *conn { return cc.conn() }

// allocBytes points m at n bytes of c's heap, or at ordinary memory, as
// ClientConn.AllocInto does on the current connection.
func allocBytes(c *conn, m *Bytes, n int) {
	m.Free()
	if blk, b, ok := c.AllocUserBlock(n); ok {
		*m = Bytes{b: b, blk: blk}
		return
	}
	m.allocPooled(n)
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return itoa(n>>20) + "MiB"
	case n >= 1<<10:
		return itoa(n>>10) + "KiB"
	}
	return itoa(n) + "B"
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// authInfoOf is the AuthInfo of the peer that created seg and claims to be
// pid.
func authInfoOf(seg *pool.Segment, pid int) AuthInfo { return authInfo(transport.IdentityOf(seg, pid)) }

// PollsOnly reports whether cc's current connection never waits on a
// futex, for tests in package notnets_test.
func PollsOnly(cc *ClientConn) bool { return cc.conn().PollsOnly() }

// Instances returns how many instances cc follows (connected or
// connecting), for tests in package notnets_test.
func Instances(cc *ClientConn) int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return len(cc.subs)
}

// ConnectedInstances returns how many instances cc has a usable
// connection to, for tests in package notnets_test.
func ConnectedInstances(cc *ClientConn) int {
	n := 0
	for _, e := range cc.pickable() {
		if e.Usable() {
			n++
		}
	}
	return n
}

// Helpers of the security tests, for tests in package notnets_test.
var (
	NeedRoot       = needRoot
	OpenBase       = openBase
	CopyExecutable = copyExecutable
)

// TestGroup is the gid of the shared pools in the security tests.
const TestGroup = testGroup
