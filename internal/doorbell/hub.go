//go:build linux

package doorbell

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Why idle bells wait in a hub.
//
// A goroutine blocked in futex(2) holds its OS thread for as long as it
// waits: 1,000 idle connections to a server held 1,009 threads (measured on
// the 2-core development machine), and Go never gives a thread back. A
// bell that has found nothing for a whole MaxBlock is idle: its next waits
// go to a hub instead, where one goroutine waits for up to hubMax bells at
// once with futex_waitv(2) (Linux 5.16) and wakes the ones whose word
// changed, whose bell was kicked, or whose wait has lasted hubMaxBlock.
// The waiting goroutines park on channels and hold no thread. The first
// wake-up after an idle period costs a goroutine hand-off more than a
// direct wait (a few microseconds, against the 40 us the vCPU itself takes
// to wake after a millisecond of idleness); then the bell waits directly
// again. Without futex_waitv (ENOSYS) bells always wait directly.

// hubMax is how many bells one hub waits for: futex_waitv takes at most
// 128 words, and one is the hub's own.
const hubMax = 127

// hubMaxBlock bounds a wait in the hub, as MaxBlock bounds a direct one,
// but longer: kicks cannot be lost in the hub (they change the hub's own
// word), and the hub looks at every bell's state (the peer's close) each
// time it wakes, so this only bounds how stale a forgotten wait can get. Each end of a wait costs its hub a rebuild of its futex_waitv
// (about 100 us with 100 bells on the development machine), so it is
// long. A variable for tests.
var hubMaxBlock = 30 * time.Second

// hubWaiter is one bell's wait in a hub.
type hubWaiter struct {
	word     *atomic.Uint32        // the peer's tail word
	seen     uint32                // its value when the wait began
	kicked   *atomic.Bool          // set by Kick
	look     func() (uint32, bool) // the bell's look: anything pending (the peer closed)?
	deadline int64                 // monotonic ns after which the wait ends anyway
	woken    bool                  // a FUTEX_WAKE on the word reached the hub; the loop's alone
	done     chan bool             // receives whether the word changed
}

// ready reports whether the wait is over at monotonic time now, and if so
// whether the word changed.
func (w *hubWaiter) ready(now int64) (over, changed bool) {
	if w.word.Load() != w.seen {
		return true, true
	}
	if w.woken || w.kicked.Load() || now >= w.deadline {
		return true, false
	}
	// futex_waitv names one woken word only: a peer that closed and rang
	// (RingAlways) while another bell of the hub woke it is seen here.
	if w.look != nil {
		if _, pending := w.look(); pending {
			return true, false
		}
	}
	return false, false
}

// hub waits for up to hubMax bells on one goroutine.
//
// Locks: hubs.mu guards every hub's count and pending list and running
// flag; the loop's own list (ws) is touched by the loop alone.
type hub struct {
	ctl     atomic.Uint32 // private futex word, bumped when a wait is added
	count   int           // waits added and not yet ended
	pending []*hubWaiter  // added, not yet taken by the loop
	running bool
	vec     [hubMax + 1]futexWaitv // the loop's argument, on the heap
}

var hubs struct {
	sync.Mutex
	all         []*hub
	unavailable atomic.Bool  // futex_waitv is not there (ENOSYS) or not allowed (EPERM)
	lastErr     atomic.Value // the last unexpected error of futex_waitv, a string, for tests
}

// hubWait waits in a hub until word no longer holds seen, kicked is set,
// look reports something pending, the word is woken, or hubMaxBlock (or
// limit, if shorter) passes. It reports false, without waiting, when there is no
// futex_waitv; else whether the word changed. While it waits, in holds
// the hub, so that a Kick can make the hub look again (kickHub).
func hubWait(word *atomic.Uint32, seen uint32, kicked *atomic.Bool, look func() (uint32, bool), in *atomic.Pointer[hub], limit time.Duration) (waited, changed bool) {
	if hubs.unavailable.Load() {
		return false, false
	}
	w := &hubWaiter{word: word, seen: seen, kicked: kicked, look: look, deadline: monotonic() + int64(min(hubMaxBlock, limit)), done: make(chan bool, 1)}
	h := addWaiter(w)
	in.Store(h)
	kickHub(h)
	changed, ok := <-w.done
	in.Store(nil)
	return ok, changed
}

