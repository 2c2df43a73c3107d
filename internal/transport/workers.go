package transport

import (
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
// Locks: mu guards conns; no other lock is taken under it except a
// connection's atomics.
type Workers struct {
	tasks chan func()

	mu         sync.Mutex
	conns      map[*Server]bool // served connections, for the monitor
	monitoring atomic.Bool      // the inline-handler monitor is running
}

// NewWorkers returns an empty set of workers.
func NewWorkers() *Workers {
	return &Workers{tasks: make(chan func()), conns: make(map[*Server]bool)}
}

// submit runs f on an idle worker, or on a new one if none is idle.
func (w *Workers) submit(f func()) {
	select {
	case w.tasks <- f:
	default:
		go w.work(f)
	}
}

func (w *Workers) work(f func()) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		f()
		t.Reset(workerIdle)
		select {
		case f = <-w.tasks:
		case <-t.C:
			return
		}
	}
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
			w.submit(t.readRole)
		}
	}
	return busy
}
