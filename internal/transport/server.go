package transport

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
)

// ServerHandler is the gRPC face of a server connection: it turns new
// streams into calls and learns when the connection ends.
type ServerHandler interface {
	// NewCall is called on the reader goroutine for each new stream, with
	// its request headers (wireLen bytes on the ring). It must not block.
	NewCall(st *ServerStream, rh *frame.RequestHeaders, wireLen int) ServerCall
	// Closed is called once when the connection has closed, after its
	// calls were cancelled.
	Closed(t *Server, err error)
	// StreamEnded is called when a stream is removed; idle says the
	// connection has no stream left.
	StreamEnded(t *Server, idle bool)
}

// ServerCall is what the gRPC face runs for one stream.
type ServerCall interface {
	// Unary reports whether the call runs only once its whole request has
	// arrived (a unary method); other calls run at once.
	Unary() bool
	// Run serves the call, on a worker or on the reading goroutine; the
	// transport removes the stream when it returns.
	Run()
	// Cancel cancels the call's context with err (the client cancelled,
	// or the connection closed); nil only releases the context.
	Cancel(err error)
	// NeverRan reports a call that ended with err before it ran.
	NeverRan(err error)
}

// Server is the server's side of one connection: the reading role, the
// streams the client opened, and their calls.
//
// Locks: mu guards streams and lastID; it is taken after the write lock
// and a stream's locks are never taken under it.
type Server struct {
	c       *conn
	cfg     ServerConfig
	handler ServerHandler
	workers *Workers
	// lis is the listener the connection came through, which keeps its
	// mapping alive; load is its published load, which the streams count
	// themselves in (load.go), or nil.
	lis  *Listener
	load *pool.Load
	// goneAway is set when GOAWAY is sent: streams opened after it are
	// refused (refuse), so that GracefulStop never closes a connection
	// under a call it took.
	goneAway atomic.Bool
	// closedStreams is set, under mu, by onClose once it has taken the
	// streams to end: open registers none after that.
	closedStreams bool
	peer          Identity
	// livePID is the client's pid where this process can look it up,
	// else 0 (Accepted.livePID).
	livePID int

	mu      sync.Mutex
	streams map[uint32]*ServerStream
	lastID  uint32

	// ready holds the unary calls whose request is complete, to run from
	// readyHead on; fastInline says whether the last handler that ran
	// inline was fast (runReady). The reading role's alone.
	ready      []*ServerStream
	readyHead  int
	fastInline bool

	// openStreams counts the streams open as the client counts them: from
	// HEADERS until the server writes TRAILERS or reads a CANCEL
	// (MaxConcurrentStreams, T11). A handler may run on after that.
	openStreams atomic.Int64

	// inlineSince is when the handler running on the reading goroutine
	// started (monoNow), or 0.
	inlineSince atomic.Int64
}

// NewServer makes the server's side of the accepted connection a. Serve
// starts it. In a cross-host pool the connection polls only, whatever
// cfg.Wait says: the listener, which read the pool's marker, decides.
func NewServer(a *Accepted, cfg ServerConfig, workers *Workers, h ServerHandler) *Server {
	cfg.Wait = a.wait(cfg.Wait)
	t := &Server{
		cfg:     cfg,
		handler: h,
		workers: workers,
		peer:    a.Peer(),
		livePID: a.livePID(),
		streams: make(map[uint32]*ServerStream),
		lis:     a.lis,
	}
	if a.lis != nil {
		t.load = &a.lis.lay.Load
	}
	t.c = newConn(a.seg, a.lay.Server, a.lay.Client, a.lay.S2C, a.lay.C2S, cfg.Wait)
	// The client allocated the ring (PROTOCOL.md 3.4), unless it is
	// hostile: allocate it as it is written, so that a client can make
	// the server allocate no more than the server sends.
	s2c := a.lay.S2C
	t.c.out.SetPrepare(func(off, n int) error { return a.seg.ReserveBytes(s2c[off : off+n]) }, 0)
	t.c.initHeaps(a.lay.S2CHeap, a.lay.S2CReturns, a.lay.C2SHeap, a.lay.C2SReturns, cfg.Wait.CheckViews)
	t.c.onFrame = t.onFrame
	t.c.onClose = t.onClose
	t.c.window = cfg.Window
	t.c.headerLimit = headerLimit(cfg.MaxHeader)
	t.c.peerHeaderLimit = headerLimit(a.lay.Info.MaxHeader)
	a.lay.Server.MaxStreams.Store(cfg.MaxStreams) // before the state: the client reads them after
	a.lay.Server.MaxHeader.Store(cfg.MaxHeader)
	a.lay.Server.State.Store(pool.StateOpen) // the client may start calls
	a.settled()
	return t
}

