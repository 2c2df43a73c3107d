//go:build linux

// Package spin paces goroutines that poll shared memory.
//
// A poller spins on shared memory without yielding, and calls
// runtime.Gosched only once per YieldInterval of continuous spinning, so that
// goroutines queued behind it on its P still run. Yielding on every poll is
// ruinous with GOMAXPROCS > 1: Gosched puts the goroutine on the global run
// queue and wakes an idle P's thread each time, so the poller hops between
// threads and both processes' threads fight for the cores (measured on the
// 2-core development machine: a two-process ring ping-pong takes 16 us
// yielding on every poll, 0.23 us yielding every few hundred polls).
//
// After OSYieldAfter without progress, a poller offers its core to other
// threads now and then (sched_yield): when the kernel has put both peers'
// pollers on one core, each would otherwise wait out the other's time slice.
package spin

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// YieldInterval is how often a poller that keeps spinning yields to
	// the Go scheduler.
	YieldInterval = time.Millisecond
	// OSYieldAfter is how long a poller finds nothing before it starts
	// calling sched_yield. A notnets round trip takes a few microseconds
	// when both pollers have a core; much longer suggests they share one.
	// (Measured with notnets bench on the 2-core development machine: 2 us
	// turns ordinary hiccups into 15-20 us losses of the core; no yield at
	// all leaves 200 us stalls when pollers outnumber cores.)
	OSYieldAfter = 5 * time.Microsecond
	// clockEvery is how many polls pass between two readings of the clock.
	clockEvery = 256
)

// Idler paces one poller: it tells when the poller has found nothing for a
// given time, and yields now and then. The zero value is ready to use.
type Idler struct {
	polls   int
	idle    bool
	since   time.Time // start of the current run of empty polls
	yielded time.Time
}

// Spent records an empty poll and reports whether d has passed since the
// first empty poll in a row.
func (w *Idler) Spent(d time.Duration) bool {
	if !w.idle {
		w.idle, w.since = true, time.Now()
	}
	if w.polls++; w.polls%clockEvery != 0 {
		return false
	}
	now := time.Now()
	w.pace(now)
	if now.Sub(w.since) >= OSYieldAfter {
		OSYield()
	}
	return now.Sub(w.since) >= d
}

// Busy records a poll that found work.
func (w *Idler) Busy() {
	w.idle = false
	if w.polls++; w.polls%clockEvery == 0 {
		w.pace(time.Now())
	}
}

// Reset starts a new run of polls, as after the poller has blocked.
func (w *Idler) Reset() { w.idle = false }

func (w *Idler) pace(now time.Time) {
	if now.Sub(w.yielded) >= YieldInterval {
		w.yielded = now
		runtime.Gosched()
	}
}

// OSYield offers the calling thread's core to other runnable threads
// (sched_yield). Unlike runtime.Gosched it wakes no other thread.
func OSYield() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }
