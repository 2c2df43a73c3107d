//go:build linux

package pool

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/notnets/notnets/internal/coherence"
)

// Segment layouts. docs/PROTOCOL.md is the normative description; the
// constants here must match it.
//
// Every segment starts with a header page written once by its creator before
// the segment is announced, and read-only for everyone afterwards:
//
//	offset size field
//	0      4    magic "NNTS" (0x53544e4e little-endian)
//	4      2    protocol version (Version)
//	6      2    kind: 1 connection, 2 listener, 3 registry, 4 hosts marker
//	8      8    segment size in bytes
//	16     4    creator's process id
//	20     4    connection: client-to-server ring capacity; listener: slot count
//	24     4    connection: server-to-client ring capacity; listener: flags
//	            (ListenerSocketOnly, ListenerByteStream)
//	28     4    connection: client-to-server heap size (0: no heap)
//	32     4    connection: server-to-client heap size (0: no heap)
//	36     4    connection: flags (ConnByteStream)
//	40     4    connection: the largest header block the client accepts
//	            (0: DefaultHeaderLimit)
//	44     2    connection: length of the client's user agent, at most
//	            MaxUserAgent
//	46     ...  connection: the client's user agent
//	1088   16   listener, connection, hosts marker: the creator's host id
//	            (host.go: its boot id)
//	1104   8    its pid namespace (inode)
//	1112   2    its host name's length, at most MaxHostName
//	1114   ...  its host name
//
// A connection segment then has one control page per side, client first,
// then the client-to-server ring data, then the server-to-client ring data:
//
//	page 0        header
//	page 1        client control block (written only by the client)
//	page 2        server control block (written only by the server)
//	page 3...     client-to-server ring data (written only by the client)
//	after that    server-to-client ring data (written only by the server)
//	after that    client-to-server heap (written only by the client)
//	after that    server-to-client heap (written only by the server)
//	after that    client-to-server return queue (written only by the server)
//	after that    server-to-client return queue (written only by the client)
//
// A heap holds messages too large for the ring (package arena); its
// receiver hands blocks back through the return queue, one uint32 page
// index per entry, as many entries as the heap has pages (ReturnsSize).
//
// A control block holds, each on a 64-byte line of its own:
//
//	0    state (uint32): 0 new, 1 open, 2 closed; heartbeat (uint64) at 8,
//	     reserved (not written yet)
//	64   tail of the ring this side produces (uint64)
//	128  head of the ring this side consumes (uint64)
//	192  sleeping (uint32): 1 while this side may block in futex on the tail
//	     of the ring it consumes, and must be woken after a publish
//	256  tail of the return queue this side writes (uint64): blocks of the
//	     peer's heap this side has finished with
//	320  head of the return queue this side reads (uint64): returned blocks
//	     of this side's heap taken back
//	384  server only: the most streams a client may have open (uint32),
//	     and at 388 the largest header block the server accepts (uint32)
//
// A listener segment has the header page, a server control page (only its
// state word is used), and a slot page shared by clients and server.
const (
	PageSize = 4096
	Magic    = 0x53544e4e
	Version  = 1

	KindConn     = 1
	KindListener = 2

	offMagic   = 0
	offVersion = 4
	offKind    = 6
	offSize    = 8
	offPID     = 16
	offParamA  = 20
	offParamB  = 24
	offParamC  = 28
	offParamD  = 32
	offFlags   = 36 // connection flags (PROTOCOL.md 4, 17.1)
	// Connection headers only (ConnInfo).
	offHeaderLimit = 40
	offUALen       = 44
	offUA          = 46

	ctlState     = 0
	ctlHeartbeat = 8
	ctlTail      = 64
	ctlHead      = 128
	ctlSleeping  = 192
	ctlRetTail   = 256
	ctlRetHead   = 320
	ctlMaxStream = 384
	ctlMaxHeader = 388
)

// Control-block states.
const (
	StateNew    = 0
	StateOpen   = 1
	StateClosed = 2
)

