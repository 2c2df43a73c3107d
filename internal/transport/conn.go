package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/doorbell"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/spin"

	"github.com/notnets/notnets/internal/coherence"
)

// conn is one side of a connection segment: the ring it produces, the ring
// it consumes, and the reader goroutine that polls the latter. The client
// and the server transports wrap it with their own stream handling.
//
// Memory safety: the segment is unmapped only after the reader has exited
// and the closer holds the write lock for good, so any goroutine that holds
// the write lock, or is the reader, may touch the segment.
//
// Locks, in the order they are taken (docs/ARCHITECTURE.md): pollMu (the
// reading role), then wlock (the write lock, a channel so that waiting can
// select), then a stream's locks, then heapMu or viewMu (heap.go), then
// mapMu. The liveness registry's lock is taken before mapMu and never with
// the others.
type conn struct {
	seg        *pool.Segment
	coh        coherence.Coherence // the segment's, nil on coherent memory (PROTOCOL.md 18)
	self, peer pool.Control
	out        *ring.Producer
	in         *ring.Consumer
	wait       Wait
	bell       *doorbell.Bell
	window     int // each stream's receive window

	// onFrame handles one frame on the reader goroutine; it must copy what
	// it keeps of the payload. An error closes the connection with Internal.
	onFrame func(frame.Header, []byte) error
	// onClose fails every stream of the connection with err.
	onClose func(err error)

	wlock      chan struct{} // the write lock, as a channel so waiting can select
	done       chan struct{} // closed when the connection starts closing
	readerDone chan struct{} // closed when no goroutine will read the ring again
	readerOnce sync.Once

	// Reading: one goroutine at a time drains the incoming ring, under
	// pollMu. A client's callers poll for their own replies while a call
	// is young (pollers counts them) and the background reader parks; see
	// ClientConn.readLoop.
	pollMu    sync.Mutex
	pollers   atomic.Int32
	resume    chan struct{}
	parkTimer *time.Timer
	closeOnce sync.Once
	err       error       // why it closed; set before closed and done
	closed    atomic.Bool // set when the connection starts closing, with done
	toldPeer  bool        // a GOAWAY with the reason is out; under the write lock

	peerReason atomic.Pointer[string] // the reason in the peer's last GOAWAY

	// pendingRef is the message of the MESSAGE_REF frame being handled;
	// onFrame takes it with takeRef or it is freed.
	pendingRef mem.Buffer

	// Header blocks (headerblock.go): the largest this side accepts (the
	// limit it announced) and the largest the peer accepts, and the
	// fragmented block being received (reader only).
	headerLimit, peerHeaderLimit int
	hdrIn                        blockAssembler

	budget *spin.Budget // the reader's learned spin period (IdleAdaptive)

	mapMu    sync.RWMutex // held for reading by the liveness watch while it touches the segment
	unmapped bool

	heaps
}

func newConn(seg *pool.Segment, self, peer pool.Control, out, in []byte, wait Wait) *conn {
	var coh coherence.Coherence
	if seg != nil {
		coh = seg.Coherence()
	}
	c := &conn{
		headerLimit:     pool.DefaultHeaderLimit,
		peerHeaderLimit: pool.DefaultHeaderLimit,
		bell:            doorbell.New(ring.TailWord(self.Tail.Ptr()), self.Sleeping.Ptr(), ring.TailWord(peer.Tail.Ptr()), peer.Sleeping.Ptr(), wait.PollOnly),
		seg:             seg,
		self:            self,
		peer:            peer,
		// Connections start fresh (checked at accept): both rings at 0.
		out:        ring.NewProducerAt(out, self.Tail.Ptr(), peer.Head.Ptr(), 0),
		in:         ring.NewConsumerAt(in, peer.Tail.Ptr(), self.Head.Ptr(), 0),
		wait:       wait,
		wlock:      make(chan struct{}, 1),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
		resume:     make(chan struct{}, 1),
		parkTimer:  time.NewTimer(time.Hour),
		budget:     spin.NewBudget(wait.Spin),
		coh:        coh,
	}
	c.out.SetCoherence(coh)
	c.in.SetCoherence(coh)
	return c
}

