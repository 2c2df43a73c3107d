package transport

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
)

// ClientTransport is what the gRPC face needs of one client connection, in
// the manner of grpc-go's transport.ClientTransport: start a stream, learn
// when the connection stops taking calls (GOAWAY) or ends, close it, and
// know the peer. Discovery and balancing pick among values of this type.
type ClientTransport interface {
	// NewStream registers s and writes its HEADERS (and, with msg, the one
	// request of a unary call, with end-of-stream, in the same publish). It
	// returns ErrTryAnother when nothing went out because the connection
	// stopped taking calls.
	NewStream(s *ClientStream, hdr *frame.RequestHeaders, msg *OutMsg) (sent bool, err error)
	// TakeSlot waits for a place under the server's stream limit.
	TakeSlot(s *ClientStream) error
	// GoingAway is closed when the server said GOAWAY or the connection
	// closed: it takes no new streams.
	GoingAway() <-chan struct{}
	// Done is closed when the connection has closed.
	Done() <-chan struct{}
	// Err says why the connection takes no new streams, or nil.
	Err() error
	// Close closes the connection with err, waits until it is released,
	// and returns the streams that were open.
	Close(err error) []*ClientStream
	// Peer is the server's identity.
	Peer() Identity
	// Stage writes a large message into the connection's heap before the
	// write lock is taken.
	Stage(m *OutMsg) error
	// AllocBlock allocates n bytes of the connection's own heap for the
	// user to fill (Block), if it has room.
	AllocBlock(n int) (Block, []byte, bool)
	// Holds reports whether m lies in this connection's heap, where it
	// goes out without a copy.
	Holds(m *OutMsg) bool
}

// ErrTryAnother says that a call's connection stopped taking new calls
// (GOAWAY, or it closed) before anything of the call went out on it: the
// call starts again on the next connection, as grpc-go's transparent
// retry does.
var ErrTryAnother = errors.New("notnets: try another connection")

// ClientEvents are the gRPC face's hooks into a client transport. Lost and
// Closed are required; the stats hooks are nil without stats handlers and
// run on the reader goroutine.
type ClientEvents struct {
	// Lost: the connection t takes no new calls (it closed, or GOAWAY).
	// It may run before Dial has returned t.
	Lost func(t ClientTransport, why error)
	// Closed: the connection has closed and its streams have failed.
	Closed func()
	// InHeader and InTrailer report the server's headers (wireLen -1 for
	// the empty headers implied by a message without HEADERS) and
	// trailers of s.
	InHeader  func(s *ClientStream, md metadata.MD, wireLen int)
	InTrailer func(s *ClientStream, md metadata.MD, wireLen int)
}

// Client is the client's side of one connection and the streams on it.
//
// Locks: mu guards the fields below it. It is taken after the
// connection's write lock (register runs under it) and before a stream's
// mu; it is released before the ClientEvents hooks run.
type Client struct {
	c      *conn
	events ClientEvents
	server Identity // the server's identity, from its listener or the kernel
	// livePID is the server's pid where this process can look it up, else
	// 0 (another host or pid namespace, a cross-host pool: F14).
	livePID int

	mu      sync.Mutex
	streams map[uint32]*ClientStream
	lastID  uint32
	// orphans are ended streams given up with messages unread.
	orphans   []*ClientStream
	dropped   bool          // the connection has closed: orphans are dropped at once
	goAway    error         // why no new streams may start, once the server said so
	goingAway chan struct{} // closed with goAway set, or when the connection closes

	// The server's limit on open streams (0 for none), the streams that
	// count against it, and a channel closed when one ends (under mu).
	maxStreams uint32
	slotsUsed  uint32
	slotFree   chan struct{}
}

var _ ClientTransport = (*Client)(nil)

// Dial makes a connection as cfg says, bounded by ctx, and starts its
// reader and its liveness watch.
func Dial(ctx context.Context, cfg *DialConfig, events ClientEvents) (*Client, error) {
	d, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	lay := d.lay
	t := &Client{events: events, streams: make(map[uint32]*ClientStream), server: d.server, livePID: d.livePID, maxStreams: lay.Server.MaxStreams.Load(), goingAway: make(chan struct{})}
	t.c = newConn(d.seg, lay.Client, lay.Server, lay.C2S, lay.S2C, d.wait)
	t.c.initHeaps(lay.C2SHeap, lay.C2SReturns, lay.S2CHeap, lay.S2CReturns, cfg.Wait.CheckViews)
	t.c.onFrame = t.onFrame
	t.c.onClose = t.onClose
	t.c.window = cfg.Window
	// Each side's header block limit, as announced (PROTOCOL.md 11.11).
	t.c.headerLimit = headerLimit(cfg.Info.MaxHeader)
	t.c.peerHeaderLimit = headerLimit(lay.Server.MaxHeader.Load())
	go t.readLoop()
	watch(t.c, cfg.Liveness, d.livePID)
	return t, nil
}

// Peer returns the server's identity.
func (t *Client) Peer() Identity { return t.server }

