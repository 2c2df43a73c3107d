//go:build linux

package doorbell

import (
	"testing"
	"time"
)

// TestNapBackoff: a poll-only waiter's naps double from NapMin to
// PollSleep while the tail stands still, start again from NapMin once it
// moved, and are skipped when something is pending.
func TestNapBackoff(t *testing.T) {
	var n napper
	tail, pending := uint32(7), false
	look := func() (uint32, bool) { return tail, pending }
	want := []time.Duration{NapMin, 2 * NapMin, 4 * NapMin, 8 * NapMin, 16 * NapMin, PollSleep, PollSleep}
	for i, w := range want {
		n.wait(look, noLimit)
		if n.next != w {
			t.Fatalf("wait %d in a row: nap %v, want %v", i+1, n.next, w)
		}
	}
	tail++
	n.wait(look, noLimit)
	if n.next != NapMin {
		t.Errorf("after the tail moved: nap %v, want %v", n.next, NapMin)
	}
	pending = true
	before := n.next
	start := time.Now()
	n.wait(look, noLimit)
	if n.next != before {
		t.Errorf("a wait with something pending changed the backoff (%v to %v)", before, n.next)
	}
	if d := time.Since(start); d >= NapMin {
		t.Logf("a wait with something pending took %v (it should return at once; a slow machine?)", d)
	}
}

// BenchmarkNap measures how long a nap of NapMin really blocks: its
// timer's slack decides it (50 us by default).
func BenchmarkNap(b *testing.B) {
	b.ReportAllocs()
	var worst time.Duration
	for b.Loop() {
		start := time.Now()
		nap(NapMin)
		worst = max(worst, time.Since(start))
	}
	b.ReportMetric(float64(worst.Microseconds()), "worst-us")
}
