// Package arena implements the shared-memory heaps that carry messages too
// large for a connection's ring.
//
// # Ownership
//
// Each direction of a connection has a heap, written only by the side that
// sends in that direction. The sender allocates a block (Heap, private
// bookkeeping in the sender's process: nothing about allocation lives in
// shared memory), fills it, and names it in a MESSAGE_REF frame with its
// offset and length. From then on only the receiver reads the block. When
// it is done, the receiver writes the block's page index into the heap's
// return queue (Returns), a single-producer, single-consumer array in a
// region only the receiver writes; the sender reads it back and frees the
// block. So every word of shared memory has one writer, and neither side
// needs a lock or a compare-and-swap in shared memory.
//
// # Blocks
//
// A heap is a power of two of bytes, managed as a buddy allocator: blocks
// are powers of two from MinBlock (one page) up to the whole heap, aligned
// to their size, so the size classes double from 4 KiB to the heap size and
// freed buddies merge again.
//
// # Trust
//
// A reference from the peer is untrusted. The receiver (Held) accepts it
// only if it names a page-aligned, non-empty range inside the heap that
// overlaps no range it still holds; otherwise the connection is broken.
// The sender (Heap.Free) accepts a returned page index only if it is the
// start of a block it has allocated and not yet freed. The receiver cannot
// stop a hostile sender from changing a block while it is being read: a
// reader of a view must tolerate bytes that change under it, as protobuf's
// decoder does.
package arena

import (
	"fmt"
	"math/bits"
)

// MinBlock is the smallest block, and the alignment of every block and of
// every reference: one page, so that blocks can be protected page by page.
const MinBlock = 4096

// Heap allocates blocks of a heap region with a buddy allocator. Its
// bookkeeping is private to the sending process. It is not safe for
// concurrent use.
type Heap struct {
	mem      []byte
	maxOrder int
	head     []int32 // per order: first free block (page index), -1 if none
	next     []int32 // per page: next free block of the same order
	prev     []int32 // per page: previous free block of the same order
	// state per page: order+1 if a free block starts here, -(order+1) if an
	// allocated block starts here, 0 otherwise.
	state []int8
	// lent per page: the allocated block starting here has been sent to
	// the receiver and not yet returned. Only lent blocks may come back
	// through the return queue; only unlent ones may be freed locally.
	lent  []bool
	inUse int
}

// NewHeap returns an allocator over mem, whose length must be a power of
// two and at least MinBlock.
func NewHeap(mem []byte) *Heap {
	n := len(mem)
	if n < MinBlock || n&(n-1) != 0 {
		panic(fmt.Sprintf("arena: heap of %d bytes is not a power of two of at least %d", n, MinBlock))
	}
	pages := n / MinBlock
	h := &Heap{
		mem:      mem,
		maxOrder: bits.TrailingZeros(uint(pages)),
		next:     make([]int32, pages),
		prev:     make([]int32, pages),
		state:    make([]int8, pages),
		lent:     make([]bool, pages),
	}
	h.head = make([]int32, h.maxOrder+1)
	for i := range h.head {
		h.head[i] = -1
	}
	h.push(h.maxOrder, 0)
	return h
}

// Size returns the size of the heap in bytes.
func (h *Heap) Size() int { return len(h.mem) }

// InUse returns the bytes held by allocated blocks.
func (h *Heap) InUse() int { return h.inUse }

// BlockSize returns the size of the block that holds n bytes.
func BlockSize(n int) int { return MinBlock << order(n) }

func order(n int) int {
	if n <= MinBlock {
		return 0
	}
	return bits.Len(uint(n-1)) - 12
}

// Alloc returns the offset of a free block of at least n bytes, or false
// if the heap has none.
func (h *Heap) Alloc(n int) (int, bool) {
	if n > len(h.mem) {
		return 0, false
	}
	o := order(n)
	k := o
	for k <= h.maxOrder && h.head[k] < 0 {
		k++
	}
	if k > h.maxOrder {
		return 0, false
	}
	p := h.head[k]
	h.remove(k, p)
	for k > o { // split, keeping the lower half
		k--
		h.push(k, p+1<<k)
	}
	h.state[p] = int8(-(o + 1))
	h.inUse += MinBlock << o
	return int(p) * MinBlock, true
}

// Block returns the memory of the allocated block at off.
func (h *Heap) Block(off int) []byte {
	o := -int(h.state[off/MinBlock]) - 1
	return h.mem[off : off+MinBlock<<o : off+MinBlock<<o]
}

// Lend records that the allocated block at off has been sent: from now on
// only Return gives it back.
func (h *Heap) Lend(off int) {
	h.lent[off/MinBlock] = true
}

// Return takes back the block at off that the receiver handed back. It
// fails, changing nothing, unless off is the start of a lent block: out of
// range, misaligned, never allocated, returned twice, or never sent (a
// block the sender still fills, or a user still holds).
func (h *Heap) Return(off int) error {
	p, err := h.blockAt(off)
	if err != nil {
		return err
	}
	if !h.lent[p] {
		return fmt.Errorf("block at offset %d was not lent (never sent, or returned twice)", off)
	}
	h.lent[p] = false
	h.release(p)
	return nil
}

// Free returns the block at off, which was never sent, to the heap. It
// fails, changing nothing, if off is not the start of an allocated block
// (out of range, misaligned, never allocated or already freed) or if the
// block is lent.
func (h *Heap) Free(off int) error {
	p, err := h.blockAt(off)
	if err != nil {
		return err
	}
	if h.lent[p] {
		return fmt.Errorf("block at offset %d is lent to the receiver", off)
	}
	h.release(p)
	return nil
}

// blockAt checks that off starts an allocated block and returns its page.
func (h *Heap) blockAt(off int) (int32, error) {
	if off < 0 || off >= len(h.mem) || off%MinBlock != 0 {
		return 0, fmt.Errorf("block offset %d is outside the heap of %d bytes or not a multiple of %d", off, len(h.mem), MinBlock)
	}
	p := int32(off / MinBlock)
	if h.state[p] >= 0 {
		return 0, fmt.Errorf("block at offset %d is not allocated (freed twice, or never allocated)", off)
	}
	return p, nil
}

// release frees the allocated block at page p, merging it with its free
// buddies.
func (h *Heap) release(p int32) {
	o := -int(h.state[p]) - 1
	h.state[p] = 0
	h.inUse -= MinBlock << o
	for o < h.maxOrder {
		b := p ^ 1<<o
		if h.state[b] != int8(o+1) {
			break
		}
		h.remove(o, b)
		p = min(p, b)
		o++
	}
	h.push(o, p)
}

func (h *Heap) push(o int, p int32) {
	h.state[p] = int8(o + 1)
	h.prev[p] = -1
	h.next[p] = h.head[o]
	if h.head[o] >= 0 {
		h.prev[h.head[o]] = p
	}
	h.head[o] = p
}

func (h *Heap) remove(o int, p int32) {
	if h.prev[p] >= 0 {
		h.next[h.prev[p]] = h.next[p]
	} else {
		h.head[o] = h.next[p]
	}
	if h.next[p] >= 0 {
		h.prev[h.next[p]] = h.prev[p]
	}
	h.state[p] = 0
}
