package transport

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/notnets/notnets/internal/arena"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

// This file opens a connection's side to the module's tests, which act
// as a hostile peer (injecting frames, corrupting counters, returning
// blocks never lent) or inspect what a connection holds. Nothing in the
// library calls these methods.

// Conn is one side of a connection, for tests.
type Conn = conn

// ConnOf returns the connection of a client transport, for tests.
func ConnOf(t ClientTransport) *Conn { return t.(*Client).c }

// Conn returns the server transport's connection, for tests.
func (t *Server) Conn() *Conn { return t.c }

// Seg returns the mapped segment.
func (c *conn) Seg() *pool.Segment { return c.seg }

// SelfCtl and PeerCtl return this side's and the peer's control blocks.
func (c *conn) SelfCtl() pool.Control { return c.self }

// PeerCtl returns the peer's control block.
func (c *conn) PeerCtl() pool.Control { return c.peer }

// Out returns the ring this side writes.
func (c *conn) Out() *ring.Producer { return c.out }

// CloseErr says why the connection closed, or nil.
func (c *conn) CloseErr() error { return c.closeErr() }

// Fail closes the connection with err.
func (c *conn) Fail(err error) { c.fail(err) }

// Lock, Unlock, WriteFrame, Publish: the write path.
func (c *conn) Lock(ctx context.Context) error { return c.lock(ctx) }

// Unlock publishes and releases the write lock.
func (c *conn) Unlock() { c.unlock() }

// Publish publishes what was written.
func (c *conn) Publish() { c.publish() }

// WriteFrame writes a control frame; the caller holds the write lock.
func (c *conn) WriteFrame(ctx context.Context, t frame.Type, flags frame.Flags, stream, aux uint32, e encoder) error {
	return c.writeFrame(ctx, t, flags, stream, aux, e)
}

// WriteMsg writes m on stream; the caller holds the write lock.
func (c *conn) WriteMsg(ctx context.Context, stream uint32, flags frame.Flags, m *OutMsg) error {
	return c.writeMsg(ctx, stream, flags, m)
}

// WriteRef writes a MESSAGE_REF frame; the caller holds the write lock.
func (c *conn) WriteRef(ctx context.Context, stream uint32, flags frame.Flags, off, n int) error {
	return c.writeRef(ctx, stream, flags, off, n)
}

// Stage writes m into the heap before the write lock.
func (c *conn) Stage(m *OutMsg) error { return c.stage(m) }

// Poll, Drain, DrainOrCheck: the read path.
func (c *conn) Poll() bool { return c.poll() }

// Drain hands every published frame to the frame handler.
func (c *conn) Drain() (int, bool) { return c.drain() }

// DrainOrCheck drains, or checks whether the peer closed.
func (c *conn) DrainOrCheck() (int, bool) { return c.drainOrCheck() }

// EndReader marks the end of reading.
func (c *conn) EndReader() { c.endReader() }

// WaitReleased waits until nothing reads the connection.
func (c *conn) WaitReleased() { c.waitReleased() }

// PollMu is the lock of the reading role.
func (c *conn) PollMu() *sync.Mutex { return &c.pollMu }

// MapMu is held for reading while the liveness watch touches the segment;
// Unmapped reports whether it is unmapped (under MapMu).
func (c *conn) MapMu() *sync.RWMutex { return &c.mapMu }

// Unmapped reports whether release has unmapped the segment; the caller
// holds MapMu.
func (c *conn) Unmapped() bool { return c.unmapped }

// SetOnFrame replaces the frame handler; TakeRef takes the message of the
// MESSAGE_REF frame being handled.
func (c *conn) SetOnFrame(f func(frame.Header, []byte) error) { c.onFrame = f }

// TakeRef takes the message of the MESSAGE_REF frame being handled.
func (c *conn) TakeRef() interface{ Free() } { return c.takeRef() }

// InitHeaps sets up the heaps (see initHeaps).
func (c *conn) InitHeaps(own, ownReturns, peer, peerReturns []byte, check bool) {
	c.initHeaps(own, ownReturns, peer, peerReturns, check)
}

// AllocBlock allocates a block of the own heap for sending.
func (c *conn) AllocBlock(n int) (int, []byte, bool) { return c.allocBlock(n) }

// HeapMu, Own, OwnMem, Returns: the sending heap.
func (c *conn) HeapMu() *sync.Mutex { return &c.heapMu }

// Own is the own heap's allocator; the caller holds HeapMu.
func (c *conn) Own() *arena.Heap { return c.own }

// OwnMem is the own heap.
func (c *conn) OwnMem() []byte { return c.ownMem }

// Returns is the queue of blocks the peer returns; the caller holds HeapMu.
func (c *conn) Returns() *arena.ReturnReader { return c.returns }

// ViewMu, Held, GiveBack, Pins: the receiving heap.
func (c *conn) ViewMu() *sync.Mutex { return &c.viewMu }

// Held is the record of the peer's pages this side holds; under ViewMu.
func (c *conn) Held() *arena.Held { return c.held }

