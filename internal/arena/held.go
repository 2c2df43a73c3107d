package arena

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// ErrRef wraps every error about a reference the peer sent.
var ErrRef = errors.New("bad heap reference")

// RefSize is the size of a MESSAGE_REF payload: the block's offset in the
// sender's heap and the message length, both uint64 little-endian.
const RefSize = 16

// Ref names a message in the sender's heap.
type Ref struct {
	Offset, Length uint64
}

// Append appends the encoding of r to b.
func (r Ref) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, r.Offset)
	return binary.LittleEndian.AppendUint64(b, r.Length)
}

// Size returns RefSize.
func (Ref) Size() int { return RefSize }

// DecodeRef parses a MESSAGE_REF payload.
func DecodeRef(p []byte) (Ref, error) {
	if len(p) != RefSize {
		return Ref{}, fmt.Errorf("%w: payload of %d bytes, want %d", ErrRef, len(p), RefSize)
	}
	return Ref{binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:])}, nil
}

// Held is the receiver's record of which pages of the peer's heap it holds:
// referenced and not yet returned. It is not safe for concurrent use.
type Held struct {
	size int
	bits []uint64 // one bit per page
}

// NewHeld returns an empty record for a peer heap of size bytes.
func NewHeld(size int) *Held {
	return &Held{size: size, bits: make([]uint64, (size/MinBlock+63)/64)}
}

// Take checks r against the heap and the pages already held, and marks its
// pages held. It returns the page index to hand back when the message is
// done with.
func (t *Held) Take(r Ref) (uint32, error) {
	switch {
	case r.Length == 0:
		return 0, fmt.Errorf("%w: empty message at offset %d", ErrRef, r.Offset)
	case r.Offset%MinBlock != 0:
		return 0, fmt.Errorf("%w: offset %d is not a multiple of %d", ErrRef, r.Offset, MinBlock)
	case r.Offset >= uint64(t.size) || r.Length > uint64(t.size)-r.Offset:
		return 0, fmt.Errorf("%w: %d bytes at offset %d do not lie within the heap of %d bytes", ErrRef, r.Length, r.Offset, t.size)
	}
	first, end := t.pages(r)
	if p, ok := t.firstHeld(first, end); ok {
		return 0, fmt.Errorf("%w: %d bytes at offset %d overlap a block still held at offset %d (referenced twice)", ErrRef, r.Length, r.Offset, p*MinBlock)
	}
	t.set(first, end, true)
	return uint32(first), nil
}

// Release marks the pages of r, taken before, no longer held.
func (t *Held) Release(r Ref) {
	first, end := t.pages(r)
	t.set(first, end, false)
}

// Count returns the number of pages held.
func (t *Held) Count() int {
	n := 0
	for _, w := range t.bits {
		for ; w != 0; w &= w - 1 {
			n++
		}
	}
	return n
}

func (t *Held) pages(r Ref) (first, end uint64) {
	return r.Offset / MinBlock, (r.Offset + r.Length + MinBlock - 1) / MinBlock
}

// words calls fn with each bitmap word that pages [first, end) touch and
// the mask of those pages in it, until fn returns false.
func (t *Held) words(first, end uint64, fn func(w, mask uint64) bool) {
	for p := first; p < end; {
		w, b := p/64, p%64
		n := min(64-b, end-p)
		if !fn(w, ^uint64(0)>>(64-n)<<b) {
			return
		}
		p += n
	}
}

func (t *Held) set(first, end uint64, v bool) {
	t.words(first, end, func(w, mask uint64) bool {
		if v {
			t.bits[w] |= mask
		} else {
			t.bits[w] &^= mask
		}
		return true
	})
}

// firstHeld returns the first held page in [first, end), if any.
func (t *Held) firstHeld(first, end uint64) (page uint64, found bool) {
	t.words(first, end, func(w, mask uint64) bool {
		if hit := t.bits[w] & mask; hit != 0 {
			page, found = w*64+uint64(bits.TrailingZeros64(hit)), true
		}
		return !found
	})
	return page, found
}