// Control is a view of one side's control block.
type Control struct {
	State     Word32
	Heartbeat Word64
	Tail      Word64
	Head      Word64
	Sleeping  Word32
	// ReturnTail and ReturnHead are the counters of the return queues: the
	// one this side writes (blocks of the peer's heap it is done with) and
	// the one it reads (blocks of its own heap the peer gave back).
	ReturnTail Word64
	ReturnHead Word64
	// MaxStreams is the server's limit on the streams a client may have
	// open at once, 0 for none; written by the server before it opens the
	// connection. Unused in the client's control block.
	MaxStreams Word32
	// MaxHeader is the largest header block the server accepts, 0 for
	// DefaultHeaderLimit; written by the server before it opens the
	// connection. Unused in the client's control block (the client's
	// limit is in the header, ConnInfo).
	MaxHeader Word32
}

// with returns the control block with coherence coh.
func (c Control) with(coh coherence.Coherence) Control {
	return Control{State: c.State.with(coh), Heartbeat: c.Heartbeat.with(coh), Tail: c.Tail.with(coh), Head: c.Head.with(coh),
		Sleeping: c.Sleeping.with(coh), ReturnTail: c.ReturnTail.with(coh), ReturnHead: c.ReturnHead.with(coh),
		MaxStreams: c.MaxStreams.with(coh), MaxHeader: c.MaxHeader.with(coh)}
}

func controlAt(mem []byte, off int) Control {
	return Control{
		State:     u32(mem, off+ctlState),
		Heartbeat: u64(mem, off+ctlHeartbeat),
		Tail:      u64(mem, off+ctlTail),
		Head:      u64(mem, off+ctlHead),
		Sleeping:  u32(mem, off+ctlSleeping),

		ReturnTail: u64(mem, off+ctlRetTail),
		ReturnHead: u64(mem, off+ctlRetHead),
		MaxStreams: u32(mem, off+ctlMaxStream),
		MaxHeader:  u32(mem, off+ctlMaxHeader),
	}
}

// writeHeader writes the header page of mem, whose blocks the caller has
// allocated (see reserve.go): a store into a hole of a full pool faults.
// Every segment but the registry gets this process's host identity.
func writeHeader(mem []byte, kind uint16, a, b uint32, pid int, extra ...uint32) {
	binary.LittleEndian.PutUint32(mem[offMagic:], Magic)
	binary.LittleEndian.PutUint16(mem[offVersion:], Version)
	binary.LittleEndian.PutUint16(mem[offKind:], kind)
	binary.LittleEndian.PutUint64(mem[offSize:], uint64(len(mem)))
	binary.LittleEndian.PutUint32(mem[offPID:], uint32(pid))
	binary.LittleEndian.PutUint32(mem[offParamA:], a)
	binary.LittleEndian.PutUint32(mem[offParamB:], b)
	for i, v := range extra {
		binary.LittleEndian.PutUint32(mem[offParamC+4*i:], v)
	}
	if kind != KindRegistry {
		// Who wrote the pid (F14); the registry has no creator process.
		writeHost(mem, LocalHost())
	}
}

// checkHeader validates the header page of mem for the given kind and
// returns its two parameters and the creator's pid.
func checkHeader(mem []byte, kind uint16) (a, b uint32, pid int, err error) {
	h, err := headerCopy(mem)
	if err != nil {
		return 0, 0, 0, err
	}
	if m := binary.LittleEndian.Uint32(h[offMagic:]); m != Magic {
		return 0, 0, 0, fmt.Errorf("bad magic %#x, not a notnets segment", m)
	}
	if v := binary.LittleEndian.Uint16(h[offVersion:]); v != Version {
		return 0, 0, 0, fmt.Errorf("protocol version %d, this build speaks version %d", v, Version)
	}
	if k := binary.LittleEndian.Uint16(h[offKind:]); k != kind {
		return 0, 0, 0, fmt.Errorf("segment kind %d, want %d", k, kind)
	}
	if s := binary.LittleEndian.Uint64(h[offSize:]); s != uint64(len(mem)) {
		return 0, 0, 0, fmt.Errorf("header says %d bytes, file has %d", s, len(mem))
	}
	return binary.LittleEndian.Uint32(h[offParamA:]), binary.LittleEndian.Uint32(h[offParamB:]),
		int(binary.LittleEndian.Uint32(h[offPID:])), nil
}

