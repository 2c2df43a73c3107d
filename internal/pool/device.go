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
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Pools on a device (PROTOCOL.md 3.8). A pool may keep the bytes of its
// segments in a memory device with no file system on it: a devdax
// character device (/dev/daxX.Y), which is how CXL memory shared by
// several hosts appears to each of them. The pool directory stays the
// namespace, visible to every process of the pool (a tmpfs of one host,
// or a file system the hosts share), as famfs's is; each segment file in
// it then holds a descriptor, an extent of the device, instead of the
// bytes, and opening the segment maps the device at that extent.
//
// famfs does the same: a famfs file is a metadata entry naming extents
// of a dax device, its metadata is a log on the device that one master
// host appends to, and every host replays the log into a file system of
// its own. Here the metadata is the pool directory, and its allocator
// has no master: see device_claim.go.
//
// A pool on a device says so with a marker, the file device, made with
// the pool as the hosts marker is (mode.go): a page with a segment
// header of kind KindDevice, the device's path, its chunk size and
// number of chunks, and a random id that every descriptor repeats. The
// marker is never written after it is in place and never removed, so
// every process of the pool agrees on the device for the pool's life.
//
// A DAX file system needs none of this: a pool there is a directory of
// files like any other, and its files' pages are the device's.

// DeviceFile is the name of the marker of a pool on a device.
const DeviceFile = "device"

// KindDevice is the header kind of a pool's device marker.
const KindDevice = 5

// DefaultChunkSize is the unit in which a pool on a device allocates it:
// 2 MiB, the alignment devdax requires of a mapping by default. A device
// created with a larger alignment needs a chunk size at least as large.
const DefaultChunkSize = 2 << 20

// MaxChunkSize bounds the chunk size of a device (1 GiB, devdax's
// largest alignment).
const MaxChunkSize = 1 << 30

// MaxDevicePath bounds the length of a device's path in the marker.
const MaxDevicePath = 512

// maxDeviceBytes bounds chunk size × chunks (2^50 bytes, a petabyte):
// every offset computed from them fits an int with room to spare.
const maxDeviceBytes = 1 << 50

// The device marker's fields after the segment header (PROTOCOL.md 3.8).
const (
	offDevChunkSize = 64 // uint64
	offDevChunks    = 72 // uint64
	offDevID        = 80 // [16]byte
	offDevPathLen   = 96 // uint16
	offDevPath      = 98 // the path, MaxDevicePath bytes at most
)

// Device is the device of a pool on a device, as its marker says.
type Device struct {
	// Path is the device's path, the same on every host: a devdax
	// character device, or a regular file that stands in for one.
	Path string
	// ChunkSize is the unit of allocation: a power of two from PageSize
	// to MaxChunkSize. Chunks is how many chunks of the device the pool
	// uses, from offset 0.
	ChunkSize, Chunks int
	// ID is drawn when the pool is made; every descriptor repeats it.
	ID [16]byte
	// Creator is the host identity of the process that made the pool
	// (informational).
	Creator Host
	// writeBack, if set, writes back the zeroes a new segment's creator
	// stores over its chunks (a pool with coherence by flushes, 18.3).
	writeBack func([]byte)
	// readBack, if set, drops this host's cached copy of a range of the
	// device before pread reads it (a pool with coherence by flushes,
	// 18.3; readback.go).
	readBack func(fd int, off int64, n int)
}

// Size returns the bytes of the device that the pool uses.
func (d *Device) Size() int { return d.ChunkSize * d.Chunks }

// DeviceConfig is what PrepareDevice makes a pool on.
type DeviceConfig struct {
	// Path names the device: /dev/daxX.Y, or a regular file standing in
	// for it. It is made absolute.
	Path string
	// ChunkSize is the allocation unit, DefaultChunkSize if 0.
	ChunkSize int
}

// PrepareDevice makes dir a pool whose segments live in the device
// c.Path, as Prepare makes a pool (mode, group, checks): a directory that
// does not exist is made with its marker and chunks directory inside,
// under a temporary name renamed into place, so that no process ever
// sees it without them; an existing pool on the same device is taken as
// it is; an existing directory that is not on a device is made one only
// if no process uses it (no listener, connection, socket or registry in
// it) and this user owns it (or is root). The pool uses as many whole
// chunks as the device holds.
func PrepareDevice(dir string, a Access, c DeviceConfig) error {
	if dir == "" {
		return errors.New("notnets: empty pool directory")
	}
	dir = filepath.Clean(dir) // "link/" would follow the link
	d, err := newDevice(c)
	if err != nil {
		return err
	}
	err = createDevicePool(dir, a, d)
	switch {
	case err == nil:
		return CheckDir(dir, a)
	case !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOTEMPTY):
		return err
	}
	stickyOwn(dir, a)
	return markDevice(dir, a, d)
}

