package coherence

import (
	"fmt"
	"sync/atomic"
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
// are the memory. Lines move 8 bytes at a time with atomic loads and
// stores, as a cache moves a line: a word is never torn, whichever side
// copies what at the same moment. Two goroutines of one side may Flush
// and Invalidate at once; a line written by one side and invalidated by
// it before a flush loses the write, as a real one may.
//
// View is memory of its own, outside the Go heap (NewSim maps it), so that
// the race detector, which does not see another process's stores to a
// shared mapping, does not see a side's copies either.
type Sim struct {
	Shared []byte // the memory both sides map
	View   []byte // this side's private copy of Shared, 64-byte aligned
	base   uintptr
	unmap  func() error
}

// NewSim returns a side's simulated view of shared, which it starts as a
// copy of; Close releases it.
func NewSim(shared []byte) (*Sim, error) {
	view, unmap, err := private(len(shared))
	if err != nil {
		return nil, fmt.Errorf("coherence: private copy of %d bytes: %w", len(shared), err)
	}
	s := &Sim{Shared: shared, View: view, unmap: unmap}
	if len(view) > 0 {
		s.base = uintptr(unsafe.Pointer(&view[0]))
	}
	s.Invalidate(view)
	return s, nil
}

// Close releases View; nothing may use it afterwards.
func (s *Sim) Close() error { return s.unmap() }

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
	copyWords(s.Shared[lo:hi], s.View[lo:hi])
}

// Invalidate drops the cached lines of b: copies them from Shared to View,
// losing whatever this side stored there without flushing it.
func (s *Sim) Invalidate(b []byte) {
	lo, hi := s.span(b)
	copyWords(s.View[lo:hi], s.Shared[lo:hi])
}

// copyWords copies src to dst (of one length, a multiple of 8, both
// 8-byte aligned: whole lines of page-aligned mappings) a word at a time,
// each word with one atomic load and one atomic store.
func copyWords(dst, src []byte) {
	if len(src) == 0 {
		return
	}
	n := len(src) / 8
	d := unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&dst[0])), n)
	s := unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&src[0])), n)
	for i := range s {
		d[i].Store(s[i].Load())
	}
}