// closeErr returns why the connection closed, or nil while it is open.
func (c *conn) closeErr() error {
	// An atomic load, not a receive from done: pollers ask on every poll.
	if !c.closed.Load() {
		return nil
	}
	return c.err
}

// lock takes the write lock, waiting at most until ctx ends or the
// connection closes.
func (c *conn) lock(ctx context.Context) error {
	select {
	case c.wlock <- struct{}{}:
	default:
		select {
		case c.wlock <- struct{}{}:
		case <-ctx.Done():
			return contextStatus(ctx.Err())
		case <-c.done:
			return c.err
		}
	}
	if err := c.closeErr(); err != nil {
		<-c.wlock
		return err
	}
	return nil
}

// unlock publishes what was written under the lock, rings the peer's
// doorbell if it sleeps, and releases the lock.
func (c *conn) unlock() {
	c.publish()
	<-c.wlock
}

func (c *conn) publish() {
	if !c.out.Unpublished() {
		return
	}
	c.out.Publish()
	c.bell.Ring()
}

// reserve returns space for a frame with an n-byte payload, waiting while
// the ring is full. The caller holds the write lock.
func (c *conn) reserve(ctx context.Context, n int, t frame.Type) ([]byte, error) {
	if err := c.out.Prepare(n); err != nil {
		// A ring in a client's segment that the pool has no room for
		// (PROTOCOL.md 3.4): a store would fault.
		return nil, status.Errorf(codes.ResourceExhausted, "notnets: allocate the outgoing ring: %v", err)
	}
	if rec := c.out.Reserve(n, byte(t)); rec != nil {
		return rec, nil
	}
	c.publish() // the peer must see what is there to make room
	var idle spin.Idler
	for {
		if rec := c.out.Reserve(n, byte(t)); rec != nil {
			return rec, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, contextStatus(err)
		}
		if err := c.closeErr(); err != nil {
			return nil, err
		}
		if c.peer.State.Load() == pool.StateClosed {
			return nil, status.Error(codes.Unavailable, "notnets: peer closed the connection")
		}
		if idle.Spent(doorbell.FullRingSpin) {
			time.Sleep(doorbell.PollSleep)
		}
	}
}

// encoder is a frame payload that knows its size.
type encoder interface {
	Size() int
	Append([]byte) []byte
}

// writeFrame writes a control frame whose payload is e (nil for none). The
// caller holds the write lock.
func (c *conn) writeFrame(ctx context.Context, t frame.Type, flags frame.Flags, stream, aux uint32, e encoder) error {
	n := 0
	if e != nil {
		n = e.Size()
	}
	return c.writeSized(ctx, t, flags, stream, aux, e, n)
}

// writeSized is writeFrame for a payload e of n bytes.
func (c *conn) writeSized(ctx context.Context, t frame.Type, flags frame.Flags, stream, aux uint32, e encoder, n int) error {
	if n > c.out.MaxPayload() {
		return status.Errorf(codes.ResourceExhausted, "notnets: %v frame of %d bytes exceeds the limit of %d (ring too small for this metadata)", t, n, c.out.MaxPayload())
	}
	rec, err := c.reserve(ctx, n, t)
	if err != nil {
		return err
	}
	frame.Put(rec, flags, stream, aux)
	if e != nil {
		if b := e.Append(rec[frame.HeaderSize:frame.HeaderSize:len(rec)]); len(b) != n {
			panic(fmt.Sprintf("notnets: %v payload encoded to %d bytes, sized %d", t, len(b), n))
		}
	}
	return nil
}

// writeData writes msg as one MESSAGE frame or a run of fragments. The
// caller holds the write lock; fragments are published as they are written
// so that the peer can drain a ring smaller than the message.
func (c *conn) writeData(ctx context.Context, stream uint32, flags frame.Flags, msg []byte) error {
	max := c.out.MaxPayload()
	aux := uint32(len(msg))
	for first := true; first || len(msg) > 0; first = false {
		n := min(len(msg), max)
		f := flags
		if n < len(msg) {
			f = frame.FlagMore // end-of-stream goes on the last fragment only
		}
		rec, err := c.reserve(ctx, n, frame.TypeMessage)
		if err != nil {
			return err
		}
		frame.Put(rec, f, stream, aux)
		copy(rec[frame.HeaderSize:], msg[:n])
		msg = msg[n:]
		aux = 0
		if len(msg) > 0 {
			c.publish()
		}
	}
	return nil
}

