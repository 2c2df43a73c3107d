package notnets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/spin"
)

// ErrClientConnClosing is the status of calls made on, or cut short by, a
// closed ClientConn, as in grpc-go.
var ErrClientConnClosing = status.Error(codes.Canceled, "grpc: the client connection is closing")

// ClientConn is a client connection to a notnets server through a memory
// pool. It implements grpc.ClientConnInterface, so generated clients take it:
// pb.NewGreeterClient(cc). It is safe for concurrent use; calls on it are
// multiplexed by stream id. When its connection fails or the server goes
// away, it connects again with backoff, as grpc-go does; calls made
// meanwhile fail with Unavailable, or with grpc.WaitForReady(true) wait for
// the new connection.
type ClientConn struct {
	name      string
	opts      dialOptions
	peerAddr  *Addr
	unaryInt  grpc.UnaryClientInterceptor
	streamInt grpc.StreamClientInterceptor

	mu        sync.Mutex
	cur       *transport    // the connection calls start on; nil while there is none
	ready     chan struct{} // closed when cur is replaced
	lastErr   error         // why there is no usable connection
	closed    bool
	quit      chan struct{} // closed by Close: stops reconnecting
	reconnect bool          // a reconnecting goroutine runs
	state     connectivity.State
	stateCh   chan struct{} // closed when state changes
	retryNow  chan struct{} // ResetConnectBackoff: cut the wait short (capacity 1)
}

// transport is one connection of a ClientConn and the calls on it.
type transport struct {
	cc     *ClientConn
	c      *conn
	server AuthInfo // the server's identity, from its listener
	// orphans are ended streams given up with messages unread (under mu).
	orphans []*clientStream
	dropped bool // the connection has closed: orphans are dropped at once

	mu        sync.Mutex
	streams   map[uint32]*clientStream
	lastID    uint32
	goAway    error         // why no new streams may start, once the server said so
	goingAway chan struct{} // closed with goAway set

	statsCtx context.Context // the connection's context from the stats handlers' TagConn

	// The server's limit on open streams (0 for none), the streams that
	// count against it, and a channel closed when one ends (under mu).
	maxStreams uint32
	slotsUsed  uint32
	slotFree   chan struct{}
}

var _ grpc.ClientConnInterface = (*ClientConn)(nil)

// Dial connects to the listener name in the pool and returns once the
// server has accepted, or ctx ends (without a deadline on ctx, Dial waits at
// most the connect timeout). A missing listener is an Unavailable error.
func Dial(ctx context.Context, name string, opts ...DialOption) (*ClientConn, error) {
	o := dialOptions{
		ringSize:     DefaultRingSize,
		arenaSize:    DefaultArenaSize,
		wait:         defaultWait(),
		maxRecvSize:  DefaultMaxRecvMsgSize,
		window:       defaultWindow,
		connectLimit: 20 * time.Second,
		liveness:     DefaultLivenessTimeout,
		backoff:      backoff.DefaultConfig,
	}
	for _, opt := range opts {
		opt.applyDial(&o)
	}
	if o.pool == "" {
		o.pool = pool.DefaultDir()
	}
	o.pool = filepath.Clean(o.pool) // a trailing slash would follow a symbolic link
	if err := pool.ValidName(name); err != nil {
		return nil, err
	}
	if err := ring.CheckCap(o.ringSize); err != nil {
		return nil, fmt.Errorf("notnets: %w", err)
	}
	if err := pool.CheckHeap(o.arenaSize); err != nil {
		return nil, fmt.Errorf("notnets: arena %w", err)
	}
	var err error
	if o.access, err = poolAccess(o.group); err != nil {
		return nil, err
	}
	if err := checkPool(o.pool, o.access); err != nil {
		return nil, err
	}
	if len(o.callOptions) == 0 {
		var err error
		if o.plainCall, err = newCallInfo(&o, nil); err != nil {
			return nil, err
		}
		o.subtypeCalls = &subtypeCalls{m: make(map[string]*callInfo)}
	}
	cc := &ClientConn{
		name:      name,
		opts:      o,
		peerAddr:  &Addr{Pool: o.pool, Name: name},
		unaryInt:  chainUnaryClient(o.unary),
		streamInt: chainStreamClient(o.stream),
		ready:     make(chan struct{}),
		quit:      make(chan struct{}),
		state:     connectivity.Connecting,
		stateCh:   make(chan struct{}),
		retryNow:  make(chan struct{}, 1),
	}
	t, err := cc.connect(ctx)
	if err != nil {
		return nil, err
	}
	cc.mu.Lock()
	if why := cc.install(t); why != nil {
		cc.lastErr, cc.reconnect = why, true
		cc.setState(connectivity.TransientFailure)
		go cc.reconnectLoop()
	}
	cc.mu.Unlock()
	return cc, nil
}