// newDevice checks the device c names and returns the Device a new pool
// on it would have.
func newDevice(c DeviceConfig) (*Device, error) {
	if c.ChunkSize == 0 {
		c.ChunkSize = DefaultChunkSize
	}
	path, err := filepath.Abs(c.Path)
	if err != nil || c.Path == "" {
		return nil, fmt.Errorf("notnets: device path %q: %v", c.Path, err)
	}
	d := &Device{Path: path, ChunkSize: c.ChunkSize, Creator: LocalHost()}
	if err := d.checkPath(); err != nil {
		return nil, err
	}
	if err := checkChunkSize(c.ChunkSize); err != nil {
		return nil, fmt.Errorf("notnets: device %s: %w", path, err)
	}
	fd, size, err := d.openFile(false)
	if err != nil {
		return nil, err
	}
	unix.Close(fd)
	d.Chunks = int(min(size, maxDeviceBytes) / int64(d.ChunkSize))
	if d.Chunks == 0 {
		return nil, fmt.Errorf("notnets: device %s has %d bytes, less than one chunk of %d", path, size, d.ChunkSize)
	}
	rand.Read(d.ID[:])
	return d, nil
}

// checkChunkSize checks a chunk size (F16): a power of two from PageSize
// to MaxChunkSize.
func checkChunkSize(n int) error {
	if n < PageSize || n > MaxChunkSize || n&(n-1) != 0 {
		return fmt.Errorf("chunk size %d is not a power of two from %d to %d", n, PageSize, MaxChunkSize)
	}
	return nil
}

// checkPath checks the device's path (F16): absolute, clean, 1 to
// MaxDevicePath bytes, without NUL.
func (d *Device) checkPath() error {
	p := d.Path
	if len(p) == 0 || len(p) > MaxDevicePath || !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("notnets: device path %q: must be a clean absolute path of 1 to %d bytes", p, MaxDevicePath)
	}
	return nil
}

// openFile opens the device, for writing if write, and returns its
// descriptor and its size in bytes: a devdax character device, whose
// size its sysfs directory tells, or a regular file standing in for one
// (F16). Anything else is refused.
func (d *Device) openFile(write bool) (int, int64, error) {
	flags := unix.O_RDONLY
	if write {
		flags = unix.O_RDWR
	}
	// O_NONBLOCK: a FIFO put in the device's place must not block.
	fd, err := unix.Open(d.Path, flags|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("notnets: open device %s: %w", d.Path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("notnets: stat device %s: %w", d.Path, err)
	}
	var size int64
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		size = st.Size
	case unix.S_IFCHR:
		size, err = charDeviceSize(st.Rdev)
	default:
		err = fmt.Errorf("%w: not a character device nor a regular file", ErrAccess)
	}
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("notnets: device %s: %w", d.Path, err)
	}
	return fd, size, nil
}

// charDeviceSize reads the size of the character device rdev from sysfs
// (a devdax device's directory has a size attribute, in bytes): lseek to
// its end does not work on devdax.
func charDeviceSize(rdev uint64) (int64, error) {
	p := fmt.Sprintf("/sys/dev/char/%d:%d/size", unix.Major(rdev), unix.Minor(rdev))
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("size of the character device: %w (not a devdax device?)", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size of the character device: %s says %q", p, b)
	}
	return n, nil
}

// open opens the device for a mapping of the pool's chunks, and checks
// that it still holds them all (F16): a device that shrank would fault
// (SIGBUS) where the pool's segments lie beyond its end.
func (d *Device) open(write bool) (int, error) {
	fd, size, err := d.openFile(write)
	if err != nil {
		return -1, err
	}
	if size < int64(d.Size()) {
		unix.Close(fd)
		return -1, fmt.Errorf("%w: device %s has %d bytes, the pool uses %d (%d chunks of %d)", ErrAccess, d.Path, size, d.Size(), d.Chunks, d.ChunkSize)
	}
	return fd, nil
}

// marker returns the device marker's page.
func (d *Device) marker() []byte {
	buf := make([]byte, PageSize)
	writeHeader(buf, KindDevice, 0, 0, 0)
	binary.LittleEndian.PutUint64(buf[offDevChunkSize:], uint64(d.ChunkSize))
	binary.LittleEndian.PutUint64(buf[offDevChunks:], uint64(d.Chunks))
	copy(buf[offDevID:], d.ID[:])
	binary.LittleEndian.PutUint16(buf[offDevPathLen:], uint16(len(d.Path)))
	copy(buf[offDevPath:], d.Path)
	writeHost(buf, d.Creator)
	return buf
}

// parseDevice reads a device marker's page (F16): every field is
// checked, and its products cannot overflow.
func parseDevice(buf []byte) (*Device, error) {
	a, _, _, err := checkHeader(buf, KindDevice)
	if err != nil {
		return nil, err
	}
	if a != 0 {
		return nil, fmt.Errorf("flags %#x; this build knows none", a)
	}
	chunk := binary.LittleEndian.Uint64(buf[offDevChunkSize:])
	chunks := binary.LittleEndian.Uint64(buf[offDevChunks:])
	if chunk > MaxChunkSize || checkChunkSize(int(chunk)) != nil {
		return nil, fmt.Errorf("chunk size %d is not a power of two from %d to %d", chunk, PageSize, MaxChunkSize)
	}
	if chunks == 0 || chunks > maxDeviceBytes/chunk {
		return nil, fmt.Errorf("%d chunks of %d bytes: want 1 to %d bytes", chunks, chunk, maxDeviceBytes)
	}
	d := &Device{ChunkSize: int(chunk), Chunks: int(chunks), Creator: readHost(buf)}
	copy(d.ID[:], buf[offDevID:])
	if d.ID == ([16]byte{}) {
		return nil, errors.New("device id is zero")
	}
	n := int(binary.LittleEndian.Uint16(buf[offDevPathLen:]))
	if n > MaxDevicePath {
		return nil, fmt.Errorf("device path of %d bytes, at most %d", n, MaxDevicePath)
	}
	d.Path = string(buf[offDevPath : offDevPath+n])
	if err := d.checkPath(); err != nil {
		return nil, err
	}
	return d, nil
}

// ReadDevice reads the device of the pool dir, checked as CheckDir
// checks it (rules F7 and F16): nil for a pool whose segments are files.
// It opens and maps nothing but the marker.
func ReadDevice(dir string, a Access) (*Device, error) {
	fd, st, err := openDirStat(dir, a)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readDeviceAt(fd, dir, st.Uid)
}

// readDeviceAt reads the device marker of the pool directory dfd, owned
// by dirUID (F16): no marker, nil; a marker of anyone but the
// directory's owner or root is ignored (a member of a group pool cannot
// move the pool onto a device), as F13 ignores such a hosts marker; any
// other marker that fails the checks refuses the pool (ErrAccess).
func readDeviceAt(dfd int, dir string, dirUID uint32) (*Device, error) {
	path := filepath.Join(dir, DeviceFile)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, DeviceFile, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("notnets: pool device marker %s: %w", path, err)
	}
	if st.Uid != dirUID && st.Uid != 0 {
		return nil, nil
	}
	buf, err := readMarkerFile(dfd, DeviceFile, path, dirUID)
	if err != nil {
		return nil, err
	}
	d, err := parseDevice(buf)
	if err != nil {
		return nil, fmt.Errorf("%w: pool device marker %s: %v", ErrAccess, path, err)
	}
	return d, nil
}

// readMarkerFile reads the page of the marker name of the directory dfd:
// a regular file of the directory's owner (or root), writable by nobody
// else, of exactly one page (F13, F16).
func readMarkerFile(dfd int, name, path string, dirUID uint32) ([]byte, error) {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: pool marker %s cannot be opened as a regular file: %w", ErrAccess, path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("notnets: pool marker %s: %w", path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("%w: pool marker %s is not a regular file", ErrAccess, path)
	case st.Uid != dirUID && st.Uid != 0:
		return nil, fmt.Errorf("%w: pool marker %s was replaced while it was read", ErrAccess, path)
	case st.Mode&0o022 != 0:
		return nil, fmt.Errorf("%w: pool marker %s is writable by others than its owner (mode %04o)", ErrAccess, path, st.Mode&0o777)
	case st.Size != PageSize:
		return nil, fmt.Errorf("%w: pool marker %s has %d bytes, want %d", ErrAccess, path, st.Size, PageSize)
	}
	buf := make([]byte, PageSize)
	if n, err := unix.Pread(fd, buf, 0); err != nil || n != PageSize {
		return nil, fmt.Errorf("notnets: read pool marker %s: %d of %d bytes (%v)", path, n, PageSize, err)
	}
	return buf, nil
}

