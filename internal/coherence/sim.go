package coherence

import (
	"fmt"
	"unsafe"
)

// Sim simulates memory that hardware does not keep coherent: a side reads
// and writes View, its private copy of Shared (what it would hold in its
// cache), and only Flush and Invalidate move whole lines between the two.
// A store to View that is not flushed never reaches Shared, and a line of
// Shared changed by the other side is not seen in View until it is
// invalidated: a protocol that misses either hangs or reads stale data
// under Sim, on one machine.
//
// Flush and Invalidate take sub-slices of View; the same offsets of Shared
// are the memory. Sim is not safe for concurrent Flush/Invalidate on
// overlapping lines, as a cache line has one owner at a time.
type Sim struct {
	Shared []byte // the memory both sides map
	View   []byte // this side's private copy of Shared, 64-byte aligned
	base   uintptr
}

// NewSim returns a side's simulated view of shared, which it starts as a
// copy of.
func NewSim(shared []byte) *Sim {
	// Over-allocate so that View's lines line up with Shared's offsets.
	buf := make([]byte, len(shared)+LineSize)
	off := int(-uintptr(unsafe.Pointer(&buf[0])) & (LineSize - 1))
	view := buf[off : off+len(shared) : off+len(shared)]
	copy(view, shared)
	return &Sim{Shared: shared, View: view, base: uintptr(unsafe.Pointer(&view[0]))}
}

// span returns the offsets in View of the whole lines that b, a
// sub-slice of View, touches.
func (s *Sim) span(b []byte) (lo, hi int) {
	if len(b) == 0 {
		return 0, 0
	}
	addr := uintptr(unsafe.Pointer(&b[0]))
	if addr < s.base || addr+uintptr(len(b)) > s.base+uintptr(len(s.View)) {
		panic(fmt.Sprintf("coherence: range %#x+%d is not in the simulated view", addr, len(b)))
	}
	start, n := lines(b, addr)
	lo = int(start - s.base)
	hi = min(lo+int(n)*LineSize, len(s.View))
	return max(lo, 0), hi
}

// Flush writes the lines of b back: copies them from View to Shared.
func (s *Sim) Flush(b []byte) {
	lo, hi := s.span(b)
	copy(s.Shared[lo:hi], s.View[lo:hi])
}

// Invalidate drops the cached lines of b: copies them from Shared to View,
// losing whatever this side stored there without flushing it.
func (s *Sim) Invalidate(b []byte) {
	lo, hi := s.span(b)
	copy(s.View[lo:hi], s.Shared[lo:hi])
}
