//go:build linux

// Package doorbell is the one place that decides how a notnets side waits
// for its peer and how the peer wakes it: connection readers, writers
// facing a full ring, the listener waiting for clients, the dial waiting
// to be accepted, and the benchmark floor all wait through it.
//
// # The connection doorbell
//
// Each side of a connection has a sleeping word in its own control block
// (docs/PROTOCOL.md 9) and sleeps on the peer's ring tail word, the
// counter the peer advances when it publishes. A reader goes through
// these states:
//
//	      frames found
//	    ┌────────────┐
//	    ▼            │
//	POLLING ─────────┘     spin period with nothing found
//	    │ ────────────────────────────────────────────┐
//	    │                                             ▼
//	    │                                 ARMED: sleeping word = 1,
//	    │                                 then look at the tail again
//	    │                       tail moved / peer closed │  nothing new
//	    │◄───────────────────────────────────────────────┤
//	    │                                                 ▼
//	    │                                 SLEEPING: futex wait on the
//	    │                                 peer's tail, at most MaxBlock
//	    │◄────────────────────────────────────────────────┘
//	    │   woken (ring or kick), tail changed, or MaxBlock passed:
//	    │   sleeping word = 0
//
// A writer publishes (stores its tail), then loads the peer's sleeping
// word, and rings (FUTEX_WAKE on its tail word) only if it is set: the
// data path makes a system call only when the peer sleeps. Both orders
// are store-then-load on sequentially consistent atomics, so either the
// writer sees the sleeping word or the reader sees the new tail (Dekker):
// a wake-up is never lost. A futex wait returns at once if the tail word
// no longer holds the value the reader saw, so a ring that comes between
// the look and the wait is not lost either.
//
// A goroutine asleep in a futex wait holds its OS thread, and, for the
// first HoldP of the wait and only while another P of the process is
// free of doorbell waits, its P too: the cheap wake-up, without leaving
// runnable goroutines of the process with no P (block_linux.go).
//
// Everything else that wakes a reader (its own process starting a call,
// the connection closing) kicks it: a wake on the same word, which the
// reader treats like any other wake-up. MaxBlock bounds every direct
// wait, so a kick that is lost because it came just before the wait costs
// at most MaxBlock, and a peer that died without ringing is noticed. A
// bell idle for a whole MaxBlock waits in a hub instead (hub.go), where a
// kick changes the hub's own word and cannot be lost, the peer's state is
// looked at on every wake of the hub, and the wait ends after
// hubMaxBlock; a peer that died is noticed by the liveness watch.
//
// In poll-only mode (pools shared across hosts, where a futex cannot reach
// the peer) SLEEPING is a nap that doubles from NapMin to PollSleep while
// nothing comes (nap_linux.go), and nobody rings.
//
// # The listener's knock
//
// A listener sleeps on the knock word of its segment; a client that has
// announced a connection (or the listener's own handshake goroutine)
// increments it and wakes the listener (Knock). Close changes the word
// too, so that a wait about to start returns at once.
package doorbell

import (
	"sync/atomic"
	"time"
)

// MaxBlock bounds one futex wait, so that a closed peer that could not
// ring, or a kick that came just before the wait, is still noticed.
const MaxBlock = 500 * time.Millisecond

// PollSleep is how long a poll-only side sleeps between polls. time.Sleep
// below a millisecond sleeps about a millisecond anyway (measured on the
// 2-core development machine).
const PollSleep = time.Millisecond

// FullRingSpin is how long a writer facing a full ring polls (pacing
// itself as every poller does) before it sleeps PollSleep between polls:
// while the peer is active, space comes back within microseconds, and a
// sleep costs about a millisecond.
const FullRingSpin = 50 * time.Millisecond

// Bell is one side's doorbell on a connection: the word it sleeps on (the
// peer's tail), its own sleeping word, and the words it rings the peer
// through (its own tail and the peer's sleeping word).
type Bell struct {
	// Waiting side.
	peerTail *atomic.Uint32      // the low half of the peer's tail counter
	sleeping *atomic.Uint32      // this side's sleeping word (shared)
	local    atomic.Bool         // a goroutine of this process is ARMED or SLEEPING
	kicked   atomic.Bool         // Kick came since the wait began (hub.go)
	inHub    atomic.Pointer[hub] // the hub the bell waits in, or nil
	pollOnly bool
	naps     napper // a poll-only waiter's backoff (nap_linux.go)
	// timeouts counts the waits in a row that found nothing for a whole
	// MaxBlock; from hubAfter on, the bell waits in a hub (hub.go). Only
	// the one waiting goroutine touches it.
	timeouts int

	// Ringing side.
	selfTail     *atomic.Uint32 // the low half of this side's tail counter
	peerSleeping *atomic.Uint32 // the peer's sleeping word
}

// New returns the bell of a side whose own control block holds sleeping
// and whose tail word is selfTail, with the peer's tail word and sleeping
// word. With pollOnly the side never uses a futex.
func New(selfTail, sleeping, peerTail, peerSleeping *atomic.Uint32, pollOnly bool) *Bell {
	return &Bell{peerTail: peerTail, sleeping: sleeping, pollOnly: pollOnly, selfTail: selfTail, peerSleeping: peerSleeping}
}