// createDevicePool makes the pool directory dir on the device d: under a
// temporary name next to it, with the chunks directory and the marker
// inside, renamed to dir only if dir does not exist. An error wrapping
// EEXIST says it exists.
func createDevicePool(dir string, a Access, d *Device) error {
	return createPoolDir(dir, a, func(dfd int, _ string) error { return writeDeviceMarker(dfd, dir, a, d) })
}

// markDevice makes the existing pool directory dir a pool on the device
// d, if nobody uses it yet; an existing pool on the same device path is
// taken as it is.
func markDevice(dir string, a Access, d *Device) error {
	f, err := openDirList(dir, a)
	if err != nil {
		return err
	}
	defer f.Close()
	dfd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return fmt.Errorf("notnets: pool directory %s: %w", dir, err)
	}
	have, err := readDeviceAt(dfd, dir, st.Uid)
	switch {
	case err != nil:
		return err
	case have != nil && have.Path == d.Path:
		return nil
	case have != nil:
		return fmt.Errorf("%w: pool %s is on device %s already, not %s", ErrPoolInUse, dir, have.Path, d.Path)
	}
	if euid := uint32(os.Geteuid()); euid != st.Uid && euid != 0 {
		return fmt.Errorf("%w: pool %s belongs to uid %d: only its owner or root can put it on a device (a marker of anyone else is ignored)", ErrAccess, dir, st.Uid)
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("notnets: list pool directory %s: %w", dir, err)
	}
	for _, n := range names {
		if strings.HasSuffix(n, ListenerSuffix) || strings.HasPrefix(n, ConnPrefix) || strings.HasSuffix(n, SockSuffix) || n == RegistryFile {
			return fmt.Errorf("%w: %s has %s; a pool is put on a device when it is made (notnets pool init -device): use a new directory, or stop its processes and remove it first", ErrPoolInUse, dir, n)
		}
	}
	if err := writeDeviceMarker(dfd, dir, a, d); err != nil {
		return err
	}
	// Another process may have linked a marker first: judge what is there.
	if have, err := readDeviceAt(dfd, dir, st.Uid); err != nil || have == nil || have.Path != d.Path {
		return fmt.Errorf("notnets: put pool %s on device %s: the marker reads back as %+v, %v", dir, d.Path, have, err)
	}
	return nil
}

// writeDeviceMarker makes the chunks directory of the pool directory dfd
// and then its device marker: a whole file under a temporary name first,
// linked to DeviceFile (which fails, harmlessly, if a marker is there
// already), so that no reader ever sees part of it, nor a marker without
// its chunks directory.
func writeDeviceMarker(dfd int, dir string, a Access, d *Device) error {
	if err := makeChunksDir(dfd, dir, a); err != nil {
		return err
	}
	var r [8]byte
	rand.Read(r[:])
	tmp := ".device-" + hex.EncodeToString(r[:])
	mode := a.fileMode() &^ 0o020 // readable by the pool's users, writable by its owner
	fd, err := unix.Openat(dfd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("notnets: create the device marker of pool %s: %w", dir, err)
	}
	defer unix.Unlinkat(dfd, tmp, 0)
	defer unix.Close(fd)
	if a.shared() {
		if err := unix.Fchown(fd, -1, a.Group); err != nil {
			return fmt.Errorf("notnets: give the device marker of pool %s to group %d: %w", dir, a.Group, err)
		}
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("notnets: set the mode of the device marker of pool %s: %w", dir, err)
	}
	buf := d.marker()
	if n, err := unix.Pwrite(fd, buf, 0); err != nil || n != len(buf) {
		return fmt.Errorf("notnets: write the device marker of pool %s: %d of %d bytes (%v)", dir, n, len(buf), err)
	}
	if err := unix.Linkat(dfd, tmp, dfd, DeviceFile, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("notnets: put the device marker of pool %s in place: %w", dir, err)
	}
	return nil
}
