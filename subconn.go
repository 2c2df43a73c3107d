package notnets

import (
	"context"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/balance"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/transport"
)

// subConn is a ClientConn's connection to one instance of its service:
// made when the instance is found, made again with backoff when it is
// lost, dropped when the instance leaves the pool. Its fields are guarded
// by the ClientConn's mu.
type subConn struct {
	inst       *balance.Instance
	addr       *Addr
	t          transport.ClientTransport // the connection, or nil
	entry      *pickEntry                // t's entry in the snapshot, or nil
	connecting bool                      // connectLoop runs
	attempting bool                      // connectLoop is in an attempt (not in backoff)
	tries      int                       // attempts that have ended
	removed    bool                      // the instance left the pool, or the ClientConn closed
	gone       chan struct{}             // closed when removed is set
}

// connectLoop connects to the instance of sc, waiting between tries as
// grpc-go's connection backoff does, until it succeeds, the instance
// leaves the pool or the ClientConn closes.
func (cc *ClientConn) connectLoop(sc *subConn) {
	for retries := 0; ; retries++ {
		if retries > 0 {
			ok, reset := cc.backoff(sc, retries)
			if !ok {
				return
			}
			if reset {
				retries = 1 // the next waits start again from the base delay
			}
		}
		cc.mu.Lock()
		sc.attempting = true
		cc.updateState()
		cc.mu.Unlock()
		ctx, cancel := context.WithTimeout(cc.life, cc.opts.connectLimit)
		t, err := cc.connect(ctx, sc)
		cancel()
		if cc.connected(sc, t, err) {
			return
		}
	}
}

// backoff waits before the retries'th try of sc, and reports false if the
// ClientConn closed or sc was dropped meanwhile, and whether
// ResetConnectBackoff cut the wait short.
func (cc *ClientConn) backoff(sc *subConn, retries int) (ok, reset bool) {
	cc.mu.Lock()
	now := cc.retryNow
	cc.mu.Unlock()
	wait := time.NewTimer(backoffDelay(cc.opts.backoff, retries-1))
	defer wait.Stop()
	select {
	case <-wait.C:
		return true, false
	case <-now:
		return true, true
	case <-sc.gone:
	case <-cc.quit:
	}
	return false, false
}

// connected records the outcome of an attempt to connect sc, and reports
// whether the attempts are over: connected, or sc was dropped.
func (cc *ClientConn) connected(sc *subConn, t transport.ClientTransport, err error) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	sc.tries++
	sc.attempting = false
	defer cc.progressed()
	if cc.closed || sc.removed {
		sc.connecting = false
		if t != nil {
			go t.Close(ErrClientConnClosing)
		}
		return true
	}
	if err == nil {
		// Its reader may have called lost before t was recorded, when
		// lost had nothing to do.
		if err = t.Err(); err != nil {
			go t.Close(err)
		}
	}
	if err == nil {
		err = cc.trustPeer(sc, t.Peer())
		if err != nil {
			go t.Close(err)
		}
	}
	if err != nil {
		cc.lastErr = err
		cc.resolveNow()
		if cc.instanceGone(sc.inst) {
			cc.drop(sc)
			return true
		}
		cc.updateState()
		return false
	}
	sc.t, sc.connecting = t, false
	cc.live[t] = true
	go func() {
		<-t.Done()
		cc.mu.Lock()
		delete(cc.live, t)
		cc.mu.Unlock()
	}()
	sc.addr.PID = t.Peer().PID
	sc.entry = &pickEntry{t: t, inst: sc.inst, addr: sc.addr}
	cc.lastErr = nil
	cc.publish()
	return true
}

// drop forgets sc: its instance left the pool. A connection it still has
// takes no new calls; the calls on it finish (a draining server closes it
// when they have). The caller holds cc.mu.
func (cc *ClientConn) drop(sc *subConn) {
	if !sc.removed {
		close(sc.gone)
	}
	sc.removed, sc.connecting = true, false
	if cc.subs[sc.inst.Base] == sc {
		delete(cc.subs, sc.inst.Base)
	}
	sc.entry = nil
	cc.publish()
}

// connect makes a new connection to sc's instance, bounded by ctx and the
// connect timeout.
func (cc *ClientConn) connect(ctx context.Context, sc *subConn) (transport.ClientTransport, error) {
	pool.CleanIn(cc.opts.pool, cc.opts.access) // best effort: files of processes that died
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
		statsCtx = sh.connBegin(context.Background(), true, sc.addr, &Addr{Pool: cc.opts.pool})
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
	cfg := cc.dial
	cfg.Name = sc.inst.Base
	if cc.cross.Load() || !sc.inst.Host.Local() {
		// A reading of its heartbeat before the attempt: an attempt on a
		// dead instance gives up once the heartbeat has stood still for
		// the liveness timeout, and the reading after it (instanceGone)
		// then finds it still for that long, and drops the instance.
		sc.inst.Beating(cc.opts.liveness)
	}
	t, err := transport.Dial(ctx, &cfg, events)
	if err != nil {
		return nil, err // not a nil *Client in a non-nil interface
	}
	return t, nil
}

// lost is called when t can take no new calls (it failed, or the server
// said it is going away): new calls go to the other instances, while a
// goroutine connects to this one again with backoff, if it is still in
// the pool.
func (cc *ClientConn) lost(t transport.ClientTransport, why error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed {
		return
	}
	for _, sc := range cc.subs {
		if sc.t != t {
			continue
		}
		sc.t, sc.entry = nil, nil
		cc.lastErr = status.Convert(why).Err()
		if !sc.connecting {
			sc.connecting = true
			go cc.connectLoop(sc)
		}
		cc.publish()
		break
	}
	cc.resolveNow()
}
