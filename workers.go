package notnets

import "time"

// workerIdle is how long an idle worker goroutine waits for work before it
// exits.
const workerIdle = 10 * time.Second

// workers runs server tasks on reused goroutines: a goroutine whose stack
// has already grown serves the next call without a new goroutine's cost.
type workers struct {
	tasks chan func()
}

func newWorkers() *workers { return &workers{tasks: make(chan func())} }

// submit runs f on an idle worker, or on a new one if none is idle.
func (w *workers) submit(f func()) {
	select {
	case w.tasks <- f:
	default:
		go w.work(f)
	}
}

func (w *workers) work(f func()) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		f()
		t.Reset(workerIdle)
		select {
		case f = <-w.tasks:
		case <-t.C:
			return
		}
	}
}
