package arena

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/notnets/notnets/internal/coherence"
)

// A return queue hands blocks back from the receiver of a heap's messages
// to its sender: an array of uint32 page indexes in shared memory, written
// only by the receiver, with a tail counter in the receiver's control
// block and a head counter in the sender's. Counters count entries and
// never wrap; entry i lives at index i mod the capacity. The capacity is
// the number of pages in the heap, so an honest receiver, which returns
// each block once per reference, can never find it full.

// ReturnWriter is the receiver's end of a return queue. It is not safe for
// concurrent use.
type ReturnWriter struct {
	q          []atomic.Uint32
	tail, head *atomic.Uint64 // tail: ours; head: the sender's
	next       uint64
	coh        coherence.Coherence // nil on coherent memory
}

// ReturnReader is the sender's end of a return queue. It is not safe for
// concurrent use.
type ReturnReader struct {
	q          []atomic.Uint32
	tail, head *atomic.Uint64 // tail: the receiver's; head: ours
	next       uint64
	coh        coherence.Coherence // nil on coherent memory
}

// SetCoherence makes the writer keep memory coherent through c.
func (w *ReturnWriter) SetCoherence(c coherence.Coherence) { w.coh = c }

// SetCoherence makes the reader keep memory coherent through c.
func (r *ReturnReader) SetCoherence(c coherence.Coherence) { r.coh = c }

// bytesOf returns the bytes of a word of shared memory, for c.
func bytesOf[T any](p *T) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p)) }

func entries(region []byte, heapSize int) []atomic.Uint32 {
	n := heapSize / MinBlock
	if n == 0 || len(region) < 4*n {
		return nil
	}
	return unsafe.Slice((*atomic.Uint32)(unsafe.Pointer(&region[0])), n)
}

// NewReturnWriter returns the receiver's end of the return queue in region
// for a heap of heapSize bytes. Both counters start at 0.
func NewReturnWriter(region []byte, heapSize int, tail, head *atomic.Uint64) *ReturnWriter {
	return &ReturnWriter{q: entries(region, heapSize), tail: tail, head: head}
}

// NewReturnReader returns the sender's end of the return queue in region
// for a heap of heapSize bytes. Both counters start at 0.
func NewReturnReader(region []byte, heapSize int, tail, head *atomic.Uint64) *ReturnReader {
	return &ReturnReader{q: entries(region, heapSize), tail: tail, head: head}
}

// Push appends page to the queue and publishes it. It fails if the queue is
// full, which only a sender that does not take its blocks back, or that
// references blocks it has not got back, can cause.
func (w *ReturnWriter) Push(page uint32) error {
	if w.coh != nil {
		w.coh.Invalidate(bytesOf(w.head))
	}
	h := w.head.Load()
	if h > w.next || w.next-h >= uint64(len(w.q)) {
		return fmt.Errorf("%w: return queue full or corrupt (head %d, tail %d, capacity %d): the peer does not take back its blocks", ErrRef, h, w.next, len(w.q))
	}
	e := &w.q[w.next%uint64(len(w.q))]
	e.Store(page)
	w.next++
	if w.coh != nil {
		w.coh.Flush(bytesOf(e))
	}
	w.tail.Store(w.next)
	if w.coh != nil {
		w.coh.Flush(bytesOf(w.tail))
	}
	return nil
}

// Drain calls fn with every page index published since the last call, and
// publishes the new head. It stops at the first error, from fn or from a
// tail that breaks the queue's invariants.
func (r *ReturnReader) Drain(fn func(page uint32) error) error {
	if r.coh != nil {
		r.coh.Invalidate(bytesOf(r.tail))
	}
	t := r.tail.Load()
	if t == r.next {
		return nil
	}
	if t < r.next || t-r.next > uint64(len(r.q)) {
		return fmt.Errorf("%w: return queue tail %d is outside [%d, %d]", ErrRef, t, r.next, r.next+uint64(len(r.q)))
	}
	defer func() {
		r.head.Store(r.next)
		if r.coh != nil {
			r.coh.Flush(bytesOf(r.head))
		}
	}()
	for ; r.next < t; r.next++ {
		e := &r.q[r.next%uint64(len(r.q))]
		if r.coh != nil {
			r.coh.Invalidate(bytesOf(e))
		}
		if err := fn(e.Load()); err != nil {
			r.next++
			return err
		}
	}
	return nil
}
