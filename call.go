package notnets

import (
	"context"
	"errors"
	"time"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// Invoke performs a unary call. It implements grpc.ClientConnInterface.
func (cc *ClientConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if cc.unaryInt != nil {
		return cc.unaryInt(ctx, method, args, reply, nil, cc.invoker, opts...)
	}
	return cc.invoke(ctx, method, args, reply, opts...)
}

var unaryDesc = &grpc.StreamDesc{}

// invoker adapts invoke to grpc.UnaryInvoker. Interceptors receive a nil
// *grpc.ClientConn: grpc-go's interceptor types name its concrete type.
func (cc *ClientConn) invoker(ctx context.Context, method string, args, reply any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
	return cc.invoke(ctx, method, args, reply, opts...)
}

func (cc *ClientConn) invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if cc.useFallback() {
		return cc.invokeFallback(ctx, method, args, reply, opts...)
	}
	ci, err := newCallInfo(&cc.opts, opts)
	if err != nil {
		return err
	}
	msg, err := prepareMsg(ci.codec, args, ci.maxSend)
	if err != nil {
		return cc.requestFailed(ctx, method, ci, err)
	}
	s, err := cc.start(ctx, method, ci, unaryDesc, &msg)
	if err == errUseFallback { // the last instance went just now
		err = cc.invokeFallback(ctx, method, args, reply, opts...)
		msg.Free() // after: a Bytes request is still whole for the fallback
		return err
	}
	msg.Free()
	// A Bytes request is emptied once sent: it cannot go again.
	_, given := args.(*Bytes)
	for tries := 1; ; tries++ {
		if err != nil {
			return err
		}
		if err = s.recvUnary(reply, !given && tries < maxUnprocessedRetries); err != errUnprocessed {
			return err
		}
		// The instance closed before it read the request (a graceful stop
		// racing the pick): send it again, as grpc-go retries a stream
		// its server refused.
		if msg, err = prepareMsg(ci.codec, args, ci.maxSend); err != nil {
			return err
		}
		reported := true
		s, err = cc.attempt(s.ctx, method, ci, unaryDesc, &msg, s.begin, &reported)
		msg.Free()
		if err == errUseFallback {
			return cc.invokeFallback(ctx, method, args, reply, opts...)
		}
	}
}

// maxUnprocessedRetries bounds the attempts of a unary call whose request
// its server never read: what a server's shared memory says cannot make a
// call go round for ever.
const maxUnprocessedRetries = 5

// errUnprocessed says that a unary call's connection closed before its
// server read the request: the call may go again.
var errUnprocessed = errors.New("notnets: request not read before the connection closed")

// NewStream starts a streaming call. It implements grpc.ClientConnInterface.
func (cc *ClientConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if cc.streamInt != nil {
		return cc.streamInt(ctx, desc, nil, method, cc.newStream, opts...)
	}
	return cc.newStream(ctx, desc, nil, method, opts...)
}

func (cc *ClientConn) newStream(ctx context.Context, desc *grpc.StreamDesc, _ *grpc.ClientConn, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if cc.useFallback() {
		return cc.streamFallback(ctx, desc, method, opts...)
	}
	ci, err := newCallInfo(&cc.opts, opts)
	if err != nil {
		return nil, err
	}
	s, err := cc.start(ctx, method, ci, desc, nil)
	if err == errUseFallback { // the last instance went just now
		return cc.streamFallback(ctx, desc, method, opts...)
	}
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		s.cancel(ctx.Err())
		// If the stream had already ended, cancel did not finish the call:
		// the caller gave up on it, so its OnFinish and End run now (what
		// it received stays readable).
		s.end(status.FromContextError(ctx.Err()).Err(), false, true)
	})
	s.stopMu.Lock() // the function may already run, and done reads stopWatch
	s.stopWatch = stop
	s.stopMu.Unlock()
	return s, nil
}

