package notnets

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
)

// ErrServerStopped is returned by Serve after Stop or GracefulStop.
var ErrServerStopped = errors.New("notnets: the server has been stopped")

var errServerStopping = status.Error(codes.Unavailable, "notnets: server stopped")

// Server serves gRPC services over notnets listeners. It implements
// grpc.ServiceRegistrar, so generated code registers on it:
// pb.RegisterGreeterServer(srv, impl).
type Server struct {
	opts      serverOptions
	unaryInt  grpc.UnaryServerInterceptor
	streamInt grpc.StreamServerInterceptor

	mu       sync.Mutex
	cv       *sync.Cond // signalled when a connection goes idle or away
	services map[string]*serviceInfo
	lis      map[*Listener]bool
	conns    map[*serverConn]bool
	stopped  bool
	draining bool
	serving  sync.WaitGroup
}

var _ grpc.ServiceRegistrar = (*Server)(nil)

type serviceInfo struct {
	impl     any
	methods  map[string]*grpc.MethodDesc
	streams  map[string]*grpc.StreamDesc
	metadata any
}

// NewServer returns a server with no services registered.
func NewServer(opts ...ServerOption) *Server {
	o := serverOptions{wait: defaultWait(), maxRecvSize: DefaultMaxRecvMsgSize, window: defaultWindow}
	for _, opt := range opts {
		opt.applyServer(&o)
	}
	s := &Server{
		opts:      o,
		unaryInt:  chainUnaryServer(o.unary),
		streamInt: chainStreamServer(o.stream),
		services:  make(map[string]*serviceInfo),
		lis:       make(map[*Listener]bool),
		conns:     make(map[*serverConn]bool),
	}
	s.cv = sync.NewCond(&s.mu)
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
func (s *Server) Serve(lis *Listener) error {
	s.mu.Lock()
	if s.stopped || s.draining {
		s.mu.Unlock()
		lis.Close()
		return ErrServerStopped
	}
	s.lis[lis] = true
	s.serving.Add(1)
	s.mu.Unlock()
	defer s.serving.Done()
	defer lis.Close()
	for {
		a, err := lis.accept()
		if err != nil {
			s.mu.Lock()
			quit := s.stopped || s.draining
			delete(s.lis, lis)
			s.mu.Unlock()
			if quit {
				return nil
			}
			return err
		}
		sc := newServerConn(s, lis, a)
		s.mu.Lock()
		if s.stopped || s.draining {
			s.mu.Unlock()
			sc.c.fail(errServerStopping)
			continue
		}
		s.conns[sc] = true
		s.mu.Unlock()
		go sc.c.readLoop()
	}
}

// Stop closes every listener and connection at once. Calls in progress end:
// handlers see their contexts cancelled, and clients get Unavailable.
func (s *Server) Stop() {
	s.mu.Lock()
	s.stopped = true
	s.closeListeners()
	conns := s.conns
	s.conns = make(map[*serverConn]bool)
	s.cv.Broadcast()
	s.mu.Unlock()
	for sc := range conns {
		sc.c.fail(errServerStopping)
	}
	for sc := range conns {
		sc.c.waitReleased()
	}
	s.serving.Wait()
}

// GracefulStop stops accepting connections, tells clients to start no new
// calls (a GOAWAY frame), waits for the calls in progress to finish, then
// closes every connection.
func (s *Server) GracefulStop() {
	s.mu.Lock()
	s.draining = true
	s.closeListeners()
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.goAway("server is stopping")
	}
	s.mu.Lock()
	for !s.stopped && !s.allIdle() {
		s.cv.Wait()
	}
	s.mu.Unlock()
	s.Stop()
}

func (s *Server) allIdle() bool {
	for sc := range s.conns {
		if sc.active() > 0 {
			return false
		}
	}
	return true
}

func (s *Server) closeListeners() {
	for l := range s.lis {
		l.Close()
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
	if info == nil {
		return nil, nil, nil, status.Errorf(codes.Unimplemented, "unknown service %v", service)
	}
	if md := info.methods[method]; md != nil {
		return info, md, nil, nil
	}
	if sd := info.streams[method]; sd != nil {
		return info, nil, sd, nil
	}
	return nil, nil, nil, status.Errorf(codes.Unimplemented, "unknown method %v for service %v", method, service)
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

// serverConn is the server's side of one connection.
type serverConn struct {
	srv    *Server
	c      *conn
	peer   *peer.Peer
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	streams map[uint32]*serverStream
	lastID  uint32
}

func newServerConn(s *Server, lis *Listener, a *accepted) *serverConn {
	sc := &serverConn{
		srv:     s,
		streams: make(map[uint32]*serverStream),
		peer: &peer.Peer{
			Addr:      &Addr{Pool: lis.dir, Name: lis.name, PID: a.lay.PeerPID},
			LocalAddr: lis.Addr(),
		},
	}
	sc.ctx, sc.cancel = context.WithCancel(context.Background())
	sc.c = newConn(a.seg, a.lay.Server, a.lay.Client, a.lay.S2C, a.lay.C2S, s.opts.wait)
	sc.c.onFrame = sc.onFrame
	sc.c.onClose = sc.onClose
	a.lay.Server.State.Store(1) // open: the client may start calls
	return sc
}

func (sc *serverConn) active() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return len(sc.streams)
}

func (sc *serverConn) goAway(reason string) {
	if sc.c.lock(context.Background()) != nil {
		return
	}
	sc.c.writeFrame(context.Background(), frame.TypeGoAway, 0, 0, 0, &frame.GoAway{Reason: reason})
	sc.c.unlock()
}

func (sc *serverConn) onClose(err error) {
	sc.cancel()
	sc.mu.Lock()
	streams := sc.streams
	sc.mu.Unlock()
	for _, st := range streams {
		st.cancel(err)
	}
	s := sc.srv
	s.mu.Lock()
	delete(s.conns, sc)
	s.cv.Broadcast()
	s.mu.Unlock()
}

// onFrame handles a frame from the client on the reader goroutine.
func (sc *serverConn) onFrame(h frame.Header, p []byte) error {
	if h.Type == frame.TypeGoAway {
		return nil // the client is closing; its state word follows
	}
	if h.Type == frame.TypeHeaders {
		return sc.open(h, p)
	}
	sc.mu.Lock()
	st := sc.streams[h.Stream]
	last := sc.lastID
	sc.mu.Unlock()
	if st == nil {
		if h.Stream > last {
			return fmt.Errorf("%v frame for stream %d, which was never opened", h.Type, h.Stream)
		}
		return nil // the handler has already finished
	}
	switch h.Type {
	case frame.TypeMessage:
		if err := st.onData(h, p); err != nil {
			return err
		}
		if h.Flags&frame.FlagEndStream != 0 {
			st.halfClose()
		}
	case frame.TypeHalfClose:
		st.halfClose()
	case frame.TypeCancel:
		var fs frame.Status
		if err := fs.Decode(p); err != nil {
			return err
		}
		if _, ok := st.ctx.Deadline(); ok && codes.Code(fs.Code) == codes.DeadlineExceeded {
			// The handler's own deadline, set from the same timeout, ends
			// its context as DeadlineExceeded at the same moment.
			st.stop()
			return nil
		}
		st.cancel(status.Error(codes.Code(fs.Code), fs.Message))
	case frame.TypeWindowUpdate:
		return st.onWindowUpdate(h.Aux)
	default:
		return fmt.Errorf("unexpected %v frame from the client", h.Type)
	}
	return nil
}

// open starts a stream for a HEADERS frame and runs its handler.
func (sc *serverConn) open(h frame.Header, p []byte) error {
	var rh frame.RequestHeaders
	if err := rh.Decode(p); err != nil {
		return err
	}
	st := &serverStream{sc: sc, method: rh.Method}
	st.init(h.Stream, sc.c, sc.srv.opts.maxRecvSize, sc.srv.opts.window)
	st.ctx, st.cancelCtx = newServerContext(sc.ctx, &rh, sc.peer, st)
	if h.Flags&frame.FlagEndStream != 0 {
		st.closed = true
	}
	sc.mu.Lock()
	if h.Stream <= sc.lastID {
		sc.mu.Unlock()
		st.cancelCtx(nil)
		return fmt.Errorf("new stream %d is not above the last stream %d", h.Stream, sc.lastID)
	}
	sc.lastID = h.Stream
	sc.streams[h.Stream] = st
	sc.mu.Unlock()
	st.codec, st.codecErr = sc.srv.codecFor(rh.ContentSubtype)
	go st.run()
	return nil
}

func (sc *serverConn) remove(st *serverStream) {
	sc.mu.Lock()
	delete(sc.streams, st.id)
	idle := len(sc.streams) == 0
	sc.mu.Unlock()
	if idle {
		s := sc.srv
		s.mu.Lock()
		if s.draining {
			s.cv.Broadcast()
		}
		s.mu.Unlock()
	}
}