// Peer returns the client's identity.
func (t *Server) Peer() Identity { return t.peer }

// Serve starts reading the connection and watching its client's liveness.
func (t *Server) Serve() {
	t.workers.add(t)
	t.workers.submit(t.readRole)
	watch(t.c, t.cfg.Liveness, t.livePID)
}

// Refuse closes a connection that will never be served with err.
func (t *Server) Refuse(err error) {
	t.c.fail(err)
	t.c.endReader() // no reader ever ran: release may go on
}

// Close closes the connection with err; WaitClosed waits until it is
// released.
func (t *Server) Close(err error) { t.c.fail(err) }

// WaitClosed waits until nothing reads the connection any more.
func (t *Server) WaitClosed() { t.c.waitReleased() }

// GoAway tells the client to start no new calls.
func (t *Server) GoAway(reason string) {
	t.goneAway.Store(true) // streams opened from now on are refused
	if t.c.lock(context.Background()) != nil {
		return
	}
	t.c.writeFrame(context.Background(), frame.TypeGoAway, 0, 0, 0, &frame.GoAway{Reason: reason})
	t.c.unlock()
}

// Active returns how many streams are open.
func (t *Server) Active() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.streams)
}

func (t *Server) onClose(err error) {
	// A handler running inline holds the reading role until it returns,
	// which may be never: take the role from it, so that the connection
	// is released (the handler then finds it closed).
	if s := t.inlineSince.Load(); s != 0 && t.inlineSince.CompareAndSwap(s, 0) {
		t.c.endReader()
	}
	t.mu.Lock()
	streams := make([]*ServerStream, 0, len(t.streams))
	for _, st := range t.streams {
		streams = append(streams, st)
	}
	t.closedStreams = true // open adds no stream after this snapshot
	t.mu.Unlock()
	for _, st := range streams {
		t.loadDone(st)
		t.countEnd(st)
		st.cancel(err)
		st.dropQueued() // a stream that never ran is never removed
		st.call.NeverRan(err)
	}
	t.workers.remove(t)
	t.handler.Closed(t, err)
}

// readRole drains the ring, and hands each unary call whose request is
// complete to a handler. The last such call of a batch runs right here, on
// the goroutine that read it: the request reaches its handler with no
// hand-off between goroutines and no other thread woken on the way (waking
// one costs a futex call and a migration between cores, measured as a
// larger p99 on the development machine). If the handler runs long, the
// monitor passes the reading role to a worker, so that other calls and
// cancellations on the connection are still read.
func (t *Server) readRole() {
	c := t.c
	idle := c.idler()
	for {
		// First the calls still queued: a goroutine the monitor handed the
		// reading role to starts with those its predecessor left.
		if !t.runReady() {
			return // the monitor handed the reading role to another goroutine
		}
		n, ok := c.drainOrCheck()
		if !ok {
			c.endReader()
			return
		}
		if n == 0 {
			if idle.Spent(c.readerSpin()) {
				c.block()
				c.afterBlock(&idle)
			}
			continue
		}
		c.busy(&idle)
	}
}

