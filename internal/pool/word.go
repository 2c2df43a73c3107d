//go:build linux

package pool

import (
	"sync/atomic"
	"unsafe"

	"github.com/notnets/notnets/internal/coherence"
)

// Word32 is a uint32 of a shared segment: a control word, a load word, a
// slot's state. On memory that hardware keeps coherent (no Coherence,
// the default) its methods are those of atomic.Uint32. On memory that it
// does not (a pool marked for flushes or simulated, PROTOCOL.md 18), a
// load reads the word's line from memory first (Invalidate) and a store
// writes the line back after (Flush): every control word has one writer
// at a time, so this is all that makes its stores visible to the other
// side (18.3).
type Word32 struct {
	p   *atomic.Uint32
	coh coherence.Coherence // nil: coherent memory
}

// Load returns the word's value, from memory when it is not coherent.
func (w Word32) Load() uint32 {
	if w.coh != nil {
		return w.loadFromMemory()
	}
	return w.p.Load() // inlined: the hot path of coherent memory
}

func (w Word32) loadFromMemory() uint32 {
	w.coh.Invalidate(w.bytes())
	return w.p.Load()
}

// Store sets the word, and writes it back when memory is not coherent.
func (w Word32) Store(v uint32) {
	w.p.Store(v)
	if w.coh != nil {
		w.flush()
	}
}

// Add adds d to the word and returns the new value. On memory that is
// not coherent the addition is this side's own (read, add, write back):
// only the word's one writer, or a change signal that only needs the
// value to change (the knock, the registry's generation), may add.
func (w Word32) Add(d uint32) uint32 {
	if w.coh == nil {
		return w.p.Add(d)
	}
	return w.addInMemory(d)
}

func (w Word32) addInMemory(d uint32) uint32 {
	w.coh.Invalidate(w.bytes())
	v := w.p.Add(d)
	w.coh.Flush(w.bytes())
	return v
}

func (w Word32) flush() { w.coh.Flush(w.bytes()) }

// CompareAndSwap stores new if the word holds old. On memory that is not
// coherent it is atomic only among this host's goroutines (PROTOCOL.md
// 18.4 says what that means for the listener's slots).
func (w Word32) CompareAndSwap(old, new uint32) bool {
	if w.coh == nil {
		return w.p.CompareAndSwap(old, new)
	}
	w.coh.Invalidate(w.bytes())
	ok := w.p.CompareAndSwap(old, new)
	if ok { // a failed one wrote nothing: its write-back could only carry stale bytes over another host's
		w.coh.Flush(w.bytes())
	}
	return ok
}

// Ptr returns the word itself, for a futex (which only a pool of one
// host uses) or for code that keeps it coherent itself.
func (w Word32) Ptr() *atomic.Uint32 { return w.p }

// Coherent reports whether the hardware keeps the word coherent (no
// flush or invalidate around its accesses).
func (w Word32) Coherent() bool { return w.coh == nil }

func (w Word32) bytes() []byte { return unsafe.Slice((*byte)(unsafe.Pointer(w.p)), 4) }

// with returns the word with coherence coh.
func (w Word32) with(coh coherence.Coherence) Word32 { return Word32{w.p, coh} }

// Word64 is a uint64 of a shared segment, as Word32 is a uint32: the
// heartbeat, and the ring and return-queue counters (which package ring
// and package arena keep coherent themselves, through Ptr).
type Word64 struct {
	p   *atomic.Uint64
	coh coherence.Coherence // nil: coherent memory
}

// Load returns the word's value, from memory when it is not coherent.
func (w Word64) Load() uint64 {
	if w.coh != nil {
		return w.loadFromMemory()
	}
	return w.p.Load() // inlined: the hot path of coherent memory
}

func (w Word64) loadFromMemory() uint64 {
	w.coh.Invalidate(w.bytes())
	return w.p.Load()
}

// Store sets the word, and writes it back when memory is not coherent.
func (w Word64) Store(v uint64) {
	w.p.Store(v)
	if w.coh != nil {
		w.flush()
	}
}

// Add adds d to the word, as Word32.Add does.
func (w Word64) Add(d uint64) uint64 {
	if w.coh == nil {
		return w.p.Add(d)
	}
	return w.addInMemory(d)
}

func (w Word64) addInMemory(d uint64) uint64 {
	w.coh.Invalidate(w.bytes())
	v := w.p.Add(d)
	w.coh.Flush(w.bytes())
	return v
}

func (w Word64) flush() { w.coh.Flush(w.bytes()) }

// Ptr returns the word itself.
func (w Word64) Ptr() *atomic.Uint64 { return w.p }

func (w Word64) bytes() []byte { return unsafe.Slice((*byte)(unsafe.Pointer(w.p)), 8) }

func (w Word64) with(coh coherence.Coherence) Word64 { return Word64{w.p, coh} }

func u32(mem []byte, off int) Word32 {
	return Word32{p: (*atomic.Uint32)(unsafe.Pointer(&mem[off]))}
}

func u64(mem []byte, off int) Word64 {
	return Word64{p: (*atomic.Uint64)(unsafe.Pointer(&mem[off]))}
}
