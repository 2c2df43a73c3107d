package transport

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/arena"
	"github.com/notnets/notnets/internal/frame"
	"github.com/notnets/notnets/internal/pool"
)

// ArenaThreshold is the size from which a message travels through the
// connection's heap as a reference rather than through the ring.
const ArenaThreshold = 16 << 10

// Block is a block of a connection's own heap allocated for the user to
// fill and send (notnets.Bytes from Alloc). The zero Block is none.
type Block struct {
	c   *conn
	off int
}

// IsZero reports whether b is no block.
func (b Block) IsZero() bool { return b.c == nil }

// Free gives back a block that was never sent.
func (b Block) Free() {
	if b.c != nil {
		b.c.freeBlock(b.off)
		b.c.unpin()
	}
}

// sent records that the block now belongs to the peer.
func (b Block) sent() { b.c.unpin() }

// allocUserBlock returns n bytes of a new block of the own heap, pinned
// until it is sent or freed, or false when n is below ArenaThreshold, the
// connection has no heap or no room, or it is closed.
func (c *conn) allocUserBlock(n int) (Block, []byte, bool) {
	// Pinned first: allocBlock reads the segment (the return queue), which
	// a connection closing meanwhile would otherwise unmap.
	if n < ArenaThreshold || !c.tryPin() {
		return Block{}, nil, false
	}
	off, b, ok := c.allocBlock(n)
	if !ok {
		c.unpin()
		return Block{}, nil, false
	}
	return Block{c: c, off: off}, b[:n:n], true
}

// heaps is a connection's share of the arena: the heap it sends from, and
// the peer's heap it receives from. See package arena for the protocol.
type heaps struct {
	// Sending. heapMu is process-local: user goroutines allocate and free,
	// writers allocate, and the peer's returns are taken back under it.
	heapMu  sync.Mutex
	own     *arena.Heap // nil: no heap in this direction
	ownMem  []byte
	returns *arena.ReturnReader

	// Receiving. viewMu guards held, giveBack, views and the pin count.
	viewMu   sync.Mutex
	peerMem  []byte
	held     *arena.Held
	giveBack *arena.ReturnWriter
	views    [][]byte // per page of the peer's heap: the view a buffer points to
	check    bool     // protect peer pages nobody holds (WithViewChecks)

	// pins counts what keeps the segment mapped after the connection
	// closes: received views and allocations of the own heap that the
	// user holds. The last unpin after close unmaps.
	pins     int
	closed   bool // the connection is released; unmap at pins == 0
	unmapped bool

	refsSent, refsRecv atomic.Uint64 // messages sent and received through the heaps
}

// initHeaps sets up the heaps; own or peer may be empty (no heap). View
// checks stay off if the peer's heap cannot be protected.
func (c *conn) initHeaps(own, ownReturns, peer, peerReturns []byte, check bool) {
	h := &c.heaps
	if len(own) > 0 {
		h.own, h.ownMem = arena.NewHeap(own), own
		h.returns = arena.NewReturnReader(ownReturns, len(own), c.peer.ReturnTail.Ptr(), c.self.ReturnHead.Ptr())
		h.returns.SetCoherence(c.coh)
	}
	if len(peer) > 0 {
		h.peerMem = peer
		h.held = arena.NewHeld(len(peer))
		h.giveBack = arena.NewReturnWriter(peerReturns, len(peer), c.self.ReturnTail.Ptr(), c.peer.ReturnHead.Ptr())
		h.giveBack.SetCoherence(c.coh)
		h.views = make([][]byte, len(peer)/arena.MinBlock)
		// Not over a simulated copy, which Invalidate writes into.
		h.check = check && !c.seg.Simulated() && unix.Mprotect(peer, unix.PROT_NONE) == nil
	}
}

// allocBlock returns a block of at least n bytes of the own heap, or false
// if there is no heap or it has no room. Blocks the peer returned are taken
// back first; a bad return fails the connection.
func (c *conn) allocBlock(n int) (int, []byte, bool) {
	h := &c.heaps
	if h.own == nil {
		return 0, nil, false
	}
	h.heapMu.Lock()
	err := h.returns.Drain(func(page uint32) error { return h.own.Return(int(page) * arena.MinBlock) })
	off, ok := 0, false
	if err == nil {
		off, ok = h.own.Alloc(n)
	}
	var b []byte
	if ok {
		b = h.own.Block(off)
	}
	h.heapMu.Unlock()
	if err != nil {
		// Not on this goroutine: a writer holds the write lock and its
		// stream's locks, which closing the streams takes.
		c.failSoon(status.Errorf(codes.Internal, "notnets: connection closed on a protocol violation: peer returned a heap block: %v", err))
		return 0, nil, false
	}
	if ok && c.seg.ReserveBytes(b) != nil {
		// The heap is a hole until written (PROTOCOL.md 3.4): a block the
		// pool has no room for would fault (SIGBUS) on the first store.
		// The message goes through the ring instead; a block reserved
		// once stays reserved, so this costs a system call only the
		// first time a page is used.
		c.freeBlock(off)
		return 0, nil, false
	}
	return off, b, ok
}

// freeBlock returns a block of the own heap that was never sent.
func (c *conn) freeBlock(off int) {
	c.heapMu.Lock()
	err := c.own.Free(off)
	c.heapMu.Unlock()
	if err != nil {
		panic("notnets: " + err.Error()) // our own bookkeeping is broken
	}
}

// writeRef writes a MESSAGE_REF frame for n bytes at off in the own heap.
// The caller holds the write lock.
func (c *conn) writeRef(ctx context.Context, stream uint32, flags frame.Flags, off, n int) error {
	rec, err := c.reserve(ctx, arena.RefSize, frame.TypeMessageRef)
	if err != nil {
		return err
	}
	frame.Put(rec, flags, stream, uint32(n))
	arena.Ref{Offset: uint64(off), Length: uint64(n)}.Append(rec[frame.HeaderSize:frame.HeaderSize])
	if c.coh != nil { // the message, before the reference is published (18.2)
		c.coh.Flush(c.ownMem[off : off+n])
	}
	// Lent before the publish that shows the peer the reference.
	c.heapMu.Lock()
	c.own.Lend(off)
	c.heapMu.Unlock()
	c.refsSent.Add(1)
	return nil
}

// takeView checks a MESSAGE_REF payload from the peer and returns a buffer
// that views the message in the peer's heap. Freeing the buffer hands the
// block back.
func (c *conn) takeView(p []byte) (mem.Buffer, error) {
	h := &c.heaps
	r, err := arena.DecodeRef(p)
	if err != nil {
		return nil, err
	}
	if h.held == nil {
		return nil, fmt.Errorf("MESSAGE_REF frame, but the segment has no heap in this direction")
	}
	h.viewMu.Lock()
	page, err := h.held.Take(r)
	if err != nil {
		h.viewMu.Unlock()
		return nil, err
	}
	end := int(r.Offset + r.Length)
	// Capacity to the page boundary: mem.NewBuffer pools (and so frees)
	// only buffers above 1 KiB of capacity, and a block is at least a page.
	pageEnd := (end + arena.MinBlock - 1) &^ (arena.MinBlock - 1)
	v := &h.views[page]
	*v = h.peerMem[r.Offset:end:pageEnd]
	h.pins++
	h.viewMu.Unlock()
	h.refsRecv.Add(1)
	if h.check {
		if err := unix.Mprotect(h.peerMem[r.Offset:pageEnd], unix.PROT_READ); err != nil {
			h.viewMu.Lock()
			h.held.Release(r)
			unmap := h.unpinLocked()
			h.viewMu.Unlock()
			if unmap {
				c.seg.Close()
			}
			return nil, fmt.Errorf("unprotect a received block: %w", err)
		}
	}
	// The message, from memory (PROTOCOL.md 18.2); after the unprotect
	// above: CLFLUSHOPT faults on a page this process cannot read.
	if c.coh != nil && r.Length > 0 {
		c.coh.Invalidate(*v)
	}
	return mem.NewBuffer(v, (*viewPool)(c)), nil
}

// viewPool receives the views of freed buffers: it is the BufferPool given
// to mem.NewBuffer for views of the peer's heap.
type viewPool conn

func (*viewPool) Get(int) *[]byte { panic("notnets: views are not allocated from a pool") }

func (p *viewPool) Put(v *[]byte) { (*conn)(p).releaseView(*v) }

// releaseView hands the block under the view v back to the peer.
func (c *conn) releaseView(v []byte) {
	h := &c.heaps
	off := uintptr(unsafe.Pointer(unsafe.SliceData(v))) - uintptr(unsafe.Pointer(unsafe.SliceData(h.peerMem)))
	r := arena.Ref{Offset: uint64(off), Length: uint64(len(v))}
	if h.check {
		// Before the peer can reuse it: from now on a late reader faults.
		unix.Mprotect(h.peerMem[off:int(off)+cap(v)], unix.PROT_NONE)
	}
	h.viewMu.Lock()
	h.held.Release(r)
	var err error
	if !h.closed && c.closeErr() == nil {
		err = h.giveBack.Push(uint32(off / arena.MinBlock))
	}
	unmap := h.unpinLocked()
	h.viewMu.Unlock()
	if err != nil {
		// Not on this goroutine, which may hold locks of a stream.
		c.failSoon(status.Errorf(codes.Internal, "notnets: connection closed on a protocol violation: %v", err))
	}
	if unmap {
		c.seg.Close()
	}
}

// tryPin keeps the segment mapped until unpin, unless the connection is
// already released.
func (h *heaps) tryPin() bool {
	h.viewMu.Lock()
	defer h.viewMu.Unlock()
	if h.closed {
		return false
	}
	h.pins++
	return true
}

func (c *conn) unpin() {
	c.viewMu.Lock()
	unmap := c.unpinLocked()
	c.viewMu.Unlock()
	if unmap {
		c.seg.Close()
	}
}

// unpinLocked drops a pin and reports whether the segment must now be
// unmapped. The caller holds viewMu.
func (h *heaps) unpinLocked() bool {
	h.pins--
	if h.closed && h.pins == 0 && !h.unmapped {
		h.unmapped = true
		return true
	}
	return false
}

// closeHeaps is the last step of releasing the connection: it unmaps the
// segment now, or when the last view or allocation is let go.
func (c *conn) closeHeaps() {
	c.viewMu.Lock()
	c.heaps.closed = true
	unmap := c.pins == 0 && !c.heaps.unmapped
	c.heaps.unmapped = c.heaps.unmapped || unmap
	c.viewMu.Unlock()
	if unmap {
		c.seg.Close()
	}
}

// protectPeer maps the regions the peer writes read-only in this process,
// so that a stray write into them (a bug in this process, or code that
// means harm) faults instead of corrupting what the peer sends. Only the
// hardware then stops this side from writing the peer's data; the peer's
// own regions are protected the same way in its process.
func protectPeer(seg *pool.Segment, lay *pool.ConnLayout, client bool) error {
	for _, r := range lay.PeerRegions(seg.Mem, client) {
		// The memory, not a simulated copy of it (which Invalidate writes).
		if err := unix.Mprotect(seg.Mapped(r), unix.PROT_READ); err != nil {
			return fmt.Errorf("notnets: protect the peer's region of %s: %w", seg.Path, err)
		}
	}
	return nil
}

// unmappedNow reports whether the segment has been unmapped.
func (h *heaps) unmappedNow() bool {
	h.viewMu.Lock()
	defer h.viewMu.Unlock()
	return h.unmapped
}
