package notnets

import (
	"context"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/notnets/notnets/internal/chz"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/transport"
)

// serverConn is the gRPC face of one connection a Server serves: the
// context its calls' contexts derive from (carrying the peer), and the
// authorization decided once for the connection. It turns the transport's
// new streams into calls (transport.ServerHandler).
type serverConn struct {
	srv    *Server
	lis    *Listener
	t      *transport.Server
	peer   *peer.Peer
	ctx    context.Context
	cancel context.CancelFunc
	denied error // why the peer may not call (PermissionDenied), or nil
	in     incomingKeys
	czSock *chz.Socket // the connection in channelz, or nil
}

func newServerConn(s *Server, lis *Listener, a *transport.Accepted) *serverConn {
	id := a.Peer()
	sc := &serverConn{
		srv: s,
		lis: lis,
		peer: &peer.Peer{
			Addr:      &Addr{Pool: lis.l.Dir(), Name: lis.l.Name(), PID: id.PID},
			LocalAddr: lis.Addr(),
			AuthInfo:  authInfo(id),
		},
	}
	sc.denied = s.opts.authz.check(authInfo(id))
	sc.in = newIncomingKeys(lis.l.Name(), a.UserAgent())
	sc.ctx, sc.cancel = context.WithCancel(context.Background())
	sc.ctx = peer.NewContext(sc.ctx, sc.peer) // once per connection, not per call
	if sh := s.opts.stats; sh != nil {
		sc.ctx = sh.connBegin(sc.ctx, false, sc.peer.Addr, sc.peer.LocalAddr)
	}
	cfg := transport.ServerConfig{
		Wait: s.opts.wait, Window: s.opts.window, MaxRecv: s.opts.maxRecvSize,
		Liveness: s.opts.liveness, MaxStreams: s.opts.maxStreams, MaxHeader: s.opts.maxHeader,
		Streams: sc.czConn(),
	}
	sc.t = transport.NewServer(a, cfg, s.workers, sc)
	return sc
}

// NewCall makes the call for a new stream, on the connection's reader.
func (sc *serverConn) NewCall(ts *transport.ServerStream, rh *frame.RequestHeaders, wireLen int) transport.ServerCall {
	s := sc.srv
	st := &serverStream{ts: ts, sc: sc, method: rh.Method}
	md := sc.in.md(rh)
	st.ctx, st.cancelCtx = newServerContext(sc.ctx, md, rh.Timeout, st)
	if s.opts.stats != nil {
		// For InHeader, which the stats handlers get on the call's
		// goroutine, not on the reader (startStats).
		st.reqMD, st.reqLen = md, wireLen
	}
	if sc.denied != nil {
		st.err = sc.denied // refused before anything of the server's runs for it
		s.refused.Add(1)
	} else if st.codec, st.err = s.codecFor(rh.ContentSubtype); st.err == nil {
		st.info, st.md, st.sd, st.err = s.lookup(rh.Method)
		if st.err == nil && st.unknownCall() {
			st.ctx = withContentType(st.ctx, rh)
		}
	}
	return st
}

// withContentType adds the call's content-type to the incoming metadata
// of ctx, as grpc-go has it ("application/grpc" or
// "application/grpc+<subtype>"): a handler of unknown services that
// forwards calls (Forward) needs the codec the caller used, which its own
// forced codec hides. The key is set, not added, so that a client cannot
// name another codec than the one its call used.
func withContentType(ctx context.Context, rh *frame.RequestHeaders) context.Context {
	md := rh.MD.Copy() // rh.MD is the request's, shared with the stats handlers
	md.Set("content-type", contentType(rh.ContentSubtype))
	return metadata.NewIncomingContext(ctx, md)
}

// contentType is gRPC's content-type for a content subtype.
func contentType(subtype string) string {
	if subtype == "" {
		return "application/grpc"
	}
	return "application/grpc+" + subtype
}

// Closed forgets a connection that has closed.
func (sc *serverConn) Closed(_ *transport.Server, _ error) {
	sc.cancel()
	sc.czClosed()
	if sh := sc.srv.opts.stats; sh != nil {
		sh.connEnd(sc.ctx, false)
	}
	s := sc.srv
	s.mu.Lock()
	if s.conns[sc] { // a refused connection was never counted
		delete(s.conns, sc)
		if s.perLis[sc.lis]--; s.perLis[sc.lis] == 0 {
			delete(s.perLis, sc.lis)
		}
	}
	s.cv.Broadcast()
	s.mu.Unlock()
}

// StreamEnded wakes GracefulStop when a draining connection goes idle.
func (sc *serverConn) StreamEnded(_ *transport.Server, idle bool) {
	if s := sc.srv; idle && s.draining.Load() {
		s.mu.Lock()
		s.cv.Broadcast()
		s.mu.Unlock()
	}
}