// drain hands every frame published in the incoming ring to onFrame and
// returns how many it handled. The caller holds pollMu. On a protocol
// violation it fails the connection and returns false; once the
// connection is closed it consumes nothing more and returns false.
func (c *conn) drain() (int, bool) {
	n := 0
	for {
		if c.closed.Load() {
			// Nothing more is consumed once closed: a peer reads the
			// head to tell which of its requests were never read
			// (PROTOCOL.md 10.8).
			return n, false
		}
		rec, err := c.in.Next()
		if err != nil {
			c.fail(status.Errorf(codes.Internal, "notnets: connection closed on a protocol violation: %v", err))
			return n, false
		}
		if rec == nil {
			c.in.Release()
			return n, true
		}
		h, p, err := frame.Parse(rec)
		whole := true // not a fragment of a header block, or its last
		var assembled bool
		if err == nil {
			assembled = c.hdrIn.buf != nil
			h, p, whole, err = c.hdrIn.add(h, p, c.headerLimit)
			assembled = assembled && whole
		}
		if err == nil && !whole {
			c.in.Release() // copied into the block
			n++
			continue
		}
		if err == nil && h.Type == frame.TypeGoAway {
			var g frame.GoAway
			if err = g.Decode(p); err == nil {
				c.peerReason.Store(&g.Reason)
			}
		}
		if err == nil && h.Type == frame.TypeMessageRef {
			// Taken before the stream is looked up, so that a reference
			// for a stream that has ended still goes back to the peer.
			c.pendingRef, err = c.takeView(p)
		}
		if err == nil {
			err = c.onFrame(h, p)
		}
		if c.pendingRef != nil {
			c.pendingRef.Free() // nobody wanted the message
			c.pendingRef = nil
		}
		if assembled {
			c.hdrIn.release()
		}
		if err == errLeaveUnread {
			return n, false // closed under the frame's handler
		}
		c.in.Release()
		if err != nil {
			c.fail(status.Errorf(codes.Internal, "notnets: connection closed on a protocol violation: %v", err))
			return n, false
		}
		n++
	}
}

// errLeaveUnread, from a frame handler, says that the connection closed
// before the frame could be handled: drain stops without consuming it.
var errLeaveUnread = errors.New("notnets: connection closed before the frame was handled")

// poll drains the ring if no other goroutine is doing so. It reports
// false once the connection is closed.
func (c *conn) poll() bool {
	if !c.pollMu.TryLock() {
		return c.closeErr() == nil
	}
	ok := c.closeErr() == nil
	if ok {
		_, ok = c.drain()
	}
	c.pollMu.Unlock()
	return ok
}

// drainOrCheck drains the ring, waiting for pollMu, and if it finds
// nothing checks whether the peer has closed. It reports how many frames it
// handled and whether the connection is still open.
func (c *conn) drainOrCheck() (int, bool) {
	c.pollMu.Lock()
	defer c.pollMu.Unlock()
	if c.closeErr() != nil {
		return 0, false
	}
	n, ok := c.drain()
	if ok && n == 0 {
		ok = c.checkPeer()
	}
	return n, ok
}

// checkPeer fails the connection if the peer has closed its side and left
// nothing more to read. It reports whether the connection is still open.
// The caller holds pollMu.
func (c *conn) checkPeer() bool {
	if c.peer.State.Load() != pool.StateClosed || c.in.Published() {
		return true
	}
	msg := "notnets: peer closed the connection"
	if r := c.peerReason.Load(); r != nil {
		msg += ": " + *r
	}
	c.fail(status.Error(codes.Unavailable, msg))
	return false
}

// endReader marks the end of reading for good: the segment may be
// unmapped once the write lock is also held.
func (c *conn) endReader() { c.readerOnce.Do(func() { close(c.readerDone) }) }

// park waits while goroutines poll the ring for their own calls, until one
// of them resumes the background reader, or a while has passed.
func (c *conn) park() {
	c.parkTimer.Reset(doorbell.MaxBlock)
	select {
	case <-c.resume:
	case <-c.done:
	case <-c.parkTimer.C:
	}
	c.parkTimer.Stop()
}

