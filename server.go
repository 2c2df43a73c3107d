package notnets

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/spin"
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
	draining atomic.Bool
	serving  sync.WaitGroup
	workers  *workers

	monitoring atomic.Bool // the inline-handler monitor is running
	refused    atomic.Uint64
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
	o := serverOptions{wait: defaultWait(), maxRecvSize: DefaultMaxRecvMsgSize, window: defaultWindow, liveness: DefaultLivenessTimeout}
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
		workers:   newWorkers(),
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
	defer lis.Close()
	for {
		a, err := lis.accept()
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
			sc.c.fail(errServerStopping)
			sc.c.endReader() // no reader ever ran: release may go on
			continue
		}
		s.conns[sc] = true
		s.mu.Unlock()
		s.workers.submit(sc.readRole)
		watch(sc.c, s.opts.liveness, localPID(s.opts.wait, a.peerPID()))
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
	s.draining.Store(true)
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

	ready []*serverStream // unary calls whose request is complete; reader only

	// openStreams counts the streams open as the client counts them: from
	// HEADERS until the server writes TRAILERS or reads a CANCEL
	// (MaxConcurrentStreams). A handler may run on after that.
	openStreams atomic.Int64

	denied error // why the peer may not call (PermissionDenied), or nil

	// inlineSince is when the handler running on the reading goroutine
	// started (Unix ns), or 0.
	inlineSince atomic.Int64
}

func newServerConn(s *Server, lis *Listener, a *accepted) *serverConn {
	sc := &serverConn{
		srv:     s,
		streams: make(map[uint32]*serverStream),
		peer: &peer.Peer{
			Addr:      &Addr{Pool: lis.dir, Name: lis.name, PID: a.peerPID()},
			LocalAddr: lis.Addr(),
		},
	}
	var auth AuthInfo
	if a.auth != nil {
		auth = *a.auth
	} else {
		auth = authInfoOf(a.seg, a.lay.PeerPID)
	}
	sc.peer.AuthInfo = auth
	sc.denied = s.opts.authz.check(auth)
	sc.ctx, sc.cancel = context.WithCancel(context.Background())
	sc.ctx = peer.NewContext(sc.ctx, sc.peer) // once per connection, not per call
	if sh := s.opts.stats; sh != nil {
		sc.ctx = sh.connBegin(sc.ctx, false, sc.peer.Addr, sc.peer.LocalAddr)
	}
	sc.c = newConn(a.seg, a.lay.Server, a.lay.Client, a.lay.S2C, a.lay.C2S, s.opts.wait)
	sc.c.initHeaps(a.lay.S2CHeap, a.lay.S2CReturns, a.lay.C2SHeap, a.lay.C2SReturns, s.opts.wait.checkViews)
	sc.c.onFrame = sc.onFrame
	sc.c.onClose = sc.onClose
	a.lay.Server.MaxStreams.Store(s.opts.maxStreams) // before the state: the client reads it after
	a.lay.Server.State.Store(pool.StateOpen)         // the client may start calls
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
	// A handler running inline holds the reading role until it returns,
	// which may be never: take the role from it, so that the connection
	// is released (the handler then finds it closed).
	if t := sc.inlineSince.Load(); t != 0 && sc.inlineSince.CompareAndSwap(t, 0) {
		sc.c.endReader()
	}
	if sh := sc.srv.opts.stats; sh != nil {
		defer sh.connEnd(sc.ctx, false)
	}
	sc.mu.Lock()
	streams := make([]*serverStream, 0, len(sc.streams))
	for _, st := range sc.streams {
		streams = append(streams, st)
	}
	sc.mu.Unlock()
	for _, st := range streams {
		st.cancel(err)
		st.dropQueued() // a stream that never ran is never removed
		st.neverRan(err)
	}
	s := sc.srv
	s.mu.Lock()
	delete(s.conns, sc)
	s.cv.Broadcast()
	s.mu.Unlock()
}

// readRole drains the ring, and hands each unary call whose request is
// complete to a handler. The last such call of a batch runs right here, on
// the goroutine that read it: the request reaches its handler with no
// hand-off between goroutines and no other thread woken on the way (waking
// one costs a futex call and a migration between cores, measured as a
// larger p99 on the development machine). If the handler runs long, the
// server's monitor passes the reading role to a worker, so that other calls
// and cancellations on the connection are still read.
func (sc *serverConn) readRole() {
	c := sc.c
	var idle spin.Idler
	for {
		n, ok := c.drainOrCheck()
		if !ok {
			c.endReader()
			return
		}
		if n == 0 {
			if idle.Spent(c.wait.spin) {
				c.block()
				idle.Reset()
			}
			continue
		}
		idle.Busy()
		if k := len(sc.ready); k > 0 {
			last := sc.ready[k-1]
			for _, st := range sc.ready[:k-1] {
				sc.srv.workers.submit(st.run)
			}
			clear(sc.ready)
			sc.ready = sc.ready[:0]
			if !sc.runInline(last) {
				return // the monitor handed the reading role to another goroutine
			}
		}
	}
}

// runInline runs st on the reading goroutine and reports whether this
// goroutine still holds the reading role afterwards.
func (sc *serverConn) runInline(st *serverStream) bool {
	start := monoNow()
	sc.inlineSince.Store(start)
	sc.srv.watchInline()
	st.run()
	return sc.inlineSince.CompareAndSwap(start, 0)
}

// monoStart anchors monoNow.
var monoStart = time.Now()

// monoNow is the monotonic time in ns since monoStart, never 0 (0 means
// "no inline handler"): a step of the wall clock must not delay the
// handoff.
func monoNow() int64 { return int64(time.Since(monoStart)) + 1 }

// handoffAfter is how long a handler may run on the reading goroutine
// before the monitor passes the reading role to another goroutine. The
// monitor ticks with time.Sleep, whose resolution is about 1 ms on Linux.
const handoffAfter = time.Millisecond

// watchInline makes sure the monitor runs while handlers run inline.
func (s *Server) watchInline() {
	if !s.monitoring.Load() && s.monitoring.CompareAndSwap(false, true) {
		go s.monitor()
	}
}

// monitor hands the reading role of a connection whose inline handler has
// run for handoffAfter to a worker. It exits after 100 quiet ticks.
func (s *Server) monitor() {
	for quiet := 0; ; {
		time.Sleep(handoffAfter)
		if s.rescueInline() {
			quiet = 0
			continue
		}
		if quiet++; quiet < 100 {
			continue
		}
		s.monitoring.Store(false)
		// An inline run may have started after the last look; if so, and no
		// other monitor has started since, keep watching.
		if !s.rescueInline() || !s.monitoring.CompareAndSwap(false, true) {
			return
		}
		quiet = 0
	}
}

// rescueInline reports whether any handler runs inline, after taking the
// reading role from those that have run for handoffAfter.
func (s *Server) rescueInline() bool {
	now := monoNow()
	busy := false
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		t := sc.inlineSince.Load()
		if t == 0 {
			continue
		}
		busy = true
		if now-t >= int64(handoffAfter) && sc.inlineSince.CompareAndSwap(t, 0) {
			s.workers.submit(sc.readRole)
		}
	}
	return busy
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
	case frame.TypeMessage, frame.TypeMessageRef:
		if err := st.onData(h, p); err != nil {
			return err
		}
		if h.Flags&frame.FlagEndStream != 0 {
			st.halfClose()
			sc.requestDone(st)
		}
	case frame.TypeHalfClose:
		st.halfClose()
		sc.requestDone(st)
	case frame.TypeCancel:
		var fs frame.Status
		if err := fs.Decode(p); err != nil {
			return err
		}
		st.closeStream()
		if st.hasDeadline && codes.Code(fs.Code) == codes.DeadlineExceeded {
			// The handler's own deadline, set from the same timeout, ends
			// its context as DeadlineExceeded at the same moment.
			st.stop()
			if !st.started {
				sc.remove(st)
				st.cancelCtx(nil) // it never runs: release its deadline's timer
				st.neverRan(status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error()))
			}
			return nil
		}
		err := status.Error(codes.Code(fs.Code), fs.Message)
		st.cancel(err)
		if !st.started {
			sc.remove(st) // a unary call cancelled before its request was whole
			st.neverRan(err)
		}
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
	st.ctx, st.cancelCtx = newServerContext(sc.ctx, &rh, st)
	st.hasDeadline = rh.Timeout > 0
	if sc.srv.opts.stats != nil {
		// For InHeader, which the stats handlers get on the call's
		// goroutine, not on this one (startStats).
		st.reqMD, st.reqLen = rh.MD, len(p)
	}
	if h.Flags&frame.FlagEndStream != 0 {
		st.closed = true
	}
	// Decided before the stream is in the map, where onClose may read it.
	if sc.denied != nil {
		st.err = sc.denied // refused before anything of the server's runs for it
	} else if st.codec, st.err = sc.srv.codecFor(rh.ContentSubtype); st.err == nil {
		st.info, st.md, st.sd, st.err = sc.srv.lookup(rh.Method)
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
	if limit := sc.srv.opts.maxStreams; limit > 0 && sc.openStreams.Load() >= int64(limit) {
		st.cancelCtx(nil)
		return fmt.Errorf("stream %d opened beyond the limit of %d concurrent streams", h.Stream, limit)
	}
	sc.openStreams.Add(1)
	if sc.denied != nil {
		sc.srv.refused.Add(1)
	}
	if st.md == nil || st.closed {
		st.started = true
		sc.srv.workers.submit(st.run)
	}
	return nil
}

// requestDone queues a unary call whose request has fully arrived to run.
func (sc *serverConn) requestDone(st *serverStream) {
	if !st.started {
		st.started = true
		sc.ready = append(sc.ready, st)
	}
}

func (sc *serverConn) remove(st *serverStream) {
	st.dropQueued()
	sc.mu.Lock()
	delete(sc.streams, st.id)
	idle := len(sc.streams) == 0
	sc.mu.Unlock()
	if s := sc.srv; idle && s.draining.Load() {
		s.mu.Lock()
		s.cv.Broadcast()
		s.mu.Unlock()
	}
}