// kickHub makes h's loop look at its waits again: a change of its own
// word, which futex_waitv compares before it sleeps, so a kick that comes
// between the loop's look and its sleep is not lost.
func kickHub(h *hub) {
	h.ctl.Add(1)
	futexWakePrivate(&h.ctl, 1)
}

// addWaiter puts w in a hub with room, starting one if needed.
func addWaiter(w *hubWaiter) *hub {
	hubs.Lock()
	defer hubs.Unlock()
	var h *hub
	for _, x := range hubs.all {
		if x.count < hubMax {
			h = x
			break
		}
	}
	if h == nil {
		h = &hub{}
		hubs.all = append(hubs.all, h)
	}
	h.count++
	h.pending = append(h.pending, w)
	if !h.running {
		h.running = true
		go h.loop()
	}
	return h
}

// loop waits for the hub's bells until none is left.
func (h *hub) loop() {
	var ws []*hubWaiter
	for {
		hubs.Lock()
		ws = append(ws, h.pending...)
		clear(h.pending)
		h.pending = h.pending[:0]
		ctl := h.ctl.Load() // after taking pending: a later add changes it
		if len(ws) == 0 {
			h.running = false
			hubs.Unlock()
			return
		}
		hubs.Unlock()
		ws = h.fire(ws)
		if len(ws) == 0 {
			continue
		}
		next := ws[0].deadline
		h.vec[0] = futexWaitv{val: uint64(ctl), uaddr: uint64(uintptr(unsafe.Pointer(&h.ctl))), flags: futex2U32 | futex2Private}
		for i, w := range ws {
			h.vec[i+1] = futexWaitv{val: uint64(w.seen), uaddr: uint64(uintptr(unsafe.Pointer(w.word))), flags: futex2U32}
			next = min(next, w.deadline)
		}
		i, err := futexWaitvCall(h.vec[:len(ws)+1], next)
		switch {
		case err == nil || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ETIMEDOUT) || errors.Is(err, unix.EINTR):
		default:
			// No futex_waitv (ENOSYS), or one this process may not use
			// (a seccomp filter's EPERM): wait directly from now on. Any
			// other error ends these waits (each bell then waits directly
			// once, MaxBlock, before it comes back), rather than retry at
			// once forever.
			hubs.lastErr.Store(err.Error())
			if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
				hubs.unavailable.Store(true)
			}
			h.endAll(ws)
			ws = ws[:0]
			continue
		}
		if i >= 1 {
			// Woken without a change of its word: the peer rang as it
			// closed (RingAlways), which its reader must see now.
			ws[i-1].woken = true
		}
	}
}

// fire ends the waits that are over and returns the others.
func (h *hub) fire(ws []*hubWaiter) []*hubWaiter {
	now := monotonic()
	keep := ws[:0]
	ended := 0
	for _, w := range ws {
		if over, changed := w.ready(now); over {
			w.done <- changed
			ended++
			continue
		}
		keep = append(keep, w)
	}
	clear(ws[len(keep):])
	if ended > 0 {
		hubs.Lock()
		h.count -= ended
		hubs.Unlock()
	}
	return keep
}

// endAll ends every wait without a result: the bells wait directly.
func (h *hub) endAll(ws []*hubWaiter) {
	for _, w := range ws {
		close(w.done)
	}
	hubs.Lock()
	h.count -= len(ws)
	hubs.Unlock()
}

// HubError returns the last unexpected error futex_waitv returned, or "".
func HubError() string {
	s, _ := hubs.lastErr.Load().(string)
	return s
}

// HubWaiters returns how many waits the hubs hold, for tests.
func HubWaiters() int {
	hubs.Lock()
	defer hubs.Unlock()
	n := 0
	for _, h := range hubs.all {
		n += h.count
	}
	return n
}

// monotonic returns CLOCK_MONOTONIC in ns, the clock of futex_waitv's
// absolute timeout.
func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
