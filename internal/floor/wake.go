//go:build linux

package floor

import (
	"errors"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe" // and for go:linkname

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/pool"
	"github.com/notnets/notnets/internal/ring"
)

// Wake is one side of the wake-up reference: a bare futex wake-up from the
// client process to a thread of the server process sleeping in the kernel,
// with no ring and no Go scheduler in the waiter's way (it holds its own
// OS thread). Each Call measures one wake-up, one way: from just before
// the client's FUTEX_WAKE to the first thing the woken thread does.
//
// The segment is a connection segment with the smallest rings (so that
// the pool's tools know it), whose ring regions hold the words instead:
//
//	client-to-server ring, offset 0   sequence (uint32): the client increments
//	                                  it, then wakes the server on it
//	client-to-server ring, offset 64  t0 (uint64): CLOCK_MONOTONIC in ns, read
//	                                  just before the increment
//	server-to-client ring, offset 0   ack (uint32): the sequence the server
//	                                  has answered
//	server-to-client ring, offset 64  result (uint64): the server's
//	                                  CLOCK_MONOTONIC after the wait, minus t0
//
// Both sides read CLOCK_MONOTONIC through the vDSO (the Go runtime's
// nanotime, about 40 ns), not with clock_gettime(2) as a system call
// (unix.ClockGettime), which takes 1.2 us on the 2-core development
// machine, a bias of a tenth of a wake-up. The server's wait returns
// through the Go runtime (exitsyscall) before it reads the clock, as any
// Go waiter's does.
type Wake struct {
	seg        *pool.Segment
	self, peer pool.Control
	seq, ack   *atomic.Uint32
	t0, result *atomic.Uint64
}

// wakeMaxBlock bounds one wait of the server, so that it notices a client
// that closed without waking it.
const wakeMaxBlock = 500 * time.Millisecond

// wakeTimeout bounds a client's wait for the server's answer.
const wakeTimeout = 10 * time.Second

// CreateWake makes a wake segment in dir for the client side and returns
// it with the file name the server side opens (OpenWake).
func CreateWake(dir string) (*Wake, string, error) {
	name, err := pool.NewConnName()
	if err != nil {
		return nil, "", err
	}
	seg, err := pool.Create(dir, name, pool.ConnSize(ring.MinCap, ring.MinCap))
	if err != nil {
		return nil, "", err
	}
	pool.InitConn(seg.Mem, ring.MinCap, ring.MinCap, os.Getpid())
	lay, err := pool.MapConn(seg.Mem, ring.CheckCap)
	if err != nil {
		seg.Close()
		return nil, "", err
	}
	lay.Client.State.Store(pool.StateOpen)
	return newWake(seg, lay, lay.Client, lay.Server), name, nil
}

// OpenWake maps the wake segment name in dir as the server side.
func OpenWake(dir, name string) (*Wake, error) {
	seg, err := pool.Open(dir, name, 0, pool.ConnSize(ring.MinCap, ring.MinCap))
	if err != nil {
		return nil, err
	}
	lay, err := pool.MapConn(seg.Mem, ring.CheckCap)
	if err != nil {
		seg.Close()
		return nil, err
	}
	lay.Server.State.Store(pool.StateOpen)
	return newWake(seg, lay, lay.Server, lay.Client), nil
}

func newWake(seg *pool.Segment, lay *pool.ConnLayout, self, peer pool.Control) *Wake {
	u32 := func(b []byte, off int) *atomic.Uint32 { return (*atomic.Uint32)(unsafe.Pointer(&b[off])) }
	u64 := func(b []byte, off int) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(&b[off])) }
	return &Wake{seg: seg, self: self, peer: peer,
		seq: u32(lay.C2S, 0), t0: u64(lay.C2S, 64),
		ack: u32(lay.S2C, 0), result: u64(lay.S2C, 64)}
}

// WaitPeer waits until the server has opened the segment, then removes
// its file from the pool.
func (w *Wake) WaitPeer(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for w.peer.State.Load() != pool.StateOpen {
		if time.Now().After(deadline) {
			return errors.New("floor: the wake server did not open the segment")
		}
		time.Sleep(time.Millisecond)
	}
	return w.seg.Unlink()
}

// Call wakes the server and returns the one-way wake-up latency it
// measured. The client spins until the server has answered.
func (w *Wake) Call() (time.Duration, error) {
	seq := w.seq.Load() + 1
	w.t0.Store(uint64(monotonic()))
	w.seq.Store(seq)
	futexWake(w.seq, 1)
	start := time.Now()
	for i := 1; w.ack.Load() != seq; i++ {
		if w.peer.State.Load() == pool.StateClosed {
			return 0, errors.New("floor: wake server closed")
		}
		if i%4096 == 0 && time.Since(start) > wakeTimeout {
			return 0, errors.New("floor: the wake server did not answer")
		}
	}
	return time.Duration(w.result.Load()), nil
}

// Serve answers wake-ups until the client closes. It holds its OS thread
// and sleeps in the kernel (FUTEX_WAIT) whenever the sequence has not
// changed: it never spins.
func (w *Wake) Serve() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	seen := w.ack.Load() // the last sequence answered: a call made before Serve started is answered at once
	for w.peer.State.Load() != pool.StateClosed {
		futexWait(w.seq, seen, wakeMaxBlock)
		now := monotonic()
		seq := w.seq.Load()
		if seq == seen {
			continue // a time-out, a signal or a spurious wake-up
		}
		seen = seq
		w.result.Store(uint64(now - int64(w.t0.Load())))
		w.ack.Store(seq)
	}
}

// Close tells the peer, wakes it, and unmaps the segment.
func (w *Wake) Close() error {
	w.self.State.Store(pool.StateClosed)
	futexWake(w.seq, 1)
	w.seg.Unlink()
	return w.seg.Close()
}

// monotonic returns CLOCK_MONOTONIC in nanoseconds, the clock both
// processes share: the runtime's nanotime reads it through the vDSO on
// Linux (TestMonotonic checks it against clock_gettime).
func monotonic() int64 { return nanotime() }

//go:linkname nanotime runtime.nanotime
func nanotime() int64

// Futex operations without FUTEX_PRIVATE_FLAG: the word lives in a shared
// file mapping, and waiter and waker are in different processes.
const (
	futexOpWait = 0
	futexOpWake = 1
)

// futexWait blocks the calling thread while *addr == val, for at most d.
func futexWait(addr *atomic.Uint32, val uint32, d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexOpWait, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// futexWake wakes up to n threads waiting on addr.
func futexWake(addr *atomic.Uint32, n int) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexOpWake, uintptr(n), 0, 0, 0)
}
