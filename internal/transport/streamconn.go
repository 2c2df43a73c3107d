package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/doorbell"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/spin"
)

// streamKindData is the ring record kind of a byte stream's DATA record
// (PROTOCOL.md 17.2); the only kind besides the ring's pads.
const streamKindData = 2

// StreamConn is one side of a byte-stream connection (PROTOCOL.md 17): a
// net.Conn whose bytes travel through the connection segment's two rings
// as DATA records, with no frames, streams or heaps, so that an unchanged
// grpc-go client and server run HTTP/2 over it without a socket on the
// data path. It is made with the handshakes of frame connections
// (DialStream, NewStreamServer) and kept by the same liveness watch, so
// that a dead peer fails Read and Write within the liveness timeout (on
// one host within a beat), never hangs them.
//
// Reading waits as a frame connection's reader does (idle.go, the
// doorbell): it polls for its spin period, then sleeps on the peer's
// tail, and the peer rings only while it sleeps. Writing copies into
// the outgoing ring; a full ring makes Write wait for room, polling the
// peer's head (PROTOCOL.md 7.7), bounded by the write deadline.
//
// Memory safety: the segment is unmapped only by release, once it holds
// rlock and wlock for good, and under mapMu against the liveness watch;
// so a goroutine that holds rlock (Read) or wlock (Write) may touch the
// segment.
//
// Locks, in the order they are taken: rlock (one Read at a time consumes
// the incoming ring) or wlock (one Write at a time produces into the
// outgoing ring), never both but by release, which takes rlock then
// wlock; then mapMu. rlock and wlock are channels, so that a Read or
// Write waiting for them selects on its deadline and on Close. The
// deadlines' locks and the liveness registry's are leaves apart from
// this order (the registry's is taken before mapMu).
type StreamConn struct {
	seg        *pool.Segment
	self, peer pool.Control
	out        *ring.Producer // under wlock
	in         *ring.Consumer // under rlock
	bell       *doorbell.Bell
	wait       Wait
	budget     *spin.Budget // the reader's learned spin period (IdleAdaptive)
	peerID     Identity
	lis        *Listener // the server's listener, kept mapped while connections live; nil at the client

	local, remote net.Addr

	rlock chan struct{} // the read lock
	cur   []byte        // the unread rest of the DATA record in hand, in the ring; under rlock
	eof   bool          // the peer closed and everything it wrote was read; under rlock
	wlock chan struct{} // the write lock

	rdl, wdl *deadline

	closeOnce sync.Once
	err       error       // why the connection closed; set before closed and done
	closed    atomic.Bool // set when the connection starts closing
	done      chan struct{}
	released  chan struct{} // closed once the segment is unmapped

	mapMu    sync.RWMutex // held for reading by the liveness watch while it touches the segment
	unmapped bool
}

var _ net.Conn = (*StreamConn)(nil)

// errStreamClosed is why a StreamConn closed by its own side's Close
// fails: net.ErrClosed, as every net.Conn.
var errStreamClosed = net.ErrClosed

// newStreamConn makes one side of the byte-stream connection of seg: self
// and peer are the control blocks, out and in the rings this side writes
// and reads. Both rings start at 0 (the segment was checked fresh).
func newStreamConn(seg *pool.Segment, self, peer pool.Control, out, in []byte, wait Wait, id Identity) *StreamConn {
	c := &StreamConn{
		seg:      seg,
		self:     self,
		peer:     peer,
		out:      ring.NewProducerAt(out, self.Tail.Ptr(), peer.Head.Ptr(), 0),
		in:       ring.NewConsumerAt(in, peer.Tail.Ptr(), self.Head.Ptr(), 0),
		bell:     doorbell.New(ring.TailWord(self.Tail.Ptr()), self.Sleeping.Ptr(), ring.TailWord(peer.Tail.Ptr()), peer.Sleeping.Ptr(), wait.PollOnly),
		wait:     wait,
		budget:   spin.NewBudget(wait.Spin),
		peerID:   id,
		rlock:    make(chan struct{}, 1),
		wlock:    make(chan struct{}, 1),
		done:     make(chan struct{}),
		released: make(chan struct{}),
	}
	c.out.SetCoherence(seg.Coherence()) // PROTOCOL.md 18
	c.in.SetCoherence(seg.Coherence())
	// A reader asleep on the doorbell wakes when its deadline passes; a
	// writer waiting for room polls, and looks at its deadline each time.
	c.rdl = newDeadline(c.bell.Kick)
	c.wdl = newDeadline(nil)
	return c
}

// DialStream makes a byte-stream connection to the instance cfg.Name,
// which must serve byte streams (F11), bounded by ctx, and starts its
// liveness watch. Peer returns the server's identity.
func DialStream(ctx context.Context, cfg *DialConfig) (*StreamConn, error) {
	o := *cfg
	o.Stream = true
	d, err := connect(ctx, &o)
	if err != nil {
		return nil, err
	}
	lay := d.lay
	c := newStreamConn(d.seg, lay.Client, lay.Server, lay.C2S, lay.S2C, d.wait, d.server)
	watch(c, o.Liveness, d.livePID)
	return c, nil
}

// NewStreamServer opens the byte-stream connection a, which a listener
// that serves byte streams accepted, and starts its liveness watch. In a
// cross-host pool it polls only, whatever wait says.
func NewStreamServer(a *Accepted, wait Wait, liveness time.Duration) *StreamConn {
	wait = a.wait(wait)
	c := newStreamConn(a.seg, a.lay.Server, a.lay.Client, a.lay.S2C, a.lay.C2S, wait, a.Peer())
	c.lis = a.lis
	// As for a frame connection (NewServer): the server allocates the
	// ring it writes in the client's segment as it writes it.
	s2c := a.lay.S2C
	c.out.SetPrepare(func(off, n int) error { return a.seg.ReserveBytes(s2c[off : off+n]) }, 0)
	a.lay.Server.State.Store(pool.StateOpen) // the client may write
	a.settled()
	watch(c, liveness, a.livePID())
	return c
}

// SetAddrs sets the addresses LocalAddr and RemoteAddr return; call it
// before handing the connection to anyone.
func (c *StreamConn) SetAddrs(local, remote net.Addr) { c.local, c.remote = local, remote }

// Peer returns the identity of the process at the other end.
func (c *StreamConn) Peer() Identity { return c.peerID }

