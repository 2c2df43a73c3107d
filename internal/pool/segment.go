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
}

// Create makes a new segment file of size bytes at dir/name with mode 0600,
// failing if the name exists (O_EXCL) or is a symbolic link, and maps it.
func Create(dir, name string, size int) (*Segment, error) {
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("notnets: create segment %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Unlink(path)
		return nil, fmt.Errorf("notnets: size segment %s to %d bytes: %w", path, size, err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Unlink(path)
		return nil, fmt.Errorf("notnets: map segment %s: %w", path, err)
	}
	return &Segment{Path: path, Mem: mem}, nil
}

// Open maps the existing segment at dir/name. It refuses symbolic links,
// non-regular files and files smaller than minSize or larger than maxSize.
func Open(dir, name string, minSize, maxSize int) (*Segment, error) {
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("notnets: open segment %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("notnets: stat segment %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("notnets: segment %s is not a regular file", path)
	}
	if st.Size < int64(minSize) || st.Size > int64(maxSize) {
		return nil, fmt.Errorf("notnets: segment %s has size %d, want %d to %d bytes", path, st.Size, minSize, maxSize)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("notnets: map segment %s: %w", path, err)
	}
	return &Segment{Path: path, Mem: mem}, nil
}

// Unlink removes the segment's file from the pool. Mappings stay valid.
func (s *Segment) Unlink() error {
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