// headerCopy returns one snapshot of the header page, so that checks hold
// for the values used even if the creator rewrites it.
func headerCopy(mem []byte) (*[PageSize]byte, error) {
	if len(mem) < PageSize {
		return nil, fmt.Errorf("segment of %d bytes is smaller than its header page", len(mem))
	}
	var h [PageSize]byte
	copy(h[:], mem)
	return &h, nil
}

// ConnLayout is a view of a connection segment.
type ConnLayout struct {
	Client, Server Control
	C2S, S2C       []byte // ring data regions
	// C2SHeap and S2CHeap are the heaps (empty when the segment has none);
	// C2SReturns is written by the server and hands back blocks of
	// C2SHeap, S2CReturns is written by the client.
	C2SHeap, S2CHeap       []byte
	C2SReturns, S2CReturns []byte
	PeerPID                int // the client's pid, from the header
	// Host is the client's host identity, from the header: whether
	// PeerPID names a process of this host (Host.Local, rule F14).
	Host Host
	// Info is what the client's header says of it (WriteConnInfo).
	Info ConnInfo
	// Spec gives the sizes of the regions, from the header.
	Spec ConnSpec
	// Coh keeps the memory coherent for the rings and heaps, or is nil
	// when the hardware does (SetCoherence).
	Coh coherence.Coherence
}

// SetCoherence makes the layout's control words, and the rings and heaps
// built from Coh, keep memory coherent through coh (Segment.Coherence);
// nil for coherent memory.
func (l *ConnLayout) SetCoherence(coh coherence.Coherence) {
	l.Coh, l.Client, l.Server = coh, l.Client.with(coh), l.Server.with(coh)
}

// ConnSpec gives the sizes of a connection segment's regions, and its
// flags.
type ConnSpec struct {
	C2S, S2C         int // ring capacities
	C2SHeap, S2CHeap int // heap sizes, 0 for none
	// Flags is the connection flags word of the header (ConnByteStream);
	// it does not change the layout.
	Flags uint32
}

// ConnByteStream, in a connection header's flags word (offset 36), says
// that the connection's rings carry a byte stream (PROTOCOL.md 17), not
// frames. Other bits are reserved.
const ConnByteStream = 1

// Size returns the size of a connection segment with these regions.
func (s ConnSpec) Size() int {
	return 3*PageSize + s.C2S + s.S2C + s.C2SHeap + s.S2CHeap + ReturnsSize(s.C2SHeap) + ReturnsSize(s.S2CHeap)
}

// Fixed returns the ranges of a segment of this spec that are used as
// soon as the connection opens, and whose blocks its creator allocates
// before it maps the segment (CreateConn): the header and control pages
// with both rings, and both return queues. Everything else is heap, and
// stays a hole until its sender reserves a block of it.
func (s ConnSpec) Fixed() []Range {
	heaps := s.Heaps()
	rs := []Range{{0, 3*PageSize + s.C2S + s.S2C}}
	if q := ReturnsSize(s.C2SHeap) + ReturnsSize(s.S2CHeap); q > 0 {
		rs = append(rs, Range{heaps[1].End(), q})
	}
	return rs
}

// Heaps returns the ranges of the client-to-server heap and of the
// server-to-client heap (of length 0 when the segment has none).
func (s ConnSpec) Heaps() [2]Range {
	c2s := Range{3*PageSize + s.C2S + s.S2C, s.C2SHeap}
	return [2]Range{c2s, {c2s.End(), s.S2CHeap}}
}

