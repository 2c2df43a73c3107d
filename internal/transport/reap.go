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

// reapers counts, per pool directory, the open listeners of this process
// in it; the reaper of a directory ends when its count drops to 0.
var reapers struct {
	sync.Mutex
	dirs map[string]int
}

// startReaper counts a listener of the cross-host pool dir in, starting
// the directory's reaper if it is the first.
func startReaper(dir string, a pool.Access) {
	reapers.Lock()
	defer reapers.Unlock()
	if reapers.dirs == nil {
		reapers.dirs = make(map[string]int)
	}
	reapers.dirs[dir]++
	if reapers.dirs[dir] == 1 {
		go reap(dir, a, reapEvery, reapAfter)
	}
}

// stopReaper counts a listener of dir out.
func stopReaper(dir string) {
	reapers.Lock()
	defer reapers.Unlock()
	if reapers.dirs[dir]--; reapers.dirs[dir] <= 0 {
		delete(reapers.dirs, dir)
	}
}

// reap cleans dir every period until it has no listener of this process.
func reap(dir string, a pool.Access, every, after time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		reapers.Lock()
		n := reapers.dirs[dir]
		reapers.Unlock()
		if n == 0 {
			return
		}
		pool.CleanAfter(dir, a, after) // best effort, as every CleanIn
	}
}
