//go:build linux

package floor

import (
	"bytes"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func poolDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "floor-test-")
	if err != nil {
		dir = t.TempDir()
	} else {
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pair returns a client and a served server side, the server's Serve
// ending (its error sent on done) when the client closes.
func pair(t *testing.T, spin bool) (*Conn, chan error) {
	t.Helper()
	dir := poolDir(t)
	c, name, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	c.Spin, s.Spin = spin, spin
	done := make(chan error, 1)
	go func() { done <- s.Serve(); s.Close() }()
	if err := c.WaitPeer(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("segment file still in the pool after WaitPeer: %v", entries)
	}
	return c, done
}

func TestRoundTrip(t *testing.T) {
	for _, spin := range []bool{false, true} {
		c, done := pair(t, spin)
		payload := bytes.Repeat([]byte("floor"), 100)
		for i := 0; i < 1000; i++ {
			if err := c.RoundTrip(payload[:i%len(payload)]); err != nil {
				t.Fatalf("spin %v: call %d: %v", spin, i, err)
			}
		}
		// Pause parks a spinning server; the next call (or Resume) wakes it.
		for i := 0; i < 3; i++ {
			if err := c.Pause(); err != nil {
				t.Fatal(err)
			}
			if i == 1 {
				if err := c.Resume(payload); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.RoundTrip(payload); err != nil {
				t.Fatalf("spin %v: call after pause %d: %v", spin, i, err)
			}
		}
		c.Close()
		if err := <-done; err != nil {
			t.Errorf("spin %v: Serve: %v", spin, err)
		}
	}
}

func TestRoundTripTooLarge(t *testing.T) {
	c, done := pair(t, true)
	defer func() { c.Close(); <-done }()
	if err := c.RoundTrip(make([]byte, RingSize)); err == nil {
		t.Fatal("a payload larger than the ring went through")
	}
}

func TestWake(t *testing.T) {
	dir := poolDir(t)
	c, name, err := CreateWake(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenWake(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(); s.Close(); close(done) }()
	if err := c.WaitPeer(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		d, err := c.Call()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if d <= 0 || d > 10*time.Second {
			t.Fatalf("call %d: wake-up latency %v", i, d)
		}
	}
	if seq, ack := c.seq.Load(), c.ack.Load(); seq != 200 || ack != 200 {
		t.Errorf("sequence %d, ack %d after 200 calls", seq, ack)
	}
	c.Close()
	<-done // Serve notices the close (it is woken at once, not after wakeMaxBlock)
}

// TestMonotonic checks that monotonic reads CLOCK_MONOTONIC, the clock the
// other process reads too.
func TestMonotonic(t *testing.T) {
	clock := func() int64 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		return ts.Nano()
	}
	for i := 0; i < 100; i++ {
		before := clock()
		m := monotonic()
		after := clock()
		if m < before || m > after {
			t.Fatalf("monotonic %d outside CLOCK_MONOTONIC's %d..%d", m, before, after)
		}
	}
}
