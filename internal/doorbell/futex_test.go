package doorbell

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/notnets/notnets/internal/pool"
	"golang.org/x/sys/unix"
)

// failBound bounds how long a test waits for something that should
// happen at once.
const failBound = 10 * time.Second

// futexWord returns a word in a fresh shared file mapping, as the protocol
// uses it.
func futexWord(t *testing.T) *atomic.Uint32 {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return (*atomic.Uint32)(unsafe.Pointer(&mem[0]))
}

// timed runs f on its own goroutine and returns how long it took, failing
// the test if it does not return within failBound.
func timed(t *testing.T, what string, f func()) time.Duration {
	t.Helper()
	done := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		f()
		done <- time.Since(start)
	}()
	select {
	case d := <-done:
		return d
	case <-time.After(failBound):
		t.Fatalf("%s did not return within %v", what, failBound)
		return 0
	}
}

func TestFutexWaitTimeout(t *testing.T) {
	w := futexWord(t)
	const d = 30 * time.Millisecond
	// A signal can end a wait early; three early returns in a row would
	// mean the timeout is not honoured.
	for try := 1; ; try++ {
		elapsed := timed(t, "FutexWait with a timeout", func() { futexWait(w, 0, d) })
		if elapsed >= d {
			break
		}
		if try == 3 {
			t.Fatalf("futexWait(%v) returned after %v, three times in a row", d, elapsed)
		}
	}
	if w.Load() != 0 {
		t.Error("FutexWait changed the word")
	}
}

func TestFutexWaitValueMismatch(t *testing.T) {
	w := futexWord(t)
	w.Store(7)
	// The timeout is far beyond failBound: returning at all means the
	// kernel saw the value differ.
	timed(t, "FutexWait on a changed value", func() { futexWait(w, 6, time.Hour) })
	if w.Load() != 7 {
		t.Error("FutexWait changed the word")
	}
}

// wakeUntilReturned calls FutexWake on wake until the waiter reports that
// FutexWait returned. A wake before the waiter sleeps is lost (the value
// is unchanged on purpose), so it is repeated; nothing sleeps to wait for
// the waiter.
func wakeUntilReturned(t *testing.T, wake *atomic.Uint32, returned <-chan struct{}) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	bound := time.After(failBound)
	for {
		futexWake(wake, 1)
		select {
		case <-returned:
			return
		case <-tick.C:
		case <-bound:
			t.Fatalf("FutexWake did not wake the waiter within %v", failBound)
		}
	}
}

func TestFutexWake(t *testing.T) {
	w := futexWord(t)
	returned := make(chan struct{})
	go func() {
		futexWait(w, 0, time.Hour) // only a wake (or a signal) ends this
		close(returned)
	}()
	wakeUntilReturned(t, w, returned)
	if w.Load() != 0 {
		t.Error("the word changed")
	}
}

// TestFutexWakeAcrossMappings waits on one mapping of a file and wakes
// through another mapping of it, at another address, as two processes do.
// A private futex (FUTEX_PRIVATE_FLAG) is keyed by address and would not
// be woken.
func TestFutexWakeAcrossMappings(t *testing.T) {
	dir := t.TempDir()
	a, err := pool.Create(dir, "l.listener", pool.ListenerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	pool.InitListener(a.Mem, 1, 0)
	b, err := pool.Open(dir, "l.listener", pool.ListenerSize, pool.ListenerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	la, err := pool.MapListener(a.Mem)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := pool.MapListener(b.Mem)
	if err != nil {
		t.Fatal(err)
	}
	if la.Knock == lb.Knock {
		t.Fatal("the two mappings share an address")
	}
	lb.Knock.Store(3)
	if la.Knock.Load() != 3 {
		t.Fatal("a store through one mapping is not seen through the other")
	}

	returned := make(chan struct{})
	go func() {
		futexWait(la.Knock.Ptr(), 3, time.Hour)
		close(returned)
	}()
	wakeUntilReturned(t, lb.Knock.Ptr(), returned)
}

func TestFutexWakeWithoutWaiters(t *testing.T) {
	w := futexWord(t)
	futexWake(w, 1)
	futexWake(w, 1<<30)
}

// TestFutexWaitIdle: the wait without the P ends at its timeout, on a
// changed value and on a wake, as the one with it.
func TestFutexWaitIdle(t *testing.T) {
	w := futexWord(t)
	const d = 5 * time.Millisecond
	for try := 1; ; try++ {
		if elapsed := timed(t, "futexWaitIdle with a timeout", func() { futexWaitIdle(w, 0, d) }); elapsed >= d {
			break
		}
		if try == 3 {
			t.Fatalf("futexWaitIdle(%v) returned early three times in a row", d)
		}
	}
	timed(t, "futexWaitIdle on a changed value", func() { futexWaitIdle(w, 1, time.Hour) })
	returned := make(chan struct{})
	go func() {
		futexWaitIdle(w, 0, time.Hour)
		close(returned)
	}()
	wakeUntilReturned(t, w, returned)
}

// TestKeepPLeavesAFreeP: doorbell waits keep their Ps only while another
// P remains free of them, and with one P never (block_linux.go).
func TestKeepPLeavesAFreeP(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	if n := keepingP.Load(); n != 0 {
		t.Skipf("%d waits of other tests keep their P", n)
	}
	if !keepP() || !keepP() {
		t.Fatal("with three Ps, the first two waits could not keep theirs")
	}
	if keepP() {
		t.Fatal("the third wait kept the last P")
	}
	keepingP.Add(-2)
	runtime.GOMAXPROCS(1)
	if keepP() {
		t.Fatal("the wait kept the only P")
	}
	if n := keepingP.Load(); n != 0 {
		t.Fatalf("keepingP is %d after the waits", n)
	}
}
