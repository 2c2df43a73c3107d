package notnets

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
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
	dial      transport.DialConfig
	name      string
	target    string // as given to NewClient, else name
	opts      dialOptions
	peerAddr  *Addr
	unaryInt  grpc.UnaryClientInterceptor
	streamInt grpc.StreamClientInterceptor

	// mu guards the fields below; it is taken before any lock of a
	// connection, and never held while a connection is closed.
	mu        sync.Mutex
	cur       transport.ClientTransport // the connection calls start on; nil while there is none
	ready     chan struct{}             // closed when cur is replaced
	lastErr   error                     // why there is no usable connection
	closed    bool
	quit      chan struct{} // closed by Close: stops reconnecting
	reconnect bool          // a reconnecting goroutine runs
	state     connectivity.State
	stateCh   chan struct{} // closed when state changes
	retryNow  chan struct{} // ResetConnectBackoff: cut the wait short (capacity 1)
}

var _ grpc.ClientConnInterface = (*ClientConn)(nil)

// newClientConn checks the options and makes a ClientConn for the listener
// name, without a connection.
func newClientConn(name string, opts []DialOption, lazy bool) (*ClientConn, error) {
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
		// A client made before any server need not find the pool yet:
		// the first Listen prepares it, and connecting checks it again.
		if !lazy || !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	if len(o.callOptions) == 0 {
		var err error
		if o.plainCall, err = newCallInfo(&o, nil); err != nil {
			return nil, err
		}
		o.subtypeCalls = &subtypeCalls{m: make(map[string]*callInfo)}
	}
	cc := &ClientConn{
		dial: transport.DialConfig{
			Pool: o.pool, Access: o.access, Name: name, RingSize: o.ringSize, ArenaSize: o.arenaSize,
			Wait: o.wait, Window: o.window, Liveness: o.liveness,
		},
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
	return cc, nil
}

// NewClient returns a ClientConn for target at once and connects in the
// background, as grpc.NewClient does: servers may start in any order.
// Until its first connection is made or fails, calls wait for it; after a
// failure they fail fast with Unavailable, or wait with
// grpc.WaitForReady(true), while it connects again with backoff. Dial
// connects eagerly instead.
//
// target names a listener in the pool: a bare name ("greeter"),
// "notnets:///greeter", or an address users already have, "host:port",
// "dns:///host:port" or "passthrough:///host:port", whose host names it
// ("greeter.prod:50051" is "greeter.prod"). A target that names no valid
// listener is an InvalidArgument error.
func NewClient(target string, opts ...DialOption) (*ClientConn, error) {
	name, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	cc, err := newClientConn(name, opts, true)
	if err != nil {
		return nil, err
	}
	cc.target = target
	cc.mu.Lock()
	cc.reconnect = true
	go cc.reconnectLoop()
	cc.mu.Unlock()
	return cc, nil
}

// Dial connects to the listener name in the pool and returns once the
// server has accepted, or ctx ends (without a deadline on ctx, Dial waits at
// most the connect timeout). A missing listener is an Unavailable error.
func Dial(ctx context.Context, name string, opts ...DialOption) (*ClientConn, error) {
	cc, err := newClientConn(name, opts, false)
	if err != nil {
		return nil, err
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
func (cc *ClientConn) install(t transport.ClientTransport) error {
	why := t.Err()
	if why == nil {
		cc.cur = t
		cc.setState(connectivity.Ready)
	}
	return why
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
func (cc *ClientConn) connect(ctx context.Context) (transport.ClientTransport, error) {
	pool.CleanIn(cc.opts.pool, cc.opts.access) // best effort: files of processes that died
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cc.opts.connectLimit)
		defer cancel()
	}
	var statsCtx context.Context
	events := transport.ClientEvents{
		Lost: cc.lost,
		Closed: func() {
			if sh := cc.opts.stats; sh != nil {
				sh.connEnd(statsCtx, true)
			}
		},
	}
	if sh := cc.opts.stats; sh != nil {
		statsCtx = sh.connBegin(context.Background(), true, cc.peerAddr, &Addr{Pool: cc.opts.pool})
		events.InHeader = func(s *transport.ClientStream, md metadata.MD, wireLen int) {
			if wireLen < 0 {
				sh.handle(s.Context(), &stats.InHeader{Client: true, Header: md})
				return
			}
			sh.handle(s.Context(), &stats.InHeader{Client: true, Header: md, WireLength: wireLen})
		}
		events.InTrailer = func(s *transport.ClientStream, md metadata.MD, wireLen int) {
			sh.handle(s.Context(), &stats.InTrailer{Client: true, Trailer: md, WireLength: wireLen})
		}
	}
	t, err := transport.Dial(ctx, &cc.dial, events)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// lost is called when t can take no new calls (it failed, or the server
// said it is going away): calls now fail fast, or wait for ready, while a
// goroutine connects again with backoff.
func (cc *ClientConn) lost(t transport.ClientTransport, why error) {
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
				t.Close(ErrClientConnClosing)
			}
			return
		}
		if err == nil {
			if err = cc.install(t); err != nil {
				go t.Close(err) // failed at once: try again
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
func (cc *ClientConn) transport(ctx context.Context, waitForReady bool) (transport.ClientTransport, error) {
	for {
		cc.mu.Lock()
		t, ready, closed, why, stateCh := cc.cur, cc.ready, cc.closed, cc.lastErr, cc.stateCh
		cc.mu.Unlock()
		if closed {
			return nil, ErrClientConnClosing
		}
		// A connection that failed or was told to go away takes no new
		// calls; lost is about to clear it. Until then, look again every
		// millisecond rather than spin.
		var recheck <-chan time.Time
		if t != nil {
			dead := t.Err()
			if dead == nil {
				return t, nil
			}
			why, recheck = dead, time.After(time.Millisecond)
		}
		var changed <-chan struct{}
		if t == nil && why == nil {
			// The first connection is being made (NewClient): every call
			// waits for it to be made or to fail, as grpc-go's do.
			changed = stateCh
		} else if !waitForReady {
			return nil, status.Convert(why).Err()
		}
		select {
		case <-ready:
		case <-recheck:
		case <-changed:
		case <-cc.quit:
			return nil, ErrClientConnClosing
		case <-ctx.Done():
			return nil, contextStatus(ctx.Err())
		}
	}
}

// Target returns the target given to NewClient, or the listener name given
// to Dial.
func (cc *ClientConn) Target() string {
	if cc.target != "" {
		return cc.target
	}
	return cc.name
}

// Close closes the connection. Calls in progress fail with Canceled; the
// server sees the connection close and cancels their handlers. As in
// grpc-go, closing finishes the calls: their OnFinish and stats End run.
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
		for _, s := range t.Close(ErrClientConnClosing) {
			s.User().(*clientStream).done()
		}
	}
	return nil
}

// checkPool checks, before anything is named in it, that the pool exists
// (Unavailable otherwise: no server has made it yet) and can be trusted
// (PermissionDenied otherwise).
func checkPool(dir string, access pool.Access) error {
	if _, err := os.Lstat(dir); err != nil {
		return poolError{status.New(codes.Unavailable, fmt.Sprintf("notnets: pool %s: %v", dir, err)), err}
	}
	if err := pool.CheckDir(dir, access); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
}

// poolError is a status error that also wraps why the pool could not be
// used (errors.Is(err, fs.ErrNotExist)).
type poolError struct {
	st  *status.Status
	err error
}

func (e poolError) Error() string { return e.st.Err().Error() }

// GRPCStatus returns the error's status.
func (e poolError) GRPCStatus() *status.Status { return e.st }

func (e poolError) Unwrap() error { return e.err }
