//go:build linux

package pool

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/coherence"
)

// Segment is a file of the pool mapped into this process, shared and
// writable. Its Mem must not be used after Close.
//
// A Segment made by CreateIn, CreateSparseIn, CreateConn, OpenIn or
// NewSegmentFD keeps a descriptor of its file until Close, with which
// Reserve allocates ranges of a sparse segment before they are written.
//
// In a pool on a device (device.go) the file is a descriptor of the
// segment's chunks, Mem maps the device there, Owner is the descriptor
// file's, and the Segment holds the chunks' claim until Close.
type Segment struct {
	Path string
	Mem  []byte
	// Owner is who created the file, as the kernel says (fstat at Open):
	// its uid and gid, and the device and inode that identify it.
	Owner FileOwner

	dir, name string // where Unlink removes the file; empty for a memfd
	access    Access // how the pool directory is checked before Unlink
	res       *reserver
	dev       *deviceSeg // in a pool on a device: the mapped chunks (device_segment.go)

	// Coherence (segment_coherence.go): coh is nil on coherent memory;
	// when simulated, Mem is sim's private copy and shared the mapping.
	coh    coherence.Coherence
	sim    *coherence.Sim
	shared []byte
}

// FileOwner is the owner of a segment file and its identity.
type FileOwner struct {
	UID, GID uint32
	Dev, Ino uint64
}

// Create makes a new segment file of size bytes at dir/name in a pool of
// one user (mode 0600); see CreateIn.
func Create(dir, name string, size int) (*Segment, error) {
	return CreateIn(dir, name, size, OwnerOnly)
}

// CreateIn makes a new segment file of size bytes at dir/name, mode 0600
// (0660 in a shared pool), failing if the name exists (O_EXCL) or is a
// symbolic link, allocates all its blocks (see Allocate) and maps it.
// Every byte of it can then be written without a fault, whatever happens
// to the pool's free space later. A pool without room for it is an error
// wrapping ErrExhausted, and leaves no file behind.
//
// Use it for listener segments and other small segments; a connection
// segment, whose heaps must stay sparse until used, is made by
// CreateConn.
func CreateIn(dir, name string, size int, a Access) (*Segment, error) {
	return createIn(dir, name, size, a, a.fileMode(), Range{0, size})
}

// CreateListenerIn makes a listener segment as CreateIn does, but only
// its owner may write it (mode 0640 in a shared pool, 0600 in a private
// one); OpenPeersWrite opens it to the pool's users if they must write its
// slots.
func CreateListenerIn(dir, name string, size int, a Access) (*Segment, error) {
	return createIn(dir, name, size, a, a.fileMode()&^0o020, Range{0, size})
}

// CreateSparseIn makes a new segment file as CreateIn does, but allocates
// only the ranges alloc (each widened to whole pages) before mapping it:
// the rest of the file is a hole that costs nothing until it is
// reserved. The creator writes its header only within alloc, and
// whoever writes elsewhere must Reserve the range first (this Segment,
// or the peer's own Segment of the same file).
func CreateSparseIn(dir, name string, size int, a Access, alloc ...Range) (*Segment, error) {
	return createIn(dir, name, size, a, a.fileMode(), alloc...)
}

