package doorbell

import (
	"syscall"
	"time"
	"unsafe"
)

// Why a poll-only wait naps before it sleeps.
//
// A side that no futex can reach (a cross-host pool, WithPollOnly) polls:
// it spins for its learned period, then sleeps between polls. time.Sleep
// sleeps about a millisecond whatever it is asked below that (measured on
// the 2-core development machine), so a message that came just after the
// spin waited up to a millisecond: notnets bench -pool-mode cross-host
// had p50 55-58 us but avg 390-450 us at 16 B with one caller, the
// average made of such misses (docs/BENCHMARKS.md). A nap is a
// nanosleep(2) of the thread itself, which a timer wakes within its
// slack (50 us by default) of the time asked: the first nap after
// activity is NapMin, and each nap in a row twice the last, up to
// PollSleep, when the wait goes back to time.Sleep, which frees the
// thread. A message that comes during the backoff waits at most about
// as long as the side has already been idle, and a side idle for long
// polls every PollSleep, as before.
//
// A nap keeps the goroutine's P only while another P is free of doorbell
// waits (keepP, block_linux.go), as a futex wait does; else it hands the
// P off first.

// NapMin is a poll-only wait's first nap after activity.
const NapMin = 50 * time.Microsecond

// napper is the backoff of one poll-only waiter; only the waiting
// goroutine touches it.
type napper struct {
	seen uint32        // the tail word at the last nap
	next time.Duration // the next nap, 0 after activity
}

// wait naps or sleeps once, at most limit, unless look reports something
// pending; the tail word look returns, if it moved since the last wait,
// restarts the backoff.
func (n *napper) wait(look func() (uint32, bool), limit time.Duration) {
	seen, pending := look()
	if pending {
		return
	}
	if seen != n.seen {
		n.seen, n.next = seen, 0
	}
	n.next = min(max(2*n.next, NapMin), PollSleep)
	d := min(n.next, limit)
	if d >= PollSleep {
		time.Sleep(d)
		return
	}
	nap(d)
}

// nap blocks the thread for d in nanosleep(2), keeping the goroutine's P
// only if another P is free of doorbell waits.
func nap(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	if keepP() {
		syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
		keepingP.Add(-1)
		return
	}
	blockingSyscall6(syscall.SYS_NANOSLEEP, unsafe.Pointer(&ts), 0, 0, nil, 0, 0)
}
