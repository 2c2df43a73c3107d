package notnets

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/notnets/notnets/internal/chz"
	"github.com/notnets/notnets/internal/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
)

// ErrServerStopped is returned by Serve and ServeGRPC after Stop or
// GracefulStop.
var ErrServerStopped = errors.New("notnets: the server has been stopped")

var errServerStopping = status.Error(codes.Unavailable, "notnets: server stopped")

// Server serves gRPC services over notnets listeners. It implements
// grpc.ServiceRegistrar, so generated code registers on it:
// pb.RegisterGreeterServer(srv, impl).
type Server struct {
	opts      serverOptions
	unaryInt  grpc.UnaryServerInterceptor
	streamInt grpc.StreamServerInterceptor

	// mu guards services, lis, retired, conns, perLis, stopped and grpc; cv waits on it.
	// It is taken before any lock of a connection, and never held while
	// one is closed.
	mu       sync.Mutex
	cv       *sync.Cond // signalled when a connection goes idle or away
	services map[string]*serviceInfo
	lis      map[*Listener]bool
	retired  map[*Listener]bool // stopped by GracefulStop, removed from the pool by Stop
	conns    map[*serverConn]bool
	perLis   map[*Listener]int // open connections in conns, by listener (MaxConnections)
	stopped  bool
	grpc     *grpcServing // ServeGRPC's grpc.Server, made on its first call
	draining atomic.Bool
	serving  sync.WaitGroup
	workers  *transport.Workers

	refused atomic.Uint64
	cz      *chz.Server // the server in channelz, or nil (channelz.go)
}

// RefusedCalls returns how many calls the server has refused because their
// caller was not authorized (AllowUIDs, AllowGIDs, WithAuthorizer).
func (s *Server) RefusedCalls() uint64 { return s.refused.Load() }

var _ grpc.ServiceRegistrar = (*Server)(nil)

type serviceInfo struct {
	impl     any
	methods  map[string]*grpc.MethodDesc
	streams  map[string]*grpc.StreamDesc
	metadata any
}

// NewServer returns a server with no services registered.
func NewServer(opts ...ServerOption) *Server {
	o := serverOptions{wait: defaultWait(), maxRecvSize: DefaultMaxRecvMsgSize, window: defaultWindow, liveness: DefaultLivenessTimeout,
		maxStreams: DefaultMaxConcurrentStreams, maxConns: DefaultMaxConnections}
	for _, opt := range opts {
		opt.applyServer(&o)
	}
	s := &Server{
		opts:      o,
		unaryInt:  chainUnaryServer(o.unary),
		streamInt: chainStreamServer(o.stream),
		services:  make(map[string]*serviceInfo),
		lis:       make(map[*Listener]bool),
		retired:   make(map[*Listener]bool),
		conns:     make(map[*serverConn]bool),
		perLis:    make(map[*Listener]int),
		workers:   transport.NewWorkers(),
	}
	s.cv = sync.NewCond(&s.mu)
	s.newChannelz()
	return s
}

// RegisterService registers a service and its implementation. It panics if
// impl does not implement sd.HandlerType or the service is registered twice,
// as grpc-go does (it exits instead).
func (s *Server) RegisterService(sd *grpc.ServiceDesc, impl any) {
	if impl != nil {
		ht := reflect.TypeOf(sd.HandlerType).Elem()
		if st := reflect.TypeOf(impl); !st.Implements(ht) {
			panic(fmt.Sprintf("notnets: RegisterService found the handler of type %v that does not satisfy %v", st, ht))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.services[sd.ServiceName]; dup {
		panic(fmt.Sprintf("notnets: RegisterService found duplicate service registration for %q", sd.ServiceName))
	}
	info := &serviceInfo{
		impl:     impl,
		methods:  make(map[string]*grpc.MethodDesc),
		streams:  make(map[string]*grpc.StreamDesc),
		metadata: sd.Metadata,
	}
	for i := range sd.Methods {
		info.methods[sd.Methods[i].MethodName] = &sd.Methods[i]
	}
	for i := range sd.Streams {
		info.streams[sd.Streams[i].StreamName] = &sd.Streams[i]
	}
	s.services[sd.ServiceName] = info
}

// ConnCount returns the number of connections the server holds.
func (s *Server) ConnCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// GetServiceInfo returns the registered services, keyed by name.
func (s *Server) GetServiceInfo() map[string]grpc.ServiceInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]grpc.ServiceInfo, len(s.services))
	for name, info := range s.services {
		var ms []grpc.MethodInfo
		for m := range info.methods {
			ms = append(ms, grpc.MethodInfo{Name: m})
		}
		for m, d := range info.streams {
			ms = append(ms, grpc.MethodInfo{Name: m, IsClientStream: d.ClientStreams, IsServerStream: d.ServerStreams})
		}
		out[name] = grpc.ServiceInfo{Methods: ms, Metadata: info.metadata}
	}
	return out
}

// Serve accepts connections on lis and serves them until Stop or
// GracefulStop, after which it returns nil; lis is closed when it returns.
// ServeGRPC serves the same services to gRPC clients over HTTP/2 on a
// net.Listener, and one server may do both at once.
func (s *Server) Serve(lis *Listener) error {
	s.mu.Lock()
	if s.stopped || s.draining.Load() {
		s.mu.Unlock()
		lis.Close()
		return ErrServerStopped
	}
	s.lis[lis] = true
	s.serving.Add(1)
	s.mu.Unlock()
	defer s.serving.Done()
	defer s.closeUnlessRetired(lis)
	defer s.czListen(lis)()
	for {
		a, err := lis.l.Accept()
		if err != nil {
			s.mu.Lock()
			quit := s.stopped || s.draining.Load()
			delete(s.lis, lis)
			s.mu.Unlock()
			if quit {
				return nil
			}
			return err
		}
		sc := newServerConn(s, lis, a)
		s.mu.Lock()
		if s.stopped || s.draining.Load() {
			s.mu.Unlock()
			sc.t.Refuse(errServerStopping)
			continue
		}
		if max := s.opts.maxConns; max > 0 && s.perLis[lis] >= max {
			s.mu.Unlock()
			sc.t.Refuse(status.Errorf(codes.Unavailable, "notnets: listener %q has %d connections open, its limit (MaxConnections)", lis.l.Name(), max))
			continue
		}
		s.conns[sc] = true
		s.perLis[lis]++
		s.mu.Unlock()
		sc.t.Serve()
	}
}

// Stop closes every listener and connection at once, ServeGRPC's too.
// Calls in progress end: handlers see their contexts cancelled, and
// clients get Unavailable.
func (s *Server) Stop() {
	s.mu.Lock()
	s.stopped = true
	s.closeListeners()
	conns := s.conns
	s.conns = make(map[*serverConn]bool)
	s.perLis = make(map[*Listener]int)
	g := s.grpc
	s.cv.Broadcast()
	s.mu.Unlock()
	g.stop()
	for sc := range conns {
		sc.t.Close(errServerStopping)
	}
	for sc := range conns {
		sc.t.WaitClosed()
	}
	s.serving.Wait()
	if s.cz != nil {
		s.cz.Remove() // as grpc-go's Stop removes its server from channelz
	}
}

// GracefulStop stops accepting connections, tells clients to start no new
// calls (a GOAWAY frame), waits for the calls in progress to finish, then
// closes every connection. It drains ServeGRPC's connections (as
// grpc.Server's GracefulStop does) at the same time as the pool's. Its
// listeners stay in the pool, marked draining (no client connects to
// them), until it returns, so that those who look at the pool (notnets
// pool ls) see the instance and its calls in flight until they end.
func (s *Server) GracefulStop() {
	s.mu.Lock()
	s.draining.Store(true)
	for l := range s.lis {
		l.l.Drain() // clients pick it no more, from now on
		l.l.Stop()  // and connect to it no more; s.Stop removes its file
		s.retired[l] = true
	}
	grpcDrained := s.grpc.gracefulStop()
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.t.GoAway("server is stopping")
	}
	s.mu.Lock()
	for !s.stopped && !s.allIdle() {
		s.cv.Wait()
	}
	s.mu.Unlock()
	<-grpcDrained // before Stop, which would cut its calls short
	s.Stop()
}

func (s *Server) allIdle() bool {
	for sc := range s.conns {
		if sc.t.Active() > 0 {
			return false
		}
	}
	return true
}

// closeListeners closes the listeners Serve serves and those GracefulStop
// stopped. The caller holds mu.
func (s *Server) closeListeners() {
	for l := range s.lis {
		l.Close()
	}
	for l := range s.retired {
		l.Close()
	}
	clear(s.retired)
}

// closeUnlessRetired closes lis, whose Serve returns, unless GracefulStop
// keeps it in the pool until its calls end.
func (s *Server) closeUnlessRetired(lis *Listener) {
	s.mu.Lock()
	retired := s.retired[lis]
	s.mu.Unlock()
	if !retired {
		lis.Close()
	}
}

// lookup finds the handler for a full method name "/service/method".
func (s *Server) lookup(full string) (*serviceInfo, *grpc.MethodDesc, *grpc.StreamDesc, error) {
	name := strings.TrimPrefix(full, "/")
	i := strings.LastIndex(name, "/")
	if !strings.HasPrefix(full, "/") || i <= 0 {
		return nil, nil, nil, status.Errorf(codes.Unimplemented, "malformed method name: %q", full)
	}
	service, method := name[:i], name[i+1:]
	s.mu.Lock()
	info := s.services[service]
	s.mu.Unlock()
	if info != nil {
		if md := info.methods[method]; md != nil {
			return info, md, nil, nil
		}
		if sd := info.streams[method]; sd != nil {
			return info, nil, sd, nil
		}
	}
	if sd := s.opts.unknown; sd != nil { // UnknownServiceHandler
		return unknownService, nil, sd, nil
	}
	if info == nil {
		return nil, nil, nil, status.Errorf(codes.Unimplemented, "unknown service %v", service)
	}
	return nil, nil, nil, status.Errorf(codes.Unimplemented, "unknown method %v for service %v", method, service)
}

// unknownService is the service of calls that go to the
// UnknownServiceHandler: no implementation, so the handler and the stream
// interceptors get a nil srv, as in grpc-go.
var unknownService = &serviceInfo{}

// unknownCall reports whether the call goes to the UnknownServiceHandler.
func (st *serverStream) unknownCall() bool {
	return st.sd != nil && st.sd == st.sc.srv.opts.unknown
}

// codecFor returns the codec for a call's content subtype.
func (s *Server) codecFor(subtype string) (encoding.CodecV2, error) {
	if s.opts.codec != nil {
		return s.opts.codec, nil
	}
	if subtype == "" {
		return grpcProto, nil
	}
	if c := encoding.GetCodecV2(subtype); c != nil {
		return c, nil
	}
	return nil, status.Errorf(codes.Internal, "grpc: no codec registered for content-subtype %s", subtype)
}

// statusOf converts a handler's error into the status sent to the client.
func statusOf(err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	return status.FromContextError(err)
}