// install makes t the connection new calls start on, unless it already
// failed or was told to go away: its reader may have called lost before t
// was installed, when lost had nothing to do. It returns why t cannot be
// used, or nil. The caller holds cc.mu.
func (cc *ClientConn) install(t *transport) error {
	why := t.deadReason()
	if why == nil {
		cc.cur = t
		cc.setState(connectivity.Ready)
	}
	return why
}

// deadReason reports why t takes no new calls (it failed, or the server
// said GOAWAY), or nil.
func (t *transport) deadReason() error {
	if err := t.c.closeErr(); err != nil {
		return err
	}
	select {
	case <-t.goingAway: // no lock on the path of every call
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.goAway
	default:
		return nil
	}
}

// setState records a new connectivity state and wakes WaitForStateChange.
// The caller holds cc.mu.
func (cc *ClientConn) setState(s connectivity.State) {
	if cc.state == s {
		return
	}
	cc.state = s
	close(cc.stateCh)
	cc.stateCh = make(chan struct{})
}

// GetState returns the connectivity state: Ready while there is a
// connection for new calls, Connecting while one is being made,
// TransientFailure while waiting to try again, Shutdown after Close. A
// notnets ClientConn is never Idle: it connects at Dial and at once after
// a loss.
func (cc *ClientConn) GetState() connectivity.State {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.state
}

// WaitForStateChange waits until the state differs from source, and
// reports true, or until ctx ends, and reports false.
func (cc *ClientConn) WaitForStateChange(ctx context.Context, source connectivity.State) bool {
	for {
		cc.mu.Lock()
		state, ch := cc.state, cc.stateCh
		cc.mu.Unlock()
		if state != source {
			return true
		}
		select {
		case <-ch:
			// Changed, even if it has changed back since (as grpc-go).
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// Connect does nothing: a notnets ClientConn is never idle. It is here
// for code written against grpc.ClientConn.
func (cc *ClientConn) Connect() {}

// ResetConnectBackoff makes a ClientConn that waits to connect again try
// now.
func (cc *ClientConn) ResetConnectBackoff() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if !cc.reconnect {
		return // nothing waits: a token now would cut a later wait short
	}
	select {
	case cc.retryNow <- struct{}{}:
	default:
	}
}

// connect makes a new connection, bounded by ctx and the connect timeout.
func (cc *ClientConn) connect(ctx context.Context) (*transport, error) {
	pool.Clean(cc.opts.pool) // best effort: files of processes that died
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cc.opts.connectLimit)
		defer cancel()
	}
	seg, lay, server, err := connect(ctx, &cc.opts, cc.name)
	if err != nil {
		return nil, err
	}
	t := &transport{cc: cc, streams: make(map[uint32]*clientStream), server: server, maxStreams: lay.Server.MaxStreams.Load(), goingAway: make(chan struct{})}
	if sh := cc.opts.stats; sh != nil {
		t.statsCtx = sh.connBegin(context.Background(), true, cc.peerAddr, &Addr{Pool: cc.opts.pool})
	}
	t.c = newConn(seg, lay.Client, lay.Server, lay.C2S, lay.S2C, cc.opts.wait)
	t.c.initHeaps(lay.C2SHeap, lay.C2SReturns, lay.S2CHeap, lay.S2CReturns, cc.opts.wait.checkViews)
	t.c.onFrame = t.onFrame
	t.c.onClose = t.onClose
	go t.readLoop()
	watch(t.c, cc.opts.liveness, localPID(cc.opts.wait, server.PID))
	return t, nil
}

// lost is called when t can take no new calls (it failed, or the server
// said it is going away): calls now fail fast, or wait for ready, while a
// goroutine connects again with backoff.
func (cc *ClientConn) lost(t *transport, why error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.cur != t || cc.closed {
		return
	}
	cc.cur, cc.lastErr = nil, why
	cc.setState(connectivity.TransientFailure)
	if !cc.reconnect {
		cc.reconnect = true
		go cc.reconnectLoop()
	}
}

