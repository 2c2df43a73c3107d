//go:build linux

package pool

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Segments of a pool on a device (PROTOCOL.md 3.8). The segment's file
// in the pool directory is a descriptor of extentSize bytes, the
// segment's extent: a run of contiguous chunks of the device, claimed
// for it (device_claim.go). Its creator claims the chunks, maps them,
// zeroes them (a chunk may have served another segment before; a new
// segment reads as zeros, as a new file does) and only then links the
// descriptor into place under the segment's name, whole: nobody sees a
// segment whose bytes are not ready, and a name that exists (EEXIST)
// fails the creation after the chunks were claimed, which are then
// given back.
//
// The whole segment is claimed when it is made: a device has no holes
// to fill later, and claiming a heap's chunks lazily would need every
// peer to learn of them before it reads there. Reserve therefore has
// nothing to do on a device, and a connection's heaps cost their whole
// size (choose them smaller, WithArenaSize, on a device).

// KindExtent is the kind of a segment's descriptor in a pool on a device.
const KindExtent = 6

// extentSize is the size of a descriptor.
const extentSize = 64

// The fields of a descriptor (PROTOCOL.md 3.8).
const (
	offExtLength = 8
	offExtFirst  = 16
	offExtCount  = 24
	offExtDevice = 32
	offExtID     = 48
)

// extent is what a segment's descriptor says.
type extent struct {
	length, first, count int
	device, id           [16]byte
}

func (e *extent) encode() []byte {
	b := make([]byte, extentSize)
	binary.LittleEndian.PutUint32(b[offMagic:], Magic)
	binary.LittleEndian.PutUint16(b[offVersion:], Version)
	binary.LittleEndian.PutUint16(b[offKind:], KindExtent)
	binary.LittleEndian.PutUint64(b[offExtLength:], uint64(e.length))
	binary.LittleEndian.PutUint64(b[offExtFirst:], uint64(e.first))
	binary.LittleEndian.PutUint64(b[offExtCount:], uint64(e.count))
	copy(b[offExtDevice:], e.device[:])
	copy(b[offExtID:], e.id[:])
	return b
}

// parseExtent reads a descriptor of the device d (F17): exactly
// extentSize bytes, of this device, its chunks within it and its length
// from minSize to maxSize.
func (d *Device) parseExtent(b []byte, minSize, maxSize int) (*extent, error) {
	if len(b) != extentSize {
		return nil, fmt.Errorf("descriptor of %d bytes, want %d", len(b), extentSize)
	}
	if err := checkMagicKind(b, KindExtent); err != nil {
		return nil, err
	}
	if v := binary.LittleEndian.Uint16(b[offVersion:]); v != Version {
		return nil, fmt.Errorf("descriptor of version %d, this build speaks %d", v, Version)
	}
	e := &extent{}
	copy(e.device[:], b[offExtDevice:])
	copy(e.id[:], b[offExtID:])
	if e.device != d.ID {
		return nil, fmt.Errorf("descriptor of device %x, the pool's is %x", e.device, d.ID)
	}
	length := binary.LittleEndian.Uint64(b[offExtLength:])
	first := binary.LittleEndian.Uint64(b[offExtFirst:])
	count := binary.LittleEndian.Uint64(b[offExtCount:])
	if err := d.checkRun(first, count, length); err != nil {
		return nil, err
	}
	if length < uint64(max(minSize, 0)) || length > uint64(max(maxSize, 0)) {
		return nil, fmt.Errorf("segment of %d bytes, want %d to %d", length, minSize, maxSize)
	}
	e.length, e.first, e.count = int(length), int(first), int(count)
	return e, nil
}

// offset returns the offset of the extent in the device.
func (d *Device) offset(e *extent) int64 { return int64(e.first) * int64(d.ChunkSize) }

// deviceSeg is what a Segment of a pool on a device holds besides its
// descriptor.
type deviceSeg struct {
	d       *Device
	mapping []byte // the whole chunks; Segment.Mem is its first length bytes
	claim   int    // the claim, share locked while mapped; -1 once closed
	first   int
}

// mapExtent maps the chunks of e, shared, for writing if write.
func (d *Device) mapExtent(e *extent, write bool) ([]byte, error) {
	fd, err := d.open(write)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	prot := unix.PROT_READ
	if write {
		prot |= unix.PROT_WRITE
	}
	// Whole chunks: devdax maps only ranges aligned to its alignment.
	mem, err := unix.Mmap(fd, d.offset(e), e.count*d.ChunkSize, prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("notnets: map %d bytes at offset %d of device %s: %w", e.count*d.ChunkSize, d.offset(e), d.Path, err)
	}
	return mem, nil
}

