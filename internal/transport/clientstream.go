package transport

import (
	"context"
	"io"
	"runtime"
	"sync/atomic"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
)

// ClientStream is the transport's side of one call on a client
// connection: the server's headers, messages and status as the reader
// goroutine receives them, and the frames the caller writes.
//
// Locks: the embedded Stream's mu guards header, gotHeader, trailer, st
// and endedHere as well as the receive queue.
type ClientStream struct {
	Stream
	t       *Client
	ctx     context.Context
	maxRecv int
	user    any // the gRPC face's call

	// Set by the reader (or a cancel), under mu.
	header    metadata.MD
	gotHeader bool
	trailer   metadata.MD
	st        *status.Status // the final status, once the stream is over
	endedHere bool           // st came from this side (deadline, cancel, local error)

	// sentEnd is the outgoing ring's position after the request of a
	// unary call (0 for other calls); unprocessed is set when the
	// connection closed before the server had consumed up to it: the
	// server never read the request, and the call may go again.
	sentEnd     uint64
	unprocessed atomic.Bool

	// Used only by the caller's goroutine(s).
	halfClosed bool
	orphaned   atomic.Bool // in t.orphans
	holdsSlot  atomic.Bool // counts against the server's stream limit
}

// NewClientStream returns a stream for the call user, with context ctx,
// on t, accepting messages of up to maxRecv bytes. It has no id until
// NewStream.
func NewClientStream(t ClientTransport, ctx context.Context, maxRecv int, user any) *ClientStream {
	return &ClientStream{t: t.(*Client), ctx: ctx, maxRecv: maxRecv, user: user}
}

// User returns the call the stream was made for.
func (s *ClientStream) User() any { return s.user }

// Context returns the call's context.
func (s *ClientStream) Context() context.Context { return s.ctx }

// SetContext replaces the call's context (the stats handlers' tags); only
// before NewStream.
func (s *ClientStream) SetContext(ctx context.Context) { s.ctx = ctx }

// finish records the stream's final status, unless it already has one,
// and removes it from the connection. Messages already queued stay
// readable.
func (s *ClientStream) finish(st *status.Status, trailer metadata.MD) bool {
	s.mu.Lock()
	if s.st != nil {
		s.mu.Unlock()
		return false
	}
	s.st, s.trailer, s.closed = st, trailer, true
	s.mu.Unlock()
	s.t.unregister(s.id)
	s.signal()
	return true
}

// notStarted ends a stream the server never saw, with err.
func (s *ClientStream) notStarted(err error) error {
	s.finish(status.Convert(err), nil)
	s.t.releaseSlot(s)
	return err
}

// NotStarted ends a stream that never reached NewStream with err.
func (s *ClientStream) NotStarted(err error) error { return s.notStarted(err) }

// Cancel ends the stream locally with err's status and tells the server.
// It reports whether it ended the stream: if the stream had already ended,
// what it received stands and stays readable, as in grpc-go (should the
// caller never read it, the connection frees it when it closes).
func (s *ClientStream) Cancel(err error) bool {
	st := status.Convert(err)
	if err == context.Canceled || err == context.DeadlineExceeded {
		st = status.FromContextError(err)
	}
	if !s.finish(st, nil) {
		s.mu.Lock()
		unread := len(s.msgs) > 0
		s.mu.Unlock()
		if unread {
			s.t.orphan(s)
		}
		return false
	}
	s.mu.Lock()
	// Messages not yet read are dropped, and so are any still on their
	// way: the caller gets the status, not a stream with a gap in it.
	s.endedHere, s.discard = true, true
	s.freeAll()
	s.mu.Unlock()
	c := s.t.c
	if c.lock(context.Background()) == nil {
		msg := st.Message()
		if len(msg) > 1024 {
			msg = msg[:1024] // the server only needs to know the call ended
		}
		c.writeFrame(context.Background(), frame.TypeCancel, 0, s.id, 0, &frame.Status{Code: uint32(st.Code()), Message: msg})
		c.unlock()
	}
	s.t.releaseSlot(s)
	return true
}

// Settle frees the messages nobody will read and forgets the stream as an
// orphan: the call is over for its caller.
func (s *ClientStream) Settle() {
	if s.orphaned.Load() {
		s.t.unorphan(s)
	}
	s.mu.Lock()
	s.freeAll()
	s.mu.Unlock()
}

// Result returns the stream's headers, trailers and final status (nil
// while it runs).
func (s *ClientStream) Result() (header, trailer metadata.MD, st *status.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.header, s.trailer, s.st
}

// EndedHere reports whether the stream's status came from this side (its
// deadline, a cancel, a local error), not from the server or the
// connection.
func (s *ClientStream) EndedHere() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endedHere
}

// Unprocessed reports whether the stream is a unary call whose connection
// closed before the server read its request.
func (s *ClientStream) Unprocessed() bool { return s.unprocessed.Load() }

// WaitStatus waits until the stream has its final status.
func (s *ClientStream) WaitStatus() error { return s.wait(func() bool { return s.st != nil }) }

// WaitHeader waits until the server's headers, or the status, arrive.
func (s *ClientStream) WaitHeader() error {
	return s.wait(func() bool { return s.gotHeader || s.st != nil })
}

// WaitMsg waits until a message is queued or the stream has ended.
func (s *ClientStream) WaitMsg() error {
	return s.wait(func() bool { return len(s.msgs) > 0 || s.st != nil })
}

// Header returns a copy of the server's headers and true once they have
// come, or nil and the status.
func (s *ClientStream) Header() (metadata.MD, bool, *status.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gotHeader {
		return s.header.Copy(), true, nil
	}
	return nil, false, s.st
}

