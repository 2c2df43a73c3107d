//go:build linux

package pool

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The allocator of a pool on a device (PROTOCOL.md 3.8).
//
// The device is cut into chunks of Device.ChunkSize bytes, and a segment
// takes a run of contiguous chunks, so that its bytes are one mapping of
// the device at one offset. A chunk is claimed by creating a file named
// for it in the pool's chunks directory, chunks/<16 hex digits of its
// index>: linkat(2) fails with EEXIST if the name exists, atomically, in
// whatever file system holds the pool directory, whoever else tries at
// the same time and on whichever host. Nothing of the allocator lives in
// the device: memory shared by hosts may not be coherent (see package
// coherence), and a lock or a compare-and-swap there would need it to
// be. famfs serializes its allocations the other way round, through a
// log on the device that only its master host appends to; here every
// host allocates, and the pool directory's file system is the referee.
//
// All the claims of one segment are hard links of one file, the
// segment's *claim*: it says which segment owns the chunks (its name,
// its random id, its first chunk, its number of chunks and its length),
// so an opener checks that every chunk a descriptor names is linked to
// the claim of that very segment (F18), and a descriptor cannot point at
// another segment's chunks. The creator writes the claim under a
// temporary name, links the first chunk's name first and the others in
// order; on EEXIST it removes the names it linked and tries further on.
//
// A segment's chunks are in use while a process maps them, and the
// segment's name may be gone long before (a connection's file is removed
// as soon as both sides have it mapped). Every process that maps a
// segment therefore holds a shared flock(2) on its claim until it
// unmaps it, and the kernel drops it when the process dies; chunks are
// freed (their names unlinked, the first chunk's last) only by a process
// that holds the claim's exclusive lock and finds the segment's
// descriptor gone from the pool: by the last process to close the
// segment, or by a clean (CleanIn) after its processes died. Locks are
// those of the pool directory's file system: a pool whose hosts share a
// file system without locks across hosts cannot free chunks safely (see
// PROTOCOL.md 3.8).

// ChunksDir is the subdirectory of a pool on a device that holds its
// chunk claims.
const ChunksDir = "chunks"

// KindClaim is the kind of a chunk claim.
const KindClaim = 7

// claimSize is the size of a claim file.
const claimSize = 320

// maxSegName bounds the name in a claim: a file name.
const maxSegName = 255

// The fields of a claim (PROTOCOL.md 3.8).
const (
	offClaimFirst   = 8
	offClaimCount   = 16
	offClaimID      = 24
	offClaimLength  = 40
	offClaimNameLen = 48
	offClaimName    = 50
)

// claim is what the claim of a segment says.
type claim struct {
	first, count int      // the segment's chunks
	id           [16]byte // the segment's random id, also in its descriptor
	length       int      // the segment's length in bytes
	name         string   // the segment's file name in the pool
}

// chunkName returns the claim name of chunk i.
func chunkName(i int) string { return fmt.Sprintf("%016x", i) }

// parseChunkName returns the chunk that the claim name s names.
func parseChunkName(s string) (int, bool) {
	if len(s) != 16 || strings.ToLower(s) != s {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 16, 63)
	return int(v), err == nil
}

func (c *claim) encode() []byte {
	b := make([]byte, claimSize)
	binary.LittleEndian.PutUint32(b[offMagic:], Magic)
	binary.LittleEndian.PutUint16(b[offVersion:], Version)
	binary.LittleEndian.PutUint16(b[offKind:], KindClaim)
	binary.LittleEndian.PutUint64(b[offClaimFirst:], uint64(c.first))
	binary.LittleEndian.PutUint64(b[offClaimCount:], uint64(c.count))
	copy(b[offClaimID:], c.id[:])
	binary.LittleEndian.PutUint64(b[offClaimLength:], uint64(c.length))
	binary.LittleEndian.PutUint16(b[offClaimNameLen:], uint16(len(c.name)))
	copy(b[offClaimName:], c.name)
	return b
}