// reconnectLoop connects again, waiting between tries as grpc-go's
// connection backoff does, until it succeeds or the ClientConn closes.
func (cc *ClientConn) reconnectLoop() {
	for retries := 0; ; retries++ {
		if retries > 0 {
			wait := time.NewTimer(backoffDelay(cc.opts.backoff, retries-1))
			select {
			case <-wait.C:
			case <-cc.retryNow:
				wait.Stop()
				retries = 0 // the next waits start again from the base delay
			case <-cc.quit:
				wait.Stop()
				return
			}
		}
		cc.mu.Lock()
		if !cc.closed {
			cc.setState(connectivity.Connecting)
		}
		cc.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), cc.opts.connectLimit)
		go func() {
			select {
			case <-cc.quit:
				cancel()
			case <-ctx.Done():
			}
		}()
		t, err := cc.connect(ctx)
		cancel()
		cc.mu.Lock()
		if cc.closed {
			cc.mu.Unlock()
			if t != nil {
				t.close(ErrClientConnClosing)
			}
			return
		}
		if err == nil {
			if err = cc.install(t); err != nil {
				go t.close(err) // failed at once: try again
			}
		}
		if err != nil {
			cc.lastErr = err
			cc.setState(connectivity.TransientFailure)
			cc.mu.Unlock()
			continue
		}
		cc.lastErr, cc.reconnect = nil, false
		close(cc.ready)
		cc.ready = make(chan struct{})
		cc.mu.Unlock()
		return
	}
}

// backoffDelay is grpc-go's exponential backoff with jitter.
func backoffDelay(cfg backoff.Config, retries int) time.Duration {
	d := float64(cfg.BaseDelay)
	for i := 0; i < retries && d < float64(cfg.MaxDelay); i++ {
		d *= cfg.Multiplier
	}
	d = min(d, float64(cfg.MaxDelay))
	d *= 1 + cfg.Jitter*(rand.Float64()*2-1)
	return time.Duration(max(d, 0))
}

// transport returns the connection a new call starts on. Without one, the
// call fails with the reason, or, when it waits for ready, waits for a new
// connection as long as ctx allows.
func (cc *ClientConn) transport(ctx context.Context, waitForReady bool) (*transport, error) {
	for {
		cc.mu.Lock()
		t, ready, closed, why := cc.cur, cc.ready, cc.closed, cc.lastErr
		cc.mu.Unlock()
		if closed {
			return nil, ErrClientConnClosing
		}
		// A connection that failed or was told to go away takes no new
		// calls; lost is about to clear it. Until then, look again every
		// millisecond rather than spin.
		var recheck <-chan time.Time
		if t != nil {
			dead := t.deadReason()
			if dead == nil {
				return t, nil
			}
			why, recheck = dead, time.After(time.Millisecond)
		}
		if !waitForReady {
			return nil, status.Convert(why).Err()
		}
		select {
		case <-ready:
		case <-recheck:
		case <-cc.quit:
			return nil, ErrClientConnClosing
		case <-ctx.Done():
			return nil, contextStatus(ctx.Err())
		}
	}
}

// Target returns the listener name the connection was dialled to.
func (cc *ClientConn) Target() string { return cc.name }

// Close closes the connection. Calls in progress fail with Canceled; the
// server sees the connection close and cancels their handlers.
func (cc *ClientConn) Close() error {
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		return nil
	}
	cc.closed = true
	cc.setState(connectivity.Shutdown)
	close(cc.quit)
	t := cc.cur
	cc.cur = nil
	cc.mu.Unlock()
	if t != nil {
		t.mu.Lock()
		streams := make([]*clientStream, 0, len(t.streams))
		for _, s := range t.streams {
			streams = append(streams, s)
		}
		t.mu.Unlock()
		t.close(ErrClientConnClosing)
		// As in grpc-go, closing finishes the calls: their OnFinish and
		// stats End run now, even for streams nobody reads again.
		for _, s := range streams {
			s.done()
		}
	}
	return nil
}

// close closes the connection and waits until it is released.
func (t *transport) close(err error) {
	t.c.fail(err)
	t.c.waitReleased()
}

// conn returns the current connection's conn, for tests.
func (cc *ClientConn) conn() *conn {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.cur == nil {
		return nil
	}
	return cc.cur.c
}

// readLoop is the background reader. It drains the ring whenever no call
// is polling for its own reply, spins for the spin period after the last
// frame, then blocks on the doorbell. While callers poll it parks, so that
// a burst of calls costs no goroutine hand-off at all.
func (t *transport) readLoop() {
	c := t.c
	defer c.endReader()
	var idle spin.Idler
	for {
		if c.pollers.Load() > 0 {
			c.park()
			idle.Reset()
			continue
		}
		n, ok := c.drainOrCheck()
		if !ok {
			return
		}
		if n > 0 {
			idle.Busy()
		} else if idle.Spent(c.wait.spin) {
			c.block()
			idle.Reset()
		}
	}
}

// openStreams reports whether any call is in progress.
func (t *transport) openStreams() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.streams) > 0
}