// NextMsg removes the first queued message. Without one it returns false
// and the status (nil while the stream runs).
func (s *ClientStream) NextMsg() (InMsg, bool, *status.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.msgs) == 0 {
		return InMsg{}, false, s.st
	}
	return s.takeMsg(), true, nil
}

// TakeReply takes the one reply of a unary call that has ended: the first
// queued message (if any), how many were queued, and the status, under one
// lock.
func (s *ClientStream) TakeReply() (InMsg, int, *status.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.msgs)
	if n == 0 {
		return InMsg{}, 0, s.st
	}
	return s.takeMsg(), n, s.st
}

// Queued returns how many messages are queued.
func (s *ClientStream) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// wait blocks until ready (called with s.mu held) holds or the call's
// context ends. For the spin period it polls the ring itself, so that the
// reply is read by the goroutine that waits for it; then it leaves reading
// to the background reader and parks. Several callers may poll at once;
// they then yield to each other every few polls (Gosched is cheap when no
// processor is idle), so that none holds a processor another one's answered
// caller needs.
func (s *ClientStream) wait(ready func() bool) error {
	if s.ready(ready) {
		return nil
	}
	c := s.c
	spinFor := c.callerSpin()
	if spinFor <= 0 {
		return s.await(s.ctx, ready) // IdleParkOnly: the reader hands it over
	}
	c.pollers.Add(1)
	done := false
	idle := c.idler()
	for polls := 1; c.poll(); polls++ {
		if done = s.ready(ready); done || s.ctx.Err() != nil || idle.Spent(spinFor) {
			break
		}
		if polls%crowdedYield == 0 && c.pollers.Load() > 1 {
			runtime.Gosched()
		}
	}
	if c.pollers.Add(-1) == 0 && (!done || s.t.openStreams()) {
		c.resumeReader()
	}
	if done {
		return nil
	}
	return s.await(s.ctx, ready)
}

// crowdedYield is how many polls a caller makes between yields while other
// callers poll too.
const crowdedYield = 16

func (s *ClientStream) ready(ready func() bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ready()
}

// CloseSend writes the client's half-close, once. Errors are left for the
// receive side to report, as in grpc-go.
func (s *ClientStream) CloseSend() {
	if s.halfClosed {
		return
	}
	s.halfClosed = true
	c := s.t.c
	if err := c.lock(s.ctx); err != nil {
		return
	}
	c.writeFrame(s.ctx, frame.TypeHalfClose, 0, s.id, 0, nil)
	c.unlock()
}

// HalfClosed reports whether the client has half-closed the stream.
func (s *ClientStream) HalfClosed() bool { return s.halfClosed }

// WaitWindow waits until the server's window for the stream is open (or
// the stream has ended: io.EOF) and charges msg to it.
func (s *ClientStream) WaitWindow(msg *OutMsg) error {
	return s.takeQuota(s.ctx, msg.size, func() error {
		if s.st != nil {
			return io.EOF
		}
		return nil
	})
}

// Send writes msg on the stream (after WaitWindow).
func (s *ClientStream) Send(msg *OutMsg) error {
	c := s.t.c
	if err := c.stage(msg); err != nil {
		return err
	}
	if err := c.lock(s.ctx); err != nil {
		return err
	}
	err := c.writeMsg(s.ctx, s.id, 0, msg)
	c.unlock()
	return err
}

// Consumed returns n bytes of window to the server once enough have been
// read.
func (s *ClientStream) Consumed(n int) { s.consumed(s.ctx, n) }

// ConnClosed reports whether the stream's connection has closed.
func (s *ClientStream) ConnClosed() bool { return s.t.c.closeErr() != nil }

// onHeaders handles the server's HEADERS frame.
func (s *ClientStream) onHeaders(h frame.Header, p []byte) error {
	var rh frame.ResponseHeaders
	if err := rh.Decode(p); err != nil {
		return err
	}
	s.mu.Lock()
	dup := s.gotHeader
	s.header, s.gotHeader = rh.MD, true
	s.mu.Unlock()
	if dup {
		return frameError(h, "second HEADERS frame on stream %d", h.Stream)
	}
	if f := s.t.events.InHeader; f != nil {
		f(s, rh.MD.Copy(), len(p))
	}
	s.signal()
	return nil
}

// onMessage handles a MESSAGE or MESSAGE_REF frame from the server.
func (s *ClientStream) onMessage(h frame.Header, p []byte) error {
	s.mu.Lock()
	first := !s.gotHeader
	s.gotHeader = true // a message without HEADERS before it has empty headers
	s.mu.Unlock()
	if f := s.t.events.InHeader; f != nil && first {
		f(s, metadata.MD{}, -1)
	}
	return s.onData(h, p)
}

// onEnd handles the server's TRAILERS or CANCEL frame.
func (s *ClientStream) onEnd(h frame.Header, p []byte) error {
	var fs frame.Status
	if err := fs.Decode(p); err != nil {
		return err
	}
	st, err := statusFromFrame(&fs)
	if err != nil {
		return err
	}
	if f := s.t.events.InTrailer; f != nil && h.Type == frame.TypeTrailers {
		f(s, fs.MD.Copy(), len(p))
	}
	if h.Type == frame.TypeTrailers && h.Flags&frame.FlagRefused != 0 && s.sentEnd != 0 {
		s.unprocessed.Store(true) // the server did not run it (10.8)
	}
	s.finish(st, fs.MD)
	s.t.releaseSlot(s)
	return nil
}