// ReturnsSize is the size of the return queue of a heap of heapSize bytes:
// one 4-byte entry per page of the heap, rounded up to whole pages.
func ReturnsSize(heapSize int) int {
	n := heapSize / PageSize * 4
	return (n + PageSize - 1) &^ (PageSize - 1)
}

// Heap sizes: 0 (no heap), or a power of two in [MinHeap, MaxHeap].
const (
	MinHeap = 64 << 10
	MaxHeap = 1 << 30
)

// CheckHeap validates a heap size from a segment header.
func CheckHeap(n int) error {
	if n != 0 && (n < MinHeap || n > MaxHeap || n&(n-1) != 0) {
		return fmt.Errorf("heap size %d is not 0 or a power of two from %d to %d", n, MinHeap, MaxHeap)
	}
	return nil
}

// ConnSize returns the size of a connection segment with the given ring
// capacities and no heaps.
func ConnSize(c2s, s2c int) int { return ConnSpec{C2S: c2s, S2C: s2c}.Size() }

// InitConn writes the header of a new connection segment without heaps.
func InitConn(mem []byte, c2s, s2c, pid int) { InitConnSpec(mem, ConnSpec{C2S: c2s, S2C: s2c}, pid) }

// InitConnSpec writes the header of a new connection segment, with this
// process's host identity. It writes only the header page, which must be
// allocated (CreateConn allocates it; for a memfd, Allocate or
// Segment.Reserve of spec.Fixed()).
func InitConnSpec(mem []byte, s ConnSpec, pid int) {
	writeHeader(mem, KindConn, uint32(s.C2S), uint32(s.S2C), pid, uint32(s.C2SHeap), uint32(s.S2CHeap), s.Flags)
}

// ConnInfo is what a client says of itself in its connection's header
// (PROTOCOL.md 4): the largest header block it accepts, and its user
// agent.
type ConnInfo struct {
	MaxHeader uint32 // 0 for DefaultHeaderLimit
	UserAgent string // at most MaxUserAgent bytes
}

// DefaultHeaderLimit is the header block limit of a side that states
// none (a limit word of 0): grpc-go's default header list limit.
const DefaultHeaderLimit = 16 << 20

// MaxUserAgent is the longest user agent a connection header carries.
const MaxUserAgent = 1024

// WriteConnInfo writes the client's ConnInfo into the header of the new
// connection segment mem, after InitConnSpec and before the segment is
// announced. A user agent over MaxUserAgent bytes is an error.
func WriteConnInfo(mem []byte, info ConnInfo) error {
	if len(info.UserAgent) > MaxUserAgent {
		return fmt.Errorf("user agent of %d bytes exceeds the limit of %d", len(info.UserAgent), MaxUserAgent)
	}
	binary.LittleEndian.PutUint32(mem[offHeaderLimit:], info.MaxHeader)
	binary.LittleEndian.PutUint16(mem[offUALen:], uint16(len(info.UserAgent)))
	copy(mem[offUA:], info.UserAgent)
	return nil
}

// connInfo reads a ConnInfo from the header copy h. A user agent length
// over MaxUserAgent gives no user agent (rule F12): it is informational,
// and the connection is not refused for it.
func connInfo(h *[PageSize]byte) ConnInfo {
	info := ConnInfo{MaxHeader: binary.LittleEndian.Uint32(h[offHeaderLimit:])}
	if n := int(binary.LittleEndian.Uint16(h[offUALen:])); n <= MaxUserAgent {
		info.UserAgent = string(h[offUA : offUA+n])
	}
	return info
}

