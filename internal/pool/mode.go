//go:build linux

package pool

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Cross-host pools (PROTOCOL.md 3.7). A pool whose processes may run on
// different hosts (a DAX or CXL file system mapped by several machines)
// says so itself, in a marker file, hosts, written when the pool is made:
// every process that opens the pool reads it and then treats every peer
// as remote, whatever its own options say. A mode that each process had
// to be told (the option WithPollOnly repeated on Listen, NewServer and
// Dial, before) fails badly when one of them is not: a process that
// believes its peers share its host looks their pids up in its own /proc
// and closes live connections. The marker cannot disagree with itself.
//
// The marker is a segment of kind KindHosts, one page: its header (param
// A the pool's flags, PoolCrossHost) and the host identity of the
// process that made it. It is made atomically with the pool (a new pool
// directory is made under a temporary name with its marker inside, then
// renamed into place) or, for an existing directory that nobody uses
// yet, linked into place whole; nobody writes it afterwards, and it is
// never stale.

// HostsFile is the name of a cross-host pool's marker.
const HostsFile = "hosts"

// KindHosts is the header kind of a pool's marker.
const KindHosts = 4

// Pool flags, in the marker's param A. PoolCrossHost says that the pool
// is shared across hosts. With it, at most one of PoolFlushes and
// PoolSimulated says how its memory is kept coherent (PROTOCOL.md 18):
// PoolFlushes, by the processor's write-back and invalidate instructions
// (memory that hardware does not keep coherent between hosts);
// PoolSimulated, by the simulator of such memory (package coherence: each
// process works on a private copy), for tests and benchmarks on one
// machine. Other bits and combinations are refused (F13), since a mode
// this process does not know is one it cannot follow.
const (
	PoolCrossHost = 1
	PoolFlushes   = 2
	PoolSimulated = 4
)

// Coherence is how a pool's memory is kept coherent between its
// processes.
type Coherence int

// Coherence modes of a pool.
const (
	// CoherenceHardware: the hardware does (one host, or hosts sharing
	// CXL memory with coherence); nothing is flushed.
	CoherenceHardware Coherence = iota
	// CoherenceSoftware: every writer writes back the lines it wrote,
	// every reader invalidates the lines it reads (PoolFlushes).
	CoherenceSoftware
	// CoherenceSimulated: as CoherenceSoftware, over the simulator
	// (PoolSimulated).
	CoherenceSimulated
)

// String names the mode as notnets pool init -coherence takes it.
func (c Coherence) String() string {
	switch c {
	case CoherenceHardware:
		return "hardware"
	case CoherenceSoftware:
		return "software"
	case CoherenceSimulated:
		return "simulated"
	}
	return fmt.Sprintf("Coherence(%d)", int(c))
}

// ParseCoherence parses a mode's name (String).
func ParseCoherence(s string) (Coherence, error) {
	for _, c := range []Coherence{CoherenceHardware, CoherenceSoftware, CoherenceSimulated} {
		if s == c.String() {
			return c, nil
		}
	}
	return 0, fmt.Errorf("notnets: coherence %q is not hardware, software or simulated", s)
}

// flags returns the marker flags of a cross-host pool with coherence c.
func (c Coherence) flags() uint32 {
	switch c {
	case CoherenceSoftware:
		return PoolCrossHost | PoolFlushes
	case CoherenceSimulated:
		return PoolCrossHost | PoolSimulated
	}
	return PoolCrossHost
}

// Mode is what a pool says of itself.
type Mode struct {
	// CrossHost: the pool is shared across hosts; every process of it
	// treats its peers as remote (no futex doorbell, no Unix socket, no
	// pid, liveness by heartbeat alone).
	CrossHost bool
	// Coherence is how the pool's memory is kept coherent (only a
	// cross-host pool's may be other than CoherenceHardware).
	Coherence Coherence
	// Creator is the host identity of the process that marked the pool
	// (informational).
	Creator Host
	// Ignored says why a hosts file in the pool does not count, if one
	// does not: it is not the pool owner's (F13), so a member of a group
	// pool cannot change the pool's mode for the others.
	Ignored string
	// Device is the device that holds the pool's segments (device.go,
	// F16), nil when they are files.
	Device *Device
}