// start opens a stream and sends its HEADERS frame, followed, for a unary
// call, by the request with the end-of-stream flag in the same publish.
func (cc *ClientConn) start(ctx context.Context, method string, ci *callInfo, desc *grpc.StreamDesc, msg *transport.OutMsg) (*clientStream, error) {
	// As in grpc-go, a call that cannot begin (its context is over, the
	// ClientConn is closed) reports nothing to stats handlers.
	if err := cc.canBegin(ctx); err != nil {
		return nil, cc.notStarted(ctx, ci, time.Time{}, err)
	}
	ctx, begin := cc.beginStats(ctx, method, ci, desc)
	reported := false // OutHeader and OutPayload, once even if the call starts again
	return cc.attempt(ctx, method, ci, desc, msg, begin, &reported)
}

// attempt starts the call on a connection: on the next one when nothing
// went out on the first (transport.ErrTryAnother).
func (cc *ClientConn) attempt(ctx context.Context, method string, ci *callInfo, desc *grpc.StreamDesc, msg *transport.OutMsg, begin time.Time, reported *bool) (*clientStream, error) {
	sh := cc.opts.stats
	for {
		s, ctxMD, err := cc.prepareStream(ctx, method, ci, desc, msg, begin)
		if err == transport.ErrTryAnother {
			continue // nothing went out on a connection that takes no more calls
		}
		if err != nil {
			return nil, err
		}
		sent, err := s.send(sh, ctxMD, msg, reported)
		switch {
		case err == nil:
			return s, nil
		case sent || err != transport.ErrTryAnother:
			return nil, err
		}
	}
}

// prepareStream picks the connection for a call, builds its headers and
// waits for a place under the server's stream limit. Errors other than
// transport.ErrTryAnother have ended the call.
func (cc *ClientConn) prepareStream(ctx context.Context, method string, ci *callInfo, desc *grpc.StreamDesc, msg *transport.OutMsg, begin time.Time) (*clientStream, metadata.MD, error) {
	e, err := cc.pick(ctx, ci.waitForReady, msg)
	if err == errUseFallback {
		return nil, nil, err // the call goes on over the fallback: not ended
	}
	if err != nil {
		return nil, nil, cc.notStarted(ctx, ci, begin, err)
	}
	t := e.t
	hdr, ctxMD, err := cc.requestHeaders(ctx, t, method, ci)
	if err != nil {
		return nil, nil, cc.notStarted(ctx, ci, begin, err)
	}
	if cc.opts.stats != nil || ci.creds != nil || len(cc.opts.perRPC) > 0 {
		// The peer is in the call's context from here on, as in grpc-go.
		ctx = peer.NewContext(ctx, &peer.Peer{Addr: e.addr, LocalAddr: &Addr{Pool: cc.opts.pool}, AuthInfo: authInfo(t.Peer())})
	}
	// The headers live in the stream so that encoding them allocates nothing.
	s := &clientStream{cc: cc, t: t, addr: e.addr, ctx: ctx, desc: desc, ci: ci, method: method, reqHdr: hdr, begin: begin}
	s.ts = transport.NewClientStream(t, ctx, ci.maxRecv, s)
	if err := t.TakeSlot(s.ts); err != nil {
		if err == transport.ErrTryAnother {
			return nil, nil, err
		}
		return nil, nil, s.notStarted(err)
	}
	if err := t.Stage(msg); err != nil {
		return nil, nil, s.notStarted(err)
	}
	return s, ctxMD, nil
}