// orphan records an ended stream whose caller gave up before reading all
// its messages, so that closing the connection frees them.
func (t *transport) orphan(s *clientStream) {
	t.mu.Lock()
	closed := t.dropped
	if !closed && !s.orphaned.Load() {
		s.orphaned.Store(true)
		t.orphans = append(t.orphans, s)
	}
	t.mu.Unlock()
	if closed {
		s.dropQueued()
	}
}

// unorphan forgets s: its caller has finished with it after all.
func (t *transport) unorphan(s *clientStream) {
	t.mu.Lock()
	if i := slices.Index(t.orphans, s); i >= 0 {
		t.orphans = slices.Delete(t.orphans, i, i+1)
	}
	t.mu.Unlock()
}

func (t *transport) onClose(err error) {
	t.mu.Lock()
	streams := t.streams
	t.streams = map[uint32]*clientStream{}
	orphans := t.orphans
	t.orphans, t.dropped = nil, true
	t.mu.Unlock()
	for _, s := range orphans {
		s.dropQueued()
	}
	st := status.Convert(err)
	for _, s := range streams {
		s.finish(st, nil)
	}
	t.cc.lost(t, err)
	if sh := t.cc.opts.stats; sh != nil {
		sh.connEnd(t.statsCtx, true)
	}
}

// onFrame handles a frame from the server on the reader goroutine.
func (t *transport) onFrame(h frame.Header, p []byte) error {
	if h.Type == frame.TypeGoAway {
		why := status.Errorf(codes.Unavailable, "notnets: server is going away: %s", *t.c.peerReason.Load())
		t.mu.Lock()
		if t.goAway == nil {
			t.goAway = why
			close(t.goingAway)
		}
		t.mu.Unlock()
		t.cc.lost(t, why) // calls in progress go on; new ones need a new connection
		return nil
	}
	t.mu.Lock()
	s := t.streams[h.Stream]
	last := t.lastID
	t.mu.Unlock()
	if s == nil {
		if h.Stream > last {
			return fmt.Errorf("%v frame for stream %d, which was never opened", h.Type, h.Stream)
		}
		return nil // the stream ended here first (cancelled); the frame is stale
	}
	switch h.Type {
	case frame.TypeHeaders:
		var rh frame.ResponseHeaders
		if err := rh.Decode(p); err != nil {
			return err
		}
		s.mu.Lock()
		dup := s.gotHeader
		s.header, s.gotHeader = rh.MD, true
		s.mu.Unlock()
		if dup {
			return fmt.Errorf("second HEADERS frame on stream %d", h.Stream)
		}
		if sh := t.cc.opts.stats; sh != nil {
			sh.handle(s.ctx, &stats.InHeader{Client: true, Header: rh.MD.Copy(), WireLength: len(p)})
		}
		s.signal()
	case frame.TypeMessage, frame.TypeMessageRef:
		s.mu.Lock()
		first := !s.gotHeader
		s.gotHeader = true // a message without HEADERS before it has empty headers
		s.mu.Unlock()
		if sh := t.cc.opts.stats; sh != nil && first {
			sh.handle(s.ctx, &stats.InHeader{Client: true, Header: metadata.MD{}})
		}
		return s.onData(h, p)
	case frame.TypeTrailers, frame.TypeCancel:
		var fs frame.Status
		if err := fs.Decode(p); err != nil {
			return err
		}
		st, err := statusFromFrame(&fs)
		if err != nil {
			return err
		}
		if sh := t.cc.opts.stats; sh != nil && h.Type == frame.TypeTrailers {
			sh.handle(s.ctx, &stats.InTrailer{Client: true, Trailer: fs.MD.Copy(), WireLength: len(p)})
		}
		s.finish(st, fs.MD)
		s.releaseSlot()
	case frame.TypeWindowUpdate:
		return s.onWindowUpdate(h.Aux)
	default:
		return fmt.Errorf("unexpected %v frame from the server", h.Type)
	}
	return nil
}

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
	ci, err := newCallInfo(&cc.opts, opts)
	if err != nil {
		return err
	}
	msg, err := prepareMsg(ci.codec, args, ci.maxSend)
	if err != nil {
		return cc.requestFailed(ctx, method, ci, err)
	}
	s, err := cc.start(ctx, method, ci, unaryDesc, &msg)
	msg.free()
	if err != nil {
		return err
	}
	return s.recvUnary(reply)
}

// NewStream starts a streaming call. It implements grpc.ClientConnInterface.
func (cc *ClientConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if cc.streamInt != nil {
		return cc.streamInt(ctx, desc, nil, method, cc.newStream, opts...)
	}
	return cc.newStream(ctx, desc, nil, method, opts...)
}