// ReadMode reads the mode of the pool dir, checked as CheckDir checks it
// (rule F7), from its marker (rule F13): no marker, a pool of one host; a
// valid marker of the pool directory's owner (or root), a cross-host
// pool; a marker that is not the owner's is ignored (Mode.Ignored); any
// other hosts file refuses the pool, with an error wrapping ErrAccess. It
// also reads the pool's device marker (F16, Mode.Device). It maps
// nothing.
func ReadMode(dir string, a Access) (Mode, error) {
	fd, st, err := openDirStat(dir, a)
	if err != nil {
		return Mode{}, err
	}
	defer unix.Close(fd)
	m, err := readModeAt(fd, dir, st.Uid)
	if err == nil {
		m.Device, err = readDeviceAt(fd, dir, st.Uid)
	}
	return m, err
}

// readModeAt reads the marker of the pool directory dfd, owned by dirUID
// (PROTOCOL.md F13).
func readModeAt(dfd int, dir string, dirUID uint32) (Mode, error) {
	path := filepath.Join(dir, HostsFile)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, HostsFile, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Mode{}, nil
		}
		return Mode{}, fmt.Errorf("notnets: pool marker %s: %w", path, err)
	}
	if st.Uid != dirUID && st.Uid != 0 {
		return Mode{Ignored: fmt.Sprintf("owned by uid %d, not by the pool's owner (uid %d) or root", st.Uid, dirUID)}, nil
	}
	fd, err := unix.Openat(dfd, HostsFile, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return Mode{}, fmt.Errorf("%w: pool marker %s cannot be opened as a regular file: %w", ErrAccess, path, err)
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return Mode{}, fmt.Errorf("notnets: pool marker %s: %w", path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return Mode{}, fmt.Errorf("%w: pool marker %s is not a regular file", ErrAccess, path)
	case st.Uid != dirUID && st.Uid != 0:
		return Mode{}, fmt.Errorf("%w: pool marker %s was replaced while it was read", ErrAccess, path)
	case st.Mode&0o022 != 0:
		return Mode{}, fmt.Errorf("%w: pool marker %s is writable by others than its owner (mode %04o)", ErrAccess, path, st.Mode&0o777)
	case st.Size != PageSize:
		return Mode{}, fmt.Errorf("%w: pool marker %s has %d bytes, want %d", ErrAccess, path, st.Size, PageSize)
	}
	buf := make([]byte, PageSize)
	if n, err := unix.Pread(fd, buf, 0); err != nil || n != PageSize {
		return Mode{}, fmt.Errorf("notnets: read pool marker %s: %d of %d bytes (%v)", path, n, PageSize, err)
	}
	flags, _, _, err := checkHeader(buf, KindHosts)
	if err != nil {
		return Mode{}, fmt.Errorf("%w: pool marker %s: %v", ErrAccess, path, err)
	}
	for _, c := range []Coherence{CoherenceHardware, CoherenceSoftware, CoherenceSimulated} {
		if flags == c.flags() {
			return Mode{CrossHost: true, Coherence: c, Creator: readHost(buf)}, nil
		}
	}
	return Mode{}, fmt.Errorf("%w: pool marker %s has flags %#x; this build knows %#x (cross-host) with at most one of %#x (flushes) and %#x (simulated)", ErrAccess, path, flags, PoolCrossHost, PoolFlushes, PoolSimulated)
}

// ErrPoolInUse is wrapped by the error of PrepareCrossHost for a pool
// that exists, is not cross-host, and has files of its users: marking it
// now would change the mode under processes that already run in it.
var ErrPoolInUse = errors.New("notnets: the pool is in use as a pool of one host")

// PrepareCrossHost makes dir a cross-host pool, as Prepare makes a pool
// (mode, group, checks): a directory that does not exist is made with
// its marker inside, under a temporary name renamed into place, so that
// no process ever sees it unmarked; an existing cross-host pool is taken
// as it is; an existing directory without a marker is marked if nobody
// uses it (no listener, connection or socket file in it; a registry
// carries nothing and may be there) and this user owns it (or is root),
// else the error says why (ErrPoolInUse, ErrAccess). The marker is
// linked into place whole, so a reader never sees part of it.
func PrepareCrossHost(dir string, a Access) error {
	return PrepareCoherence(dir, a, anyCoherence)
}

// anyCoherence, given to PrepareCoherence, takes an existing cross-host
// pool whatever its coherence, and makes a new one CoherenceHardware.
const anyCoherence Coherence = -1

// PrepareCoherence is PrepareCrossHost for a pool whose memory is kept
// coherent as c says (Mode.Coherence); an existing cross-host pool of
// another coherence is an error wrapping ErrPoolInUse.
func PrepareCoherence(dir string, a Access, c Coherence) error {
	if dir == "" {
		return errors.New("notnets: empty pool directory")
	}
	dir = filepath.Clean(dir) // "link/" would follow the link
	err := createMarked(dir, a, c)
	switch {
	case err == nil:
		return CheckDir(dir, a)
	case !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOTEMPTY):
		return err
	}
	stickyOwn(dir, a)
	return markCoherence(dir, a, c)
}

// createMarked makes the pool directory dir with its marker, as
// createPoolDir makes it.
func createMarked(dir string, a Access, c Coherence) error {
	return createPoolDir(dir, a, func(dfd int, tmp string) error { return writeMarker(dfd, tmp, a, c) })
}