// allocate allocates the blocks of e's chunks when the device is a
// regular file standing in for one, so that a full file system is an
// error (ErrExhausted) and not a SIGBUS when the chunks are written; a
// device has all its memory already.
func (d *Device) allocate(e *extent) error {
	fd, err := d.open(true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return err
	}
	return Allocate(fd, Range{int(d.offset(e)), e.count * d.ChunkSize})
}

// create makes the segment name of size bytes in the pool directory dfd
// on the device d, as createIn makes a file: its descriptor gets mode,
// and the pool's group in a shared pool.
func (d *Device) create(dfd int, dir, name string, size int, a Access, mode uint32) (*Segment, error) {
	path := filepath.Join(dir, name)
	if size <= 0 || size > d.Size() {
		return nil, fmt.Errorf("%w: create segment %s of %d bytes: device %s has %d", ErrExhausted, path, size, d.Path, d.Size())
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		return nil, fmt.Errorf("notnets: create segment %s: %w", path, unix.EEXIST) // before claiming chunks for it
	}
	cfd, err := openChunks(dfd, dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(cfd)
	c := &claim{count: (size + d.ChunkSize - 1) / d.ChunkSize, length: size, name: name}
	rand.Read(c.id[:])
	lock, err := d.claimRun(dfd, cfd, dir, c, a)
	if err != nil {
		return nil, err
	}
	e := &extent{length: size, first: c.first, count: c.count, device: d.ID, id: c.id}
	ds := &deviceSeg{d: d, claim: lock, first: e.first}
	fail := func(err error) (*Segment, error) {
		if ds.mapping != nil {
			unix.Munmap(ds.mapping)
		}
		unlinkRun(lock, cfd, e.first, e.first+e.count)
		unix.Close(lock)
		return nil, err
	}
	if err := d.allocate(e); err != nil {
		return fail(err)
	}
	if ds.mapping, err = d.mapExtent(e, true); err != nil {
		return fail(err)
	}
	clear(ds.mapping) // another segment's bytes, maybe
	if d.writeBack != nil {
		d.writeBack(ds.mapping)
	}
	fd, err := linkExtent(dfd, cfd, dir, name, e, a, mode)
	if err != nil {
		return fail(err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return fail(fmt.Errorf("notnets: stat segment %s: %w", path, err))
	}
	return ds.segment(path, dir, name, a, fd, &st, size), nil
}

// linkExtent writes the descriptor e under a temporary name in the
// chunks directory cfd and links it to name in the pool directory dfd,
// whole; it returns a descriptor of the file. A name that exists is an
// error wrapping EEXIST.
func linkExtent(dfd, cfd int, dir, name string, e *extent, a Access, mode uint32) (int, error) {
	path := filepath.Join(dir, name)
	var r [8]byte
	rand.Read(r[:])
	tmp := ".tmp-" + hex.EncodeToString(r[:])
	fd, err := unix.Openat(cfd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return -1, fmt.Errorf("notnets: create segment %s: %w", path, err)
	}
	defer unix.Unlinkat(cfd, tmp, 0)
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("notnets: %s segment %s: %w", what, path, err)
	}
	if a.shared() {
		if err := unix.Fchown(fd, -1, a.Group); err != nil {
			return fail("give group to", err)
		}
	}
	if err := unix.Fchmod(fd, mode); err != nil { // the umask may have taken bits away
		return fail("set the mode of", err)
	}
	b := e.encode()
	if n, err := unix.Pwrite(fd, b, 0); err != nil || n != len(b) {
		return fail("write the descriptor of", fmt.Errorf("%d of %d bytes (%v)", n, len(b), err))
	}
	if err := unix.Linkat(cfd, tmp, dfd, name, 0); err != nil {
		return fail("create", err)
	}
	return fd, nil
}

// segment returns the Segment of the mapped extent, whose descriptor is
// fd (st its fstat): everything of it is allocated, so Reserve costs
// nothing.
func (ds *deviceSeg) segment(path, dir, name string, a Access, fd int, st *unix.Stat_t, size int) *Segment {
	res := newReserver(fd, size, "segment "+path)
	res.mark(0, (size+PageSize-1)/PageSize)
	return &Segment{Path: path, Mem: ds.mapping[:size:size], Owner: ownerOf(st), dir: dir, name: name, access: a, res: res, dev: ds}
}

// open maps the segment whose descriptor fd (st its fstat, checked by
// the caller as F1 says) is the file name of the pool directory dfd on
// the device d: F17 for the descriptor, F18 for its chunks, whose claim
// it holds while it maps them.
func (d *Device) openSeg(dfd int, dir, name string, fd int, st *unix.Stat_t, minSize, maxSize int, a Access, write bool) (*Segment, error) {
	path := filepath.Join(dir, name)
	e, err := d.readExtent(fd, st, path, minSize, maxSize)
	if err != nil {
		return nil, err
	}
	cfd, err := openChunks(dfd, dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(cfd)
	h, err := d.holdClaim(cfd, dir, name, e, st.Uid, true)
	if err != nil {
		return nil, err
	}
	ds := &deviceSeg{d: d, claim: h.fd, first: e.first}
	if ds.mapping, err = d.mapExtent(e, write); err != nil {
		unix.Close(h.fd)
		return nil, err
	}
	return ds.segment(path, dir, name, a, fd, st, e.length), nil
}

// readExtent reads and checks the descriptor fd (F17).
func (d *Device) readExtent(fd int, st *unix.Stat_t, path string, minSize, maxSize int) (*extent, error) {
	if st.Size != extentSize {
		return nil, fmt.Errorf("%w: segment %s of a pool on a device has %d bytes, not a descriptor's %d", ErrAccess, path, st.Size, extentSize)
	}
	b := make([]byte, extentSize)
	if n, err := unix.Pread(fd, b, 0); err != nil || n != extentSize {
		return nil, fmt.Errorf("notnets: read segment %s: %d of %d bytes (%v)", path, n, extentSize, err)
	}
	e, err := d.parseExtent(b, minSize, maxSize)
	if err != nil {
		return nil, fmt.Errorf("%w: segment %s: %v", ErrAccess, path, err)
	}
	return e, nil
}

// pread reads len(buf) bytes at off of the segment whose descriptor is
// fd, the file name of the pool directory dfd, without mapping it: F17
// and F18 as openSeg checks them, without the claim's lock (the chunks
// may be freed meanwhile; a reader of headers may read another
// segment's bytes then, and judges them as it judges any header). It
// returns how many bytes it read (fewer at the segment's end) and the
// segment's length.
func (d *Device) pread(dfd int, dir, name string, a Access, fd int, buf []byte, off int64) (int, int, error) {
	path := filepath.Join(dir, name)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, 0, err
	}
	e, err := d.readExtent(fd, &st, path, 1, d.Size())
	if err != nil {
		return 0, 0, err
	}
	cfd, err := openChunks(dfd, dir, a)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(cfd)
	if _, err := d.holdClaim(cfd, dir, name, e, st.Uid, false); err != nil {
		return 0, 0, err
	}
	if off < 0 || off >= int64(e.length) {
		return 0, e.length, nil
	}
	buf = buf[:min(int64(len(buf)), int64(e.length)-off)]
	dev, err := d.open(false)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(dev)
	if d.readBack != nil {
		d.readBack(dev, d.offset(e)+off, len(buf))
	}
	n, err := unix.Pread(dev, buf, d.offset(e)+off)
	return n, e.length, err
}

// close unmaps the segment, releases its claim and, if the segment's
// file is gone from the pool dir and no process maps it any more, frees
// its chunks.
func (ds *deviceSeg) close(dir string, a Access) error {
	var err error
	if ds.mapping != nil {
		err = unix.Munmap(ds.mapping)
		ds.mapping = nil
	}
	if ds.claim >= 0 {
		unix.Close(ds.claim) // drops the shared lock
		ds.claim = -1
		ds.free(dir, a)
	}
	return err
}

// free frees the segment's chunks if its file is gone from the pool dir
// and no process maps it (freeIfDead).
func (ds *deviceSeg) free(dir string, a Access) {
	dfd, err := openDir(dir, a)
	if err != nil {
		return
	}
	defer unix.Close(dfd)
	cfd, err := openChunks(dfd, dir, a)
	if err != nil {
		return
	}
	defer unix.Close(cfd)
	ds.d.freeIfDead(dfd, cfd, ds.first)
}