func (cc *ClientConn) newStream(ctx context.Context, desc *grpc.StreamDesc, _ *grpc.ClientConn, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ci, err := newCallInfo(&cc.opts, opts)
	if err != nil {
		return nil, err
	}
	s, err := cc.start(ctx, method, ci, desc, nil)
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
	s.mu.Lock() // the function may already run, and done reads stopWatch
	s.stopWatch = stop
	s.mu.Unlock()
	return s, nil
}

// start opens a stream and sends its HEADERS frame, followed, for a unary
// call, by the request with the end-of-stream flag in the same publish.
func (cc *ClientConn) start(ctx context.Context, method string, ci *callInfo, desc *grpc.StreamDesc, msg *outMsg) (*clientStream, error) {
	// As in grpc-go, a call that cannot begin (its context is over, the
	// ClientConn is closed) reports nothing to stats handlers.
	if err := cc.canBegin(ctx); err != nil {
		return nil, cc.notStarted(ctx, ci, time.Time{}, err)
	}
	ctx, begin := cc.beginStats(ctx, method, ci, desc)
	sh := cc.opts.stats
	reported := false // OutHeader and OutPayload, once even if the call starts again
	for {
		s, ctxMD, err := cc.prepareStream(ctx, method, ci, desc, msg, begin)
		if err == errTryAnother {
			continue // nothing went out on a connection that takes no more calls
		}
		if err != nil {
			return nil, err
		}
		sent, err := s.send(sh, ctxMD, msg, &reported)
		switch {
		case err == nil:
			return s, nil
		case sent || err != errTryAnother:
			return nil, err
		}
	}
}

// errTryAnother says that a call's connection stopped taking new calls
// (GOAWAY, or it closed) before anything of the call went out on it: the
// call starts again on the next connection, as grpc-go's transparent
// retry does.
var errTryAnother = errors.New("notnets: try another connection")

// prepareStream picks the connection for a call, builds its headers and
// waits for a place under the server's stream limit. Errors other than
// errTryAnother have ended the call.
func (cc *ClientConn) prepareStream(ctx context.Context, method string, ci *callInfo, desc *grpc.StreamDesc, msg *outMsg, begin time.Time) (*clientStream, metadata.MD, error) {
	t, err := cc.transport(ctx, ci.waitForReady)
	if err != nil {
		return nil, nil, cc.notStarted(ctx, ci, begin, err)
	}
	hdr, ctxMD, err := cc.requestHeaders(ctx, t, method, ci)
	if err != nil {
		return nil, nil, cc.notStarted(ctx, ci, begin, err)
	}
	if cc.opts.stats != nil || ci.creds != nil || len(cc.opts.perRPC) > 0 {
		// The peer is in the call's context from here on, as in grpc-go.
		ctx = peer.NewContext(ctx, &peer.Peer{Addr: cc.peerAddr, LocalAddr: &Addr{Pool: cc.opts.pool}, AuthInfo: t.server})
	}
	// The headers live in the stream so that encoding them allocates nothing.
	s := &clientStream{cc: cc, t: t, ctx: ctx, desc: desc, ci: ci, method: method, reqHdr: hdr, begin: begin}
	if err := s.takeSlot(); err != nil {
		if err == errTryAnother {
			return nil, nil, err
		}
		return nil, nil, s.notStarted(err)
	}
	if err := t.c.stage(msg); err != nil {
		return nil, nil, s.notStarted(err)
	}
	return s, ctxMD, nil
}