// createPoolDir makes the pool directory dir with what fill writes into
// it (a marker): under a temporary name next to it first, with the mode
// and group of a pool, filled, then renamed to dir only if dir does not
// exist (RENAME_NOREPLACE), so that no process ever sees the pool
// without what fill puts in it. An error wrapping EEXIST says dir exists.
// fill gets a descriptor of the temporary directory and its path.
func createPoolDir(dir string, a Access, fill func(dfd int, tmp string) error) error {
	parent, base := filepath.Split(dir)
	if parent == "" {
		parent = "."
	}
	var r [8]byte
	rand.Read(r[:])
	tmp := filepath.Join(parent, "."+base+".notnets-"+hex.EncodeToString(r[:]))
	if err := unix.Mkdir(tmp, a.dirMode()); err != nil {
		if _, serr := os.Lstat(dir); serr == nil {
			return fmt.Errorf("notnets: create pool directory %s: %w", dir, unix.EEXIST)
		}
		return fmt.Errorf("notnets: create pool directory %s: %w", dir, err)
	}
	fail := func(err error) error {
		os.RemoveAll(tmp) // ours alone: nobody knows its random name
		return err
	}
	if a.shared() {
		if err := unix.Lchown(tmp, -1, a.Group); err != nil {
			return fail(fmt.Errorf("notnets: give pool directory %s to group %d: %w", dir, a.Group, err))
		}
	}
	// The umask may have taken bits away.
	if err := unix.Chmod(tmp, a.dirMode()); err != nil {
		return fail(fmt.Errorf("notnets: set the mode of pool directory %s: %w", dir, err))
	}
	dfd, err := openDir(tmp, a)
	if err != nil {
		return fail(err)
	}
	err = fill(dfd, tmp)
	unix.Close(dfd)
	if err != nil {
		return fail(err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A file system without RENAME_NOREPLACE: a plain rename, which
		// would replace an empty directory, only if dir does not exist.
		if _, serr := os.Lstat(dir); serr == nil {
			err = unix.EEXIST
		} else {
			err = unix.Rename(tmp, dir)
		}
	}
	if err != nil {
		return fail(fmt.Errorf("notnets: create pool directory %s: %w", dir, err))
	}
	return nil
}

// MarkCrossHost marks the existing pool directory dir as shared across
// hosts, if it is not already (see PrepareCrossHost): only its owner or
// root may (a marker of anyone else is ignored, F13), and only while no
// process uses it as a pool of one host.
func MarkCrossHost(dir string, a Access) error { return markCoherence(dir, a, anyCoherence) }

// markCoherence is MarkCrossHost with coherence c.
func markCoherence(dir string, a Access, c Coherence) error {
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
	mode, err := readModeAt(dfd, dir, st.Uid)
	switch {
	case err != nil:
		return err
	case mode.CrossHost && c != anyCoherence && mode.Coherence != c:
		return fmt.Errorf("%w: %s is a cross-host pool with %s coherence, not %s", ErrPoolInUse, dir, mode.Coherence, c)
	case mode.CrossHost:
		return nil
	case mode.Ignored != "":
		return fmt.Errorf("%w: pool %s has a %s file %s; remove it to mark the pool cross-host", ErrAccess, dir, HostsFile, mode.Ignored)
	}
	if euid := uint32(os.Geteuid()); euid != st.Uid && euid != 0 {
		return fmt.Errorf("%w: pool %s belongs to uid %d: only its owner or root can mark it cross-host (a marker of anyone else is ignored)", ErrAccess, dir, st.Uid)
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("notnets: list pool directory %s: %w", dir, err)
	}
	for _, n := range names {
		if strings.HasSuffix(n, ListenerSuffix) || strings.HasPrefix(n, ConnPrefix) || strings.HasSuffix(n, SockSuffix) {
			return fmt.Errorf("%w: %s has %s; a pool becomes cross-host when it is made (WithCrossHost on Listen, notnets pool init -cross-host): use a new directory, or stop its processes and remove it first", ErrPoolInUse, dir, n)
		}
	}
	if err := writeMarker(dfd, dir, a, c); err != nil {
		return err
	}
	// Another process may have linked a marker first: judge what is there.
	if mode, err := readModeAt(dfd, dir, st.Uid); err != nil || !mode.CrossHost || (c != anyCoherence && mode.Coherence != c) {
		return fmt.Errorf("notnets: mark pool %s cross-host: the marker reads back as %+v, %v", dir, mode, err)
	}
	return nil
}

// writeMarker writes the cross-host marker of the pool directory dfd: a
// whole file under a temporary name first, then linked to HostsFile
// (which fails, harmlessly, if a marker is there already), so that no
// reader ever sees part of it.
func writeMarker(dfd int, dir string, a Access, c Coherence) error {
	var r [8]byte
	rand.Read(r[:])
	tmp := ".hosts-" + hex.EncodeToString(r[:])
	// Readable by the pool's users, writable by nobody but its owner.
	mode := a.fileMode() &^ 0o020
	fd, err := unix.Openat(dfd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("notnets: create the marker of pool %s: %w", dir, err)
	}
	defer unix.Unlinkat(dfd, tmp, 0)
	defer unix.Close(fd)
	if a.shared() {
		if err := unix.Fchown(fd, -1, a.Group); err != nil {
			return fmt.Errorf("notnets: give the marker of pool %s to group %d: %w", dir, a.Group, err)
		}
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("notnets: set the mode of the marker of pool %s: %w", dir, err)
	}
	if err := unix.Ftruncate(fd, PageSize); err != nil {
		return fmt.Errorf("notnets: size the marker of pool %s: %w", dir, err)
	}
	if err := Allocate(fd, Range{0, PageSize}); err != nil {
		return err
	}
	buf := make([]byte, PageSize)
	writeHeader(buf, KindHosts, c.flags(), 0, 0)
	writeHost(buf, LocalHost())
	if n, err := unix.Pwrite(fd, buf, 0); err != nil || n != PageSize {
		return fmt.Errorf("notnets: write the marker of pool %s: %d of %d bytes (%v)", dir, n, PageSize, err)
	}
	if err := unix.Linkat(dfd, tmp, dfd, HostsFile, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("notnets: put the marker of pool %s in place: %w", dir, err)
	}
	return nil
}
