package notnets

import (
	"errors"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/balance"
	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/transport"
)

// Resolution: a ClientConn reads the pool directory for its service's
// instances when it starts, each time the registry's generation changes
// (an instance opened or closed anywhere in the pool: balance.Watch), and
// when one of its connections fails or cannot be made. It never reads the
// directory per call.

// resolveNow makes the resolving goroutine read the directory again.
func (cc *ClientConn) resolveNow() {
	select {
	case cc.resolveCh <- struct{}{}:
	default:
	}
}

// Resolution pacing: at most one read of the directory per
// minResolveGap, so that registry bumps in a loop (any member of a group
// pool can make them) cost a client at most that rate; and one every
// rescanEvery whatever the registry says, in case a member wrote back an
// old generation that hid a change.
const (
	minResolveGap = 10 * time.Millisecond
	rescanEvery   = 5 * time.Second
)

// resolveLoop reads the directory whenever asked, until Close.
func (cc *ClientConn) resolveLoop() {
	rejected := map[string]bool{} // instances not to open again while they are listed
	rescan := time.NewTimer(rescanEvery)
	defer rescan.Stop()
	for {
		last := time.Now()
		cc.resolve(rejected)
		rescan.Reset(rescanEvery)
		select {
		case <-cc.watchSig:
		case <-cc.resolveCh:
		case <-rescan.C:
		case <-cc.quit:
			return
		}
		if wait := minResolveGap - time.Since(last); wait > 0 {
			select {
			case <-time.After(wait):
			case <-cc.quit:
				return
			}
		}
	}
}

