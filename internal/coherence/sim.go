package coherence

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Sim simulates memory that hardware does not keep coherent: a side (a
// host: all its goroutines share it, as a host's cores share a coherent
// cache) reads and writes View, its private copy of Shared, and only
// Flush and Invalidate move whole lines between the two. A store to View
// that is not flushed never reaches Shared, and a line of Shared changed
// by the other side is not seen in View until it is invalidated: a
// protocol that misses either hangs or reads stale data under Sim, on one
// machine.
//
// Flush and Invalidate take sub-slices of View; the same offsets of Shared
// are the memory. Lines move 8 bytes at a time with atomic loads and
// stores, as a cache moves a line: a word is never torn, whichever side
// copies what at the same moment. Invalidate keeps the words this side
// stored since it last flushed or invalidated them (a processor writes a
// dirty line back before it drops it, and one goroutine's Invalidate must
// not undo another's store), but does not write them back: only Flush
// makes a store visible, so a missing Flush is still caught. Sim tells
// such words from the others by a third copy, Clean, of what each word of
// View last held in common with Shared. It tells them per 8-byte word:
// a side that stores 4 bytes of a word whose other 4 the other side
// writes would, when it flushes, write its stale copy of those back. No
// word of the protocol is shared so (PROTOCOL.md 18: words of different
// writers are on different lines, but for a slot's, which the client and
// the server write in turn).
//
// View and Clean are memory of their own, outside the Go heap (NewSim maps
// them), so that the race detector, which does not see another process's
// stores to a shared mapping, does not see a side's copies either.
type Sim struct {
	Shared []byte // the memory both sides map
	View   []byte // this side's private copy of Shared, 64-byte aligned
	clean  []byte // what View held when it last agreed with Shared, per word
	base   uintptr
	unmap  func() error
	// locks make the move of each line one step for the other
	// goroutines of this side, as a line moves at once in a cache: a
	// Flush between an Invalidate's compare-and-swap and its store to
	// clean left a word looking dirty for good, and the other order could
	// undo a store (a reviewer reproduced it 4 times in 2,000 rounds).
	// One lock per line (striped): a lock over a whole range held a
	// heartbeat up behind a 64 MiB message for seconds. Stores to View by
	// the side's goroutines need no lock: the compare-and-swap sees them.
	locks [simLocks]sync.Mutex
}

// simLocks is how many locks the lines of a Sim share, line i taking
// lock i mod simLocks.
const simLocks = 64

// NewSim returns a side's simulated view of shared, empty (all zeros):
// the side has cached nothing yet, so that what it reads of shared
// without invalidating it first reads as zeros, which a protocol that
// forgets an invalidate then shows at once. It costs nothing until used
// (the copies are mapped lazily, and shared is not read), so a segment
// with large heaps can be simulated. Close releases it.
func NewSim(shared []byte) (*Sim, error) {
	mem, unmap, err := private(2 * len(shared))
	if err != nil {
		return nil, fmt.Errorf("coherence: private copy of %d bytes: %w", len(shared), err)
	}
	n := len(shared)
	s := &Sim{Shared: shared, View: mem[:n:n], clean: mem[n:], unmap: unmap}
	if n > 0 {
		s.base = uintptr(unsafe.Pointer(&s.View[0]))
	}
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
	for l := lo; l < hi; l += LineSize {
		e := min(l+LineSize, hi)
		view, shared, clean := words(s.View[l:e]), words(s.Shared[l:e]), words(s.clean[l:e])
		mu := s.lock(l)
		for i := range view {
			v := view[i].Load()
			shared[i].Store(v)
			clean[i].Store(v)
		}
		mu.Unlock()
	}
}

// Invalidate drops the cached lines of b: copies every word of them from
// Shared to View, but for the words this side stored since they were last
// flushed or invalidated.
func (s *Sim) Invalidate(b []byte) { s.invalidateChanged(b) }

// invalidateChanged is Invalidate that also returns how many of the lines
// it dropped had changed in Shared since this side last had them in
// common (a word of Shared differs from Clean): the lines that brought new
// data, as opposed to polls that read again what was there (for
// Counting).
func (s *Sim) invalidateChanged(b []byte) (changed uint64) {
	lo, hi := s.span(b)
	for l := lo; l < hi; l += LineSize {
		e := min(l+LineSize, hi)
		view, shared, clean := words(s.View[l:e]), words(s.Shared[l:e]), words(s.clean[l:e])
		moved := false
		mu := s.lock(l)
		for i := range view {
			c, m := clean[i].Load(), shared[i].Load()
			moved = moved || c != m
			// Fails, keeping the word, if this side stored to it since.
			if view[i].CompareAndSwap(c, m) {
				clean[i].Store(m)
			}
		}
		mu.Unlock()
		if moved {
			changed++
		}
	}
	return changed
}

// lock takes and returns the lock of the line at offset off of View.
func (s *Sim) lock(off int) *sync.Mutex {
	mu := &s.locks[off/LineSize%simLocks]
	mu.Lock()
	return mu
}

// words returns b (8-byte aligned, a multiple of 8 bytes long) as words.
func words(b []byte) []atomic.Uint64 {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&b[0])), len(b)/8)
}
