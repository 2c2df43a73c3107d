package transport

import (
	"time"

	"github.com/notnets/notnets/internal/spin"
)

// IdleStrategy chooses how a side waits when it has nothing to read, in
// the manner of Aeron's idle strategies. What each costs, measured, is in
// docs/BENCHMARKS.md.
type IdleStrategy int

const (
	// IdleAdaptive (the default) spins, yielding now and then, for a
	// period learned from the recent gaps between messages (spin.Budget:
	// just past the usual gap when that is at most Wait.Spin, else
	// spin.MinSpin), then parks on the doorbell. A poller that finds it
	// has lost its core (spin.CrowdedGap) parks at once.
	IdleAdaptive IdleStrategy = iota
	// IdleBusySpin never parks a connection's reader or a caller waiting
	// for its reply: the lowest latency at any rate, and a core per
	// polling side for as long as a connection is open.
	IdleBusySpin
	// IdleParkOnly parks at once: callers never poll for their replies,
	// readers block on the doorbell as soon as the ring is empty. The
	// least CPU; every message that finds its peer parked pays a wake-up.
	IdleParkOnly
)

// forever is a spin period that never ends.
const forever = time.Duration(1 << 62)

// readerSpin returns how long a connection's reader polls an empty ring
// before it parks: the learned period when adaptive.
func (c *conn) readerSpin() time.Duration { return c.spinFor(c.budget.Spin()) }

// callerSpin returns how long a caller polls for its own reply before it
// waits for the reader to hand it over: WithSpin's period when adaptive.
func (c *conn) callerSpin() time.Duration { return c.spinFor(c.wait.Spin) }

// spinFor is the spin period of the connection's idle strategy, adaptive
// being the period given.
func (c *conn) spinFor(adaptive time.Duration) time.Duration {
	switch c.wait.Idle {
	case IdleBusySpin:
		return forever
	case IdleParkOnly:
		return 0
	}
	return adaptive
}

// idler returns the pacing of a poller of this connection.
func (c *conn) idler() spin.Idler {
	return spin.Idler{NoOSYield: c.wait.Idle == IdleBusySpin}
}

// busy records that the reader found frames, and learns from the idle gap
// they ended.
// afterBlock starts a new run of polls after the reader blocked: a spin
// period again, since only a message or a kick ends a futex wait. Not in
// poll-only mode, where a wait is a nap that ends by itself (doorbell's
// nap_linux.go): the reader polls once and naps again until something
// comes (spin.Idler.Expire). Spinning again after each nap, or even the
// 256 polls before Spent reads the clock, cost a cross-host client 17% of
// a core idle, in sched_yield, and a client and server in one process
// with flushes (two lines invalidated per poll) 39%; 7% once it polled
// once (an in-process probe over 3 s, the profile in the note),
// and the naps could not grow.
func (c *conn) afterBlock(idle *spin.Idler) { resumeIdle(idle, c.wait) }

// resumeIdle is afterBlock for a reader with idle strategy w.
func resumeIdle(idle *spin.Idler, w Wait) {
	if w.PollOnly {
		idle.Expire() // one poll, then the next nap
		return
	}
	idle.Reset()
}

func (c *conn) busy(idle *spin.Idler) {
	if gap := idle.Busy(); gap > 0 {
		c.budget.Observe(gap)
	}
}