// send writes the call's HEADERS and, for a unary call, its request. It
// reports whether anything went out; errTryAnother (nothing did) means the
// call is to start again on another connection.
func (s *clientStream) send(sh statsHandlers, ctxMD metadata.MD, msg *outMsg, reported *bool) (bool, error) {
	t, ctx, cc := s.t, s.ctx, s.cc
	if sh != nil && !*reported {
		// Reported as queued, as grpc-go does: never under the write lock,
		// before the reply can be read, and once for the call.
		*reported = true
		sh.handle(ctx, &stats.OutHeader{Client: true, Header: ctxMD.Copy(), FullMethod: s.method, RemoteAddr: cc.peerAddr, LocalAddr: &Addr{Pool: cc.opts.pool}})
		if msg != nil {
			sh.outPayload(ctx, true, msg.value, msg.size)
		}
	}
	if err := t.c.lock(ctx); err != nil {
		return false, s.notStarted(err)
	}
	// Ids are taken under the write lock, so they reach the server in order.
	if err := t.register(s); err != nil {
		t.c.unlock()
		if err == errTryAnother {
			s.releaseSlot()
			msg.unstage()
			return false, err
		}
		return false, s.notStarted(err)
	}
	// The time left now, after any wait for a connection or a place.
	if dl, ok := ctx.Deadline(); ok {
		if s.reqHdr.Timeout = time.Until(dl); s.reqHdr.Timeout <= 0 {
			t.c.unlock()
			return false, s.notStarted(status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error()))
		}
	}
	if err := t.c.writeFrame(ctx, frame.TypeHeaders, 0, s.id, 0, &s.reqHdr); err != nil {
		t.c.unlock()
		// The server never saw the stream: end it here without a CANCEL.
		return true, s.notStarted(err)
	}
	var err error
	if msg != nil {
		s.quota -= msg.size
		err = t.c.writeMsg(ctx, s.id, frame.FlagEndStream, msg)
		s.halfClosed = true
	}
	t.c.unlock()
	if err != nil {
		s.cancel(err)
		s.doneWith(err) // if the stream had already ended, cancel did not
		return true, err
	}
	if msg == nil {
		t.c.resumeReader() // a stream's messages may come while nobody polls
	}
	return true, nil
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
func (cc *ClientConn) requestHeaders(ctx context.Context, t *transport, method string, ci *callInfo) (frame.RequestHeaders, metadata.MD, error) {
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

// notStarted ends a stream the server never saw, with err.
func (s *clientStream) notStarted(err error) error {
	s.finish(status.Convert(err), nil)
	s.releaseSlot()
	s.done()
	return err
}

// takeSlot waits until the server's limit on open streams lets the stream
// open, or the call's context ends or the connection closes.
func (s *clientStream) takeSlot() error {
	t := s.t
	if t.maxStreams == 0 {
		return nil
	}
	for {
		t.mu.Lock()
		if t.slotsUsed < t.maxStreams {
			t.slotsUsed++
			t.mu.Unlock()
			s.holdsSlot.Store(true)
			return nil
		}
		if t.slotFree == nil {
			t.slotFree = make(chan struct{})
		}
		free := t.slotFree
		t.mu.Unlock()
		select {
		case <-free:
		case <-s.ctx.Done():
			return contextStatus(s.ctx.Err())
		case <-t.c.done:
			return errTryAnother
		case <-t.goingAway:
			return errTryAnother
		}
	}
}

// releaseSlot gives back the stream's place under the server's limit, once:
// when its trailers or the server's CANCEL have been read, or after its
// own CANCEL has been written (so that the server reads that first).
func (s *clientStream) releaseSlot() {
	if !s.holdsSlot.CompareAndSwap(true, false) {
		return
	}
	t := s.t
	t.mu.Lock()
	t.slotsUsed--
	free := t.slotFree
	t.slotFree = nil
	t.mu.Unlock()
	if free != nil {
		close(free)
	}
}

func (t *transport) register(s *clientStream) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.c.closeErr() != nil || t.goAway != nil {
		return errTryAnother
	}
	if t.lastID == 1<<32-1 {
		return status.Error(codes.Unavailable, "notnets: stream ids exhausted on this connection")
	}
	t.lastID++
	s.init(t.lastID, t.c, s.ci.maxRecv, t.cc.opts.window)
	t.streams[s.id] = s
	return nil
}

func (t *transport) unregister(id uint32) {
	t.mu.Lock()
	delete(t.streams, id)
	t.mu.Unlock()
}

// clientStream is one call on a ClientConn.
type clientStream struct {
	streamBase
	cc     *ClientConn
	t      *transport // the connection the call runs on
	ctx    context.Context
	desc   *grpc.StreamDesc
	ci     *callInfo
	method string

	// Set by the reader (or a cancel), under mu.
	header    metadata.MD
	gotHeader bool
	trailer   metadata.MD
	st        *status.Status // the final status, once the stream is over
	endedHere bool           // st came from this side (deadline, cancel, local error)

	// Used only by the caller's goroutine(s).
	halfClosed bool
	received   int
	stopWatch  func() bool
	reqHdr     frame.RequestHeaders // sent once, at the start
	begin      time.Time            // when the call began, for stats handlers
	orphaned   atomic.Bool          // in t.orphans
	holdsSlot  atomic.Bool          // counts against the server's stream limit
	finishOnce sync.Once
}

// finish records the stream's final status, unless it already has one,
// and removes it from the connection. Messages already queued stay readable.
func (s *clientStream) finish(st *status.Status, trailer metadata.MD) bool {

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

// cancel ends the stream locally with err's status and tells the server.
func (s *clientStream) cancel(err error) {
	st := status.Convert(err)
	if err == context.Canceled || err == context.DeadlineExceeded {
		st = status.FromContextError(err)
	}
	if !s.finish(st, nil) {
		// The stream had already ended: what it received stands and stays
		// readable, as in grpc-go. Should the caller never read it, the
		// shared memory it holds goes back when the connection closes.
		s.mu.Lock()
		unread := len(s.msgs) > 0
		s.mu.Unlock()
		if unread {
			s.t.orphan(s)
		}
		return
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
	s.releaseSlot()
	s.done()
}

// done runs the call options that want the call's outcome, once.
func (s *clientStream) done() { s.end(nil, true, false) }

// doneWith is done for a call whose caller gets err (nil for success),
// which may differ from the stream's status: a reply too large or that
// failed to decode fails a call the server ended with OK.
func (s *clientStream) doneWith(err error) { s.end(err, false, false) }

// end runs the call's OnFinish options and stats End once. Unless keep is
// set, it also lets go of the messages nobody read; with keep (the caller
// gave up on a stream that had already ended) they stay readable, and the
// connection frees them at close if nobody reads them (orphan).
func (s *clientStream) end(err error, useStatus, keep bool) {
	if !keep {
		defer s.settle()
	}
	s.finishOnce.Do(func() {
		s.mu.Lock()
		stop := s.stopWatch
		s.mu.Unlock()
		if stop != nil {
			stop()
		}
		s.mu.Lock()
		header, trailer, st := s.header, s.trailer, s.st
		s.mu.Unlock()
		if useStatus {
			err = st.Err()
		}
		for _, h := range s.ci.headers {
			*h = header
		}
		for _, t := range s.ci.trailers {
			*t = trailer
		}
		for _, p := range s.ci.peers {
			*p = peer.Peer{Addr: s.cc.peerAddr, LocalAddr: &Addr{Pool: s.cc.opts.pool}, AuthInfo: s.t.server}
		}
		for _, f := range s.ci.onFinish {
			f(err)
		}
		if sh := s.cc.opts.stats; sh != nil {
			sh.handle(s.ctx, &stats.End{Client: true, BeginTime: s.begin, EndTime: time.Now(), Trailer: trailer, Error: err})
		}
	})
}

// settle frees the messages nobody will read and forgets the stream as an
// orphan: the call is over for its caller.
func (s *clientStream) settle() {
	if s.orphaned.Load() {
		s.t.unorphan(s)
	}
	s.mu.Lock()
	s.freeAll()
	s.mu.Unlock()
}

// wait blocks until ready (called with s.mu held) holds or the call's
// context ends. For the spin period it polls the ring itself, so that the
// reply is read by the goroutine that waits for it; then it leaves reading
// to the background reader and parks. Several callers may poll at once;
// they then yield to each other every few polls (Gosched is cheap when no
// processor is idle), so that none holds a processor another one's answered
// caller needs.
func (s *clientStream) wait(ready func() bool) error {
	if s.ready(ready) {
		return nil
	}
	c := s.c
	c.pollers.Add(1)
	done := false
	var idle spin.Idler
	for polls := 1; c.poll(); polls++ {
		if done = s.ready(ready); done || s.ctx.Err() != nil || idle.Spent(c.wait.spin) {
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

func (s *clientStream) ready(ready func() bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ready()
}

// recvUnary waits for the reply and status of a unary call.
func (s *clientStream) recvUnary(reply any) (err error) {
	if err := s.wait(func() bool { return s.st != nil }); err != nil {
		// The reply may have come as the deadline passed: then it stands,
		// and the cancel does nothing.
		s.cancel(err)
	}
	defer func() { s.doneWith(err) }()
	s.mu.Lock()
	st := s.st
	var m inMsg
	n := len(s.msgs)
	if n > 0 {
		m = s.takeMsg()
	}
	s.mu.Unlock()
	if st.Code() != codes.OK || n != 1 {
		m.free() // a reply in shared memory goes back to the server
		if st.Code() != codes.OK {
			return st.Err()
		}
		return status.Errorf(codes.Internal, "grpc: cardinality violation: unary call got %d response messages", n)
	}
	if m.err != nil {
		return m.err
	}
	size := m.buf.Len()
	if err := s.decode(s.ci.codec, m.buf, reply); err != nil {
		return err
	}
	if sh := s.cc.opts.stats; sh != nil {
		sh.inPayload(s.ctx, true, reply, size)
	}
	return nil
}

// Context returns the call's context.
func (s *clientStream) Context() context.Context { return s.ctx }

// Header waits for the server's response headers.
func (s *clientStream) Header() (metadata.MD, error) {
	if err := s.wait(func() bool { return s.gotHeader || s.st != nil }); err != nil {
		s.cancel(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gotHeader {
		return s.header.Copy(), nil
	}
	return nil, s.st.Err()
}

// Trailer returns the trailers; they are complete once RecvMsg returned an
// error (io.EOF included).
func (s *clientStream) Trailer() metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trailer.Copy()
}

// CloseSend tells the server that the client sends no more messages.
func (s *clientStream) CloseSend() error {
	if s.halfClosed {
		return nil
	}
	s.halfClosed = true
	c := s.t.c
	if err := c.lock(s.ctx); err != nil {
		return nil // the stream's error comes from RecvMsg, as in grpc-go
	}
	c.writeFrame(s.ctx, frame.TypeHalfClose, 0, s.id, 0, nil)
	c.unlock()
	return nil
}

// SendMsg sends a message. It returns io.EOF when the stream has already
// ended; RecvMsg then returns the status.
func (s *clientStream) SendMsg(m any) error {
	if s.halfClosed {
		return status.Error(codes.Internal, "SendMsg called after CloseSend")
	}
	msg, err := prepareMsg(s.ci.codec, m, s.ci.maxSend)
	if err != nil {
		s.cancel(err)
		return err
	}
	defer msg.free()
	ended := func() error {
		if s.st != nil {
			return io.EOF
		}
		return nil
	}
	if err := s.takeQuota(s.ctx, msg.size, ended); err != nil {
		return s.sendFailed(err)
	}
	c := s.t.c
	if err := c.stage(&msg); err != nil {
		return s.sendFailed(err)
	}
	if sh := s.cc.opts.stats; sh != nil {
		sh.outPayload(s.ctx, true, m, msg.size) // as queued: not under the write lock
	}
	if err := c.lock(s.ctx); err != nil {
		return s.sendFailed(err)
	}
	err = c.writeMsg(s.ctx, s.id, 0, &msg)
	c.unlock()
	if err != nil {
		return s.sendFailed(err)
	}
	return nil
}

// sendResult is what SendMsg returns for err: grpc-go returns nil instead
// of io.EOF on calls whose client sends one message, because generated code
// would pass io.EOF to the user; RecvMsg then returns the status.
func (s *clientStream) sendResult(err error) error {
	if err == io.EOF && !s.desc.ClientStreams {
		return nil
	}
	return err
}

// sendFailed ends the stream after a failed send and says what SendMsg
// returns: as in grpc-go, the call's own status when the call ended here
// (its deadline, its cancellation, a local error), io.EOF when the server
// or the connection ended it (RecvMsg then returns the status).
func (s *clientStream) sendFailed(err error) error {
	if err != io.EOF && s.t.c.closeErr() == nil {
		s.cancel(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.endedHere {
		return s.st.Err()
	}
	return s.sendResult(io.EOF)
}

// RecvMsg receives the next message into m. It returns io.EOF when the
// stream ended with status OK, and the status error otherwise.
func (s *clientStream) RecvMsg(m any) error {
	err := s.wait(func() bool { return len(s.msgs) > 0 || s.st != nil })
	if err != nil {
		s.cancel(err)
	}
	s.mu.Lock()
	if len(s.msgs) == 0 {
		st := s.st
		s.mu.Unlock()
		err := st.Err()
		if err == nil && !s.desc.ServerStreams && s.received == 0 {
			err = status.Error(codes.Internal, "grpc: cardinality violation: expected <Message> received <EOF>")
		}
		s.doneWith(err)
		if err == nil {
			return io.EOF
		}
		return err
	}
	msg := s.takeMsg()
	s.mu.Unlock()
	if msg.err != nil {
		s.cancel(msg.err)
		s.doneWith(msg.err)
		return msg.err
	}
	n := msg.buf.Len()
	if err := s.decode(s.ci.codec, msg.buf, m); err != nil {
		s.cancel(err)
		s.doneWith(err)
		return err
	}
	s.received++
	if sh := s.cc.opts.stats; sh != nil {
		sh.inPayload(s.ctx, true, m, n)
	}
	s.consumed(s.ctx, n)
	if s.desc.ServerStreams {
		return nil
	}
	// One response only: the status decides whether the call succeeded.
	if err := s.wait(func() bool { return s.st != nil }); err != nil {
		s.cancel(err)
	}
	s.mu.Lock()
	st, extra := s.st, len(s.msgs)
	s.mu.Unlock()
	err = st.Err()
	if err == nil && extra > 0 {
		err = status.Error(codes.Internal, "grpc: cardinality violation: expected <EOF> received <Message>")
	}
	s.doneWith(err)
	return err
}