// MapConn validates the connection segment mem and returns a view of it.
// checkCap validates each ring capacity.
func MapConn(mem []byte, checkCap func(int) error) (*ConnLayout, error) {
	a, b, pid, err := checkHeader(mem, KindConn)
	if err != nil {
		return nil, err
	}
	if err := checkCap(int(a)); err != nil {
		return nil, fmt.Errorf("client-to-server %w", err)
	}
	if err := checkCap(int(b)); err != nil {
		return nil, fmt.Errorf("server-to-client %w", err)
	}
	h, _ := headerCopy(mem)
	spec := ConnSpec{C2S: int(a), S2C: int(b),
		C2SHeap: int(binary.LittleEndian.Uint32(h[offParamC:])),
		S2CHeap: int(binary.LittleEndian.Uint32(h[offParamD:])),
		Flags:   binary.LittleEndian.Uint32(h[offFlags:])}
	if err := CheckHeap(spec.C2SHeap); err != nil {
		return nil, fmt.Errorf("client-to-server %w", err)
	}
	if err := CheckHeap(spec.S2CHeap); err != nil {
		return nil, fmt.Errorf("server-to-client %w", err)
	}
	if spec.Size() != len(mem) {
		return nil, fmt.Errorf("segment of %d bytes does not match rings of %d and %d bytes and heaps of %d and %d bytes", len(mem), a, b, spec.C2SHeap, spec.S2CHeap)
	}
	off := 3 * PageSize
	next := func(n int) []byte {
		r := mem[off : off+n : off+n]
		off += n
		return r
	}
	lay := &ConnLayout{Client: controlAt(mem, PageSize), Server: controlAt(mem, 2*PageSize), PeerPID: pid, Spec: spec, Info: connInfo(h), Host: readHost(h[:])}
	lay.C2S, lay.S2C = next(spec.C2S), next(spec.S2C)
	lay.C2SHeap, lay.S2CHeap = next(spec.C2SHeap), next(spec.S2CHeap)
	lay.C2SReturns, lay.S2CReturns = next(ReturnsSize(spec.C2SHeap)), next(ReturnsSize(spec.S2CHeap))
	return lay, nil
}

// Listener slots: the slot page starts with a knock counter (uint32) that a
// client increments after filling a slot, and that the server waits on. The
// slots follow from offset 64, SlotSize bytes each:
//
//	0   state word (uint32): bits 0-7 the state (0 free, 1 claimed by a
//	    client, 2 ready for the server), bits 8-31 a generation that every
//	    return to free increments, so that a late compare-and-swap from a
//	    client that gave up, or from a server reclaiming the slot, cannot
//	    succeed on a later use of the slot
//	4   client pid (uint32)
//	8   name length (uint32), at most SlotNameMax
//	16  name bytes
const (
	SlotSize    = 128
	SlotNameMax = 64
	Slots       = 31

	SlotFree    = 0
	SlotClaimed = 1
	SlotReady   = 2
)

// Slot is a view of one listener slot.
type Slot struct {
	State Word32
	PID   Word32
	mem   []byte
	coh   coherence.Coherence // nil: coherent memory
}

// Claim takes the slot for a client if it is free, and returns the state
// word it now holds.
func (s Slot) Claim() (uint32, bool) {
	w := s.State.Load()
	if w&0xff != SlotFree {
		return 0, false
	}
	c := w&^0xff | SlotClaimed
	return c, s.State.CompareAndSwap(w, c)
}

// Advance moves the slot from state word w to state st in the same
// generation, and returns the new word; it fails if the word has changed.
func (s Slot) Advance(w, st uint32) (uint32, bool) {
	n := w&^0xff | st
	return n, s.State.CompareAndSwap(w, n)
}

// Free returns the slot from state word w to free in the next generation;
// it fails if the word has changed.
func (s Slot) Free(w uint32) bool {
	return s.State.CompareAndSwap(w, (w>>8+1)<<8|SlotFree)
}

// SlotState returns the state in a slot's state word.
func SlotState(w uint32) uint32 { return w & 0xff }

// SetName stores name in the slot; the client calls it between claiming and
// marking the slot ready.
func (s Slot) SetName(name string) {
	binary.LittleEndian.PutUint32(s.mem[8:], uint32(len(name)))
	copy(s.mem[16:16+SlotNameMax], name)
	if s.coh != nil {
		s.coh.Flush(s.mem[8 : 16+SlotNameMax])
	}
}

