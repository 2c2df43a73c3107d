package transport

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// TestSignalWakesEveryWaiter parks two goroutines on one stream, as a
// receiver and a sender waiting for window are, and checks that one signal
// makes both look again. With a single pending wake-up token only one
// looked: when a window update and a message arrived in one drain, the
// sender could take the token meant for the receiver, which then slept
// forever while the sender waited for window the receiver would have
// returned (seen as a stalled bidi stream of 1 MiB messages).
func TestSignalWakesEveryWaiter(t *testing.T) {
	for round := 0; round < 100; round++ {
		var s Stream
		s.init(1, nil, 0, 1<<20)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var looks [2]int // under s.mu
		done := false
		results := make(chan error, 2)
		for i := range looks {
			go func() {
				results <- s.await(ctx, func() bool { looks[i]++; return done })
			}()
		}
		waitFor := func(what string, cond func() bool) {
			for {
				s.mu.Lock()
				ok := cond()
				s.mu.Unlock()
				if ok {
					return
				}
				if ctx.Err() != nil {
					t.Fatalf("round %d: %s: %d and %d looks", round, what, looks[0], looks[1])
				}
				runtime.Gosched()
			}
		}
		waitFor("both park", func() bool { return s.waiters == 2 })
		s.mu.Lock()
		before := looks
		s.mu.Unlock()
		s.signal()
		waitFor("both look again after one signal", func() bool { return looks[0] > before[0] && looks[1] > before[1] })
		s.mu.Lock()
		done = true
		s.mu.Unlock()
		s.signal()
		for range looks {
			if err := <-results; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		cancel()
	}
}
