package transport

import (
	"sync"
	"sync/atomic"
	"time"
)

// deadline is one of a StreamConn's deadlines (read or write), as
// net.Conn documents them: it can be set, moved or cleared at any time,
// also while a Read or Write waits, and once passed it fails every wait
// until it is moved again. Pollers check it with an atomic load
// (passed), waiters select on its channel (done), and a reader asleep on
// the doorbell is woken by the wake function when it passes, or bounds
// its sleep by left.
//
// Locks: mu guards timer and cancel (a leaf: nothing is taken under it;
// wake runs outside it, from the timer).
type deadline struct {
	wake func() // called when the deadline passes, or nil

	passed atomic.Bool  // the deadline has passed (set before cancel closes)
	at     atomic.Int64 // the deadline in Unix ns, or 0 for none

	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{} // closed when the deadline passes
}

func newDeadline(wake func()) *deadline {
	return &deadline{wake: wake, cancel: make(chan struct{})}
}

// set moves the deadline to t; the zero time clears it.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	if d.timer != nil && !d.timer.Stop() {
		// The timer fired: its function closes cancel (if it has not
		// yet) and then the deadline is reset below, not before.
		<-d.cancel
	}
	d.timer = nil
	select {
	case <-d.cancel:
		d.cancel = make(chan struct{})
	default:
	}
	d.passed.Store(false)
	if t.IsZero() {
		d.at.Store(0)
		d.mu.Unlock()
		return
	}
	d.at.Store(t.UnixNano())
	if dur := time.Until(t); dur > 0 {
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() {
			d.passed.Store(true)
			close(cancel)
			if d.wake != nil {
				d.wake()
			}
		})
		d.mu.Unlock()
		return
	}
	d.passed.Store(true)
	close(d.cancel)
	d.mu.Unlock()
	if d.wake != nil {
		d.wake()
	}
}

// stop stops the timer, for a connection that has closed: a deadline far
// ahead would otherwise keep it, and the connection, until it fires.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

// expired reports whether the deadline has passed. It reads the clock
// as well as the timer's flag: a reader woken at its deadline by the
// limit of its sleep may run before the timer does.
func (d *deadline) expired() bool {
	if d.passed.Load() {
		return true
	}
	at := d.at.Load()
	return at != 0 && time.Now().UnixNano() >= at
}

// done returns a channel closed when the deadline passes.
func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

// left returns the time until the deadline, or max if none is set (or
// the deadline is further away).
func (d *deadline) left(max time.Duration) time.Duration {
	at := d.at.Load()
	if at == 0 {
		return max
	}
	return min(max, time.Duration(at-time.Now().UnixNano()))
}
