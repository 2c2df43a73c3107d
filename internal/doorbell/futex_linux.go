package doorbell

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Futex operations without FUTEX_PRIVATE_FLAG: the word lives in a shared
// file mapping, and waiters and wakers are in different processes.
const (
	opWait = 0
	opWake = 1

	futexPrivateFlag = 128 // FUTEX_PRIVATE_FLAG, for words of this process only
)

// futexWait blocks the calling thread while *addr == val, for at most d,
// keeping its P (block_linux.go says when it may). It returns early on a
// wake, a signal, or a changed value, and reports whether d passed;
// callers re-check.
func futexWait(addr *atomic.Uint32, val uint32, d time.Duration) (timedOut bool) {
	ts := unix.NsecToTimespec(int64(d))
	_, _, errno := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), opWait, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
	return errno == unix.ETIMEDOUT
}

// futexWaitIdle is futexWait without the P (block_linux.go).
func futexWaitIdle(addr *atomic.Uint32, val uint32, d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	blockingSyscall6(unix.SYS_FUTEX, unsafe.Pointer(addr), opWait, uintptr(val), unsafe.Pointer(&ts), 0, 0)
}

// futexWake wakes up to n threads waiting on addr.
func futexWake(addr *atomic.Uint32, n int) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), opWake, uintptr(n), 0, 0, 0)
}

// futexWakePrivate wakes up to n threads waiting on a word of this
// process's own memory (FUTEX_PRIVATE_FLAG).
func futexWakePrivate(addr *atomic.Uint32, n int) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), opWake|futexPrivateFlag, uintptr(n), 0, 0, 0)
}

// futexWaitv is struct futex_waitv of futex_waitv(2).
type futexWaitv struct {
	val      uint64
	uaddr    uint64
	flags    uint32
	reserved uint32
}

// futex2 flags of a futex_waitv entry.
const (
	futex2U32     = 0x02 // FUTEX2_SIZE_U32
	futex2Private = 128  // FUTEX2_PRIVATE
)

// sysFutexWaitv is the number of futex_waitv(2), the same on every
// architecture that has it (Linux 5.16).
const sysFutexWaitv = 449

// futexWaitvCall blocks the calling thread until one of the words in vec
// no longer holds its value or is woken, or CLOCK_MONOTONIC reaches
// deadline (ns), without holding a P (block_linux.go). It returns the
// index of the word that was woken, or -1 and the errno: EAGAIN (a value
// had changed), ETIMEDOUT, EINTR are ordinary; ENOSYS means no
// futex_waitv.
func futexWaitvCall(vec []futexWaitv, deadline int64) (int, error) {
	ts := unix.NsecToTimespec(deadline)
	r, errno := blockingSyscall6(sysFutexWaitv, unsafe.Pointer(&vec[0]), uintptr(len(vec)), 0,
		unsafe.Pointer(&ts), unix.CLOCK_MONOTONIC, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}
