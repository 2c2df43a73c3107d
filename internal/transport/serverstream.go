package transport

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
)

// ServerStream is the transport's side of one call being served: the
// client's messages as the reader receives them, and the headers,
// messages and status the handler writes.
//
// Locks: hmu guards the response headers, trailers and finished, and is
// held across a write so that they go out in order; it is taken before
// the write lock. The embedded Stream's mu guards the receive queue.
type ServerStream struct {
	Stream
	t    *Server
	call ServerCall

	started bool // handed to a handler; reader only
	// hasDeadline: the client sent a timeout. Read by the reader, which
	// must not read the call's context.
	hasDeadline bool
	closedOut   atomic.Bool // counted out of t.openStreams (closeStream)
	// trailersOut: the server wrote the stream's TRAILERS; counted: its
	// end is counted for channelz (countEnd).
	trailersOut, counted atomic.Bool
	aborted              atomic.Bool // cancelled: nothing more is sent
	// queued and running say in which of the instance's published load
	// words (Load.Queued, Load.InFlight) the stream is counted; each is
	// cleared by whoever counts the stream out, once (load.go).
	queued, running atomic.Bool

	hmu        sync.Mutex
	header     metadata.MD
	headerSent bool
	trailer    metadata.MD
	finished   bool
}

// Sent records what a write put on the ring, for stats handlers, which
// run after the locks are released.
type Sent struct {
	Header  metadata.MD // the headers, if they went out now
	Msg     *OutMsg
	Trailer *frame.Status
}

var okStatus = status.New(codes.OK, "")

// run runs the call and removes the stream when it returns.
func (st *ServerStream) run() {
	defer st.t.remove(st)
	st.t.loadRunning(st)
	st.call.Run()
}

// Finish writes any unsent headers, msg if not nil, and the trailers with
// status s, once. ctx is the call's: when it is over the status still goes
// out while the connection lives.
func (st *ServerStream) Finish(ctx context.Context, s *status.Status, msg *OutMsg, out *Sent) error {
	st.hmu.Lock()
	defer st.hmu.Unlock()
	if st.finished || st.aborted.Load() {
		return nil
	}
	st.finished = true
	return st.writeEnd(ctx, s, msg, out)
}

// writeEnd is Finish's write; the caller holds hmu.
func (st *ServerStream) writeEnd(ctx context.Context, s *status.Status, msg *OutMsg, out *Sent) error {
	fs, err := statusToFrame(s)
	if err != nil {
		fs = frame.Status{Code: uint32(codes.Internal), Message: "notnets: cannot encode status details: " + err.Error()}
	}
	fs.MD = st.trailer
	c := st.c
	if err := c.stage(msg); err != nil {
		msg, fs = nil, frame.Status{Code: uint32(status.Code(err)), Message: status.Convert(err).Message()}
	}
	if err := c.lock(ctx); err != nil {
		if ctx.Err() == nil {
			return err
		}
		// The handler's context is over (deadline or cancel); the client
		// still deserves the status if the connection lives.
		if err := c.lock(context.Background()); err != nil {
			return err
		}
	}
	defer c.unlock()
	wctx := context.Background()
	if !st.headerSent && (len(st.header) > 0 || msg != nil) {
		st.headerSent = true
		out.Header = st.header
		if out.Header == nil {
			out.Header = metadata.MD{}
		}
		if len(st.header) > 0 {
			if err := c.writeBlock(wctx, frame.TypeHeaders, 0, st.id, &frame.ResponseHeaders{MD: st.header}); err != nil {
				big, ok := err.(*HeaderLimitError)
				if !ok {
					return err
				}
				// As grpc-go's server resets such a stream: no headers, no
				// reply, an Internal status.
				msg, fs, out.Header = nil, frame.Status{Code: uint32(codes.Internal), Message: big.tooLarge("headers")}, nil
			}
		}
	}
	if msg != nil {
		if err := c.writeMsg(wctx, st.id, 0, msg); err != nil {
			fs = frame.Status{Code: uint32(status.Code(err)), Message: status.Convert(err).Message()}
		} else {
			out.Msg = msg
		}
	}
	err = c.writeBlock(wctx, frame.TypeTrailers, 0, st.id, &fs)
	// A type assertion, not errors.As, whose target would escape: an
	// allocation per call (writeBlock returns the error unwrapped).
	if big, ok := err.(*HeaderLimitError); ok {
		// The client still gets a status, without the trailers or the
		// details that made it too large.
		fs = frame.Status{Code: uint32(codes.Internal), Message: big.tooLarge("trailers")}
		err = c.writeFrame(wctx, frame.TypeTrailers, 0, st.id, 0, &fs)
	}
	if err == nil {
		out.Trailer = &fs
		st.endWritten() // before unlock publishes the trailers
	}
	return err
}

// endWritten records that the stream's TRAILERS are written: it is
// counted out of the open streams, and its end counted for channelz.
func (st *ServerStream) endWritten() {
	st.closeStream()
	if st.t.cfg.Streams != nil {
		st.trailersOut.Store(true)
		st.t.countEnd(st)
	}
}

// closeStream counts the stream out of the connection's open streams,
// once: when its trailers are written (before they are published), or
// when the client's CANCEL is read. The client counts it out when it reads
// the trailers or after it writes the CANCEL, so the server never counts
// more streams than the client did when it opened one (T11).
func (st *ServerStream) closeStream() {
	if st.closedOut.CompareAndSwap(false, true) {
		st.t.openStreams.Add(-1)
	}
}

// cancel ends the call from the client's side or the connection's: the
// handler's context is cancelled and its receives stop.
func (st *ServerStream) cancel(err error) {
	// aborted first, so that a handler the cancellation wakes sends
	// nothing; then the context, so that a send holding hmu while it
	// waits for the write lock or ring space gives up, and stop does not
	// hold up the reader.
	st.aborted.Store(true)
	st.call.Cancel(err)
	st.stop()
}

// stop marks the stream over for sending and receiving.
func (st *ServerStream) stop() {
	st.hmu.Lock()
	st.finished = true // nothing more is sent on a cancelled stream
	st.hmu.Unlock()
	st.halfClose()
}

func (st *ServerStream) halfClose() {
	st.mu.Lock()
	st.closed = true
	st.mu.Unlock()
	st.signal()
}

// errStreamDone is grpc-go's error for headers set or sent too late.
var errStreamDone = status.Error(codes.Internal, "transport: the stream is done or WriteHeader was already called")

// SetHeader merges md into the response headers sent with the first
// message, by SendHeader, or with the status.
func (st *ServerStream) SetHeader(md metadata.MD) error {
	st.hmu.Lock()
	defer st.hmu.Unlock()
	if st.headerSent || st.finished {
		return errStreamDone
	}
	st.header = metadata.Join(st.header, md)
	return nil
}

// SendHeader sends the response headers, merged with md, now, and
// returns what went out.
func (st *ServerStream) SendHeader(ctx context.Context, md metadata.MD) (metadata.MD, error) {
	st.hmu.Lock()
	defer st.hmu.Unlock()
	if st.headerSent || st.finished {
		return nil, errStreamDone
	}
	st.header = metadata.Join(st.header, md)
	st.headerSent = true
	err := st.c.lock(ctx)
	if err == nil {
		err = st.writeHeaders(ctx)
		st.c.unlock()
	}
	return st.header, err
}

// errHeaderListSize is grpc-go's error for response headers over the
// client's limit.
var errHeaderListSize = status.Error(codes.Internal, "transport: trying to send header list size larger than the limit set by peer")

// writeHeaders writes the response headers. Headers over the client's
// limit end the stream as grpc-go's server resets it: the client gets
// TRAILERS with Internal saying why, and the handler grpc-go's error.
// The caller holds hmu and the write lock.
func (st *ServerStream) writeHeaders(ctx context.Context) error {
	err := st.c.writeBlock(ctx, frame.TypeHeaders, 0, st.id, &frame.ResponseHeaders{MD: st.header})
	big, ok := err.(*HeaderLimitError)
	if !ok {
		return err
	}
	st.finished = true
	fs := frame.Status{Code: uint32(codes.Internal), Message: big.tooLarge("headers")}
	if st.c.writeFrame(context.Background(), frame.TypeTrailers, 0, st.id, 0, &fs) == nil {
		st.endWritten() // before unlock publishes the trailers
	}
	return errHeaderListSize
}

// errSendCompress is grpc-go's error for a send compressor set too late.
var errSendCompress = errors.New("transport: set send compressor called after headers sent or stream done")

// SetSendCompress accepts the identity compressor (the only one notnets
// has) while the response headers may still be sent, as grpc-go's
// stream does; it stores nothing.
func (st *ServerStream) SetSendCompress() error {
	st.hmu.Lock()
	defer st.hmu.Unlock()
	if st.headerSent || st.finished {
		return errSendCompress
	}
	return nil
}

// SetTrailer merges md into the trailers sent with the status.
func (st *ServerStream) SetTrailer(md metadata.MD) error {
	st.hmu.Lock()
	defer st.hmu.Unlock()
	if st.finished {
		return status.Error(codes.Internal, "transport: the stream is done")
	}
	st.trailer = metadata.Join(st.trailer, md)
	return nil
}

// WaitWindow waits until the client's window for the stream is open, or
// ctx ends, and charges msg to it.
func (st *ServerStream) WaitWindow(ctx context.Context, msg *OutMsg) error {
	if err := st.takeQuota(ctx, msg.size, func() error { return ctx.Err() }); err != nil {
		return contextStatus(ctx.Err())
	}
	return st.c.stage(msg)
}

// Send writes a response message, after the headers if not yet sent.
func (st *ServerStream) Send(ctx context.Context, msg *OutMsg, out *Sent) error {
	st.hmu.Lock()
	defer st.hmu.Unlock()
	if st.finished || st.aborted.Load() {
		return status.Error(codes.Internal, "transport: the stream is done")
	}
	c := st.c
	if err := c.lock(ctx); err != nil {
		return err
	}
	defer c.unlock()
	if !st.headerSent {
		st.headerSent = true
		if len(st.header) > 0 {
			if err := st.writeHeaders(ctx); err != nil {
				return err
			}
		}
		out.Header = st.header
		if out.Header == nil {
			out.Header = metadata.MD{}
		}
	}
	if err := c.writeMsg(ctx, st.id, 0, msg); err != nil {
		return err
	}
	out.Msg = msg
	return nil
}

// WaitMsg waits until a request message is queued, the client has sent
// its last, or ctx ends.
func (st *ServerStream) WaitMsg(ctx context.Context) error {
	return st.await(ctx, func() bool { return len(st.msgs) > 0 || st.closed })
}

// NextMsg removes the first queued request message, if any.
func (st *ServerStream) NextMsg() (InMsg, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.msgs) == 0 {
		return InMsg{}, false
	}
	return st.takeMsg(), true
}

// Consumed returns n bytes of window to the client once enough have been
// read.
func (st *ServerStream) Consumed(ctx context.Context, n int) { st.consumed(ctx, n) }

// AllocBlock allocates n bytes of the connection's own heap, for a reply
// built in place.
func (st *ServerStream) AllocBlock(n int) (Block, []byte, bool) { return st.c.allocUserBlock(n) }
