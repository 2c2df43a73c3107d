package notnets

import (
	"context"
	"errors"
	"io"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// grpcServing is the grpc.Server behind ServeGRPC, made on the first call.
type grpcServing struct {
	gs *grpc.Server
	// early holds the full method names ("/service/method") registered
	// on gs when it was made. grpc-go takes no registration once it
	// serves, so a service registered on the Server later reaches gs as
	// an unknown service, and serveLate serves it. Read-only.
	early map[string]bool
}

// errRefusedOverGRPC refuses the calls over HTTP/2 to a server that
// authorizes its callers: they have no uid or gid the kernel vouches for.
var errRefusedOverGRPC = status.Error(codes.PermissionDenied,
	"notnets: caller refused: the server authorizes callers by uid and gid (AllowUIDs, AllowGIDs, WithAuthorizer), which a call over gRPC's HTTP/2 does not carry")

// ServeGRPC serves the services registered on s as ordinary gRPC over
// HTTP/2 on lis, for clients outside the pool (a grpc.ClientConn; TLS
// with grpc.Creds in WithGRPCServerOptions). It runs until Stop or
// GracefulStop, after which it returns nil; lis is closed when it returns.
// After Stop or GracefulStop it returns ErrServerStopped at once.
//
// Every ServeGRPC of s shares one grpc.Server, made on the first call,
// with s's interceptors, stats handlers, message size limits,
// MaxConcurrentStreams, ForceServerCodecV2 codec, and then the options of
// WithGRPCServerOptions. Handlers run as over the pool, within what
// grpc-go allows: peer.FromContext(ctx).Addr is the client's TCP address
// (which tells a handler the path a call took), AuthInfo is nil or the TLS
// state, and notnets.Alloc returns ordinary memory. A server with
// AllowUIDs, AllowGIDs or WithAuthorizer refuses every call that arrives
// this way with PermissionDenied (counted by RefusedCalls): such calls
// carry no uid or gid to check.
//
// Services registered after the first ServeGRPC are served too, through
// grpc-go's unknown-service handler: s's interceptors see them as over the
// pool, but grpc-go reports them to stats handlers, and to interceptors
// given with WithGRPCServerOptions, as bidirectional streams.
func (s *Server) ServeGRPC(lis net.Listener) error {
	gs, err := s.grpcServer()
	if err != nil {
		lis.Close()
		return err
	}
	if err := gs.Serve(lis); !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return ErrServerStopped // stopped between grpcServer and Serve
}

// grpcServer returns the grpc.Server behind ServeGRPC, making it on the
// first call; ErrServerStopped once s is stopping.
func (s *Server) grpcServer() (*grpc.Server, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.draining.Load() {
		return nil, ErrServerStopped
	}
	if s.grpc == nil {
		s.grpc = s.newGRPCServing()
	}
	return s.grpc.gs, nil
}

// newGRPCServing makes the grpc.Server and registers s's services on it.
// s.mu is held.
func (s *Server) newGRPCServing() *grpcServing {
	g := &grpcServing{early: make(map[string]bool)}
	g.gs = grpc.NewServer(s.grpcOptions(g)...)
	for name, info := range s.services {
		g.gs.RegisterService(info.desc(name), info.impl)
		for m := range info.methods {
			g.early["/"+name+"/"+m] = true
		}
		for m := range info.streams {
			g.early["/"+name+"/"+m] = true
		}
	}
	return g
}

// grpcOptions translates s's options for g's grpc.Server. The user's
// grpc.ServerOptions come last, so they win where both set something.
func (s *Server) grpcOptions(g *grpcServing) []grpc.ServerOption {
	o := &s.opts
	opts := []grpc.ServerOption{
		grpc.UnknownServiceHandler(s.serveLate),
		grpc.MaxRecvMsgSize(o.maxRecvSize),
		grpc.MaxConcurrentStreams(o.maxStreams), // 0 is no limit in both
	}
	if o.maxSendSize > 0 { // 0 is no limit here, none at all in grpc-go
		opts = append(opts, grpc.MaxSendMsgSize(o.maxSendSize))
	}
	if o.codec != nil {
		opts = append(opts, grpc.ForceServerCodecV2(o.codec))
	}
	if o.maxHeader != 0 { // grpc-go announces a limit only when one is set
		opts = append(opts, grpc.MaxHeaderListSize(o.maxHeader))
	}
	for _, h := range o.stats {
		opts = append(opts, grpc.StatsHandler(h))
	}
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	if o.authz.set() {
		unary = append(unary, s.refuseUnary)
		stream = append(stream, s.refuseStream)
	}
	if s.unaryInt != nil {
		unary = append(unary, s.unaryInt)
	}
	if s.streamInt != nil {
		stream = append(stream, g.earlyOnly(s.streamInt))
	}
	opts = append(opts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	return append(opts, o.grpcOpts...)
}

// desc rebuilds the service's description for grpc-go. RegisterService
// checked the implementation against the original HandlerType.
func (info *serviceInfo) desc(name string) *grpc.ServiceDesc {
	d := &grpc.ServiceDesc{ServiceName: name, HandlerType: (*any)(nil), Metadata: info.metadata}
	for _, md := range info.methods {
		d.Methods = append(d.Methods, *md)
	}
	for _, sd := range info.streams {
		d.Streams = append(d.Streams, *sd)
	}
	return d
}

// earlyOnly wraps s's stream interceptor for g's grpc.Server, which runs
// it around every streaming call, serveLate's included; serveLate runs
// s's interceptors itself.
func (g *grpcServing) earlyOnly(i grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if !g.early[info.FullMethod] {
			return h(srv, ss)
		}
		return i(srv, ss, info, h)
	}
}

// serveLate serves, over HTTP/2, a call the grpc.Server does not know: a
// method of a service registered on s after the grpc.Server was made, with
// s's interceptors, as grpc-go runs a registered one; or an unknown
// method, which goes to s's UnknownServiceHandler if it has one (lookup
// returns it, as a stream method), else is Unimplemented as grpc-go
// answers it.
func (s *Server) serveLate(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	info, md, sd, err := s.lookup(method)
	switch {
	case err != nil:
		return err
	case md != nil:
		dec := func(v any) error {
			if err := ss.RecvMsg(v); err != io.EOF {
				return err
			}
			return status.Error(codes.Internal, "grpc: unary request ended without a message")
		}
		reply, err := md.Handler(info.impl, ss.Context(), dec, s.unaryInt)
		if err != nil {
			return err
		}
		return ss.SendMsg(reply)
	case s.streamInt == nil:
		return sd.Handler(info.impl, ss)
	}
	return s.streamInt(info.impl, ss, &grpc.StreamServerInfo{
		FullMethod: method, IsClientStream: sd.ClientStreams, IsServerStream: sd.ServerStreams,
	}, sd.Handler)
}

// refuseUnary and refuseStream refuse calls over HTTP/2 to a server that
// authorizes its callers, before any other interceptor runs.
func (s *Server) refuseUnary(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
	s.refused.Add(1)
	return nil, errRefusedOverGRPC
}

func (s *Server) refuseStream(any, grpc.ServerStream, *grpc.StreamServerInfo, grpc.StreamHandler) error {
	s.refused.Add(1)
	return errRefusedOverGRPC
}

// stop stops the grpc.Server, if ServeGRPC made one: its listeners and
// connections close, and its calls end.
func (g *grpcServing) stop() {
	if g != nil {
		g.gs.Stop()
	}
}

// gracefulStop starts a GracefulStop of the grpc.Server, if ServeGRPC made
// one, and returns a channel closed when it has returned: when the calls
// in progress have finished, or a Stop cut them short.
func (g *grpcServing) gracefulStop() <-chan struct{} {
	done := make(chan struct{})
	if g == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		g.gs.GracefulStop()
	}()
	return done
}
