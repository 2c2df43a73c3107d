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
	if since := time.Since(start); since < 2*time.Millisecond {
		t.Errorf("spent after %v, want at least 2ms", since)
	}
}
