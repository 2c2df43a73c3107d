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
	gap     time.Time // start of the current idle gap, kept across Reset
	last    time.Time // the last reading of the clock in this run
	yielded time.Time
	crowded bool // the last Spent that reported true found the machine crowded
	spent   bool // Expire: the run is over until Busy or Reset
	// NoOSYield keeps the poller from calling sched_yield, and from
	// ending its spin when it finds the machine crowded: a busy-spinning
	// side that owns its core.
	NoOSYield bool
}

// Crowded reports whether the spin period that Spent last reported over
// ended early because the poller had lost its core (CrowdedGap).
func (w *Idler) Crowded() bool { return w.crowded }

// CrowdedGap is how long a poller may go between two readings of its
// clock (every clockEvery polls, normally about a microsecond) before it
// concludes that it lost its core to another thread: the machine has more
// runnable threads than cores, and spinning on steals a core from someone
// who has work (five processes spinning on two cores made a chain of
// services' p99.9 2.3x worse than grpc-go's). Spent then reports the spin
// period over. Shorter stalls happen on a quiet machine too (interrupts,
// the hypervisor): at 50 us, parking on them cost the two-process bench
// a few microseconds at the median (notnets bench -gap 0,150us, three
// alternated runs each), so only a stall longer than a scheduler's
// smallest time slice counts.
const CrowdedGap = 200 * time.Microsecond

// Spent records an empty poll and reports whether d has passed since the
// first empty poll in a row, or the poller has found the machine crowded
// (CrowdedGap). With d <= 0 it reports true at once.
func (w *Idler) Spent(d time.Duration) bool {
	if !w.idle {
		w.idle, w.since = true, time.Now()
		w.last = w.since
		if w.gap.IsZero() {
			w.gap = w.since
		}
	}
	if d <= 0 || w.spent {
		return true
	}
	if w.polls++; w.polls%clockEvery != 0 {
		return false
	}
	now := time.Now()
	crowded := now.Sub(w.last) > CrowdedGap && !w.NoOSYield
	w.last = now
	yielded := w.pace(now)
	if !w.NoOSYield && now.Sub(w.since) >= OSYieldAfter {
		OSYield()
		yielded = true
	}
	if yielded {
		w.last = time.Now() // a yield may give the core away on purpose
	}
	w.crowded = crowded && now.Sub(w.since) < d
	return crowded || now.Sub(w.since) >= d
}

// Busy records a poll that found work. It returns the idle gap this work
// ended (from the first empty poll, across blocking), or 0 if the poller
// was not idle.
func (w *Idler) Busy() time.Duration {
	w.idle, w.spent = false, false
	var gap time.Duration
	if !w.gap.IsZero() {
		gap = time.Since(w.gap)
		w.gap = time.Time{}
	}
	if w.polls++; w.polls%clockEvery == 0 {
		w.pace(time.Now())
	}
	return gap
}

// Reset starts a new run of polls, as after the poller has blocked. The
// idle gap goes on until Busy.
func (w *Idler) Reset() { w.idle, w.spent = false, false }

// Expire ends the current run of polls: Spent reports true at once until
// Busy or Reset. For a poller whose waits end by themselves (a nap in
// poll-only mode), which polls once after each and waits again, rather
// than spinning a period (or clockEvery polls, before Spent reads the
// clock) after every wait.
func (w *Idler) Expire() { w.spent = true }

// pace yields to the Go scheduler once per YieldInterval, and reports
// whether it did.
func (w *Idler) pace(now time.Time) bool {
	if now.Sub(w.yielded) >= YieldInterval {
		w.yielded = now
		runtime.Gosched()
		return true
	}
	return false
}

// OSYield offers the calling thread's core to other runnable threads
// (sched_yield). Unlike runtime.Gosched it wakes no other thread.
func OSYield() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }
