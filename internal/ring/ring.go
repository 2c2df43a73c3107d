// Package ring implements the single-producer, single-consumer byte ring that
// carries records between two processes through shared memory.
//
// # Layout and discipline
//
// A ring is a data region of Cap bytes (a power of two, at least 4096) and
// two 64-bit counters, tail and head, that live outside the data region on
// cache lines of their own: tail is written only by the producer, head only by
// the consumer. Both count bytes since the ring was created and never wrap;
// the position of a counter in the data region is counter & (Cap-1).
//
// The ring holds records. A record is a 16-byte header followed by its
// payload, padded to a multiple of 16 bytes (the padding bytes are
// unspecified), and never wraps around the end of the data region. Header bytes 0-3 hold the payload length
// (little-endian uint32) and byte 4 the record kind; kind 0 is invalid and
// kind 1 (KindPad) is a record the consumer skips. The remaining header bytes
// belong to the layer above (package frame).
//
// The producer writes records past tail, then publishes them by storing the
// new tail (a release store). When a record does not fit between tail and the
// end of the data region, the producer first writes a pad record that covers
// the rest of the region. A producer may also turn a record it reserved but
// could not fill into a pad record by setting its kind byte. The consumer loads tail (an acquire load), reads
// records from head, and frees them by storing the new head.
//
// Invariants the consumer checks, since the producer may be broken or hostile:
// head and tail are multiples of 16, head <= tail <= head+Cap (head as the
// consumer last stored it), every record lies inside the published bytes and
// inside the data region, and its kind is not 0. A
// violation is reported as an error; the ring is not used after that.
//
// # Memory without hardware coherence
//
// On memory that hardware does not keep coherent between the two sides
// (SetCoherence; PROTOCOL.md 18), the producer writes back the bytes of
// the records it publishes before it stores the tail, and the tail's line
// after; the consumer drops its cached copy of the tail's line before it
// loads the tail, and of the newly published bytes before it reads them;
// the head goes back the same way. Without SetCoherence none of this is
// done, and the ring costs what it always did.
package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/notnets/notnets/internal/coherence"
)

// HeaderSize is the size of a record header in bytes.
const HeaderSize = 16

// Align is the alignment of records in the ring.
const Align = 16

// MinCap is the smallest capacity a ring may have.
const MinCap = 4096

// Record kinds known to the ring itself.
const (
	KindInvalid = 0 // never written; zeroed memory reads as invalid
	KindPad     = 1 // skipped by the consumer
)

// ErrCorrupt wraps every error that reports a broken invariant of the ring.
var ErrCorrupt = errors.New("ring corrupt")

// RecordSize returns the bytes a record with an n-byte payload occupies.
func RecordSize(n int) int { return (HeaderSize + n + Align - 1) &^ (Align - 1) }

// CheckCap reports whether c is a valid ring capacity.
func CheckCap(c int) error {
	if c < MinCap || c&(c-1) != 0 || c > 1<<30 {
		return fmt.Errorf("ring capacity %d must be a power of two from %d to %d", c, MinCap, 1<<30)
	}
	return nil
}

// Producer is the writing end of a ring. It is not safe for concurrent use.
type Producer struct {
	data       []byte
	mask       uint64
	tail, head *atomic.Uint64
	next       uint64                 // tail including reserved, unpublished records
	published  uint64                 // tail as last stored
	headSeen   uint64                 // last head loaded from the consumer
	prepare    func(off, n int) error // allocates bytes of data before their first write (SetPrepare)
	prepared   uint64                 // data[:prepared] is allocated
	coh        coherence.Coherence    // nil on coherent memory (SetCoherence)
}

// NewProducer returns the producer of the ring over data with the given
// counters, continuing from the tail stored there, which must be a multiple
// of Align. data must have a length that CheckCap accepts.
func NewProducer(data []byte, tail, head *atomic.Uint64) *Producer {
	return NewProducerAt(data, tail, head, tail.Load())
}

// NewProducerAt is NewProducer starting from the tail value start (a
// multiple of Align) instead of the one in shared memory. The producer
// never reads its own tail back, so a peer that overwrites it cannot make
// the producer misbehave.
func NewProducerAt(data []byte, tail, head *atomic.Uint64, start uint64) *Producer {
	return &Producer{data: data, mask: uint64(len(data) - 1), tail: tail, head: head,
		next: start, published: start, headSeen: start}
}

// MaxPayload is the largest payload one record may carry: half the ring less
// the header, so that a record always fits once the ring has drained.
func (p *Producer) MaxPayload() int { return len(p.data)/2 - HeaderSize }

// Cap returns the size of the data region.
func (p *Producer) Cap() int { return len(p.data) }