// send writes the call's HEADERS and, for a unary call, its request. It
// reports whether anything went out; transport.ErrTryAnother (nothing
// did) means the call is to start again on another connection.
func (s *clientStream) send(sh statsHandlers, ctxMD metadata.MD, msg *transport.OutMsg, reported *bool) (bool, error) {
	if sh != nil && !*reported {
		// Reported as queued, as grpc-go does: never under the write lock,
		// before the reply can be read, and once for the call.
		*reported = true
		sh.handle(s.ctx, &stats.OutHeader{Client: true, Header: ctxMD.Copy(), FullMethod: s.method, RemoteAddr: s.addr, LocalAddr: &Addr{Pool: s.cc.opts.pool}})
		if msg != nil {
			sh.outPayload(s.ctx, true, msg.Value(), msg.Size())
		}
	}
	sent, err := s.t.NewStream(s.ts, &s.reqHdr, msg)
	if err != nil && err != transport.ErrTryAnother {
		s.doneWith(err)
	}
	return sent, err
}

// notStarted ends a stream the server never saw, with err.
func (s *clientStream) notStarted(err error) error {
	s.ts.NotStarted(err)
	s.done()
	return err
}

// requestFailed ends a unary call whose request could not be marshalled
// or was over the size limit: as in grpc-go, a call that could begin
// reports a Begin and an End with err.
func (cc *ClientConn) requestFailed(ctx context.Context, method string, ci *callInfo, err error) error {
	if why := cc.canBegin(ctx); why != nil {
		return cc.notStarted(ctx, ci, time.Time{}, why)
	}
	ctx, begin := cc.beginStats(ctx, method, ci, unaryDesc)
	return cc.notStarted(ctx, ci, begin, err)
}

// canBegin reports why a call cannot start at all: its context is over,
// or the ClientConn is closed.
func (cc *ClientConn) canBegin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return contextStatus(err)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= 0 {
		return status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
	}
	if cc.opts.stats == nil {
		return nil // transport() says the same, and without stats nobody sees the difference
	}
	cc.mu.Lock()
	closed := cc.closed
	cc.mu.Unlock()
	if closed {
		return ErrClientConnClosing
	}
	return nil
}

// beginStats tags the call and reports its Begin to the stats handlers,
// if any; it returns the tagged context and the begin time.
func (cc *ClientConn) beginStats(ctx context.Context, method string, ci *callInfo, desc *grpc.StreamDesc) (context.Context, time.Time) {
	sh := cc.opts.stats
	if sh == nil {
		return ctx, time.Time{}
	}
	begin := time.Now()
	failFast := !ci.waitForReady
	ctx = sh.tagRPC(ctx, method, failFast)
	sh.handle(ctx, &stats.Begin{Client: true, BeginTime: begin, FailFast: failFast, IsClientStream: desc.ClientStreams, IsServerStream: desc.ServerStreams})
	return ctx, begin
}

// requestHeaders builds the HEADERS of a call on t: its metadata with the
// per-RPC credentials' first, and the time left (measured now, after any
// wait for a connection). It also returns the context's own metadata,
// which is what stats handlers see (never the credentials).
func (cc *ClientConn) requestHeaders(ctx context.Context, t transport.ClientTransport, method string, ci *callInfo) (frame.RequestHeaders, metadata.MD, error) {
	hdr := frame.RequestHeaders{Method: method, ContentSubtype: ci.contentSubtype}
	ctxMD, _ := metadata.FromOutgoingContext(ctx)
	hdr.MD = ctxMD
	if len(cc.opts.perRPC) > 0 || ci.creds != nil {
		var err error
		if hdr.MD, err = cc.withCredentials(ctx, t, method, ci, ctxMD); err != nil {
			return hdr, nil, err
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		if hdr.Timeout = time.Until(dl); hdr.Timeout <= 0 {
			return hdr, nil, status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
		}
	}
	return hdr, ctxMD, nil
}

// notStarted ends a call that failed before it had a stream: the call
// options and stats handlers that want its outcome get err.
func (cc *ClientConn) notStarted(ctx context.Context, ci *callInfo, begin time.Time, err error) error {
	for _, f := range ci.onFinish {
		f(err)
	}
	if sh := cc.opts.stats; sh != nil && !begin.IsZero() {
		sh.handle(ctx, &stats.End{Client: true, BeginTime: begin, EndTime: time.Now(), Error: err})
	}
	return err
}
