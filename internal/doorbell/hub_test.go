package doorbell

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// threads returns the number of OS threads of this process.
func threads(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

// bellPair is the two bells of one connection, with their four words in
// one shared mapping.
type bellPair struct{ waiter, ringer *Bell }

func newBellPair(t *testing.T) bellPair {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	w := func(i int) *atomic.Uint32 { return (*atomic.Uint32)(unsafe.Pointer(&mem[64*i])) }
	aTail, aSleep, bTail, bSleep := w(0), w(1), w(2), w(3)
	return bellPair{waiter: New(aTail, aSleep, bTail, bSleep, false), ringer: New(bTail, bSleep, aTail, aSleep, false)}
}

// waitFor polls cond until it holds, failing after failBound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(failBound); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (hub waits %d; last unexpected futex_waitv error %q; futex_waitv unavailable: %v)",
				what, failBound, HubWaiters(), HubError(), hubs.unavailable.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestIdleBellsWaitInAHub puts 300 idle bells to sleep: they wait in hubs,
// holding a handful of threads instead of one each (a direct futex wait
// holds its thread), and each wakes when its peer rings or it is kicked,
// and then waits directly again.
func TestIdleBellsWaitInAHub(t *testing.T) {
	if hubs.unavailable.Load() {
		t.Skip("skipped: this kernel has no futex_waitv (Linux 5.16)")
	}
	const n = 300
	waitFor(t, "the hubs empty", func() bool { return HubWaiters() == 0 }) // waits of other tests counted out
	before := threads(t)
	pairs := make([]bellPair, n)
	returned := make(chan int, n)
	for i := range pairs {
		pairs[i] = newBellPair(t)
		b := pairs[i].waiter
		b.timeouts = hubAfter // as after a MaxBlock with nothing
		go func() {
			b.Wait(func() (uint32, bool) { return b.peerTail.Load(), false })
			returned <- i
		}()
	}
	waitFor(t, "300 bells in the hubs", func() bool { return HubWaiters() == n })
	if hubs.unavailable.Load() {
		t.Skip("skipped: this kernel has no futex_waitv (Linux 5.16)")
	}
	if got := threads(t); got-before > 10 {
		t.Errorf("%d idle bells hold %d more threads, want at most 10", n, got-before)
	}
	// The peer publishes and rings on all but the last; the last is kicked.
	for i := range n - 1 {
		pairs[i].ringer.selfTail.Add(1)
		pairs[i].ringer.Ring()
	}
	pairs[n-1].waiter.Kick()
	seen := make([]bool, n)
	for range n {
		select {
		case i := <-returned:
			seen[i] = true
		case <-time.After(failBound):
			t.Fatalf("only some bells returned within %v", failBound)
		}
	}
	for i, p := range pairs {
		if p.waiter.timeouts != 0 {
			t.Errorf("bell %d still counts %d idle waits after being woken", i, p.waiter.timeouts)
		}
	}
	waitFor(t, "hubs empty", func() bool { return HubWaiters() == 0 })
}

// TestHubWaitEndsAtItsBound checks that a bell nobody rings comes back from
// the hub after hubMaxBlock, still idle.
func TestHubWaitEndsAtItsBound(t *testing.T) {
	defer func(d time.Duration) { hubMaxBlock = d }(hubMaxBlock)
	hubMaxBlock = 100 * time.Millisecond
	p := newBellPair(t)
	b := p.waiter
	b.timeouts = hubAfter
	d := timed(t, "a hub wait nobody ends", func() {
		b.Wait(func() (uint32, bool) { return b.peerTail.Load(), false })
	})
	if hubs.unavailable.Load() {
		t.Skip("skipped: this kernel has no futex_waitv (Linux 5.16)")
	}
	if d < hubMaxBlock || b.timeouts == 0 {
		t.Errorf("hub wait returned after %v with %d idle waits counted; want at least %v, still idle", d, b.timeouts, hubMaxBlock)
	}
}

// TestHubSeesEveryPeerClose puts two bells in one hub and has both peers
// close (a state the bells' look reports) and ring without publishing, at
// the same moment: futex_waitv names one woken word only, and the other
// bell must come back too, not at hubMaxBlock. (A ring with no change of
// state at all can be lost if it comes before the hub sleeps, as with a
// direct futex wait; a peer's close always stores its state first.)
func TestHubSeesEveryPeerClose(t *testing.T) {
	if hubs.unavailable.Load() {
		t.Skip("skipped: this kernel has no futex_waitv (Linux 5.16)")
	}
	// A wait another test ended may not be counted out yet: the hub
	// subtracts it just after it hands the wait back.
	waitFor(t, "the hubs empty", func() bool { return HubWaiters() == 0 })
	pairs := []bellPair{newBellPair(t), newBellPair(t)}
	var closed [2]atomic.Bool
	returned := make(chan int, 2)
	for i, p := range pairs {
		b := p.waiter
		b.timeouts = hubAfter
		go func() {
			b.Wait(func() (uint32, bool) { return b.peerTail.Load(), closed[i].Load() })
			returned <- i
		}()
	}
	waitFor(t, "both bells in the hubs", func() bool { return HubWaiters() == 2 })
	for i, p := range pairs {
		closed[i].Store(true)
		p.ringer.RingAlways()
	}
	for range 2 {
		select {
		case <-returned:
		case <-time.After(failBound):
			t.Fatalf("a bell whose peer closed did not come back within %v", failBound)
		}
	}
}