// LocalAddr returns this side's address (SetAddrs).
func (c *StreamConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the peer's address (SetAddrs).
func (c *StreamConn) RemoteAddr() net.Addr { return c.remote }

// Read reads the next bytes the peer wrote, waiting for some. It returns
// io.EOF once the peer has closed and everything it wrote has been read;
// an error wrapping os.ErrDeadlineExceeded (a timeout) when the read
// deadline passes first; net.ErrClosed after Close; the reason when the
// connection failed (the peer died or stopped beating, or wrote what
// PROTOCOL.md 17.2 forbids).
func (c *StreamConn) Read(p []byte) (int, error) {
	if err := c.lock(c.rlock, c.rdl); err != nil {
		return 0, c.opError("read", err)
	}
	defer func() { <-c.rlock }()
	if c.eof {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	idle := c.idler()
	for {
		n, err := c.readSome(p)
		if n > 0 {
			c.busy(&idle)
			return n, nil
		}
		if err == io.EOF {
			c.eof = true
			return 0, err
		}
		if err != nil {
			return 0, c.opError("read", err)
		}
		// The timer's flag, an atomic load: no clock on every poll.
		if c.rdl.passed.Load() {
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		}
		if idle.Spent(c.readerSpin()) {
			c.park()
			resumeIdle(&idle, c.wait)
			if c.rdl.expired() {
				return 0, c.opError("read", os.ErrDeadlineExceeded)
			}
		}
	}
}

// readSome copies what the ring holds into p, without waiting. With
// nothing to read it returns io.EOF if the peer has closed, else 0 and
// no error. The caller holds rlock.
func (c *StreamConn) readSome(p []byte) (int, error) {
	if err := c.closeErr(); err != nil {
		// A side that has closed reads nothing more (PROTOCOL.md 10.8
		// rule 1, 17.4).
		return 0, err
	}
	n := 0
	for n < len(p) {
		if len(c.cur) == 0 {
			c.in.Release() // every record read so far is done with
			rec, err := c.in.Next()
			if err != nil {
				return n, c.violation(err)
			}
			if rec == nil {
				break
			}
			if err := checkData(rec); err != nil {
				return n, c.violation(err)
			}
			// The ring checked the record's length against the ring and
			// the published bytes (R4 to R6) and sized rec by the length
			// it read once: nothing here reads a length again.
			c.cur = rec[ring.HeaderSize:]
		}
		k := copy(p[n:], c.cur)
		c.cur = c.cur[k:]
		n += k
	}
	if len(c.cur) == 0 {
		c.in.Release()
	}
	if n == 0 && c.peer.State.Load() == pool.StateClosed && !c.in.Published() {
		// The peer published everything before it stored its state
		// (13.1), so an empty ring after its state is the end.
		return 0, io.EOF
	}
	return n, nil
}

// checkData checks the header of a record of a byte stream (PROTOCOL.md
// B1, B2), copied once: a DATA record with bytes 5 to 15 zero.
func checkData(rec []byte) error {
	var h [ring.HeaderSize]byte
	copy(h[:], rec)
	if h[4] != streamKindData {
		return fmt.Errorf("record of kind %d in a byte stream (B1)", h[4])
	}
	for _, b := range h[5:] {
		if b != 0 {
			return fmt.Errorf("DATA record with reserved header bytes %x (B2)", h[5:])
		}
	}
	return nil
}

// violation closes the connection on a protocol violation of the peer and
// returns the error.
func (c *StreamConn) violation(err error) error {
	c.shut(fmt.Errorf("notnets: byte stream closed on a protocol violation: %w", err))
	return c.err
}

// park sleeps on the doorbell until the peer publishes, closes, the read
// deadline passes or the connection closes; at most MaxBlock at a time.
// The caller holds rlock and has found the ring empty.
func (c *StreamConn) park() {
	c.bell.WaitFor(func() (uint32, bool) {
		// Also from the hub's goroutine (doorbell/hub.go), while the
		// reader, which alone moves the consumer, is blocked in the wait.
		seen, published := uint32(c.in.Position()), c.in.Published()
		return seen, published || c.closed.Load() || c.rdl.passed.Load() || c.peer.State.Load() == pool.StateClosed
	}, c.rdl.left(doorbell.MaxBlock))
}

// Write writes p to the peer. It returns when every byte is in the ring,
// published; it waits while the ring is full, and fails with an error
// wrapping os.ErrDeadlineExceeded when the write deadline passes first,
// with net.ErrClosed after Close, or when the peer has closed or died.
// It returns how many bytes went out before an error.
func (c *StreamConn) Write(p []byte) (int, error) {
	if err := c.lock(c.wlock, c.wdl); err != nil {
		return 0, c.opError("write", err)
	}
	defer func() { <-c.wlock }()
	if err := c.writable(); err != nil {
		return 0, c.opError("write", err)
	}
	n := 0
	for n < len(p) {
		k := min(len(p)-n, c.out.MaxPayload())
		if err := c.out.Prepare(k); err != nil {
			// A ring in a client's segment that the pool has no room for
			// (PROTOCOL.md 3.4): a store would fault.
			c.publish()
			return n, c.opError("write", fmt.Errorf("notnets: allocate the outgoing ring: %w", err))
		}
		rec := c.out.Reserve(k, streamKindData)
		if rec == nil {
			c.publish() // the peer must see what is there to make room
			if err := c.waitRoom(k); err != nil {
				return n, c.opError("write", err)
			}
			continue
		}
		copy(rec[ring.HeaderSize:], p[n:n+k])
		n += k
	}
	c.publish()
	return n, nil
}

// writable reports why nothing may be written: the connection closed,
// the write deadline passed, or the peer closed its side.
func (c *StreamConn) writable() error {
	if err := c.closeErr(); err != nil {
		return err
	}
	if c.wdl.passed.Load() {
		return os.ErrDeadlineExceeded
	}
	if c.peer.State.Load() == pool.StateClosed {
		return fmt.Errorf("notnets: peer closed the connection: %w", syscall.EPIPE)
	}
	return nil
}

// waitRoom waits until a record of n bytes fits in the outgoing ring, or
// the write deadline passes, the connection closes or the peer closes.
// Consumers never ring for free space (PROTOCOL.md 7.7): it polls the
// head, for FullRingSpin, then every PollSleep (or less, to meet the
// deadline). The caller holds wlock and has published.
func (c *StreamConn) waitRoom(n int) error {
	var idle spin.Idler
	for !c.out.Fits(n) {
		if err := c.writable(); err != nil {
			return err
		}
		if c.wdl.expired() {
			return os.ErrDeadlineExceeded
		}
		if idle.Spent(doorbell.FullRingSpin) {
			time.Sleep(c.wdl.left(doorbell.PollSleep))
		}
	}
	return nil
}

// publish makes the records written visible to the peer and rings its
// doorbell if it sleeps. The caller holds wlock.
func (c *StreamConn) publish() {
	if c.out.Unpublished() {
		c.out.Publish()
		c.bell.Ring()
	}
}

// lock takes l (rlock or wlock), waiting at most until the deadline d
// passes or the connection closes.
func (c *StreamConn) lock(l chan struct{}, d *deadline) error {
	// Closed first: a closed connection with a passed deadline fails
	// with net.ErrClosed, whichever case the select below would pick.
	if err := c.closeErr(); err != nil {
		return err
	}
	select {
	case l <- struct{}{}:
	default:
		select {
		case l <- struct{}{}:
		case <-d.done():
			return os.ErrDeadlineExceeded
		case <-c.done:
			return c.err
		}
	}
	if err := c.closeErr(); err != nil {
		<-l
		return err
	}
	return nil
}

// SetDeadline sets the read and write deadlines.
func (c *StreamConn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

// SetReadDeadline sets the time after which Read fails with a timeout; the
// zero time clears it. It applies to a Read already waiting.
func (c *StreamConn) SetReadDeadline(t time.Time) error {
	c.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the time after which Write fails with a timeout;
// the zero time clears it. It applies to a Write already waiting.
func (c *StreamConn) SetWriteDeadline(t time.Time) error {
	c.wdl.set(t)
	return nil
}

// Close closes the connection: Read and Write in progress or to come fail
// with net.ErrClosed, and the peer reads the end of the stream once it
// has read what this side wrote. The segment is unmapped once no Read or
// Write uses it.
func (c *StreamConn) Close() error {
	if !c.shut(errStreamClosed) {
		return c.opError("close", net.ErrClosed)
	}
	return nil
}

// fail closes the connection with err (the liveness watch). Read and
// Write return its message as a plain error: a net.Conn's errors are not
// gRPC statuses, and grpc-go makes its own of them.
func (c *StreamConn) fail(err error) {
	if s, ok := status.FromError(err); ok {
		err = errors.New(s.Message())
	}
	c.shut(err)
}

// shut closes the connection with err, once, and reports whether this
// call did: the peer learns from the state word (PROTOCOL.md 17.4), with
// an unconditional wake in case it sleeps on this side's tail.
func (c *StreamConn) shut(err error) bool {
	first := false
	c.closeOnce.Do(func() {
		first = true
		c.err = err
		c.closed.Store(true) // after err: a load that sees true sees err
		close(c.done)
		c.self.State.Store(pool.StateClosed)
		c.bell.RingAlways()
		c.bell.Kick()
		go c.release()
	})
	return first
}

// release unmaps the segment once no Read or Write uses it. A Read asleep
// on the doorbell may have missed shut's kick (it came just before its
// futex wait): it is kicked every millisecond until it leaves. A Write
// waiting for room looks at the connection at least every PollSleep.
func (c *StreamConn) release() {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for taken := false; !taken; {
		select {
		case c.rlock <- struct{}{}: // held for good
			taken = true
		case <-tick.C:
			c.bell.Kick()
		}
	}
	c.wlock <- struct{}{} // held for good
	c.rdl.stop()
	c.wdl.stop()
	c.cur = nil
	c.mapMu.Lock()
	c.unmapped = true
	c.mapMu.Unlock()
	c.seg.Unlink() // a named segment of the slots' handshake; a memfd has none
	c.seg.Close()
	close(c.released)
}

// Released is closed once the connection is closed and its segment
// unmapped.
func (c *StreamConn) Released() <-chan struct{} { return c.released }

// closeErr returns why the connection closed, or nil while it is open.
func (c *StreamConn) closeErr() error {
	if !c.closed.Load() {
		return nil
	}
	return c.err
}

// heartbeat increments this side's heartbeat and returns the peer's,
// unless the segment has been unmapped (the liveness watch).
func (c *StreamConn) heartbeat() (uint64, bool) {
	c.mapMu.RLock()
	defer c.mapMu.RUnlock()
	if c.unmapped {
		return 0, false
	}
	c.self.Heartbeat.Add(1)
	return c.peer.Heartbeat.Load(), true
}

// opError wraps err as the net package's errors are, so that callers can
// test it as theirs: Timeout() for a deadline, errors.Is(err,
// net.ErrClosed) after Close.
func (c *StreamConn) opError(op string, err error) error {
	if errors.Is(err, io.EOF) {
		return err
	}
	return &net.OpError{Op: op, Net: "notnets", Source: c.local, Addr: c.remote, Err: err}
}

// readerSpin returns how long Read polls an empty ring before it sleeps:
// the learned period when adaptive (idle.go).
func (c *StreamConn) readerSpin() time.Duration {
	switch c.wait.Idle {
	case IdleBusySpin:
		return forever
	case IdleParkOnly:
		return 0
	}
	return c.budget.Spin()
}

// idler returns the pacing of the reader's polls.
func (c *StreamConn) idler() spin.Idler {
	return spin.Idler{NoOSYield: c.wait.Idle == IdleBusySpin}
}

// busy records that Read found bytes, and learns from the idle gap they
// ended.
func (c *StreamConn) busy(idle *spin.Idler) {
	if gap := idle.Busy(); gap > 0 {
		c.budget.Observe(gap)
	}
}