// fastHandler is how long a unary handler may run inline for the next
// call of a batch to run inline after it. Waking a worker for each call
// costs more than a fast handler: 16 callers on one connection made 60,000
// calls/s at 31 us of CPU each with workers, 95,000-108,000 at 17-20 us
// inline (notnets bench -c 16, two alternated runs each). Slower handlers
// run in parallel on workers.
const fastHandler = 20 * time.Microsecond

// runReady runs the unary calls whose requests are complete, in order:
// inline one after another while handlers are fast, else all but the
// last on workers and the last inline. It reports false if the monitor
// took the reading role meanwhile; the calls still queued are then the
// new reading goroutine's to run.
func (t *Server) runReady() bool {
	for t.readyHead < len(t.ready) {
		st := t.ready[t.readyHead]
		t.ready[t.readyHead] = nil
		t.readyHead++
		if t.readyHead < len(t.ready) && !t.fastInline {
			t.workers.submit(st.run)
			continue
		}
		start := monoNow()
		if !t.runInline(st) {
			return false
		}
		t.fastInline = monoNow()-start < int64(fastHandler)
	}
	t.ready, t.readyHead = t.ready[:0], 0
	return true
}

// readRoleAfterHandoff takes the reading role from a goroutine whose inline
// handler ran too long: the calls queued behind it then go to workers
// (that handler never recorded that it was slow).
func (t *Server) readRoleAfterHandoff() {
	t.fastInline = false
	t.readRole()
}

// runInline runs st on the reading goroutine and reports whether this
// goroutine still holds the reading role afterwards.
func (t *Server) runInline(st *ServerStream) bool {
	start := monoNow()
	t.inlineSince.Store(start)
	t.workers.watchInline()
	st.run()
	return t.inlineSince.CompareAndSwap(start, 0)
}

// stream returns the active stream of h, or nil; a frame for a stream
// that was never opened is a violation (T2).
func (t *Server) stream(h frame.Header) (*ServerStream, error) {
	t.mu.Lock()
	st := t.streams[h.Stream]
	last := t.lastID
	t.mu.Unlock()
	if st == nil && h.Stream > last {
		return nil, errNeverOpened(h)
	}
	return st, nil // nil: the handler has already finished
}

// onMessage handles a MESSAGE or MESSAGE_REF frame of an active stream.
func (t *Server) onMessage(st *ServerStream, h frame.Header, p []byte) error {
	if err := st.onData(h, p); err != nil {
		return err
	}
	if h.Flags&frame.FlagEndStream != 0 {
		t.onHalfClose(st)
	}
	return nil
}

// onHalfClose handles the end of the client's messages.
func (t *Server) onHalfClose(st *ServerStream) {
	st.halfClose()
	t.requestDone(st)
}

// onCancel handles the client's CANCEL of an active stream.
func (t *Server) onCancel(st *ServerStream, _ frame.Header, p []byte) error {
	var fs frame.Status
	if err := fs.Decode(p); err != nil {
		return err
	}
	st.closeStream()
	t.countEnd(st) // ended by the client: failed, as grpc-go counts a reset stream
	if st.hasDeadline && codes.Code(fs.Code) == codes.DeadlineExceeded {
		// The handler's own deadline, set from the same timeout, ends
		// its context as DeadlineExceeded at the same moment.
		st.stop()
		if !st.started {
			t.remove(st)
			st.call.Cancel(nil) // it never runs: release its deadline's timer
			st.call.NeverRan(status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error()))
		}
		return nil
	}
	err := status.Error(codes.Code(fs.Code), fs.Message)
	st.cancel(err)
	if !st.started {
		t.remove(st) // a unary call cancelled before its request was whole
		st.call.NeverRan(err)
	}
	return nil
}

