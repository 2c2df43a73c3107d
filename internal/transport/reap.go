package transport

import (
	"sync"
	"time"

	"github.com/notnets/notnets/internal/pool"
)

// The reaper of a cross-host pool. There, no process can tell by a pid
// that a listener's process is gone: a listener whose host died stays in
// the directory until someone sees its heartbeat stand still for
// pool.RemoteStaleAfter (PROTOCOL.md 3.6, F15). Clients skip it sooner
// (they judge it over their liveness timeout), but its files stay, and
// tools list it. So every process that listens in a cross-host pool also
// cleans it now and again: pool.CleanAfter remembers the heartbeats it
// read, and removes a listener once its own two readings of the same
// heartbeat are reapAfter apart. One goroutine per pool directory per
// process, whatever the number of its listeners there.

// reapEvery is how often the reaper cleans the pool: half the stale
// bound, so that a dead host's listener goes within 1.5 times the bound.
// reapAfter is the bound. Tests shorten both.
var reapEvery, reapAfter = pool.RemoteStaleAfter / 2, pool.RemoteStaleAfter

// reapers holds, per pool directory, the reaper of this process there;
// its lock guards the map and the counts.
var reapers struct {
	sync.Mutex
	dirs map[string]*reaper
}

// reaper counts the open listeners of this process in one pool directory;
// stop is closed, and the goroutine ends, when the count drops to 0.
type reaper struct {
	listeners int
	stop      chan struct{}
}

// startReaper counts a listener of the cross-host pool dir in, starting
// the directory's reaper if it is the first.
func startReaper(dir string, a pool.Access) {
	reapers.Lock()
	defer reapers.Unlock()
	if reapers.dirs == nil {
		reapers.dirs = make(map[string]*reaper)
	}
	r := reapers.dirs[dir]
	if r == nil {
		r = &reaper{stop: make(chan struct{})}
		reapers.dirs[dir] = r
		go reap(dir, a, reapEvery, reapAfter, r.stop)
	}
	r.listeners++
}

// stopReaper counts a listener of dir out, ending the reaper with the last.
func stopReaper(dir string) {
	reapers.Lock()
	defer reapers.Unlock()
	r := reapers.dirs[dir]
	if r == nil {
		return
	}
	if r.listeners--; r.listeners == 0 {
		close(r.stop)
		delete(reapers.dirs, dir)
	}
}

// reap cleans dir every period until stop is closed.
func reap(dir string, a pool.Access, every, after time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			pool.CleanAfter(dir, a, after) // best effort, as every CleanIn
		}
	}
}
