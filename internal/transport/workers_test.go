package transport

import (
	"sync"
	"testing"
	"time"
)

// waitUntil polls cond until it holds, failing the test after 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// burst runs n calls at once on w and waits until their workers are idle.
func burst(t *testing.T, w *Workers, n int) {
	t.Helper()
	var started sync.WaitGroup
	release := make(chan struct{})
	started.Add(n)
	for range n {
		w.submit(func() { started.Done(); <-release })
	}
	started.Wait()
	close(release)
	waitUntil(t, "the burst's workers idle", func() bool { return w.IdleWorkers() == n })
}

// TestWorkersReuseTheMostRecent checks that after a burst of 200 calls,
// calls one at a time all go to the most recently idle worker, so that the
// others stay unused and can exit.
func TestWorkersReuseTheMostRecent(t *testing.T) {
	w := NewWorkers()
	burst(t, w, 200)
	w.idleMu.Lock()
	oldest, newest := w.idle[0], w.idle[len(w.idle)-1]
	w.idleMu.Unlock()
	for i := range 100 {
		done := make(chan struct{})
		w.submit(func() { close(done) })
		<-done
		waitUntil(t, "the worker idle again", func() bool { return w.IdleWorkers() == 200 })
		w.idleMu.Lock()
		top, bottom := w.idle[len(w.idle)-1], w.idle[0]
		w.idleMu.Unlock()
		if top != newest || bottom != oldest {
			t.Fatalf("call %d: the idle list changed order: a worker other than the most recent ran it", i)
		}
	}
}

// TestIdleWorkersExit checks that the workers of a burst exit once idle for
// workerIdle, and that calls after that still run.
func TestIdleWorkersExit(t *testing.T) {
	w := NewWorkers()
	w.idleFor = 20 * time.Millisecond
	// Not burst: it waits for all 100 to be idle at once, which the first
	// to finish, gone after 20 ms, may never let happen on a loaded
	// machine (seen under the race detector in CI).
	var started, finished sync.WaitGroup
	release := make(chan struct{})
	started.Add(100)
	finished.Add(100)
	for range 100 {
		w.submit(func() { started.Done(); <-release; finished.Done() })
	}
	started.Wait()
	close(release)
	finished.Wait()
	waitUntil(t, "idle workers exit", func() bool { return w.IdleWorkers() == 0 })
	done := make(chan struct{})
	w.submit(func() { close(done) })
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a call after the workers exited did not run")
	}
}
