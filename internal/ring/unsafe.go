package ring

import (
	"sync/atomic"
	"unsafe"
)

// unsafePointer exposes the address of a counter so that its low half
// (little-endian) can be used as a futex word.
func unsafePointer(p *atomic.Uint64) unsafe.Pointer { return unsafe.Pointer(p) }

// word returns the 8 bytes of a counter, for Flush and Invalidate.
func word(w *atomic.Uint64) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(w)), 8) }