// open starts a stream for a HEADERS frame and runs its call (T1, T11).
func (t *Server) open(h frame.Header, p []byte) error {
	var rh frame.RequestHeaders
	if err := rh.Decode(p); err != nil {
		return err
	}
	st := &ServerStream{t: t, hasDeadline: rh.Timeout > 0}
	st.init(h.Stream, t.c, t.cfg.MaxRecv, t.cfg.Window)
	if h.Flags&frame.FlagEndStream != 0 {
		st.closed = true
	}
	// Decided before the stream is in the map, where onClose may read it.
	st.call = t.handler.NewCall(st, &rh, len(p))
	t.mu.Lock()
	if h.Stream <= t.lastID {
		t.mu.Unlock()
		st.call.Cancel(nil)
		return fmt.Errorf("new stream %d is not above the last stream %d (T1)", h.Stream, t.lastID)
	}
	if t.closedStreams {
		t.mu.Unlock()
		st.call.Cancel(nil)
		return errLeaveUnread // closed: the request stays unread (10.8)
	}
	t.lastID = h.Stream
	if t.goneAway.Load() {
		t.mu.Unlock()
		st.call.Cancel(nil)
		return t.refuse(h.Stream)
	}
	t.streams[h.Stream] = st
	t.loadQueued(st) // under mu: onClose's snapshot sees it counted
	t.mu.Unlock()
	if c := t.cfg.Streams; c != nil {
		c.Start()
	}
	if limit := t.cfg.MaxStreams; limit > 0 && t.openStreams.Load() >= int64(limit) {
		st.call.Cancel(nil)
		return fmt.Errorf("stream %d opened beyond the limit of %d concurrent streams (T11)", h.Stream, limit)
	}
	t.openStreams.Add(1)
	switch {
	case !st.call.Unary():
		st.started = true
		t.workers.submit(st.run)
	case st.closed:
		// A unary call whose HEADERS carried END_STREAM: its request is
		// empty and complete. It runs after drain has released the
		// record, as every unary call does, so that a request that was
		// not consumed never ran (10.8).
		t.requestDone(st)
	}
	return nil
}

// refuse ends a stream opened after GOAWAY without running it: TRAILERS
// with FlagRefused tell the client it may send the call again elsewhere
// (PROTOCOL.md 10.8). What else the client sent on the stream is for a
// stream already ended, and ignored (T2).
func (t *Server) refuse(id uint32) error {
	if t.c.lock(context.Background()) != nil {
		// Closing: the frame stays unconsumed, so the client sees that
		// the request was never read (10.8).
		return errLeaveUnread
	}
	defer t.c.unlock()
	fs := frame.Status{Code: uint32(codes.Unavailable), Message: "notnets: stream refused: the server is going away"}
	t.c.writeFrame(context.Background(), frame.TypeTrailers, frame.FlagRefused, id, 0, &fs)
	return nil
}

// requestDone queues a unary call whose request has fully arrived to run.
func (t *Server) requestDone(st *ServerStream) {
	if !st.started {
		st.started = true
		t.ready = append(t.ready, st)
	}
}

// countEnd counts st's end for channelz, once: succeeded if the server
// wrote its TRAILERS, failed otherwise (the stream ended without the
// server's end of stream: cancelled, or its connection closed), as
// grpc-go counts a socket's streams. It runs when the TRAILERS are
// written (before they are published), when a CANCEL is read and when the
// stream goes, so that a client that has read a stream's end finds it
// counted.
func (t *Server) countEnd(st *ServerStream) {
	if c := t.cfg.Streams; c != nil && st.counted.CompareAndSwap(false, true) {
		c.End(st.trailersOut.Load())
	}
}

// remove forgets st once its call is over.
func (t *Server) remove(st *ServerStream) {
	t.loadDone(st)
	t.countEnd(st)
	st.dropQueued()
	t.mu.Lock()
	delete(t.streams, st.id)
	idle := len(t.streams) == 0
	t.mu.Unlock()
	t.handler.StreamEnded(t, idle)
}
