package pool

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Why blocks are allocated before they are touched.
//
// A segment is a file mapped MAP_SHARED. A store into a page of the
// mapping whose block the file system has not allocated yet (a hole, as
// ftruncate leaves them) makes the kernel allocate it at that moment; if
// the file system is full (tmpfs at its size limit, a quota, a memory
// cgroup) the store cannot complete and the kernel sends SIGBUS, which
// kills a Go program. /dev/shm is writable by every user, so any local
// user can fill it. notnets therefore allocates every block before it
// first writes it, with fallocate(2), which reports a full file system as
// an error (ENOSPC) instead:
//
//   - CreateIn allocates the whole file before mapping it;
//   - CreateSparseIn and CreateConn allocate the ranges they are given (for
//     a connection segment: everything but the heaps) and leave the rest
//     a hole, so that an idle connection costs only what it uses;
//   - Segment.Reserve allocates a range on demand (a heap block, before
//     the sender writes a message into it), remembers what it allocated
//     in a bitmap so that a range already reserved costs no system call,
//     and reports a full pool as an error wrapping ErrExhausted: the
//     sender then sends the message through the ring.
//
// Reading a hole does not allocate on tmpfs (the zero page is mapped), so
// only writers need to reserve. Truncation of a shared file by a peer is
// another matter: see docs/SECURITY.md.

// ErrExhausted wraps every error that says the pool (or the memory
// behind it) has no room for a segment or for a range of one: ENOSPC,
// EDQUOT or ENOMEM from fallocate. Callers map it to ResourceExhausted.
// The error also wraps the errno, for errors.Is(err, unix.ENOSPC).
var ErrExhausted = errors.New("notnets: pool exhausted")

// Range is a byte range of a segment: Len bytes from offset Off.
type Range struct{ Off, Len int }

// End returns the offset just past the range.
func (r Range) End() int { return r.Off + r.Len }

// fallocate is unix.Fallocate; tests count its calls.
var fallocate = unix.Fallocate

// exhausted reports whether errno says that there is no room.
func exhausted(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOMEM)
}

// allocErr wraps an error of fallocate (or of the writes that stand in
// for it), with ErrExhausted when it says there is no room.
func allocErr(what string, off, n int, err error) error {
	if exhausted(err) {
		return fmt.Errorf("%w: allocate %d bytes at offset %d of %s: %w", ErrExhausted, n, off, what, err)
	}
	return fmt.Errorf("notnets: allocate %d bytes at offset %d of %s: %w", n, off, what, err)
}

// pageRound widens [off, off+n) to whole pages, within size.
func pageRound(off, n, size int) (int, int) {
	start := off &^ (PageSize - 1)
	end := min((off+n+PageSize-1)&^(PageSize-1), size)
	return start, end - start
}

// Allocate allocates the blocks of the given ranges of the file behind fd
// (fallocate(2) with mode 0), each widened to whole pages. Every range
// must lie within the file's size: a range beyond it would grow the file
// (and fails on a memfd sealed with F_SEAL_GROW). Use it on a descriptor
// before the file is shared, for instance on a memfd between ftruncate
// (or F_ADD_SEALS) and mmap; a segment that is already shared reserves
// with Segment.Reserve instead.
//
// A full file system is an error wrapping ErrExhausted and the errno;
// fallocate allocates the pages of a tmpfs or memfd file or none of them.
// Where the file system has no fallocate (EOPNOTSUPP), Allocate writes
// zeros over the ranges instead, which reports ENOSPC in the same way:
// that is why the file must not be in use yet.
func Allocate(fd int, rs ...Range) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("notnets: allocate: %w", err)
	}
	size := int(st.Size)
	for _, r := range rs {
		if r.Len == 0 {
			continue
		}
		if r.Off < 0 || r.Len < 0 || r.End() > size {
			return fmt.Errorf("notnets: allocate %d bytes at offset %d of a file of %d bytes: out of range", r.Len, r.Off, size)
		}
		off, n := pageRound(r.Off, r.Len, size)
		err := fallocate(fd, 0, int64(off), int64(n))
		if errors.Is(err, unix.EOPNOTSUPP) {
			err = writeZeros(fd, off, n)
		}
		if err != nil {
			return allocErr("a segment", off, n, err)
		}
	}
	return nil
}

