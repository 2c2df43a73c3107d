package spin

import (
	"testing"
	"time"
)

func TestIdlerSpent(t *testing.T) {
	var w Idler
	for i := 1; i <= 10*clockEvery; i++ {
		if w.Spent(time.Hour) {
			t.Fatalf("spent an hour after %d polls", i)
		}
	}
	w.Reset()
	n := 0
	for !w.Spent(0) {
		n++
		if n > clockEvery {
			t.Fatalf("not spent after %d polls with d = 0", n)
		}
	}
	// Busy polls start a new run of empty polls.
	w.Busy()
	start := time.Now()
	for !w.Spent(2 * time.Millisecond) {
	}
	// Unless this poller lost its core meanwhile (a crowded machine).
	if since := time.Since(start); since < 2*time.Millisecond && !w.Crowded() {
		t.Errorf("spent after %v, want at least 2ms", since)
	}
}

// TestIdlerSeesACrowdedMachine makes a poller's clock jump between two
// readings, as when the kernel runs another thread on its core: the spin
// period ends at once, and Crowded says why.
func TestIdlerSeesACrowdedMachine(t *testing.T) {
	var w Idler
	w.Spent(time.Hour)
	w.last = time.Now().Add(-time.Second) // descheduled for a second
	spent := false
	for range clockEvery {
		if spent = w.Spent(time.Hour); spent {
			break
		}
	}
	if !spent || !w.Crowded() {
		t.Fatalf("after losing the core: spent %v, crowded %v; want both", spent, w.Crowded())
	}
	// A busy-spinning poller spins on.
	b := Idler{NoOSYield: true}
	b.Spent(time.Hour)
	b.last = time.Now().Add(-time.Second)
	for range 2 * clockEvery {
		if b.Spent(time.Hour) {
			t.Fatal("a busy-spinning poller stopped spinning on a crowded machine")
		}
	}
}

// TestIdlerMeasuresTheGap checks that Busy returns the idle gap it ends,
// across a Reset (a blocked poller), and 0 when it was not idle.
func TestIdlerMeasuresTheGap(t *testing.T) {
	var w Idler
	if gap := w.Busy(); gap != 0 {
		t.Fatalf("gap %v without an idle poll", gap)
	}
	start := time.Now()
	w.Spent(time.Hour)
	w.Reset()
	for time.Since(start) < time.Millisecond {
	}
	w.Spent(time.Hour)
	if gap := w.Busy(); gap < time.Millisecond {
		t.Fatalf("gap %v, want at least the 1 ms since the first idle poll", gap)
	}
	if gap := w.Busy(); gap != 0 {
		t.Fatalf("second Busy in a row returned %v, want 0", gap)
	}
}

// TestBudgetLearnsTheGap feeds a budget short gaps, then long ones.
func TestBudgetLearnsTheGap(t *testing.T) {
	b := NewBudget(200 * time.Microsecond)
	for range budgetGaps {
		b.Observe(100 * time.Microsecond)
	}
	if got := b.Spin(); got != 125*time.Microsecond {
		t.Errorf("after gaps of 100 us: spin %v, want 125us", got)
	}
	for range budgetGaps {
		b.Observe(time.Millisecond)
	}
	if got := b.Spin(); got != MinSpin {
		t.Errorf("after gaps of 1 ms: spin %v, want MinSpin %v", got, MinSpin)
	}
	for range budgetGaps {
		b.Observe(time.Microsecond)
	}
	if got := b.Spin(); got != MinSpin {
		t.Errorf("after gaps of 1 us: spin %v, want MinSpin %v", got, MinSpin)
	}
	small := NewBudget(5 * time.Microsecond) // WithSpin below MinSpin
	for range budgetGaps {
		small.Observe(time.Microsecond)
	}
	if got := small.Spin(); got > 5*time.Microsecond {
		t.Errorf("a budget of at most 5 us learned %v", got)
	}
}