// parseClaim reads a claim of the device d (F18): its chunks lie within
// the device, and its name is a file name.
func (d *Device) parseClaim(b []byte) (*claim, error) {
	if len(b) != claimSize {
		return nil, fmt.Errorf("claim of %d bytes, want %d", len(b), claimSize)
	}
	if err := checkMagicKind(b, KindClaim); err != nil {
		return nil, err
	}
	if v := binary.LittleEndian.Uint16(b[offVersion:]); v != Version {
		return nil, fmt.Errorf("claim of version %d", v)
	}
	first := binary.LittleEndian.Uint64(b[offClaimFirst:])
	count := binary.LittleEndian.Uint64(b[offClaimCount:])
	length := binary.LittleEndian.Uint64(b[offClaimLength:])
	if err := d.checkRun(first, count, length); err != nil {
		return nil, err
	}
	n := int(binary.LittleEndian.Uint16(b[offClaimNameLen:]))
	if n == 0 || n > maxSegName {
		return nil, fmt.Errorf("claim name of %d bytes", n)
	}
	c := &claim{first: int(first), count: int(count), length: int(length), name: string(b[offClaimName : offClaimName+n])}
	if strings.ContainsAny(c.name, "/\x00") || c.name == "." || c.name == ".." {
		return nil, fmt.Errorf("claim names %q, not a file name", c.name)
	}
	copy(c.id[:], b[offClaimID:])
	return c, nil
}

// checkRun checks a run of chunks read from a file of the pool (F17,
// F18), in unsigned arithmetic that cannot overflow: count chunks from
// first lie within the device, and hold length bytes in as few chunks as
// can hold them.
func (d *Device) checkRun(first, count, length uint64) error {
	chunks, size := uint64(d.Chunks), uint64(d.ChunkSize)
	switch {
	case length == 0 || length > uint64(d.Size()):
		return fmt.Errorf("length %d is not within the device's %d bytes", length, d.Size())
	case count != (length+size-1)/size:
		return fmt.Errorf("%d chunks for %d bytes; %d chunks of %d hold them", count, length, (length+size-1)/size, size)
	case first >= chunks || count > chunks-first:
		return fmt.Errorf("chunks %d to %d+%d are not within the device's %d", first, first, count, chunks)
	}
	return nil
}

// makeChunksDir makes the chunks directory of the pool directory dfd,
// with the pool directory's mode and group (in a shared pool sticky, so
// that a member removes no claim but its own).
func makeChunksDir(dfd int, dir string, a Access) error {
	path := filepath.Join(dir, ChunksDir)
	if err := unix.Mkdirat(dfd, ChunksDir, a.dirMode()); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("notnets: create chunks directory %s: %w", path, err)
	}
	fd, err := unix.Openat(dfd, ChunksDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("notnets: chunks directory %s: %w", path, err)
	}
	defer unix.Close(fd)
	if a.shared() {
		if err := unix.Fchown(fd, -1, a.Group); err != nil {
			return fmt.Errorf("notnets: give chunks directory %s to group %d: %w", path, a.Group, err)
		}
	}
	if err := unix.Fchmod(fd, a.dirMode()); err != nil {
		return fmt.Errorf("notnets: set the mode of chunks directory %s: %w", path, err)
	}
	return nil
}

