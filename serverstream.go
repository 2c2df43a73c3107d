package notnets

import (
	"context"
	"io"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/transport"
)

// serverStream is one call being served. It is the grpc.ServerStream that
// streaming handlers get, the grpc.ServerTransportStream behind
// grpc.SetHeader, grpc.SendHeader and grpc.SetTrailer in unary handlers,
// and the transport's ServerCall. The transport's stream (ts) receives
// and writes; this type adds the handler, the codec and the stats.
type serverStream struct {
	ts        *transport.ServerStream
	sc        *serverConn
	ctx       context.Context
	cancelCtx context.CancelCauseFunc
	method    string
	codec     encoding.CodecV2
	info      *serviceInfo
	md        *grpc.MethodDesc // set for a unary call
	sd        *grpc.StreamDesc // set for a streaming call
	err       error            // why the call cannot run: unknown method, no codec, refused

	statsBegun atomic.Bool  // stats begun (startStats: by run or neverRan)
	czState    atomic.Int32 // counted for channelz: czNotRun, czRunning, czEnded
	reqMD      metadata.MD  // the request headers, for InHeader
	reqLen     int
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

// Unary reports whether the call runs once its whole request has arrived.
func (st *serverStream) Unary() bool { return st.md != nil }

// Cancel cancels the handler's context with err (nil: releases it). A
// call cancelled (by its client, or its connection's end) has failed.
func (st *serverStream) Cancel(err error) {
	if err != nil {
		st.czEnd(false)
	}
	st.cancelCtx(err)
}

// NeverRan is neverRan, for the transport.
func (st *serverStream) NeverRan(err error) {
	st.czNeverRan()
	st.neverRan(err)
}

// newServerContext builds a handler's context from the connection's (which
// carries the peer): incoming metadata, the transport stream, and the
// client's deadline (timeout, 0 for none).
func newServerContext(base context.Context, md metadata.MD, timeout time.Duration, st *serverStream) (context.Context, context.CancelCauseFunc) {
	ctx := metadata.NewIncomingContext(base, md)
	ctx = grpc.NewContextWithServerTransportStream(ctx, transportStream{st})
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		ctx, cancelCause := context.WithCancelCause(ctx)
		return ctx, func(err error) { cancelCause(err); cancel() }
	}
	return context.WithCancelCause(ctx)
}

// Run dispatches the call to its handler and sends the final status,
// between a Begin and an End for stats handlers if it has a method to run.
func (st *serverStream) Run() {
	defer st.cancelCtx(nil)
	st.czStart()
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
	defer msg.Free()
	return st.finish(okStatus, &msg)
}

// finish writes any unsent headers, msg if not nil, and the trailers with
// st's status, once.
func (st *serverStream) finish(s *status.Status, msg *transport.OutMsg) error {
	st.czEnd(s.Code() == codes.OK) // before the client can read the status
	var out transport.Sent
	err := st.ts.Finish(st.ctx, s, msg, &out)
	st.report(&out)
	return err
}

// report tells the stats handlers what went out.
func (st *serverStream) report(out *transport.Sent) {
	sh := st.sc.srv.opts.stats
	if sh == nil {
		return
	}
	if out.Header != nil {
		sh.handle(st.ctx, &stats.OutHeader{Header: out.Header.Copy(), FullMethod: st.method, RemoteAddr: st.sc.peer.Addr, LocalAddr: st.sc.peer.LocalAddr})
	}
	if m := out.Msg; m != nil {
		sh.outPayload(st.ctx, false, m.Value(), m.Size())
	}
	if fs := out.Trailer; fs != nil {
		sh.handle(st.ctx, &stats.OutTrailer{Trailer: fs.MD.Copy(), WireLength: fs.Size()})
	}
}

// Method returns the full method name of the call.
func (st *serverStream) Method() string { return st.method }

// Context returns the handler's context.
func (st *serverStream) Context() context.Context { return st.ctx }

// SetHeader merges md into the response headers sent with the first
// message, by SendHeader, or with the status.
func (st *serverStream) SetHeader(md metadata.MD) error { return st.ts.SetHeader(md) }

// SendHeader sends the response headers, merged with md, now.
func (st *serverStream) SendHeader(md metadata.MD) error {
	header, err := st.ts.SendHeader(st.ctx, md)
	if err == nil {
		st.report(&transport.Sent{Header: header})
	}
	return err
}

// SetTrailer merges md into the trailers sent with the status.
func (st *serverStream) SetTrailer(md metadata.MD) { st.ts.SetTrailer(md) }

func (st *serverStream) setTrailer(md metadata.MD) error { return st.ts.SetTrailer(md) }

// SendMsg sends a response message, after the headers if not yet sent.
func (st *serverStream) SendMsg(m any) error {
	msg, err := prepareMsg(st.codec, m, st.sc.srv.opts.maxSendSize)
	if err != nil {
		return err
	}
	defer msg.Free()
	if err := st.ts.WaitWindow(st.ctx, &msg); err != nil {
		return err
	}
	var out transport.Sent
	err = st.ts.Send(st.ctx, &msg, &out)
	st.report(&out)
	return err
}

// RecvMsg receives the next request message into m; io.EOF after the
// client's last one.
func (st *serverStream) RecvMsg(m any) error {
	err := st.ts.WaitMsg(st.ctx)
	msg, ok := st.ts.NextMsg()
	if !ok {
		if err != nil || st.ctx.Err() != nil {
			return contextStatus(st.ctx.Err())
		}
		return io.EOF
	}
	// The window goes back for every message, also one that fails: a
	// handler may read on after the error.
	if msg.Err != nil {
		st.ts.Consumed(st.ctx, msg.N)
		return msg.Err
	}
	n := msg.Buf.Len()
	if err := st.ts.Decode(st.codec, msg.Buf, m); err != nil {
		st.ts.Consumed(st.ctx, n)
		return err
	}
	if sh := st.sc.srv.opts.stats; sh != nil {
		sh.inPayload(st.ctx, false, m, n)
	}
	st.ts.Consumed(st.ctx, n)
	return nil
}
