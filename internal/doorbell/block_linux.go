package doorbell

import (
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe" // and for go:linkname
)

// Why a doorbell wait keeps its P only briefly, and never the last one.
//
// A goroutine in an ordinary system call (syscall.Syscall) keeps its P:
// the runtime expects the call to be short, and only sysmon takes the P
// back, once it has seen the call last a whole tick of its own (a tick
// grows to 10 ms while sysmon finds nothing to do), and only if a
// goroutine is waiting for it or no P is idle. A futex wait on the
// doorbell lasts until the peer rings, and it kept its P all that time.
// In notnets bench's server (GOMAXPROCS 2), the byte stream's reader
// asleep on the doorbell held one P and a listener's Accept, back in its
// knock wait after its MaxBlock, held the other; grpc-go's loopy writer,
// which yields once (runtime.Gosched, onto the global run queue) before
// it flushes, sat runnable with the reply until sysmon took a P back: 12
// to 16 ms in a runtime trace, about one call in 1,000, which was
// grpc-shm's p99.9 of 10-13 ms against grpc-tcp's 2-3 ms (grpc-tcp's
// reader parks in the netpoller, holding no P).
//
// Handing the P off at every wait (entersyscallblock, as the runtime's
// own blocking waits do) ended the tail, but not for free: with the
// reader's P idle too, every P of a process between two calls is idle,
// sysmon goes to its deep sleep, and the reader's return from the wait
// wakes it and sets its tick back to 20 us (sysmon's sleeps were a
// quarter of the context switches in perf). A grpc-shm call took 15
// context switches instead of 7, cpu/call was 275-355 us against
// 180-265 us and p50 180-245 us against 155-205 us (same sittings).
//
// So a data-path wait keeps its P, the cheap wake-up, but for at most
// HoldP, and only while another P remains free of doorbell waits
// (keepP); past HoldP it waits on without its P. The waits that are long
// by nature (the listener's knock, a hub's futex_waitv) never keep it.
// A goroutine left runnable then finds a P at once, or within HoldP
// when the free P is busy. Measured with notnets bench -transports
// grpc-tcp,grpc-shm -n 20000 -rounds 5, old and new binaries alternated,
// five runs each on a loaded machine: grpc-shm p99.9 3.8-12.1 ms before,
// 2.1-3.2 ms after (grpc-tcp 2.4-3.9 ms), max 20-23 ms before, 5-10 ms
// after; p50 (181-197 us, 183-203 us) and cpu/call (193-234 us, 205-226
// us) unchanged. BenchmarkStreamConnTail (internal/transport) measures
// it in one process.

// HoldP is how long a doorbell wait may keep its P: as long as a poller
// may keep the goroutines queued behind it waiting (spin.YieldInterval).
const HoldP = time.Millisecond

// keepingP counts the doorbell waits in progress that keep their P.
var keepingP atomic.Int32

// keepP reports whether a wait about to start may keep its P: whether
// another P would still be free of doorbell waits. When it reports true
// it has counted the wait in keepingP, which the caller decrements once
// the wait ends. The count is taken before the check, so two waits that
// start together cannot both take the last P.
func keepP() bool {
	if int(keepingP.Add(1)) < runtime.GOMAXPROCS(0) {
		return true
	}
	keepingP.Add(-1)
	return false
}

// entersyscallblock and exitsyscall bracket a system call that blocks
// (the runtime's notetsleepg): the first hands the P to a runnable
// goroutine, or to the idle list, before the call; the second takes one
// back after it. Both are linknamed by widely used packages and kept for
// them (go.dev/issue/67401).
//
//go:linkname entersyscallblock runtime.entersyscallblock
func entersyscallblock()

//go:linkname exitsyscall runtime.exitsyscall
func exitsyscall()

// blockingSyscall6 makes the system call trap, which may block for long,
// without holding a P meanwhile. The pointers p1 and p4 are its first and
// fourth arguments (the futex word or futex_waitv vector, and the
// timeout), typed so that they stay alive through the call.
//
// Nosplit and norace: between entersyscallblock and exitsyscall the
// goroutine has no P, so nothing here may grow the stack or call into
// the race detector; syscall.RawSyscall6 is nosplit and norace too.
//
//go:nosplit
//go:norace
func blockingSyscall6(trap uintptr, p1 unsafe.Pointer, a2, a3 uintptr, p4 unsafe.Pointer, a5, a6 uintptr) (uintptr, syscall.Errno) {
	entersyscallblock()
	r, _, errno := syscall.RawSyscall6(trap, uintptr(p1), a2, a3, uintptr(p4), a5, a6)
	exitsyscall()
	return r, errno
}
