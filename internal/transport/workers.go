package transport

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// workerIdle is how long an idle worker goroutine waits for work before it
// exits.
const workerIdle = 10 * time.Second

// Workers runs a server's calls on reused goroutines (a goroutine whose
// stack has already grown serves the next call without a new goroutine's
// cost), and watches the handlers that run inline on a connection's
// reading goroutine (Server.readRole).
//
// Idle workers are reused last in, first out: after a burst, steady
// traffic keeps reusing the few most recent workers and the others exit
// after workerIdle (with a first-in, first-out hand-off every worker of a
// burst of 5,000 handlers got a call now and then and stayed alive).
//
// Locks: mu guards conns; idleMu guards idle. The monitor submits under
// mu, so idleMu is taken under mu, never the other way round; nothing
// else is taken under either but a connection's atomics.
type Workers struct {
	idleFor time.Duration // workerIdle; shorter in tests

	mu         sync.Mutex
	conns      map[*Server]bool // served connections, for the monitor
	monitoring atomic.Bool      // the inline-handler monitor is running

	idleMu sync.Mutex
	idle   []*worker // idle workers, the most recent last
}

// worker is one reusable goroutine; tasks hands it its next call.
type worker struct {
	tasks chan func() // buffered: submit never blocks
}

// NewWorkers returns an empty set of workers.
func NewWorkers() *Workers {
	return &Workers{idleFor: workerIdle, conns: make(map[*Server]bool)}
}

// submit runs f on the most recently idle worker, or on a new one if none
// is idle.
func (w *Workers) submit(f func()) {
	w.idleMu.Lock()
	if n := len(w.idle); n > 0 {
		wk := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		w.idleMu.Unlock()
		wk.tasks <- f
		return
	}
	w.idleMu.Unlock()
	go w.work(&worker{tasks: make(chan func(), 1)}, f)
}

func (w *Workers) work(wk *worker, f func()) {
	t := time.NewTimer(w.idleFor)
	defer t.Stop()
	for {
		f()
		w.idleMu.Lock()
		w.idle = append(w.idle, wk)
		w.idleMu.Unlock()
		t.Reset(w.idleFor)
		select {
		case f = <-wk.tasks:
			continue
		case <-t.C:
		}
		if !w.retire(wk) {
			f = <-wk.tasks // submit took it just now: its call is on the way
		} else {
			return
		}
	}
}

// retire takes an idle worker out of the idle list, and reports false if
// submit has taken it already.
func (w *Workers) retire(wk *worker) bool {
	w.idleMu.Lock()
	defer w.idleMu.Unlock()
	i := slices.Index(w.idle, wk)
	if i < 0 {
		return false
	}
	w.idle = slices.Delete(w.idle, i, i+1)
	return true
}

// IdleWorkers returns how many workers wait for a call, for tests.
func (w *Workers) IdleWorkers() int {
	w.idleMu.Lock()
	defer w.idleMu.Unlock()
	return len(w.idle)
}

func (w *Workers) add(t *Server) {
	w.mu.Lock()
	w.conns[t] = true
	w.mu.Unlock()
}

func (w *Workers) remove(t *Server) {
	w.mu.Lock()
	delete(w.conns, t)
	w.mu.Unlock()
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
func (w *Workers) watchInline() {
	if !w.monitoring.Load() && w.monitoring.CompareAndSwap(false, true) {
		go w.monitor()
	}
}

// monitor hands the reading role of a connection whose inline handler has
// run for handoffAfter to a worker. It exits after 100 quiet ticks.
func (w *Workers) monitor() {
	for quiet := 0; ; {
		time.Sleep(handoffAfter)
		if w.rescueInline() {
			quiet = 0
			continue
		}
		if quiet++; quiet < 100 {
			continue
		}
		w.monitoring.Store(false)
		// An inline run may have started after the last look; if so, and no
		// other monitor has started since, keep watching.
		if !w.rescueInline() || !w.monitoring.CompareAndSwap(false, true) {
			return
		}
		quiet = 0
	}
}

// rescueInline reports whether any handler runs inline, after taking the
// reading role from those that have run for handoffAfter.
func (w *Workers) rescueInline() bool {
	now := monoNow()
	busy := false
	w.mu.Lock()
	defer w.mu.Unlock()
	for t := range w.conns {
		since := t.inlineSince.Load()
		if since == 0 {
			continue
		}
		busy = true
		if now-since >= int64(handoffAfter) && t.inlineSince.CompareAndSwap(since, 0) {
			w.submit(t.readRoleAfterHandoff)
		}
	}
	return busy
}
