//go:build linux

package balance

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/notnets/notnets/internal/pool"
)

// Instance is a client's read-only view (mapped PROT_READ) of one
// instance's listener: its
// state and published load, and who made it.
//
// The listener stays mapped for as long as the Instance is reachable (a
// picker may read it while another goroutine drops it), and is unmapped
// by a cleanup after that.
type Instance struct {
	Base  string         // the instance's base name, <service>+<id>
	Owner pool.FileOwner // the listener file's owner, uid and gid
	PID   int            // the instance's pid, from its header
	// Host is the instance's host identity, from its header: whether PID
	// names a process of this host and pid namespace (Host.Local, F14).
	Host pool.Host
	lay  *pool.ListenerLayout
	seg  *pool.Segment
	// cleanup unmaps seg once the Instance is unreachable; Close does it
	// sooner.
	cleanup runtime.Cleanup
}

// OpenInstance maps the listener of the instance base in the pool dir,
// whose memory is kept coherent as c says (the pool's Mode.Coherence).
func OpenInstance(dir, base string, a pool.Access, c pool.Coherence) (*Instance, error) {
	seg, err := pool.OpenReadOnlyIn(dir, pool.ListenerFile(base), pool.ListenerSize, pool.ListenerSize, a)
	if err != nil {
		return nil, err
	}
	if err := seg.UseCoherence(c); err != nil {
		seg.Close()
		return nil, fmt.Errorf("notnets: instance %s: %w", base, err)
	}
	var lay *pool.ListenerLayout
	err = pool.Guard("listener "+base, func() (err error) {
		seg.Invalidate(seg.Mem[:pool.PageSize]) // PROTOCOL.md 18.3
		lay, err = pool.MapListener(seg.Mem)
		return err
	})
	if err != nil {
		seg.Close()
		return nil, fmt.Errorf("notnets: instance %s: %w", base, err)
	}
	lay.SetCoherence(seg.Coherence())
	in := &Instance{Base: base, Owner: seg.Owner, PID: lay.PID, Host: lay.Host, lay: lay, seg: seg}
	in.cleanup = runtime.AddCleanup(in, func(s *pool.Segment) { s.Close() }, seg)
	return in, nil
}

// Close unmaps an instance that was never handed to a picker (one the
// client rejected), at once rather than when the collector gets to it.
func (in *Instance) Close() {
	in.cleanup.Stop()
	in.seg.Close()
}

// Starting reports whether the instance's listener is still being set up
// (state 0): it may open in a moment, and announces itself when it does.
func (in *Instance) Starting() (starting bool) {
	pool.Guard("listener "+in.Base, func() error {
		starting = in.lay.Server.State.Load() == pool.StateNew
		return nil
	})
	return starting
}

// ByteStream reports whether the instance serves byte-stream connections
// (PROTOCOL.md 17) rather than frames: clients use only instances of
// their kind (F11).
func (in *Instance) ByteStream() bool { return in.lay.Flags&pool.ListenerByteStream != 0 }

// Open reports whether the instance's listener is open and not draining.
func (in *Instance) Open() bool {
	_, _, ok := in.Load()
	return ok
}

// Heartbeat returns the instance's listener heartbeat, which it increments
// every liveness beat while it is open; 0 if the mapping faulted.
func (in *Instance) Heartbeat() (b uint64) {
	defer func() {
		if recover() != nil {
			b = 0
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return in.lay.Server.Heartbeat.Load()
}

// Beating reports whether the instance's heartbeat may still be moving:
// false once this process has read the same heartbeat in its listener
// for timeout or more (pool.ObserveBeat: readings of any of this
// process's views of the listener count). A timeout of 0 never says no.
// For instances whose pid cannot be looked up here (another host or pid
// namespace, a cross-host pool): a client calls it whenever it looks at
// the instance, and so knows, after two looks far enough apart, whether
// it died.
func (in *Instance) Beating(timeout time.Duration) bool {
	stood := pool.ObserveBeat(in.Owner, in.PID, in.Host, in.Heartbeat())
	return timeout <= 0 || stood < timeout
}

// maxLoad bounds a published load, so that load times workers cannot
// overflow 64 bits whatever a peer writes.
const maxLoad = 1 << 24

// Load returns the instance's published load (calls in flight plus calls
// queued) and its workers (at least 1), each bounded (PROTOCOL.md F10),
// and whether the
// instance takes calls: open, not draining, and its page readable.
func (in *Instance) Load() (load, workers uint32, ok bool) {
	defer func() {
		if recover() != nil { // its owner truncated the file: SIGBUS
			load, workers, ok = 0, 0, false
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	l := &in.lay.Load
	if in.lay.Server.State.Load() != pool.StateOpen || l.Draining.Load() != 0 {
		return 0, 0, false
	}
	load = min(l.InFlight.Load()+l.Queued.Load(), maxLoad)
	workers = min(max(l.Workers.Load(), 1), maxLoad)
	return load, workers, true
}