// GiveBack is the queue this side returns blocks through; under ViewMu.
func (c *conn) GiveBack() *arena.ReturnWriter { return c.giveBack }

// Pins counts what keeps the segment mapped; under ViewMu.
func (c *conn) Pins() int { return c.pins }

// HeapsClosed reports whether the connection has released its heaps
// (unmapping at the last pin); under ViewMu.
func (c *conn) HeapsClosed() bool { return c.heaps.closed }

// HeapsUnmapped reports whether the segment has been unmapped.
func (c *conn) HeapsUnmapped() bool { return c.unmappedNow() }

// Refs returns how many messages went through the heaps each way.
func (c *conn) Refs() (sent, recv uint64) { return c.refsSent.Load(), c.refsRecv.Load() }

// PollsOnly reports whether the connection never waits on a futex (its
// Wait.PollOnly, as set by WithPollOnly or a cross-host pool).
func (c *conn) PollsOnly() bool { return c.wait.PollOnly }

// NewConnForTest makes one side of the connection segment lay, as the
// client or the server does.
func NewConnForTest(seg *pool.Segment, lay *pool.ConnLayout, client bool, w Wait) *Conn {
	if client {
		return newConn(seg, lay.Client, lay.Server, lay.C2S, lay.S2C, w)
	}
	return newConn(seg, lay.Server, lay.Client, lay.S2C, lay.C2S, w)
}

// ClientState describes a client transport's connection and its streams,
// for a test that finds a call stalled.
func ClientState(ct ClientTransport) string {
	t := ct.(*Client)
	var b strings.Builder
	b.WriteString(t.c.state())
	t.mu.Lock()
	for id, s := range t.streams {
		s.mu.Lock()
		fmt.Fprintf(&b, " stream %d{%s ended=%v}", id, s.Stream.stateLocked(), s.st != nil)
		s.mu.Unlock()
	}
	t.mu.Unlock()
	return b.String()
}

// State describes the server transport's connection and its streams.
func (t *Server) State() string {
	var b strings.Builder
	b.WriteString(t.c.state())
	fmt.Fprintf(&b, " inline=%v", t.inlineSince.Load() != 0)
	t.mu.Lock()
	for id, st := range t.streams {
		st.mu.Lock()
		fmt.Fprintf(&b, " stream %d{%s}", id, st.Stream.stateLocked())
		st.mu.Unlock()
	}
	t.mu.Unlock()
	return b.String()
}

// OpenStreams returns how many streams count against the stream limit.
func (t *Server) OpenStreams() int64 { return t.openStreams.Load() }

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
		c.pollers.Load(), c.bell.Sleeping(), inUse, held, pins, c.refsSent.Load(), c.refsRecv.Load())
}

// stateLocked describes the stream's receive side and window; the caller
// holds s.mu.
func (s *Stream) stateLocked() string {
	return fmt.Sprintf("quota=%d queued=%d closed=%v waiters=%d", s.quota, len(s.msgs), s.closed, s.waiters)
}

// Done is closed when the connection starts closing.
func (c *conn) Done() <-chan struct{} { return c.done }

// AllocUserBlock allocates n bytes of the own heap for the user.
func (c *conn) AllocUserBlock(n int) (Block, []byte, bool) { return c.allocUserBlock(n) }

// Offset returns the block's offset in its heap.
func (b Block) Offset() int { return b.off }

// Orphans returns how many ended streams the client transport keeps for
// their unread messages.
func Orphans(ct ClientTransport) int {
	t := ct.(*Client)
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.orphans)
}

// RingAlways wakes the peer whether or not it sleeps.
func (c *conn) RingAlways() { c.bell.RingAlways() }

// UnlockNoPublish releases the write lock without publishing.
func (c *conn) UnlockNoPublish() { <-c.wlock }

// LockLiveness and UnlockLiveness hold the liveness registry, so that a
// connection being made waits in watch.
func LockLiveness() { liveness.Lock() }

// UnlockLiveness releases the liveness registry.
func UnlockLiveness() { liveness.Unlock() }

// HoldMonitor marks the inline-handler monitor as running, so that none
// starts: a test then sees what happens before its first tick.
func (w *Workers) HoldMonitor() { w.monitoring.Store(true) }

// IdentityOf is identityOf, for tests.
func IdentityOf(seg *pool.Segment, pid int) Identity { return identityOf(seg, pid) }

// RequiredSeals are the seals a memfd segment must carry.
const RequiredSeals = requiredSeals

// SockName is the file name of the listener socket for name.
func SockName(name string) string { return sockName(name) }

// OpenStreamsOf reports whether the client transport has calls in progress.
func OpenStreamsOf(ct ClientTransport) bool { return ct.(*Client).openStreams() }

// SlotsUsed returns how many streams count against the server's limit.
func SlotsUsed(ct ClientTransport) uint32 {
	t := ct.(*Client)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.slotsUsed
}

// MaxHandshakes is maxHandshakes, for tests.
const MaxHandshakes = maxHandshakes