// writeZeros writes n zero bytes at off: an allocation for file systems
// without fallocate, for files nobody maps yet.
func writeZeros(fd, off, n int) error {
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		w, err := unix.Pwrite(fd, zeros[:min(n, len(zeros))], int64(off))
		if err != nil {
			return err
		}
		off, n = off+w, n-w
	}
	return nil
}

// reserver allocates the blocks of a mapped segment on demand and
// remembers, one bit per page, what it has allocated.
type reserver struct {
	// mu guards fd against Close: Reserve holds it for reading while it
	// calls fallocate, Close for writing while it closes fd.
	mu   sync.RWMutex
	fd   int // -1 once closed
	size int
	bits []atomic.Uint64 // bit p: page p is allocated
	what string          // the segment's name, for errors
}

func newReserver(fd, size int, what string) *reserver {
	pages := (size + PageSize - 1) / PageSize
	return &reserver{fd: fd, size: size, bits: make([]atomic.Uint64, (pages+63)/64), what: what}
}

// mark records pages [p0, p1) as allocated.
func (r *reserver) mark(p0, p1 int) {
	for p := p0; p < p1; {
		w, b := p/64, p%64
		k := min(64-b, p1-p)
		r.bits[w].Or(maskOf(b, k))
		p += k
	}
}

// maskOf returns k one bits starting at bit b.
func maskOf(b, k int) uint64 {
	if k == 64 {
		return ^uint64(0)
	}
	return (uint64(1)<<k - 1) << b
}

// missing returns the first and one past the last page of [p0, p1) not
// yet allocated, or (-1, -1) when all are.
func (r *reserver) missing(p0, p1 int) (int, int) {
	first, last := -1, -1
	for p := p0; p < p1; {
		w, b := p/64, p%64
		k := min(64-b, p1-p)
		m := maskOf(b, k)
		if hole := ^r.bits[w].Load() & m; hole != 0 {
			if first < 0 {
				first = w*64 + bits.TrailingZeros64(hole)
			}
			last = w*64 + 63 - bits.LeadingZeros64(hole) + 1
		}
		p += k
	}
	return first, last
}

// reserve allocates [off, off+n), which the caller has checked lies in
// the segment.
func (r *reserver) reserve(off, n int) error {
	start, length := pageRound(off, n, r.size)
	p0, p1 := start/PageSize, (start+length+PageSize-1)/PageSize
	first, last := r.missing(p0, p1)
	if first < 0 {
		return nil // all allocated: no system call
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.fd < 0 {
		return fmt.Errorf("notnets: reserve in %s: segment closed", r.what)
	}
	// One call for the span from the first missing page to the last:
	// pages in between that are allocated already cost nothing more.
	a, b := first*PageSize, min(last*PageSize, r.size)
	if err := fallocate(r.fd, 0, int64(a), int64(b-a)); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			// Writing zeros in their place could overwrite what the peer
			// writes into a page shared with this range.
			return fmt.Errorf("notnets: reserve %d bytes at offset %d of %s: the pool's file system cannot allocate in place: %w", b-a, a, r.what, errors.ErrUnsupported)
		}
		return allocErr(r.what, a, b-a, err)
	}
	r.mark(first, last)
	return nil
}