func createIn(dir, name string, size int, a Access, mode uint32, alloc ...Range) (*Segment, error) {
	path := filepath.Join(dir, name)
	dfd, dst, err := openDirStat(dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	if d, err := readDeviceAt(dfd, dir, dst.Uid); err != nil || d != nil {
		if err != nil {
			return nil, err
		}
		// Zeroes written over another segment's bytes must reach the
		// memory before anyone reads the new segment (PROTOCOL.md 18.3).
		if m, err := readModeAt(dfd, dir, dst.Uid); err != nil {
			return nil, err
		} else if m.Coherence == CoherenceSoftware {
			d.writeBack = coherence.Software{}.Flush
		}
		return d.create(dfd, dir, name, size, a, mode) // all of it allocated
	}
	fd, err := unix.Openat(dfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return nil, fmt.Errorf("notnets: create segment %s: %w", path, err)
	}
	fail := func(what string, err error) (*Segment, error) {
		unix.Unlinkat(dfd, name, 0)
		unix.Close(fd)
		return nil, fmt.Errorf("notnets: %s segment %s: %w", what, path, err)
	}
	if a.shared() {
		// The umask may have removed the group's bits, and the group must
		// be the pool's even if the directory lost its setgid bit.
		if err := unix.Fchown(fd, -1, a.Group); err != nil {
			return fail("give group to", err)
		}
		if err := unix.Fchmod(fd, mode); err != nil {
			return fail("set the mode of", err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("stat", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fail(fmt.Sprintf("size to %d bytes", size), err)
	}
	// Before mapping: nothing may touch a page whose block is not there.
	if err := Allocate(fd, alloc...); err != nil {
		return fail("allocate", err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("map", err)
	}
	seg := &Segment{Path: path, Mem: mem, Owner: ownerOf(&st), dir: dir, name: name, access: a,
		res: newReserver(fd, size, "segment "+path)}
	for _, r := range alloc {
		if r.Len > 0 {
			start, n := pageRound(r.Off, r.Len, size)
			seg.res.mark(start/PageSize, (start+n)/PageSize)
		}
	}
	return seg, nil
}

// CreateConn makes a new connection segment file for spec at dir/name as
// CreateSparseIn does, with the blocks of everything but the heaps
// (spec.Fixed: the header and control pages, the rings and the return
// queues) allocated; the heaps stay holes until their senders Reserve
// the blocks they write. It does not write the header (InitConnSpec).
func CreateConn(dir, name string, spec ConnSpec, a Access) (*Segment, error) {
	return CreateSparseIn(dir, name, spec.Size(), a, spec.Fixed()...)
}

func ownerOf(st *unix.Stat_t) FileOwner {
	return FileOwner{UID: st.Uid, GID: st.Gid, Dev: st.Dev, Ino: st.Ino}
}

// Open maps the existing segment at dir/name of a pool of one user; see
// OpenIn.
func Open(dir, name string, minSize, maxSize int) (*Segment, error) {
	return OpenIn(dir, name, minSize, maxSize, OwnerOnly)
}

// OpenIn maps the existing segment at dir/name. It refuses symbolic links,
// non-regular files, files smaller than minSize or larger than maxSize,
// and files the pool's access rules say nobody of the pool made.
func OpenIn(dir, name string, minSize, maxSize int, a Access) (*Segment, error) {
	return openIn(dir, name, minSize, maxSize, a, true)
}

// OpenReadOnlyIn maps the existing segment at dir/name for reading only,
// as OpenIn checks it: for a listener whose file only its server may
// write (ListenerMode).
func OpenReadOnlyIn(dir, name string, minSize, maxSize int, a Access) (*Segment, error) {
	return openIn(dir, name, minSize, maxSize, a, false)
}

func openIn(dir, name string, minSize, maxSize int, a Access, write bool) (*Segment, error) {
	flags, prot := unix.O_RDWR, unix.PROT_READ|unix.PROT_WRITE
	if !write {
		flags, prot = unix.O_RDONLY, unix.PROT_READ
	}
	path := filepath.Join(dir, name)
	dfd, dst, err := openDirStat(dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	d, err := readDeviceAt(dfd, dir, dst.Uid)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Openat(dfd, name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("notnets: open segment %s: %w", path, err)
	}
	fail := func(err error) (*Segment, error) {
		unix.Close(fd)
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(fmt.Errorf("notnets: stat segment %s: %w", path, err))
	}
	if err := a.checkFile(path, &st); err != nil {
		return fail(err)
	}
	if d != nil { // the file is a descriptor of the segment's chunks
		seg, err := d.openSeg(dfd, dir, name, fd, &st, minSize, maxSize, a, write)
		if err != nil {
			return fail(err)
		}
		return seg, nil
	}
	if st.Size < int64(minSize) || st.Size > int64(maxSize) {
		return fail(fmt.Errorf("notnets: segment %s has size %d, want %d to %d bytes", path, st.Size, minSize, maxSize))
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("notnets: map segment %s: %w", path, err))
	}
	return &Segment{Path: path, Mem: mem, Owner: ownerOf(&st), dir: dir, name: name, access: a,
		res: newReserver(fd, len(mem), "segment "+path)}, nil
}

// OpenPeersWrite lets the pool's other users write the segment's file
// (mode 0660 in a shared pool): for a listener whose clients use its
// slots. A listener is created writable by its owner only (0640 in a
// shared pool), so that no other member can truncate the file under the
// server, which writes its load words and heartbeat there, nor its
// clients' reads (PROTOCOL.md 3.2).
func (s *Segment) OpenPeersWrite() error {
	if !s.access.shared() {
		return nil
	}
	if err := unix.Fchmod(s.FD(), s.access.fileMode()); err != nil {
		return fmt.Errorf("notnets: let the pool's users write %s: %w", s.Path, err)
	}
	return nil
}

// Unlink removes the segment's file from the pool. Mappings stay valid.
//
// It removes the file as the pool's other removals do (see CleanIn):
// relative to a descriptor of the pool directory, opened without
// following a symbolic link and checked as Listen and Dial check it
// (with the Access the segment was created or opened with), and only if
// the name still names this very file (device and inode): a file put in
// its place since is left alone. A file already gone is not an error.
func (s *Segment) Unlink() error {
	if s.Path == "" {
		return nil // a segment without a name (a memfd)
	}
	dir, name, a := s.dir, s.name, s.access
	if name == "" { // a struct literal with only a Path
		dir, name, a = filepath.Dir(s.Path), filepath.Base(s.Path), OwnerOnly
	}
	dfd, err := openDir(dir, a)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("notnets: remove segment %s: %w", s.Path, err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("notnets: remove segment %s: %w", s.Path, err)
	}
	if s.Owner.Ino != 0 && (st.Dev != s.Owner.Dev || st.Ino != s.Owner.Ino) {
		return nil // not our file any more: ours is gone
	}
	if err := unix.Unlinkat(dfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("notnets: remove segment %s: %w", s.Path, err)
	}
	if s.dev != nil && s.dev.claim < 0 { // closed before: nothing holds its chunks here
		s.dev.free(dir, a)
	}
	return nil
}

// Close unmaps the segment and closes its descriptor. It does not remove
// the file.
func (s *Segment) Close() error {
	var err error
	s.closeCoherence()
	if s.dev != nil {
		err = s.dev.close(s.dir, s.access) // frees the chunks if the file is gone
		s.Mem = nil
	} else if s.Mem != nil {
		err = unix.Munmap(s.Mem)
		s.Mem = nil
	}
	if s.res != nil {
		if cerr := s.res.close(); err == nil {
			err = cerr
		}
	}
	return err
}