// openChunks opens the chunks directory of the pool directory dfd for
// listing, without following a symbolic link, and checks it as the pool
// directory is checked (F7).
func openChunks(dfd int, dir string, a Access) (int, error) {
	path := filepath.Join(dir, ChunksDir)
	fd, err := unix.Openat(dfd, ChunksDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("%w: chunks directory %s: %w", ErrAccess, path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("notnets: chunks directory %s: %w", path, err)
	}
	if err := a.checkDir(path, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// listChunks returns the names in the chunks directory cfd: the claimed
// chunks, sorted, and the other names.
func listChunks(cfd int) (claimed []int, other []string, err error) {
	dup, err := unix.Dup(cfd) // os.File closes what it is given
	if err != nil {
		return nil, nil, err
	}
	f := os.NewFile(uintptr(dup), ChunksDir)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, nil, err
	}
	for _, n := range names {
		if i, ok := parseChunkName(n); ok {
			claimed = append(claimed, i)
		} else {
			other = append(other, n)
		}
	}
	slices.Sort(claimed)
	return claimed, other, nil
}

// freeRun returns the first run of n chunks not in claimed (sorted) at
// or after from, or -1.
func (d *Device) freeRun(claimed []int, n, from int) int {
	start := from
	for _, c := range claimed {
		if c < start {
			continue
		}
		if c-start >= n {
			return start
		}
		start = c + 1
	}
	if d.Chunks-start >= n {
		return start
	}
	return -1
}

// claimRun claims a run of c.count chunks for the segment c (c.first is
// set to its first chunk) and returns a descriptor of its claim, share
// locked: the caller keeps it while it maps the chunks. A device without
// such a run, once the chunks of dead segments are freed, is an error
// wrapping ErrExhausted.
func (d *Device) claimRun(dfd, cfd int, dir string, c *claim, a Access) (int, error) {
	fd, tmp, err := newClaimFile(cfd, dir, a)
	if err != nil {
		return -1, err
	}
	defer unix.Unlinkat(cfd, tmp, 0)
	for reaped := false; ; reaped = true {
		claimed, _, err := listChunks(cfd)
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("notnets: list chunks of pool %s: %w", dir, err)
		}
		for from := 0; ; {
			c.first = d.freeRun(claimed, c.count, from)
			if c.first < 0 {
				break
			}
			taken, err := linkRun(fd, cfd, tmp, c)
			if err == nil {
				return fd, nil
			}
			if !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return -1, fmt.Errorf("notnets: claim chunks of pool %s: %w", dir, err)
			}
			// Claimed meanwhile by another process: look past it.
			i, _ := slices.BinarySearch(claimed, taken)
			claimed = slices.Insert(claimed, i, taken)
			from = taken + 1
		}
		if reaped {
			unix.Close(fd)
			return -1, fmt.Errorf("%w: device %s of pool %s has no %d free contiguous chunks of %d bytes for %s (%d bytes): %d of %d chunks are claimed", ErrExhausted, d.Path, dir, c.count, d.ChunkSize, c.name, c.length, len(claimed), d.Chunks)
		}
		d.reap(dfd, cfd) // chunks of dead segments, then look again
	}
}

// newClaimFile creates a claim under a temporary name in the chunks
// directory cfd, share locked, readable by the pool's users and
// writable by nobody (its creator writes it through this descriptor).
func newClaimFile(cfd int, dir string, a Access) (int, string, error) {
	var r [8]byte
	rand.Read(r[:])
	tmp := ".tmp-" + hex.EncodeToString(r[:])
	mode := a.fileMode() &^ 0o222
	fd, err := unix.Openat(cfd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return -1, "", fmt.Errorf("notnets: create a chunk claim in pool %s: %w", dir, err)
	}
	fail := func(what string, err error) (int, string, error) {
		unix.Close(fd)
		unix.Unlinkat(cfd, tmp, 0)
		return -1, "", fmt.Errorf("notnets: %s a chunk claim in pool %s: %w", what, dir, err)
	}
	if a.shared() {
		if err := unix.Fchown(fd, -1, a.Group); err != nil {
			return fail("give the pool's group to", err)
		}
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fail("set the mode of", err)
	}
	// Shared from the start: it is never visible unlocked while its
	// creator lives (a freer needs the exclusive lock).
	if err := unix.Flock(fd, unix.LOCK_SH); err != nil {
		return fail("lock", err)
	}
	return fd, tmp, nil
}

// linkRun writes the claim c into the file fd (temporary name tmp) and
// links the names of its chunks to it, the first one first. On failure
// it unlinks the names it linked, and returns the chunk it could not
// claim with an error wrapping EEXIST when another segment has it.
func linkRun(fd, cfd int, tmp string, c *claim) (int, error) {
	b := c.encode()
	if n, err := unix.Pwrite(fd, b, 0); err != nil || n != len(b) {
		return c.first, fmt.Errorf("write claim: %d of %d bytes (%v)", n, len(b), err)
	}
	for i := c.first; i < c.first+c.count; i++ {
		if err := unix.Linkat(cfd, tmp, cfd, chunkName(i), 0); err != nil {
			unlinkRun(fd, cfd, c.first, i)
			return i, err
		}
	}
	return -1, nil
}