// resumeReader restarts the background reader, parked or blocked.
func (c *conn) resumeReader() {
	select {
	case c.resume <- struct{}{}:
	default:
	}
	c.kick()
}

// block waits on the doorbell until the peer publishes or a while passes
// (doorbell.Bell.Wait).
func (c *conn) block() {
	c.bell.Wait(func() (uint32, bool) {
		c.pollMu.Lock()
		seen, published := uint32(c.in.Position()), c.in.Published()
		c.pollMu.Unlock()
		return seen, published || c.closeErr() != nil || c.peer.State.Load() == pool.StateClosed
	})
}

// kick wakes the reader if it is blocked, so that it polls while a call
// that just started waits for its answer.
func (c *conn) kick() { c.bell.Kick() }

// fail closes the connection with err: every stream fails with it, the
// peer is told through the control block, and the segment is unmapped once
// nothing uses it any more.
func (c *conn) fail(err error) {
	c.closeOnce.Do(func() {
		c.err = err
		c.tellPeer(err)
		c.closed.Store(true) // after err: a load that sees true sees err
		close(c.done)
		c.self.State.Store(pool.StateClosed)
		c.bell.RingAlways() // the peer may sleep on our tail
		c.onClose(err)
		c.kick()
		go c.release()
	})
}

// tellPeer sends a GOAWAY frame that says why the connection closes, if
// the write lock and the ring have room for it right away.
func (c *conn) tellPeer(err error) {
	select {
	case c.wlock <- struct{}{}:
	default:
		return
	}
	c.sayGoAway(err)
	<-c.wlock
}

// sayGoAway writes a GOAWAY frame with err's message, once, if the ring
// has room for it now. The caller holds the write lock.
func (c *conn) sayGoAway(err error) {
	if c.toldPeer {
		return
	}
	g := frame.GoAway{Reason: status.Convert(err).Message()}
	if n := g.Size(); n <= c.out.MaxPayload() && c.out.Prepare(n) == nil {
		if rec := c.out.Reserve(n, byte(frame.TypeGoAway)); rec != nil {
			frame.Put(rec, 0, 0, 0)
			g.Append(rec[frame.HeaderSize:frame.HeaderSize])
			c.publish()
			c.toldPeer = true
		}
	}
}

// failSoon closes the connection with err from a goroutine of its own: for
// callers that may hold the write lock or a stream's locks, which closing
// takes. It waits a little for the write lock, so that the peer learns the
// reason even while a writer is busy.
func (c *conn) failSoon(err error) {
	go func() {
		t := time.NewTimer(100 * time.Millisecond)
		defer t.Stop()
		select {
		case c.wlock <- struct{}{}:
			if c.closeErr() == nil {
				c.sayGoAway(err)
			}
			<-c.wlock
		case <-c.done:
		case <-t.C:
		}
		c.fail(err)
	}()
}

func (c *conn) release() {
	<-c.readerDone
	c.pollMu.Lock()       // held for good: no poller touches the segment again
	c.wlock <- struct{}{} // held for good: no writer touches the segment again
	c.mapMu.Lock()
	c.unmapped = true
	c.mapMu.Unlock()
	c.seg.Unlink()
	c.closeHeaps() // unmaps once the user lets go of every view and block
}

// waitReleased blocks until no goroutine reads the connection any more.
// It rings the reader's doorbell every millisecond meanwhile: fail's
// wake-up is lost if it comes between the reader's last look at the
// connection and its futex wait, whose word the close does not change.
func (c *conn) waitReleased() {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-c.readerDone:
			return
		case <-tick.C:
			c.kick()
		}
	}
}

func contextStatus(err error) error { return status.FromContextError(err).Err() }

// takeRef hands the message of the MESSAGE_REF frame being handled to the
// caller, on the reader goroutine.
func (c *conn) takeRef() mem.Buffer {
	b := c.pendingRef
	c.pendingRef = nil
	return b
}

// heartbeat increments this side's heartbeat and returns the peer's,
// unless the segment has been unmapped (the liveness watch).
func (c *conn) heartbeat() (uint64, bool) {
	c.mapMu.RLock()
	defer c.mapMu.RUnlock()
	if c.unmapped {
		return 0, false
	}
	c.self.Heartbeat.Add(1)
	return c.peer.Heartbeat.Load(), true
}