func (r *reserver) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Reserve allocates the file blocks behind bytes [off, off+n) of the
// segment, widened to whole pages, so that writing them can never fault
// (SIGBUS) on a full pool. Whoever writes a range of a sparse segment
// (see CreateSparseIn) must reserve it first; reading needs no
// reservation.
//
// A full pool is an error wrapping ErrExhausted (and the errno): the
// range is then not allocated and must not be written; a sender falls
// back to the ring. Reserve is idempotent and safe for concurrent use: it
// remembers, page by page, what this Segment has allocated (what CreateIn
// and CreateSparseIn allocated counts), so a range reserved before costs
// a few atomic loads and no system call. What the peer's process
// allocated in the same file is not known here: reserving it again costs
// a system call that allocates nothing.
//
// A range outside the segment is an error; n = 0 is a no-op. On a Segment
// without a descriptor (built as a struct literal, rather than by
// CreateIn, OpenIn or NewSegmentFD) and after Close, Reserve fails. On a
// file system without fallocate it fails with an error wrapping
// errors.ErrUnsupported.
func (s *Segment) Reserve(off, n int) error {
	if n == 0 {
		return nil
	}
	if off < 0 || n < 0 || off > len(s.Mem) || n > len(s.Mem)-off {
		return fmt.Errorf("notnets: reserve %d bytes at offset %d of a segment of %d bytes: out of range", n, off, len(s.Mem))
	}
	if s.res == nil {
		return errors.New("notnets: reserve: the segment has no descriptor (use NewSegmentFD)")
	}
	return s.res.reserve(off, n)
}

// ReserveRanges reserves each range as Reserve does, and stops at the
// first error.
func (s *Segment) ReserveRanges(rs ...Range) error {
	for _, r := range rs {
		if err := s.Reserve(r.Off, r.Len); err != nil {
			return err
		}
	}
	return nil
}

// ReserveBytes reserves the bytes of b, which must be a slice of s.Mem
// (a region of a ConnLayout, or a block a heap allocator carved out of
// one), as Reserve does.
func (s *Segment) ReserveBytes(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if len(s.Mem) == 0 {
		return errors.New("notnets: reserve: the segment is not mapped")
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(s.Mem)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if p < base || p-base > uintptr(len(s.Mem)) {
		return errors.New("notnets: reserve: the bytes are not in the segment")
	}
	return s.Reserve(int(p-base), len(b))
}

// Reserved reports whether this Segment has allocated every page of
// [off, off+n): by creating the segment, or with Reserve.
func (s *Segment) Reserved(off, n int) bool {
	if n == 0 {
		return true
	}
	if s.res == nil || off < 0 || n < 0 || off > len(s.Mem) || n > len(s.Mem)-off {
		return false
	}
	start, length := pageRound(off, n, s.res.size)
	first, _ := s.res.missing(start/PageSize, (start+length+PageSize-1)/PageSize)
	return first < 0
}

// FD returns the descriptor of the segment's file, or -1 if the Segment
// has none. The Segment owns it: it stays open until Close, and the
// caller must not close it (it may pass it on, e.g. with SCM_RIGHTS,
// which duplicates it).
func (s *Segment) FD() int {
	if s.res == nil {
		return -1
	}
	s.res.mu.RLock()
	defer s.res.mu.RUnlock()
	return s.res.fd
}

// NewSegmentFD makes a Segment of mem, a mapping of the file behind fd
// (a memfd, typically, which has no name in the pool), so that its
// owner can Reserve ranges of it. It keeps a duplicate of fd
// (F_DUPFD_CLOEXEC), closed by Close: the caller still owns fd and may
// close it at once. The file must be at least len(mem) bytes long. The
// Segment's Path is empty, so Unlink does nothing; owner is recorded as
// its Owner.
//
// A memfd sealed with F_SEAL_GROW and F_SEAL_SHRINK can still be
// allocated within its size: fallocate with mode 0 neither grows nor
// shrinks it. A memfd lives in the kernel's internal tmpfs, which has no
// size limit, but its pages are charged to the memory cgroup: there
// reserving fails (ENOMEM, wrapped in ErrExhausted) where a store would
// call the OOM killer.
func NewSegmentFD(fd int, mem []byte, owner FileOwner) (*Segment, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("notnets: segment descriptor: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < int64(len(mem)) {
		return nil, fmt.Errorf("notnets: segment descriptor: not a regular file of at least %d bytes", len(mem))
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("notnets: segment descriptor: %w", err)
	}
	return &Segment{Mem: mem, Owner: owner, res: newReserver(dup, len(mem), "a memfd segment")}, nil
}