// unlinkRun unlinks the claim names of chunks [first, end) that are
// links of the claim fd, the first chunk's last (a claim is found by its
// first chunk until it is gone). The caller holds the claim: either it
// made it, or it holds its exclusive lock.
func unlinkRun(fd, cfd, first, end int) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return
	}
	for i := end - 1; i >= first; i-- {
		if sameFile(cfd, chunkName(i), &st) {
			unix.Unlinkat(cfd, chunkName(i), 0)
		}
	}
}

// sameFile reports whether name in the directory dfd is the file st.
func sameFile(dfd int, name string, st *unix.Stat_t) bool {
	var now unix.Stat_t
	return unix.Fstatat(dfd, name, &now, unix.AT_SYMLINK_NOFOLLOW) == nil && now.Dev == st.Dev && now.Ino == st.Ino
}

// heldClaim is the claim of a segment that its opener checked (F18).
type heldClaim struct {
	fd int // the claim, share locked; -1 if it was only checked
	c  *claim
}

// holdClaim checks that the chunks of the descriptor e, read from the
// segment file name owned by uid, are claimed by that very segment
// (F18), and, if lock, holds the claim's shared lock: the chunks then
// stay the segment's until the lock is released.
func (d *Device) holdClaim(cfd int, dir, name string, e *extent, uid uint32, lock bool) (*heldClaim, error) {
	head := chunkName(e.first)
	bad := func(why string, args ...any) error {
		return fmt.Errorf("%w: segment %s: chunk %d: %s", ErrAccess, filepath.Join(dir, name), e.first, fmt.Sprintf(why, args...))
	}
	fd, err := unix.Openat(cfd, head, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, bad("no claim (%v)", err)
	}
	h := &heldClaim{fd: fd}
	fail := func(err error) (*heldClaim, error) { unix.Close(fd); return nil, err }
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != claimSize:
		return fail(bad("claim is not a regular file of %d bytes", claimSize))
	case st.Uid != uid && st.Uid != 0:
		return fail(bad("claimed by uid %d, the segment file is uid %d's", st.Uid, uid))
	case st.Mode&0o022 != 0:
		return fail(bad("claim is writable by others than its owner (mode %04o)", st.Mode&0o777))
	}
	if lock {
		if err := lockShared(fd); err != nil {
			return fail(bad("being freed (%v)", err))
		}
		if !sameFile(cfd, head, &st) { // freed and claimed again before the lock
			return fail(bad("claim replaced while it was locked"))
		}
	}
	b := make([]byte, claimSize)
	if n, err := unix.Pread(fd, b, 0); err != nil || n != claimSize {
		return fail(fmt.Errorf("notnets: read claim of chunk %d: %d of %d bytes (%v)", e.first, n, claimSize, err))
	}
	c, err := d.parseClaim(b)
	if err != nil {
		return fail(bad("%v", err))
	}
	if c.first != e.first || c.count != e.count || c.length != e.length || c.id != e.id || c.name != name {
		return fail(bad("claimed by segment %q (chunks %d+%d, %d bytes), not by this one (chunks %d+%d, %d bytes)", c.name, c.first, c.count, c.length, e.first, e.count, e.length))
	}
	for i := c.first + 1; i < c.first+c.count; i++ {
		if !sameFile(cfd, chunkName(i), &st) {
			return fail(bad("chunk %d of the segment is not claimed by it", i))
		}
	}
	h.c = c
	if !lock {
		unix.Close(fd)
		h.fd = -1
	}
	return h, nil
}

// lockShared takes the shared lock of the claim fd. A process that tries
// to free the claim holds its exclusive lock for a few system calls
// (freeIfDead), so a busy lock is tried again for a moment before it
// counts as a claim being freed.
func lockShared(fd int) error {
	var err error
	for try := 0; try < lockTries; try++ {
		if err = unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		time.Sleep(time.Millisecond)
	}
	return err
}