// GoingAway is closed once the connection takes no new streams.
func (t *Client) GoingAway() <-chan struct{} { return t.goingAway }

// Done is closed when the connection closes.
func (t *Client) Done() <-chan struct{} { return t.c.done }

// Err reports why t takes no new calls (it failed, or the server said
// GOAWAY), or nil.
func (t *Client) Err() error {
	if err := t.c.closeErr(); err != nil {
		return err
	}
	select {
	case <-t.goingAway: // no lock on the path of every call
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.goAway != nil {
			return t.goAway
		}
		return t.c.closeErr()
	default:
		return nil
	}
}

// Close closes the connection and waits until it is released: streams
// not yet ended get err. It returns the streams that were open.
func (t *Client) Close(err error) []*ClientStream {
	t.mu.Lock()
	streams := make([]*ClientStream, 0, len(t.streams))
	for _, s := range t.streams {
		streams = append(streams, s)
	}
	t.mu.Unlock()
	t.c.fail(err)
	t.c.waitReleased()
	return streams
}

// Stage writes m into the connection's heap now (see conn.stage).
func (t *Client) Stage(m *OutMsg) error { return t.c.stage(m) }

// AllocBlock allocates n bytes of the connection's own heap.
func (t *Client) AllocBlock(n int) (Block, []byte, bool) { return t.c.allocUserBlock(n) }

// Holds reports whether m lies in this connection's heap (AllocBlock).
func (t *Client) Holds(m *OutMsg) bool { return m != nil && m.inHeapOf(t.c) }

// readLoop is the background reader. It drains the ring whenever no call
// is polling for its own reply, spins for the spin period after the last
// frame, then blocks on the doorbell. While callers poll it parks, so that
// a burst of calls costs no goroutine hand-off at all.
func (t *Client) readLoop() {
	c := t.c
	defer c.endReader()
	idle := c.idler()
	for {
		if c.pollers.Load() > 0 {
			c.park()
			idle.Reset()
			continue
		}
		n, ok := c.drainOrCheck()
		if !ok {
			return
		}
		if n > 0 {
			c.busy(&idle)
		} else if idle.Spent(c.readerSpin()) {
			c.block()
			c.afterBlock(&idle)
		}
	}
}

// openStreams reports whether any call is in progress.
func (t *Client) openStreams() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.streams) > 0
}

// orphan records an ended stream whose caller gave up before reading all
// its messages, so that closing the connection frees them.
func (t *Client) orphan(s *ClientStream) {
	t.mu.Lock()
	closed := t.dropped
	if !closed && !s.orphaned.Load() {
		s.orphaned.Store(true)
		t.orphans = append(t.orphans, s)
	}
	t.mu.Unlock()
	if closed {
		s.dropQueued()
	}
}

// unorphan forgets s: its caller has finished with it after all.
func (t *Client) unorphan(s *ClientStream) {
	t.mu.Lock()
	if i := slices.Index(t.orphans, s); i >= 0 {
		t.orphans = slices.Delete(t.orphans, i, i+1)
	}
	t.mu.Unlock()
}

func (t *Client) onClose(err error) {
	t.mu.Lock()
	streams := t.streams
	t.streams = map[uint32]*ClientStream{}
	orphans := t.orphans
	t.orphans, t.dropped = nil, true
	if t.goAway == nil {
		close(t.goingAway)
	}
	t.mu.Unlock()
	for _, s := range orphans {
		s.dropQueued()
	}
	st := status.Convert(err)
	// The server's state (or its death) first, then its head: a server
	// that stored its closed state consumes nothing more (10.8).
	stopped := t.serverStopped()
	head, headOK := t.peerHead()
	headOK = headOK && stopped
	for _, s := range streams {
		if headOK && s.sentEnd != 0 && head < s.sentEnd {
			// The server released the ring only up to before this
			// request: it never read it (PROTOCOL.md 10.8).
			s.unprocessed.Store(true)
		}
		s.finish(st, nil)
	}
	t.events.Lost(t, err)
	t.events.Closed()
}

// serverStopped reports whether the server consumes nothing more from
// this connection: it stored its closed state (after which it reads no
// frame, PROTOCOL.md 10.8), or, where its pid is of this process's pid
// domain, its process is gone. A
// connection this side closed on its own (a liveness timeout) may still
// be read by a server that is only slow.
func (t *Client) serverStopped() bool {
	t.c.mapMu.RLock()
	closed := !t.c.unmapped && t.c.peer.State.Load() == pool.StateClosed
	t.c.mapMu.RUnlock()
	if closed {
		return true
	}
	return t.livePID != 0 && !pool.ProcessAlive(t.livePID)
}

// peerHead returns how far the server has consumed the client-to-server
// ring, if the segment is still mapped.
func (t *Client) peerHead() (uint64, bool) {
	t.c.mapMu.RLock()
	defer t.c.mapMu.RUnlock()
	if t.c.unmapped {
		return 0, false
	}
	return t.c.peer.Head.Load(), true
}

