package notnets

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/notnets/notnets/internal/balance"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
	"github.com/notnets/notnets/internal/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// ErrClientConnClosing is the status of calls made on, or cut short by, a
// closed ClientConn, as in grpc-go.
var ErrClientConnClosing = status.Error(codes.Canceled, "grpc: the client connection is closing")

// ClientConn is a client connection to a service through a memory pool:
// to every live instance of it (Listen may start several), with each call
// going to one of them (WithBalancing). It implements
// grpc.ClientConnInterface, so generated clients take it:
// pb.NewGreeterClient(cc). It is safe for concurrent use; calls on a
// connection are multiplexed by stream id. It sees instances come and go
// (the pool's registry, PROTOCOL.md 10.7), and when a connection fails it
// connects again with backoff, as grpc-go does; calls made while no
// instance is connected fail with Unavailable, or with
// grpc.WaitForReady(true) wait, or go over WithFallback's network client.
type ClientConn struct {
	dial      transport.DialConfig // Name is set per instance
	name      string               // the service
	target    string               // as given to NewClient, else name
	opts      dialOptions
	unaryInt  grpc.UnaryClientInterceptor
	streamInt grpc.StreamClientInterceptor
	picker    balance.Picker
	fallback  *grpc.ClientConn // WithFallback, or nil
	// snap is what calls pick from: the instances with a usable
	// connection, replaced whole under mu (copy on write), read without it.
	snap      atomic.Pointer[[]*pickEntry]
	fellBack  atomic.Uint64 // calls sent over fallback
	watchSig  chan struct{} // the registry watcher's signal (capacity 1)
	resolveCh chan struct{} // look at the directory now (capacity 1)
	// cross: the pool is cross-host, as its marker said at the last
	// reading of the directory (resolve): instances are judged by
	// heartbeat, never by pid.
	cross atomic.Bool

	// mu guards the fields below; it is taken before any lock of a
	// connection, and never held while a connection is closed.
	mu       sync.Mutex
	subs     map[string]*subConn                // by instance, every instance being used
	live     map[transport.ClientTransport]bool // every connection not yet closed, used or not
	ready    chan struct{}                      // closed when snap gains an instance
	lastErr  error                              // why the last attempt to reach an instance failed
	resolved bool                               // the directory has been read once
	settled  bool                               // firstSettled has been true once
	closed   bool
	quit     chan struct{} // closed by Close
	life     context.Context
	endLife  context.CancelFunc // cancels life, at Close
	state    connectivity.State
	stateCh  chan struct{} // closed when state changes
	progress chan struct{} // closed when the pool is read or an attempt ends (firstSettled may change)
	retryNow chan struct{} // closed by ResetConnectBackoff: cut every backoff short
}

var _ grpc.ClientConnInterface = (*ClientConn)(nil)

// pickEntry is one instance in the snapshot calls pick from.
type pickEntry struct {
	t    transport.ClientTransport
	inst *balance.Instance
	addr *Addr
}

// Usable reports whether the entry's connection takes new calls.
func (e *pickEntry) Usable() bool { return e.t.Err() == nil }

// Load returns the instance's published load (balance.Candidate).
func (e *pickEntry) Load() (uint32, uint32, bool) { return e.inst.Load() }

// newClientConn checks the options and makes a ClientConn for the service
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
	if o.badConfig != nil {
		return nil, o.badConfig
	}
	ua, err := o.fullUserAgent()
	if err != nil {
		return nil, err
	}
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
			Pool: o.pool, Access: o.access, RingSize: o.ringSize, ArenaSize: o.arenaSize,
			Wait: o.wait, Window: o.window, Liveness: o.liveness,
			Info:      pool.ConnInfo{UserAgent: ua, MaxHeader: o.maxHeader},
			CrossHost: o.crossHost,
		},
		name:      name,
		opts:      o,
		picker:    balance.Picker{Policy: o.policy},
		unaryInt:  chainUnaryClient(o.unary),
		streamInt: chainStreamClient(o.stream),
		watchSig:  make(chan struct{}, 1),
		resolveCh: make(chan struct{}, 1),
		subs:      make(map[string]*subConn),
		live:      make(map[transport.ClientTransport]bool),
		ready:     make(chan struct{}),
		quit:      make(chan struct{}),
		state:     connectivity.Connecting,
		stateCh:   make(chan struct{}),
		progress:  make(chan struct{}),
		retryNow:  make(chan struct{}),
	}
	cc.life, cc.endLife = context.WithCancel(context.Background())
	if o.fallback != nil {
		if cc.fallback, err = grpc.NewClient(o.fallback.target, o.fallback.opts...); err != nil {
			return nil, fmt.Errorf("notnets: fallback: %w", err)
		}
	}
	return cc, nil
}

