//go:build linux

package balance

import (
	"runtime/debug"
	"sync"
	"time"

	"github.com/notnets/notnets/internal/doorbell"
	"github.com/notnets/notnets/internal/pool"
)

// Watching the registry. One goroutine per pool directory in a process
// sleeps on the registry's generation word (a futex, as a listener sleeps
// on its knock word) and signals every subscriber when it changes: a
// ClientConn learns of a new or departed instance within a wake-up,
// without reading the directory per call or on a timer. In a cross-host
// pool (its marker, PROTOCOL.md 3.7: a server on another host cannot wake
// a futex here), and for poll-only subscribers (WithPollOnly), it reads
// the word every pollInterval instead. While the registry cannot be
// mapped (no pool yet, or a file it refuses), subscribers are signalled
// every pollInterval and read the directory themselves.

// pollInterval is how often the generation is read when it cannot be
// waited on, well within the 100 ms in which a client must see a change.
const pollInterval = 20 * time.Millisecond

// modeEvery is how often a watcher that waits on a futex reads the pool's
// marker again.
const modeEvery = time.Second

// watchers holds the process's watchers by pool directory.
// Locks: watchers.mu guards the map and every watcher's subs; nothing
// else is taken under it.
var watchers struct {
	mu sync.Mutex
	m  map[string]*watcher
}

type watcher struct {
	dir    string
	access pool.Access
	subs   map[chan struct{}]bool // each buffered with room for one signal
	polls  int                    // subscribers that poll only
}

// Watch signals ch (which must have a buffer of one) each time an
// instance of any service opens or closes in the pool dir, until stop is
// called. pollOnly subscribers make the watcher poll.
func Watch(dir string, a pool.Access, pollOnly bool, ch chan struct{}) (stop func()) {
	watchers.mu.Lock()
	defer watchers.mu.Unlock()
	if watchers.m == nil {
		watchers.m = make(map[string]*watcher)
	}
	w := watchers.m[dir]
	if w == nil {
		w = &watcher{dir: dir, access: a, subs: make(map[chan struct{}]bool)}
		watchers.m[dir] = w
		go w.run()
	}
	w.subs[ch] = true
	if pollOnly {
		w.polls++
	}
	return func() {
		watchers.mu.Lock()
		defer watchers.mu.Unlock()
		if w.subs[ch] {
			delete(w.subs, ch)
			if pollOnly {
				w.polls--
			}
		}
	}
}

// notify signals every subscriber, and reports whether any is left (the
// watcher ends when none is) and whether one polls only.
func (w *watcher) notify() (alive, poll bool) {
	watchers.mu.Lock()
	defer watchers.mu.Unlock()
	if len(w.subs) == 0 {
		delete(watchers.m, w.dir)
		return false, false
	}
	for ch := range w.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return true, w.polls > 0
}

// subscribed reports whether the watcher still has subscribers, ending it
// if not, and whether one polls only.
func (w *watcher) subscribed() (alive, poll bool) {
	watchers.mu.Lock()
	defer watchers.mu.Unlock()
	if len(w.subs) == 0 {
		delete(watchers.m, w.dir)
		return false, false
	}
	return true, w.polls > 0
}

func (w *watcher) run() {
	for {
		mode, err := pool.ReadMode(w.dir, w.access)
		var reg *pool.Registry
		if err == nil {
			reg, err = pool.OpenRegistry(w.dir, w.access, mode.Coherence)
		}
		if err == nil {
			ok := w.follow(reg, mode)
			reg.Close()
			if !ok {
				return
			}
		}
		// No registry: subscribers read the directory on each signal.
		time.Sleep(pollInterval)
		if alive, _ := w.notify(); !alive {
			return
		}
	}
}

// follow waits on the registry's generation and signals subscribers on
// each change, until no subscriber is left (false) or the registry page
// faults (true: map it again). It polls in a cross-host pool, whose
// marker it reads now and again: an unused pool may be marked after a
// client made its registry (pool.MarkCrossHost); if the marker then asks
// for another coherence than the registry was opened with (mode), it
// returns true to open it again.
func (w *watcher) follow(reg *pool.Registry, mode pool.Mode) (alive bool) {
	defer func() {
		if recover() != nil { // the file was truncated under us
			alive = true
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	seen := reg.Generation.Load()
	// An instance may have announced itself between a subscriber's read
	// of the directory and this first load: read it again.
	if alive, _ := w.notify(); !alive {
		return false
	}
	cross, modeRead := mode.CrossHost, time.Now()
	for {
		alive, poll := w.subscribed()
		if !alive {
			return false
		}
		if !cross && time.Since(modeRead) >= modeEvery {
			now, _ := pool.ReadMode(w.dir, w.access)
			if now.Coherence != mode.Coherence {
				return true
			}
			cross, modeRead = now.CrossHost, time.Now()
		}
		if poll || cross {
			time.Sleep(pollInterval)
		} else {
			doorbell.WaitKnock(reg.Generation.Ptr(), seen, false)
		}
		if g := reg.Generation.Load(); g != seen {
			seen = g
			if alive, _ := w.notify(); !alive {
				return false
			}
		}
	}
}

// Announce tells the watchers of every process that an instance opened or
// closed in the pool dir. It is best effort: without a registry, clients
// find instances when they next read the directory.
func Announce(dir string, a pool.Access) {
	mode, err := pool.ReadMode(dir, a)
	if err != nil {
		return
	}
	reg, err := pool.OpenRegistry(dir, a, mode.Coherence)
	if err != nil {
		return
	}
	defer reg.Close()
	func() {
		defer func() { recover() }()
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		doorbell.KnockWord(reg.Generation, 1<<30)
	}()
}