// onGoAway handles the server's GOAWAY: calls in progress go on; new ones
// need a new connection.
func (t *Client) onGoAway(reason string) {
	why := status.Errorf(codes.Unavailable, "notnets: server is going away: %s", reason)
	t.mu.Lock()
	first := t.goAway == nil && !t.dropped
	if first {
		t.goAway = why
		close(t.goingAway)
	}
	t.mu.Unlock()
	if first {
		t.events.Lost(t, why)
	}
}

// stream returns the open stream id, or nil; a frame for a stream that
// was never opened is a protocol violation (T2).
func (t *Client) stream(h frame.Header) (*ClientStream, error) {
	t.mu.Lock()
	s := t.streams[h.Stream]
	last := t.lastID
	t.mu.Unlock()
	if s == nil && h.Stream > last {
		return nil, errNeverOpened(h)
	}
	return s, nil // nil: the stream ended here first (cancelled); the frame is stale
}

// TakeSlot waits until the server's limit on open streams lets s open, or
// its context ends or the connection stops taking calls (ErrTryAnother).
func (t *Client) TakeSlot(s *ClientStream) error {
	if t.maxStreams == 0 {
		return nil
	}
	for {
		t.mu.Lock()
		if t.slotsUsed < t.maxStreams {
			t.slotsUsed++
			t.mu.Unlock()
			s.holdsSlot.Store(true)
			return nil
		}
		if t.slotFree == nil {
			t.slotFree = make(chan struct{})
		}
		free := t.slotFree
		t.mu.Unlock()
		select {
		case <-free:
		case <-s.ctx.Done():
			return contextStatus(s.ctx.Err())
		case <-t.c.done:
			return ErrTryAnother
		case <-t.goingAway:
			return ErrTryAnother
		}
	}
}

// releaseSlot gives back s's place under the server's limit, once: when
// its trailers or the server's CANCEL have been read, or after its own
// CANCEL has been written (so that the server reads that first).
func (t *Client) releaseSlot(s *ClientStream) {
	if !s.holdsSlot.CompareAndSwap(true, false) {
		return
	}
	t.mu.Lock()
	t.slotsUsed--
	free := t.slotFree
	t.slotFree = nil
	t.mu.Unlock()
	if free != nil {
		close(free)
	}
}

// register gives s the next stream id. The caller holds the write lock, so
// that ids reach the server in increasing order (T1).
func (t *Client) register(s *ClientStream) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.c.closeErr() != nil || t.goAway != nil {
		return ErrTryAnother
	}
	if t.lastID == 1<<32-1 {
		return status.Error(codes.Unavailable, "notnets: stream ids exhausted on this connection")
	}
	t.lastID++
	s.init(t.lastID, t.c, s.maxRecv, t.c.window)
	t.streams[s.id] = s
	return nil
}

func (t *Client) unregister(id uint32) {
	t.mu.Lock()
	delete(t.streams, id)
	t.mu.Unlock()
}

// NewStream writes s's HEADERS and, for a unary call, its request, in one
// publish. It reports whether anything went out; ErrTryAnother (nothing
// did) means the call is to start again on another connection. On any
// other error the stream has ended.
func (t *Client) NewStream(s *ClientStream, hdr *frame.RequestHeaders, msg *OutMsg) (bool, error) {
	ctx := s.ctx
	if err := t.c.lock(ctx); err != nil {
		return false, s.notStarted(err)
	}
	if err := t.register(s); err != nil {
		t.c.unlock()
		if err == ErrTryAnother {
			t.releaseSlot(s)
			msg.unstage()
			return false, err
		}
		return false, s.notStarted(err)
	}
	// The time left now, after any wait for a connection or a place.
	if dl, ok := ctx.Deadline(); ok {
		if hdr.Timeout = time.Until(dl); hdr.Timeout <= 0 {
			t.c.unlock()
			return false, s.notStarted(status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error()))
		}
	}
	if err := t.c.writeBlock(ctx, frame.TypeHeaders, 0, s.id, hdr); err != nil {
		t.c.unlock()
		if big, ok := err.(*HeaderLimitError); ok {
			// grpc-go's error for a header list over the limit the
			// server announced; nothing went out.
			err = status.Errorf(codes.Internal, "header list size to send violates the maximum size (%d bytes) set by server", big.Limit)
		}
		// The server never saw the stream: end it here without a CANCEL.
		return true, s.notStarted(err)
	}
	var err error
	if msg != nil {
		s.quota -= msg.size
		err = t.c.writeMsg(ctx, s.id, frame.FlagEndStream, msg)
		s.halfClosed = true
		s.sentEnd = t.c.out.Reserved()
	}
	t.c.unlock()
	if err != nil {
		s.Cancel(err)
		return true, err
	}
	if msg == nil {
		t.c.resumeReader() // a stream's messages may come while nobody polls
	}
	return true, nil
}

// errNeverOpened is the violation of a frame for a stream id above every
// stream opened (T2).
func errNeverOpened(h frame.Header) error {
	return frameError(h, "%v frame for stream %d, which was never opened (T2)", h.Type, h.Stream)
}