// resolve reads the directory once: it starts connecting to the new
// instances it may use, and drops those that left.
//
// rejected holds the instances found unusable (another user's, closed,
// draining, their process gone): a listener's owner and state never come
// back, so they are not opened again while their files are listed.
func (cc *ClientConn) resolve(rejected map[string]bool) {
	// The pool's marker first (F13): it says how instances are judged.
	mode, err := pool.ReadMode(cc.opts.pool, cc.opts.access)
	switch {
	case err != nil:
	case cc.opts.crossHost && !mode.CrossHost:
		cc.failResolve(transport.NotCrossHost(cc.opts.pool, mode))
		return
	default:
		cc.cross.Store(mode.CrossHost)
	}
	if errors.Is(err, pool.ErrAccess) {
		cc.failResolve(status.Error(codes.PermissionDenied, err.Error()))
		return
	}
	bases, err := pool.ListInstances(cc.opts.pool, cc.name, cc.opts.access)
	for b := range rejected {
		if !slices.Contains(bases, b) {
			delete(rejected, b)
		}
	}
	cc.mu.Lock()
	known := make(map[string]bool, len(cc.subs))
	for b := range cc.subs {
		known[b] = true
	}
	cc.mu.Unlock()
	var found []*balance.Instance
	var why error
	for _, b := range bases {
		if known[b] || rejected[b] {
			continue
		}
		in, err := balance.OpenInstance(cc.opts.pool, b, cc.opts.access, mode.Coherence)
		if err != nil {
			why = err // perhaps being created: tried again next time
			continue
		}
		if in.ByteStream() {
			// A grpc.Server's (ListenConn): not for notnets calls (F11).
			rejected[b] = true
			in.Close()
			continue
		}
		if in.Starting() {
			in.Close() // not open yet: it announces itself when it is
			continue
		}
		if cc.instanceGone(in) {
			// Closed, or left by a process that died: not an instance.
			// One judged by a heartbeat that stood still is looked at
			// again: it may beat again (a stopped process, a host that
			// stalled).
			if !in.Open() || !cc.cross.Load() && in.Host.Local() {
				rejected[b] = true
			}
			in.Close()
			continue
		}
		if err := cc.trustInstance(in); err != nil {
			why = err
			rejected[b] = true
			in.Close()
			continue
		}
		found = append(found, in)
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed {
		return
	}
	for b, sc := range cc.subs {
		if err == nil && !slices.Contains(bases, b) {
			cc.drop(sc)
		}
	}
	for _, in := range found {
		sc := &subConn{inst: in, addr: &Addr{Pool: cc.opts.pool, Name: cc.name, PID: in.PID, Instance: in.Base}, connecting: true, attempting: true, gone: make(chan struct{})}
		cc.subs[in.Base] = sc
		go cc.connectLoop(sc)
	}
	switch {
	case err != nil:
		cc.lastErr = status.Errorf(codes.Unavailable, "notnets: service %q: %v", cc.name, err)
	case why != nil && len(cc.subs) == 0:
		cc.lastErr = instanceError(why)
	case len(cc.subs) == 0:
		cc.lastErr = status.Errorf(codes.Unavailable, "notnets: no instance of %q in pool %s", cc.name, cc.opts.pool)
	}
	cc.resolved = true
	cc.updateState()
	cc.progressed()
}

// failResolve records why the pool cannot be used at all (its marker
// refuses it, or contradicts WithCrossHost): no instance is connected
// and calls fail with err.
func (cc *ClientConn) failResolve(err error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed {
		return
	}
	cc.lastErr = err
	cc.resolved = true
	cc.updateState()
	cc.progressed()
}

// instanceGone reports whether in no longer takes connections: its
// listener is closed or draining, or its process is gone (PROTOCOL.md
// F9; the name and header were checked by ListInstances and
// OpenInstance): looked up by pid where the instance is of this
// process's pid domain in a pool of one host, else judged by its
// heartbeat (F14), which must have stood still for the liveness timeout
// across two looks.
func (cc *ClientConn) instanceGone(in *balance.Instance) bool {
	return instanceGone(in, cc.cross.Load(), cc.opts.liveness)
}

// instanceGone is ClientConn.instanceGone for a pool whose marker says
// cross, with the liveness timeout liveness.
func instanceGone(in *balance.Instance, cross bool, liveness time.Duration) bool {
	if !in.Open() {
		return true
	}
	if cross || !in.Host.Local() {
		return !in.Beating(liveness)
	}
	return !pool.ProcessAlive(in.PID)
}

// trustInstance checks the owner of an instance's listener against
// WithServerUIDs, before anything is sent to it.
func (cc *ClientConn) trustInstance(in *balance.Instance) error { return cc.opts.trustInstance(in) }

// trustInstance checks the owner of an instance's listener against
// WithServerUIDs.
func (o *dialOptions) trustInstance(in *balance.Instance) error {
	if u := o.serverUIDs; u != nil && !slices.Contains(u, in.Owner.UID) {
		return status.Errorf(codes.PermissionDenied, "notnets: instance %s belongs to uid %d, not one of the server uids %v (WithServerUIDs)", in.Base, in.Owner.UID, u)
	}
	return nil
}

// trustPeer checks the server process of a new connection, as the kernel
// (or, through the slots, the segment's owner) reports it, against
// WithServerUIDs and WithServerGIDs.
func (cc *ClientConn) trustPeer(sc *subConn, id transport.Identity) error {
	return cc.opts.trustPeer(sc.inst.Base, id)
}

// trustPeer checks the server process id of a new connection to the
// instance base against WithServerUIDs and WithServerGIDs.
func (o *dialOptions) trustPeer(base string, id transport.Identity) error {
	if u := o.serverUIDs; u != nil && !slices.Contains(u, id.UID) {
		return status.Errorf(codes.PermissionDenied, "notnets: instance %s runs as uid %d, not one of the server uids %v (WithServerUIDs)", base, id.UID, u)
	}
	if g := o.serverGIDs; g != nil && !slices.Contains(g, id.GID) && !anyIn(id.Groups, g) {
		return status.Errorf(codes.PermissionDenied, "notnets: instance %s runs with gid %d, in none of the server gids %v (WithServerGIDs)", base, id.GID, g)
	}
	return nil
}

func anyIn(have, want []uint32) bool {
	for _, h := range have {
		if slices.Contains(want, h) {
			return true
		}
	}
	return false
}

// instanceError is the status of an instance that cannot be used:
// PermissionDenied when the pool's rules refuse its file, else Unavailable.
func instanceError(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, pool.ErrAccess) {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}
