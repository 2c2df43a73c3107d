//go:build linux

package pool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Segment is a file of the pool mapped into this process, shared and
// writable. Its Mem must not be used after Close.
type Segment struct {
	Path string
	Mem  []byte
	// Owner is who created the file, as the kernel says (fstat at Open):
	// its uid and gid, and the device and inode that identify it.
	Owner FileOwner
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
// symbolic link, and maps it.
func CreateIn(dir, name string, size int, a Access) (*Segment, error) {
	path := filepath.Join(dir, name)
	dfd, err := openDir(dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, a.fileMode())
	if err != nil {
		return nil, fmt.Errorf("notnets: create segment %s: %w", path, err)
	}
	defer unix.Close(fd)
	fail := func(what string, err error) (*Segment, error) {
		unix.Unlinkat(dfd, name, 0)
		return nil, fmt.Errorf("notnets: %s segment %s: %w", what, path, err)
	}
	if a.shared() {
		// The umask may have removed the group's bits, and the group must
		// be the pool's even if the directory lost its setgid bit.
		if err := unix.Fchown(fd, -1, a.Group); err != nil {
			return fail("give group to", err)
		}
		if err := unix.Fchmod(fd, a.fileMode()); err != nil {
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
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("map", err)
	}
	return &Segment{Path: path, Mem: mem, Owner: ownerOf(&st)}, nil
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
	path := filepath.Join(dir, name)
	dfd, err := openDir(dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("notnets: open segment %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("notnets: stat segment %s: %w", path, err)
	}
	if err := a.checkFile(path, &st); err != nil {
		return nil, err
	}
	if st.Size < int64(minSize) || st.Size > int64(maxSize) {
		return nil, fmt.Errorf("notnets: segment %s has size %d, want %d to %d bytes", path, st.Size, minSize, maxSize)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("notnets: map segment %s: %w", path, err)
	}
	return &Segment{Path: path, Mem: mem, Owner: ownerOf(&st)}, nil
}

// Unlink removes the segment's file from the pool. Mappings stay valid.
func (s *Segment) Unlink() error {
	if s.Path == "" {
		return nil // a segment without a name (a memfd)
	}
	if err := os.Remove(s.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("notnets: remove segment %s: %w", s.Path, err)
	}
	return nil
}

// Close unmaps the segment. It does not remove the file.
func (s *Segment) Close() error {
	if s.Mem == nil {
		return nil
	}
	err := unix.Munmap(s.Mem)
	s.Mem = nil
	return err
}