// Name returns the name stored in the slot, checking its length.
func (s Slot) Name() (string, error) {
	if s.coh != nil {
		s.coh.Invalidate(s.mem[8 : 16+SlotNameMax])
	}
	n := binary.LittleEndian.Uint32(s.mem[8:])
	if n > SlotNameMax {
		return "", fmt.Errorf("slot name length %d exceeds %d", n, SlotNameMax)
	}
	return string(s.mem[16 : 16+n]), nil
}

// ListenerLayout is a view of a listener segment.
type ListenerLayout struct {
	Server Control
	Knock  Word32
	Slots  []Slot
	PID    int
	// Host is the server's host identity: whether PID names a process
	// of this host (Host.Local, rule F14).
	Host  Host
	Flags uint32 // ListenerSocketOnly, ListenerByteStream
	// Load is what the instance publishes for balancers (instance.go).
	Load Load
}

// SetCoherence makes the listener's words and slots keep memory coherent
// through coh (Segment.Coherence); nil for coherent memory.
func (l *ListenerLayout) SetCoherence(coh coherence.Coherence) {
	l.Server, l.Knock, l.Load = l.Server.with(coh), l.Knock.with(coh), l.Load.with(coh)
	for i, s := range l.Slots {
		l.Slots[i] = Slot{State: s.State.with(coh), PID: s.PID.with(coh), mem: s.mem, coh: coh}
	}
}

// ListenerSize is the size of a listener segment.
const ListenerSize = 3 * PageSize

// InitListener writes the header of a new listener segment, with this
// process's host identity. mem must be allocated (CreateIn allocates the
// whole file before mapping it), so that these stores cannot fault on a
// full pool.
func InitListener(mem []byte, pid int, flags uint32) {
	writeHeader(mem, KindListener, Slots, flags, pid)
}

// Listener flags, in a listener header's param B.
const (
	// ListenerSocketOnly says that the server takes connections only
	// through its socket (PROTOCOL.md 10.4), never through the slots.
	ListenerSocketOnly = 1
	// ListenerByteStream says that the instance serves byte-stream
	// connections (PROTOCOL.md 17) and nothing else: clients that make
	// frame connections skip it, and byte-stream clients use only such
	// instances (F11).
	ListenerByteStream = 2
)

// MapListener validates the listener segment mem and returns a view of it.
func MapListener(mem []byte) (*ListenerLayout, error) {
	n, flags, pid, err := checkHeader(mem, KindListener)
	if err != nil {
		return nil, err
	}
	if n != Slots || len(mem) != ListenerSize {
		return nil, fmt.Errorf("listener with %d slots in %d bytes, want %d slots in %d", n, len(mem), Slots, ListenerSize)
	}
	h, _ := headerCopy(mem)
	l := &ListenerLayout{Server: controlAt(mem, PageSize), Knock: u32(mem, 2*PageSize), PID: pid, Host: readHost(h[:]), Flags: flags, Load: loadAt(mem, PageSize)}
	for i := 0; i < Slots; i++ {
		off := 2*PageSize + 64 + i*SlotSize
		sm := mem[off : off+SlotSize : off+SlotSize]
		l.Slots = append(l.Slots, Slot{State: u32(sm, 0), PID: u32(sm, 4), mem: sm})
	}
	return l, nil
}

// PeerRegions returns the regions of the connection segment mem that the
// peer of the given side writes: for the client, the server's control
// block, the server-to-client ring and heap, and the client-to-server
// return queue; for the server, the header, the client's control block,
// the client-to-server ring and heap, and the server-to-client return
// queue. Each is page-aligned and a whole number of pages.
func (l *ConnLayout) PeerRegions(mem []byte, client bool) [][]byte {
	var rs [][]byte
	if client {
		rs = [][]byte{mem[2*PageSize : 3*PageSize], l.S2C, l.S2CHeap, l.C2SReturns}
	} else {
		rs = [][]byte{mem[:2*PageSize], l.C2S, l.C2SHeap, l.S2CReturns}
	}
	return slices.DeleteFunc(rs, func(r []byte) bool { return len(r) == 0 })
}