// Reserve returns the HeaderSize+n bytes of a new record with its length and
// kind set, or nil when the ring has no room for it now. The caller fills the
// rest of the header and the payload, then calls Publish. n must not exceed
// MaxPayload.
func (p *Producer) Reserve(n int, kind byte) []byte {
	if n < 0 || n > p.MaxPayload() {
		panic(fmt.Sprintf("ring: payload of %d bytes exceeds the maximum %d", n, p.MaxPayload()))
	}
	size := uint64(RecordSize(n))
	pos := p.next & p.mask
	pad := uint64(0)
	if room := uint64(len(p.data)) - pos; room < size {
		pad = room
	}
	if !p.fits(pad + size) {
		return nil
	}
	if pad > 0 {
		writeHeader(p.data[pos:], int(pad)-HeaderSize, KindPad)
		p.next += pad
		pos = 0
	}
	rec := p.data[pos : pos+size]
	writeHeader(rec, n, kind)
	p.next += size
	return rec[:HeaderSize+n]
}

// SetPrepare makes the producer call prepare(off, n) before it first
// writes bytes [off, off+n) of its data region, for a region whose pages
// are not all allocated yet (the first prepared bytes are): a server
// allocates the ring it writes in a client's segment as it goes, rather
// than all at once, so that what a client can make it allocate is bounded
// by what it sends. Prepare asks for it.
func (p *Producer) SetPrepare(prepare func(off, n int) error, prepared int) {
	p.prepare, p.prepared = prepare, uint64(prepared)
}

// prepareAhead is how far past the next record Prepare allocates, so that
// filling a ring the first time costs a system call per 64 KiB.
const prepareAhead = 64 << 10

// Prepare makes sure that the bytes the next record of n bytes may occupy
// (with the padding before it, if it wraps) are allocated, calling the
// function SetPrepare gave. Once the whole region is, it costs a
// comparison. Call it before Reserve.
func (p *Producer) Prepare(n int) error {
	if p.prepared >= uint64(len(p.data)) || p.prepare == nil {
		return nil
	}
	size := uint64(RecordSize(n))
	pos := p.next & p.mask
	end := pos + size
	if uint64(len(p.data))-pos < size {
		end = uint64(len(p.data)) // the padding reaches the end, the record starts at 0
	}
	if end <= p.prepared {
		return nil
	}
	want := min(uint64(len(p.data)), max(end, p.prepared+prepareAhead))
	if err := p.prepare(int(p.prepared), int(want-p.prepared)); err != nil {
		return err
	}
	p.prepared = want
	return nil
}

// Fits reports whether a record with an n-byte payload fits in the ring
// now, with the pad before it if it would wrap: whether Reserve(n) would
// succeed. It loads the consumer's head if the last one seen is too old.
func (p *Producer) Fits(n int) bool {
	size := uint64(RecordSize(n))
	pad := uint64(0)
	if room := uint64(len(p.data)) - p.next&p.mask; room < size {
		pad = room
	}
	return p.fits(pad + size)
}

func (p *Producer) fits(size uint64) bool {
	if p.next+size-p.headSeen <= uint64(len(p.data)) {
		return true
	}
	p.headSeen = p.loadHead()
	return p.next+size-p.headSeen <= uint64(len(p.data))
}

// Unpublished reports whether records were reserved since the last Publish.
func (p *Producer) Unpublished() bool { return p.next != p.published }

// Reserved returns the ring position just after the last reserved record:
// once the consumer's head reaches it, every record reserved so far has
// been consumed.
func (p *Producer) Reserved() uint64 { return p.next }

// Publish makes every reserved record visible to the consumer. On memory
// without coherence it writes the records back first, then the tail
// (PROTOCOL.md 18.2).
func (p *Producer) Publish() {
	if p.coh != nil {
		p.publishToMemory()
		return
	}
	p.published = p.next // inlined: the hot path of coherent memory
	p.tail.Store(p.next)
}

func (p *Producer) publishToMemory() {
	eachPart(p.data, p.mask, p.published, p.next, p.coh.Flush)
	p.published = p.next
	p.tail.Store(p.next)
	p.coh.Flush(word(p.tail))
}

// SetCoherence makes the producer write back what it publishes and read
// the consumer's head from memory, through c, for memory that hardware
// does not keep coherent (package coherence). Call it before the first
// Reserve.
func (p *Producer) SetCoherence(c coherence.Coherence) { p.coh = c }

// loadHead loads the consumer's head, from memory when it is not coherent.
func (p *Producer) loadHead() uint64 {
	if p.coh != nil {
		return p.loadHeadFromMemory()
	}
	return p.head.Load()
}

func (p *Producer) loadHeadFromMemory() uint64 { return loadFromMemory(p.coh, p.head) }

// releaseToMemory is Release on memory without coherence: the head is
// written back after it is stored.
func (c *Consumer) releaseToMemory() {
	if c.released != c.read {
		c.released = c.read
		c.head.Store(c.read)
		c.coh.Flush(word(c.head))
	}
}

// loadFromMemory loads the counter w after dropping its cached line.
func loadFromMemory(c coherence.Coherence, w *atomic.Uint64) uint64 {
	c.Invalidate(word(w))
	return w.Load()
}

// Empty reports whether the consumer has freed everything published.
func (p *Producer) Empty() bool { return p.loadHead() == p.published }

// String describes the producer's counters, for diagnostics.
func (p *Producer) String() string {
	return fmt.Sprintf("out{next=%d published=%d head=%d}", p.next, p.published, p.head.Load())
}