// startResolving begins watching the pool for instances of the service.
func (cc *ClientConn) startResolving() {
	stop := balance.Watch(cc.opts.pool, cc.opts.access, cc.opts.wait.PollOnly, cc.watchSig)
	go func() {
		<-cc.quit
		stop()
	}()
	go cc.resolveLoop()
}

// NewClient returns a ClientConn for target at once and connects in the
// background, as grpc.NewClient does: servers may start in any order.
// Until the pool has been looked at and a first connection made or
// failed, calls wait; after that, with no instance connected, they fail
// fast with Unavailable, or wait with grpc.WaitForReady(true), or go over
// the fallback (WithFallback). Dial connects eagerly instead.
//
// target names a service in the pool: a bare name ("greeter"),
// "notnets:///greeter", or an address users already have, "host:port",
// "dns:///host:port" or "passthrough:///host:port", whose host names it
// ("greeter.prod:50051" is "greeter.prod"). A target that names no valid
// service is an InvalidArgument error.
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
	cc.startResolving()
	return cc, nil
}

// Dial connects to the service name in the pool and returns once one of
// its instances has accepted, or ctx ends (without a deadline on ctx, Dial
// waits at most the connect timeout). A service with no instance in the
// pool is an Unavailable error.
func Dial(ctx context.Context, name string, opts ...DialOption) (*ClientConn, error) {
	cc, err := newClientConn(name, opts, false)
	if err != nil {
		return nil, err
	}
	ctx, cancel := withConnectLimit(ctx, cc.opts.connectLimit)
	defer cancel()
	cc.startResolving()
	if err := cc.waitFirst(ctx); err != nil {
		cc.Close()
		return nil, err
	}
	return cc, nil
}