// Ring wakes the peer if it sleeps. Call it after publishing.
func (b *Bell) Ring() {
	if b.peerSleeping.Load() != 0 {
		futexWake(b.selfTail, 1)
	}
}

// RingAlways wakes the peer whether or not it says it sleeps: for the
// close of a connection, which the peer must notice at once.
func (b *Bell) RingAlways() { futexWake(b.selfTail, 1) }

// Wait is ARMED then SLEEPING: it sets the sleeping word, asks look for
// the tail position last seen and whether anything is pending (frames
// published, the connection closed), and unless there is, waits until the
// peer rings, a kick, a change of the tail word, or MaxBlock. Callers look
// again afterwards: wake-ups may be spurious.
//
// One goroutine at a time may wait on a bell. A bell whose last hubAfter
// waits each found nothing for MaxBlock is idle, and waits in a hub, which
// holds no thread for it (hub.go).
func (b *Bell) Wait(look func() (seen uint32, pending bool)) { b.WaitFor(look, noLimit) }

// noLimit is a limit of WaitFor that never comes first.
const noLimit = time.Duration(1 << 62)

// WaitFor is Wait for at most limit (which MaxBlock, or in a hub
// hubMaxBlock, bounds in turn): for a reader with a deadline of its own
// (a byte-stream connection's read deadline), which must end its wait
// when the deadline passes even if the kick that says so comes just
// before the futex wait and is lost. With limit <= 0 it returns at once.
func (b *Bell) WaitFor(look func() (seen uint32, pending bool), limit time.Duration) {
	if limit <= 0 {
		return
	}
	if b.pollOnly {
		b.naps.wait(look, limit)
		return
	}
	b.kicked.Store(false)
	b.local.Store(true)
	b.sleeping.Store(1)
	// If another goroutine drains the ring after look, seen is stale and
	// the wait returns at once: a spurious wake-up, never a missed one.
	if seen, pending := look(); !pending {
		b.wait(seen, look, limit)
	}
	b.sleeping.Store(0)
	b.local.Store(false)
}

// hubAfter is how many idle MaxBlock waits in a row send a bell to a hub.
const hubAfter = 1

// wait is SLEEPING, for at most limit: in a hub when the bell is idle,
// else on the futex.
func (b *Bell) wait(seen uint32, look func() (uint32, bool), limit time.Duration) {
	if b.timeouts >= hubAfter {
		if waited, changed := hubWait(b.peerTail, seen, &b.kicked, look, &b.inHub, limit); waited {
			if changed || b.kicked.Load() {
				b.timeouts = 0
			}
			return
		}
	}
	start := time.Now()
	d := min(MaxBlock, limit)
	if !keepP() {
		futexWaitIdle(b.peerTail, seen, d)
	} else {
		// At most HoldP with the P (block_linux.go), then on without it,
		// unless a kick or anything pending came meanwhile: a kick
		// between the two waits would be lost.
		hold := min(d, HoldP)
		timedOut := futexWait(b.peerTail, seen, hold)
		keepingP.Add(-1)
		if timedOut && hold < d && !b.kicked.Load() {
			if _, pending := look(); !pending {
				futexWaitIdle(b.peerTail, seen, d-time.Since(start))
			}
		}
	}
	if time.Since(start) >= MaxBlock {
		b.timeouts++
	} else {
		b.timeouts = 0
	}
}

// Kick wakes this side's own waiter, if one is ARMED or SLEEPING.
func (b *Bell) Kick() {
	if b.local.Load() {
		b.kicked.Store(true)
		if h := b.inHub.Load(); h != nil {
			kickHub(h)
			return
		}
		futexWake(b.peerTail, 1)
	}
}

// Sleeping reports whether a goroutine of this side is ARMED or SLEEPING.
func (b *Bell) Sleeping() bool { return b.local.Load() }

// Knock increments the listener's knock word and wakes up to n waiters.
func Knock(word *atomic.Uint32, n int) {
	word.Add(1)
	futexWake(word, n)
}

// Word is a knock word of a segment whose memory may not be coherent
// (pool.Word32): Add makes its change visible to the other hosts, and
// Coherent says whether a futex can reach waiters at all.
type Word interface {
	Add(delta uint32) uint32
	Ptr() *atomic.Uint32
	Coherent() bool
}

// KnockWord is Knock on a Word: on memory without coherence it only
// changes the word (written back), which the other side polls.
func KnockWord(w Word, n int) {
	if !w.Coherent() {
		w.Add(1)
		return
	}
	Knock(w.Ptr(), n)
}

// WaitKnock waits until the knock word no longer holds seen, or MaxBlock
// passes; with pollOnly it sleeps PollSleep instead.
func WaitKnock(word *atomic.Uint32, seen uint32, pollOnly bool) {
	if pollOnly {
		time.Sleep(PollSleep)
		return
	}
	futexWaitIdle(word, seen, MaxBlock)
}