// eachPart calls fn with the bytes of data between the counters from and
// to (to-from <= len(data)): one slice, or two when the range wraps.
func eachPart(data []byte, mask, from, to uint64, fn func([]byte)) {
	if from == to {
		return
	}
	lo, hi := from&mask, to&mask
	if hi > lo {
		fn(data[lo:hi])
		return
	}
	fn(data[lo:])
	if hi > 0 {
		fn(data[:hi])
	}
}

func writeHeader(b []byte, n int, kind byte) {
	binary.LittleEndian.PutUint32(b[0:4], uint32(n))
	b[4] = kind
	clear(b[5:HeaderSize])
}

// Consumer is the reading end of a ring. It is not safe for concurrent use.
type Consumer struct {
	data       []byte
	mask       uint64
	tail, head *atomic.Uint64
	read       uint64 // head including records returned but not released
	released   uint64 // head as last stored; a valid tail is at most Cap past it
	tailSeen   uint64
	coh        coherence.Coherence // nil on coherent memory (SetCoherence)
}

// SetCoherence makes the consumer read the tail and the records from
// memory, and write its head back, through c, for memory that hardware
// does not keep coherent (package coherence). Call it before the first
// Next.
func (c *Consumer) SetCoherence(coh coherence.Coherence) { c.coh = coh }

// loadTail loads the producer's tail, from memory when it is not coherent.
func (c *Consumer) loadTail() uint64 {
	if c.coh != nil {
		return c.loadTailFromMemory()
	}
	return c.tail.Load()
}

func (c *Consumer) loadTailFromMemory() uint64 { return loadFromMemory(c.coh, c.tail) }

// NewConsumer returns the consumer of the ring over data with the given
// counters.
func NewConsumer(data []byte, tail, head *atomic.Uint64) *Consumer {
	return NewConsumerAt(data, tail, head, head.Load())
}

// NewConsumerAt is NewConsumer starting from the head value start instead
// of the one in shared memory; the consumer never reads its own head back.
func NewConsumerAt(data []byte, tail, head *atomic.Uint64, start uint64) *Consumer {
	return &Consumer{data: data, mask: uint64(len(data) - 1), tail: tail, head: head, read: start, released: start, tailSeen: start}
}

// Next returns the next record, header and payload, or nil when none is
// published. Pad records are skipped. The record stays valid, and its space
// owned by the consumer, until Release. Its contents may still be changed by
// a hostile producer, so callers copy header fields before checking them.
func (c *Consumer) Next() ([]byte, error) {
	if c.released%Align != 0 {
		return nil, fmt.Errorf("%w: head %d is not a multiple of %d", ErrCorrupt, c.released, Align)
	}
	for {
		if c.read == c.tailSeen {
			t := c.loadTail()
			if t == c.read {
				return nil, nil
			}
			if t%Align != 0 || t < c.read || t-c.released > uint64(len(c.data)) {
				return nil, fmt.Errorf("%w: tail %d with head %d and capacity %d", ErrCorrupt, t, c.released, len(c.data))
			}
			if c.coh != nil { // the bytes published since, from memory (18.2)
				eachPart(c.data, c.mask, c.tailSeen, t, c.coh.Invalidate)
			}
			c.tailSeen = t
		}
		pos := c.read & c.mask
		n := uint64(binary.LittleEndian.Uint32(c.data[pos:]))
		kind := c.data[pos+4]
		size := uint64(RecordSize(0)) + (n+Align-1)&^(Align-1)
		if n > uint64(len(c.data)) || pos+size > uint64(len(c.data)) || size > c.tailSeen-c.read {
			return nil, fmt.Errorf("%w: record of %d bytes at offset %d overruns the ring (capacity %d, %d bytes published)", ErrCorrupt, n, pos, len(c.data), c.tailSeen-c.read)
		}
		if kind == KindInvalid {
			return nil, fmt.Errorf("%w: record of kind 0 at offset %d", ErrCorrupt, pos)
		}
		c.read += size
		if kind == KindPad {
			continue
		}
		return c.data[pos : pos+HeaderSize+n], nil
	}
}

// Release frees the space of every record Next has returned so far.
func (c *Consumer) Release() {
	if c.coh != nil {
		c.releaseToMemory()
		return
	}
	if c.released != c.read { // inlined: the hot path of coherent memory
		c.released = c.read
		c.head.Store(c.read)
	}
}

// Published reports whether records are waiting past everything read.
func (c *Consumer) Published() bool { return c.loadTail() != c.read }

// TailWord returns the low 32 bits of the tail counter as a word to wait on
// with a futex: it changes whenever the producer publishes.
func TailWord(tail *atomic.Uint64) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafePointer(tail))
}

// String describes the consumer's counters, for diagnostics.
func (c *Consumer) String() string {
	return fmt.Sprintf("in{read=%d tail=%d}", c.read, c.tail.Load())
}

// Position returns the consumer's read counter: everything before it has
// been returned by Next.
func (c *Consumer) Position() uint64 { return c.read }