// withConnectLimit bounds ctx by the connect timeout d when it has no
// deadline of its own.
func withConnectLimit(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// waitFirst waits until an instance is connected, and fails when the
// pool has none or every instance's first attempt failed.
func (cc *ClientConn) waitFirst(ctx context.Context) error {
	for {
		cc.mu.Lock()
		settled, why, ch := cc.firstSettled(), cc.lastErr, cc.progress
		cc.mu.Unlock()
		if len(cc.pickable()) > 0 {
			return nil
		}
		if settled {
			return status.Convert(why).Err()
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if why != nil {
				return status.Convert(why).Err()
			}
			return status.Errorf(status.FromContextError(ctx.Err()).Code(), "notnets: connect to %q: %v", cc.name, ctx.Err())
		}
	}
}

// firstSettled reports whether the first look at the pool is over: the
// directory has been read and every instance found has had a first try.
// The caller holds cc.mu.
func (cc *ClientConn) firstSettled() bool {
	if cc.settled {
		return true // instances found later never hold calls up
	}
	if !cc.resolved {
		return false
	}
	for _, sc := range cc.subs {
		if sc.tries == 0 {
			return false
		}
	}
	cc.settled = true
	return true
}

// progressed wakes whoever waits for the first look at the pool to
// settle. The caller holds cc.mu.
func (cc *ClientConn) progressed() {
	close(cc.progress)
	cc.progress = make(chan struct{})
}

// pickable returns the current snapshot.
func (cc *ClientConn) pickable() []*pickEntry {
	if p := cc.snap.Load(); p != nil {
		return *p
	}
	return nil
}

// publish rebuilds the snapshot from the connected instances, in a
// stable order (pick_first takes the first), and updates the state. The
// caller holds cc.mu.
func (cc *ClientConn) publish() {
	var es []*pickEntry
	for _, sc := range cc.subs {
		if sc.entry != nil {
			es = append(es, sc.entry)
		}
	}
	slices.SortFunc(es, func(a, b *pickEntry) int { return strings.Compare(a.inst.Base, b.inst.Base) })
	grew := len(es) > len(cc.pickable())
	cc.snap.Store(&es)
	if grew {
		close(cc.ready)
		cc.ready = make(chan struct{})
	}
	cc.updateState()
}

// updateState sets the connectivity state from the instances: Ready while
// one is connected, Connecting while one is being connected (or the pool
// has not been read yet), TransientFailure otherwise. The caller holds
// cc.mu.
func (cc *ClientConn) updateState() {
	switch {
	case cc.closed:
		cc.setState(connectivity.Shutdown)
	case len(cc.pickable()) > 0:
		cc.setState(connectivity.Ready)
	case !cc.resolved || cc.anyAttempting():
		cc.setState(connectivity.Connecting)
	default:
		cc.setState(connectivity.TransientFailure)
	}
}

func (cc *ClientConn) anyAttempting() bool {
	for _, sc := range cc.subs {
		if sc.attempting {
			return true
		}
	}
	return false
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

// GetState returns the connectivity state: Ready while an instance is
// connected for new calls, Connecting while one is being connected,
// TransientFailure while waiting to try again, Shutdown after Close. A
// notnets ClientConn is never Idle: it connects at once. With a fallback
// and no instance connected, it is the fallback's state.
func (cc *ClientConn) GetState() connectivity.State {
	cc.mu.Lock()
	s := cc.state
	cc.mu.Unlock()
	if cc.fallback != nil && s != connectivity.Ready && s != connectivity.Shutdown {
		return cc.fallback.GetState()
	}
	return s
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

// ResetConnectBackoff makes every connection that waits to be made again
// try now, and the pool be looked at again.
func (cc *ClientConn) ResetConnectBackoff() {
	cc.mu.Lock()
	close(cc.retryNow)
	cc.retryNow = make(chan struct{})
	cc.mu.Unlock()
	cc.resolveNow()
	if cc.fallback != nil {
		cc.fallback.ResetConnectBackoff()
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

// maxRecheck bounds how long a call looks again, every millisecond, at
// connected instances none of which takes calls (one failed or drains and
// is about to be dropped); after that it is treated as having none.
const maxRecheck = 50 * time.Millisecond

// errUseFallback says that a call goes over the fallback client: no
// instance in the pool is connected.
var errUseFallback = errors.New("notnets: no instance connected; use the fallback")

// pick returns the instance a new call starts on. Without one, the call
// fails with the reason, or, when it waits for ready, waits for an
// instance as long as ctx allows, or (errUseFallback) goes over the
// fallback. A request already in an instance's heap goes to that
// instance.
func (cc *ClientConn) pick(ctx context.Context, waitForReady bool, msg *transport.OutMsg) (*pickEntry, error) {
	var rechecking time.Time
	for {
		sp := cc.snap.Load()
		var es []*pickEntry
		if sp != nil {
			es = *sp
		}
		if msg.InHeap() {
			// Alloc'd in one instance's heap: it goes there, uncopied.
			for _, e := range es {
				if e.t.Holds(msg) && e.Usable() {
					return e, nil
				}
			}
		}
		if i := balance.Pick(&cc.picker, es); i >= 0 {
			return es[i], nil
		}
		cc.mu.Lock()
		ready, closed, why, progress, settled := cc.ready, cc.closed, cc.lastErr, cc.progress, cc.firstSettled()
		changedMeanwhile := cc.snap.Load() != sp
		cc.mu.Unlock()
		if changedMeanwhile {
			continue // published between the two reads: pick again
		}
		if len(es) > 0 && rechecking.IsZero() {
			rechecking = time.Now()
		}
		if closed {
			return nil, ErrClientConnClosing
		}
		// A connection that failed or was told to go away takes no new
		// calls; lost is about to drop it. Until then, look again every
		// millisecond rather than spin.
		var recheck <-chan time.Time
		var changed <-chan struct{}
		switch {
		case len(es) > 0 && time.Since(rechecking) < maxRecheck:
			recheck = time.After(time.Millisecond)
		case !settled:
			// The pool is being read, or its instances' first
			// connections made (NewClient): every call waits for that,
			// as grpc-go's do for the first resolution.
			changed = progress
		case cc.fallback != nil:
			return nil, errUseFallback
		case !waitForReady:
			if why == nil {
				why = status.Errorf(codes.Unavailable, "notnets: no instance of %q in pool %s", cc.name, cc.opts.pool)
			}
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

// Target returns the target given to NewClient, or the service name given
// to Dial.
func (cc *ClientConn) Target() string {
	if cc.target != "" {
		return cc.target
	}
	return cc.name
}

// FallbackCalls returns how many calls went over the fallback client
// (WithFallback) because no instance was connected.
func (cc *ClientConn) FallbackCalls() uint64 { return cc.fellBack.Load() }

// Close closes every connection. Calls in progress fail with Canceled;
// the servers see the connections close and cancel their handlers. As in
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
	cc.endLife()
	var ts []transport.ClientTransport
	for _, sc := range cc.subs {
		if !sc.removed {
			sc.removed = true
			close(sc.gone)
		}
	}
	// Connections dropped from subs (their instance drains) or told
	// GOAWAY may still carry calls: they close too.
	for t := range cc.live {
		ts = append(ts, t)
	}
	cc.subs = map[string]*subConn{}
	cc.snap.Store(nil)
	cc.mu.Unlock()
	for _, t := range ts {
		for _, s := range t.Close(ErrClientConnClosing) {
			s.User().(*clientStream).done()
		}
	}
	if cc.fallback != nil {
		cc.fallback.Close()
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
