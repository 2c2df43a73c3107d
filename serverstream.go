package notnets

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
)

// serverStream is one call being served. It is the grpc.ServerStream that
// streaming handlers get, and the grpc.ServerTransportStream behind
// grpc.SetHeader, grpc.SendHeader and grpc.SetTrailer in unary handlers.
type serverStream struct {
	streamBase
	sc        *serverConn
	ctx       context.Context
	cancelCtx context.CancelCauseFunc
	method    string
	codec     encoding.CodecV2
	info      *serviceInfo
	md        *grpc.MethodDesc // set for a unary call
	sd        *grpc.StreamDesc // set for a streaming call
	err       error            // why the call cannot run: unknown method, no codec
	started   bool             // handed to a handler; reader only

	hmu        sync.Mutex // guards the fields below
	header     metadata.MD
	headerSent bool
	trailer    metadata.MD
	finished   bool

	closedOut  atomic.Bool // counted out of sc.openStreams (closeStream)
	statsBegun atomic.Bool // stats begun (startStats: by run or neverRan)
	reqMD      metadata.MD // the request headers, for InHeader
	reqLen     int
	// hasDeadline: the client sent a timeout. Read by the reader, which
	// must not read ctx (run replaces it with the stats handlers' one).
	hasDeadline bool
	aborted     atomic.Bool // cancelled: nothing more is sent
}

var (
	_ grpc.ServerStream          = (*serverStream)(nil)
	_ grpc.ServerTransportStream = transportStream{}
)

// transportStream is the stream as grpc.ServerTransportStream, whose
// SetTrailer returns an error where grpc.ServerStream's does not.
type transportStream struct{ *serverStream }

func (t transportStream) SetTrailer(md metadata.MD) error { return t.setTrailer(md) }

var okStatus = status.New(codes.OK, "")

// newServerContext builds a handler's context from the connection's (which
// carries the peer): incoming metadata, the transport stream, and the
// client's deadline.
func newServerContext(base context.Context, rh *frame.RequestHeaders, st *serverStream) (context.Context, context.CancelCauseFunc) {
	ctx := metadata.NewIncomingContext(base, rh.MD)
	ctx = grpc.NewContextWithServerTransportStream(ctx, transportStream{st})
	if rh.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rh.Timeout)
		ctx, cancelCause := context.WithCancelCause(ctx)
		return ctx, func(err error) { cancelCause(err); cancel() }
	}
	return context.WithCancelCause(ctx)
}

// run dispatches the call to its handler and sends the final status,
// between a Begin and an End for stats handlers if it has a method to run.
func (st *serverStream) run() {
	defer st.sc.remove(st)
	defer st.cancelCtx(nil)
	sh := st.sc.srv.opts.stats
	if sh == nil {
		st.serve()
		return
	}
	ctx, ok := st.startStats()
	if !ok || st.err != nil {
		if ok {
			st.ctx = ctx
		}
		st.serve()
		return
	}
	st.ctx = ctx // on this goroutine, before the handler sees it
	begin := time.Now()
	client, server := false, false
	if sd := st.sd; sd != nil {
		client, server = sd.ClientStreams, sd.ServerStreams
	}
	sh.handle(st.ctx, &stats.Begin{BeginTime: begin, IsClientStream: client, IsServerStream: server})
	err := st.serve()
	sh.handle(st.ctx, &stats.End{BeginTime: begin, EndTime: time.Now(), Error: err})
}

// neverRan reports a stream whose handler never ran (a unary call
// cancelled, or its connection closed, before its request was whole) to
// the stats handlers as a call that began and ended with err, as grpc-go
// reports it: their TagRPC had it. Calls of unknown or refused methods
// get no Begin, as in grpc-go.
func (st *serverStream) neverRan(err error) {
	sh := st.sc.srv.opts.stats
	if sh == nil {
		return
	}
	ctx, ok := st.startStats()
	if !ok || st.err != nil {
		return
	}
	now := time.Now()
	sh.handle(ctx, &stats.Begin{BeginTime: now, IsClientStream: st.sd != nil && st.sd.ClientStreams, IsServerStream: st.sd != nil && st.sd.ServerStreams})
	sh.handle(ctx, &stats.End{BeginTime: now, EndTime: now, Error: status.Convert(err).Err()})
}

// startStats tags the call and reports its InHeader to the stats
// handlers, once: on the goroutine that runs the call (grpc-go's order,
// and a slow handler does not hold up the connection's reader), or in
// neverRan. It returns the tagged context and whether it did; it never
// writes st.ctx, which a run that lost the race may be reading.
func (st *serverStream) startStats() (context.Context, bool) {
	if !st.statsBegun.CompareAndSwap(false, true) {
		return nil, false
	}
	sh, sc := st.sc.srv.opts.stats, st.sc
	ctx := sh.tagRPC(st.ctx, st.method, false)
	sh.handle(ctx, &stats.InHeader{FullMethod: st.method, RemoteAddr: sc.peer.Addr, LocalAddr: sc.peer.LocalAddr, Header: st.reqMD.Copy(), WireLength: st.reqLen})
	return ctx, true
}

// serve runs the handler and sends the final status; it returns the
// call's error status, or nil for OK.
func (st *serverStream) serve() error {
	s := st.sc.srv
	info, md, sd, err := st.info, st.md, st.sd, st.err
	switch {
	case err != nil:
	case md != nil:
		var reply any
		reply, err = md.Handler(info.impl, st.ctx, st.decodeRequest, s.unaryInt)
		if err == nil {
			if err = st.sendReply(reply); err == nil {
				return nil
			}
		}
	case s.streamInt != nil:
		err = s.streamInt(info.impl, st, &grpc.StreamServerInfo{
			FullMethod: st.method, IsClientStream: sd.ClientStreams, IsServerStream: sd.ServerStreams,
		}, sd.Handler)
	default:
		err = sd.Handler(info.impl, st)
	}
	stat := statusOf(err)
	st.finish(stat, nil)
	return stat.Err()
}

// decodeRequest reads the one request of a unary call into v.
func (st *serverStream) decodeRequest(v any) error {
	err := st.RecvMsg(v)
	if err == io.EOF {
		return status.Error(codes.Internal, "grpc: unary request ended without a message")
	}
	return err
}

// sendReply sends a unary call's reply, headers and status in one publish.
func (st *serverStream) sendReply(reply any) error {
	msg, err := prepareMsg(st.codec, reply, st.sc.srv.opts.maxSendSize)
	if err != nil {
		return err
	}
	defer msg.free()
	return st.finish(okStatus, &msg)
}

// finish writes any unsent headers, msg if not nil, and the trailers with
// st's status, once.
func (st *serverStream) finish(s *status.Status, msg *outMsg) error {
	st.hmu.Lock()
	if st.finished || st.aborted.Load() {
		st.hmu.Unlock()
		return nil
	}
	st.finished = true
	var out sent
	err := st.writeEnd(s, msg, &out)
	st.hmu.Unlock()
	st.report(&out)
	return err
}

// sent records what a write put on the ring, for stats handlers, which
// run after the locks are released.
type sent struct {
	header  metadata.MD // the headers, if they went out now
	msg     *outMsg
	trailer *frame.Status
}

// report tells the stats handlers what went out.
func (st *serverStream) report(out *sent) {
	sh := st.sc.srv.opts.stats
	if sh == nil {
		return
	}
	if out.header != nil {
		sh.handle(st.ctx, &stats.OutHeader{Header: out.header.Copy(), FullMethod: st.method, RemoteAddr: st.sc.peer.Addr, LocalAddr: st.sc.peer.LocalAddr})
	}
	if m := out.msg; m != nil {
		sh.outPayload(st.ctx, false, m.value, m.size)
	}
	if fs := out.trailer; fs != nil {
		sh.handle(st.ctx, &stats.OutTrailer{Trailer: fs.MD.Copy(), WireLength: fs.Size()})
	}
}

// writeEnd is finish's write; the caller holds hmu.
func (st *serverStream) writeEnd(s *status.Status, msg *outMsg, out *sent) error {
	fs, err := statusToFrame(s)
	if err != nil {
		fs = frame.Status{Code: uint32(codes.Internal), Message: "notnets: cannot encode status details: " + err.Error()}
	}
	fs.MD = st.trailer
	c := st.c
	if err := c.stage(msg); err != nil {
		msg, fs = nil, frame.Status{Code: uint32(status.Code(err)), Message: status.Convert(err).Message()}
	}
	if err := c.lock(st.ctx); err != nil {
		if st.ctx.Err() == nil {
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
		out.header = st.header
		if out.header == nil {
			out.header = metadata.MD{}
		}
		if len(st.header) > 0 {
			if err := c.writeFrame(wctx, frame.TypeHeaders, 0, st.id, 0, &frame.ResponseHeaders{MD: st.header}); err != nil {
				if status.Code(err) != codes.ResourceExhausted {
					return err
				}
				msg, fs = nil, frame.Status{Code: uint32(codes.Internal), Message: "notnets: response headers too large: " + status.Convert(err).Message()}
			}
		}
	}
	if msg != nil {
		if err := c.writeMsg(wctx, st.id, 0, msg); err != nil {
			fs = frame.Status{Code: uint32(status.Code(err)), Message: status.Convert(err).Message()}
		} else {
			out.msg = msg
		}
	}
	err = c.writeFrame(wctx, frame.TypeTrailers, 0, st.id, 0, &fs)
	if status.Code(err) == codes.ResourceExhausted {
		// The client still gets a status, without the trailers or the
		// details that made it too large.
		fs = frame.Status{Code: uint32(codes.Internal), Message: "notnets: response trailers too large"}
		err = c.writeFrame(wctx, frame.TypeTrailers, 0, st.id, 0, &fs)
	}
	if err == nil {
		out.trailer = &fs
		st.closeStream() // before unlock publishes the trailers
	}
	return err
}

// closeStream counts the stream out of the connection's open streams,
// once: when its trailers are written (before they are published), or
// when the client's CANCEL is read. The client counts it out when it reads
// the trailers or after it writes the CANCEL, so the server never counts
// more streams than the client did when it opened one.
func (st *serverStream) closeStream() {
	if st.closedOut.CompareAndSwap(false, true) {
		st.sc.openStreams.Add(-1)
	}
}

// cancel ends the call from the client's side or the connection's: the
// handler's context is cancelled and its receives stop.
func (st *serverStream) cancel(err error) {
	// aborted first, so that a handler the cancellation wakes sends
	// nothing; then the context, so that a send holding hmu while it
	// waits for the write lock or ring space gives up, and stop does not
	// hold up the reader.
	st.aborted.Store(true)
	st.cancelCtx(err)
	st.stop()
}

// stop marks the stream over for sending and receiving.
func (st *serverStream) stop() {
	st.hmu.Lock()
	st.finished = true // nothing more is sent on a cancelled stream
	st.hmu.Unlock()
	st.halfClose()
}

func (st *serverStream) halfClose() {
	st.mu.Lock()
	st.closed = true
	st.mu.Unlock()
	st.signal()
}

// Method returns the full method name of the call.
func (st *serverStream) Method() string { return st.method }

// Context returns the handler's context.
func (st *serverStream) Context() context.Context { return st.ctx }

// SetHeader merges md into the response headers sent with the first
// message, by SendHeader, or with the status.
func (st *serverStream) SetHeader(md metadata.MD) error {
	st.hmu.Lock()
	defer st.hmu.Unlock()
	if st.headerSent || st.finished {
		return status.Error(codes.Internal, "transport: the stream is done or WriteHeader was already called")
	}
	st.header = metadata.Join(st.header, md)
	return nil
}

// SendHeader sends the response headers, merged with md, now.
func (st *serverStream) SendHeader(md metadata.MD) error {
	st.hmu.Lock()
	if st.headerSent || st.finished {
		st.hmu.Unlock()
		return status.Error(codes.Internal, "transport: the stream is done or WriteHeader was already called")
	}
	st.header = metadata.Join(st.header, md)
	st.headerSent = true
	err := st.c.lock(st.ctx)
	if err == nil {
		err = st.c.writeFrame(st.ctx, frame.TypeHeaders, 0, st.id, 0, &frame.ResponseHeaders{MD: st.header})
		st.c.unlock()
	}
	header := st.header
	st.hmu.Unlock()
	if err == nil {
		st.report(&sent{header: header})
	}
	return err
}

// SetTrailer merges md into the trailers sent with the status.
func (st *serverStream) SetTrailer(md metadata.MD) { st.setTrailer(md) }

func (st *serverStream) setTrailer(md metadata.MD) error {
	st.hmu.Lock()
	defer st.hmu.Unlock()
	if st.finished {
		return status.Error(codes.Internal, "transport: the stream is done")
	}
	st.trailer = metadata.Join(st.trailer, md)
	return nil
}

// SendMsg sends a response message, after the headers if not yet sent.
func (st *serverStream) SendMsg(m any) error {
	msg, err := prepareMsg(st.codec, m, st.sc.srv.opts.maxSendSize)
	if err != nil {
		return err
	}
	defer msg.free()
	if err := st.takeQuota(st.ctx, msg.size, func() error { return st.ctx.Err() }); err != nil {
		return contextStatus(st.ctx.Err())
	}
	if err := st.c.stage(&msg); err != nil {
		return err
	}
	var out sent
	st.hmu.Lock()
	err = st.writeMsg(&msg, &out)
	st.hmu.Unlock()
	st.report(&out)
	return err
}

// writeMsg is SendMsg's write; the caller holds hmu.
func (st *serverStream) writeMsg(msg *outMsg, out *sent) error {
	if st.finished || st.aborted.Load() {
		return status.Error(codes.Internal, "transport: the stream is done")
	}
	c := st.c
	if err := c.lock(st.ctx); err != nil {
		return err
	}
	defer c.unlock()
	if !st.headerSent {
		st.headerSent = true
		if len(st.header) > 0 {
			if err := c.writeFrame(st.ctx, frame.TypeHeaders, 0, st.id, 0, &frame.ResponseHeaders{MD: st.header}); err != nil {
				return err
			}
		}
		out.header = st.header
		if out.header == nil {
			out.header = metadata.MD{}
		}
	}
	if err := c.writeMsg(st.ctx, st.id, 0, msg); err != nil {
		return err
	}
	out.msg = msg
	return nil
}

// RecvMsg receives the next request message into m; io.EOF after the
// client's last one.
func (st *serverStream) RecvMsg(m any) error {
	err := st.await(st.ctx, func() bool { return len(st.msgs) > 0 || st.closed })
	st.mu.Lock()
	if len(st.msgs) == 0 {
		st.mu.Unlock()
		if err != nil || st.ctx.Err() != nil {
			return contextStatus(st.ctx.Err())
		}
		return io.EOF
	}
	msg := st.takeMsg()
	st.mu.Unlock()
	// The window goes back for every message, also one that fails: a
	// handler may read on after the error.
	if msg.err != nil {
		st.consumed(st.ctx, msg.n)
		return msg.err
	}
	n := msg.buf.Len()
	if err := st.decode(st.codec, msg.buf, m); err != nil {
		st.consumed(st.ctx, n)
		return err
	}
	if sh := st.sc.srv.opts.stats; sh != nil {
		sh.inPayload(st.ctx, false, m, n)
	}
	st.consumed(st.ctx, n)
	return nil
}