// lockTries is how many times lockShared tries a busy claim: not a
// blocking flock, so that a member of a group pool that holds a claim's
// exclusive lock cannot stall an opener forever.
const lockTries = 100

// reap frees the chunks of the dead segments of the pool directory dfd,
// whose chunks directory is cfd, and removes claims left under a
// temporary name by creators that died; it returns how many chunks it
// freed.
func (d *Device) reap(dfd, cfd int) int {
	claimed, other, err := listChunks(cfd)
	if err != nil {
		return 0
	}
	freed := 0
	for i := 0; i < len(claimed); i++ {
		n := d.freeIfDead(dfd, cfd, claimed[i])
		freed += n
		for n > 1 && i+1 < len(claimed) && claimed[i+1] < claimed[i]+n {
			i++ // freed with it
		}
	}
	for _, n := range other {
		var st unix.Stat_t
		if strings.HasPrefix(n, ".tmp-") && unix.Fstatat(cfd, n, &st, unix.AT_SYMLINK_NOFOLLOW) == nil &&
			time.Since(time.Unix(st.Mtim.Unix())) > staleUnreadable {
			unix.Unlinkat(cfd, n, 0)
		}
	}
	return freed
}

// freeIfDead frees the chunks of the segment whose claim chunk i is the
// first chunk of, if no process maps it (its exclusive lock can be
// taken) and its descriptor is gone from the pool directory dfd (or the
// name is another segment's now); it returns how many chunks it freed.
func (d *Device) freeIfDead(dfd, cfd, i int) int {
	name := chunkName(i)
	fd, err := unix.Openat(cfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0
	}
	if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) != nil {
		return 0 // mapped by a process: in use
	}
	if !sameFile(cfd, name, &st) {
		return 0 // freed by another process meanwhile
	}
	b := make([]byte, claimSize)
	if n, err := unix.Pread(fd, b, 0); err != nil || n != claimSize {
		return 0
	}
	c, err := d.parseClaim(b)
	if err != nil || c.first != i || d.described(dfd, c) {
		return 0 // not a first chunk, or its segment's file is there
	}
	unlinkRun(fd, cfd, c.first, c.first+c.count)
	return c.count
}

// described reports whether the pool directory dfd has a descriptor of
// the segment c under its name. A name it cannot read keeps the chunks;
// a name that is gone, or that holds anything but c's descriptor (the
// name was reused), frees them.
func (d *Device) described(dfd int, c *claim) bool {
	fd, err := unix.Openat(dfd, c.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return false
	}
	if err != nil {
		return true
	}
	defer unix.Close(fd)
	b := make([]byte, extentSize+1) // one more: a longer file is no descriptor
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		return true
	}
	e, err := d.parseExtent(b[:n], 1, d.Size())
	return err == nil && e.id == c.id && e.first == c.first
}

// ReapDevice frees the chunks of the dead segments of the pool dir on a
// device (their files gone, and no process maps them), as CleanIn does,
// and returns how many it freed; a pool whose segments are files has
// none.
func ReapDevice(dir string, a Access) (int, error) {
	dfd, st, err := openDirStat(dir, a)
	if err != nil {
		return 0, err
	}
	defer unix.Close(dfd)
	d, err := readDeviceAt(dfd, dir, st.Uid)
	if err != nil || d == nil {
		return 0, err
	}
	cfd, err := openChunks(dfd, dir, a)
	if err != nil {
		return 0, err
	}
	defer unix.Close(cfd)
	return d.reap(dfd, cfd), nil
}

// ClaimedChunks returns the chunks of the device of the pool dir that
// are claimed, sorted: by live segments, by segments being made, and by
// dead ones not yet reaped.
func ClaimedChunks(dir string, a Access) ([]int, error) {
	dfd, err := openDir(dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	cfd, err := openChunks(dfd, dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(cfd)
	claimed, _, err := listChunks(cfd)
	return claimed, err
}
