//go:build linux

package pool

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/coherence"
)

// Instances. A service name may be served by any number of server
// processes at once, each its own instance with its own listener: the
// files <service>+<id>.listener and <service>+<id>.sock, where id is 16
// lower-case hex digits chosen at random by the instance (PROTOCOL.md 10.6).
// "+" is not allowed in service names, so an instance's base name never
// parses as another service's.

// InstanceSep separates a service name from an instance id in a base name.
const InstanceSep = "+"

// instanceIDLen is the length of an instance id in hex digits.
const instanceIDLen = 16

// NewInstance returns a fresh instance base name for service,
// "<service>+<16 hex digits>".
func NewInstance(service string) (string, error) {
	if err := ValidName(service); err != nil {
		return "", err
	}
	var b [instanceIDLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("notnets: random instance id: %w", err)
	}
	return service + InstanceSep + hex.EncodeToString(b[:]), nil
}

// ParseInstance splits an instance base name into its service and id, and
// reports whether base has that form.
func ParseInstance(base string) (service, id string, ok bool) {
	service, id, ok = strings.Cut(base, InstanceSep)
	if !ok || ValidName(service) != nil || len(id) != instanceIDLen {
		return "", "", false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", "", false
		}
	}
	return service, id, true
}

// ValidInstance checks that base is an instance base name.
func ValidInstance(base string) error {
	if _, _, ok := ParseInstance(base); !ok {
		return fmt.Errorf("notnets: %q is not an instance name (<service>+<16 hex digits>)", base)
	}
	return nil
}

// ListInstances returns the base names of the listener files of service
// in the pool dir (checked as ScanIn checks it), in directory order. It
// reads the directory once and opens nothing.
func ListInstances(dir, service string, a Access) ([]string, error) {
	f, err := openDirList(dir, a)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("notnets: list pool directory %s: %w", dir, err)
	}
	var out []string
	for _, n := range names {
		base, ok := strings.CutSuffix(n, ListenerSuffix)
		if !ok {
			continue
		}
		if s, _, ok := ParseInstance(base); ok && s == service {
			out = append(out, base)
		}
	}
	return out, nil
}

// Load is the load an instance publishes in its listener's server control
// page, for clients' balancers to read without a system call
// (PROTOCOL.md 10.6). Only the instance writes it.
type Load struct {
	InFlight Word32 // handlers running
	Queued   Word32 // calls received whose handler has not started
	Workers  Word32 // threads the instance runs handlers on (GOMAXPROCS), at least 1
	Draining Word32 // 1 once the instance takes no new calls
}

// Offsets of the load words in a listener's server control page, on a
// 64-byte line of their own (the heartbeat is the control block's).
const (
	ctlInFlight = 448
	ctlQueued   = 452
	ctlWorkers  = 456
	ctlDraining = 460
)

// with returns the load words with coherence coh.
func (l Load) with(coh coherence.Coherence) Load {
	return Load{InFlight: l.InFlight.with(coh), Queued: l.Queued.with(coh), Workers: l.Workers.with(coh), Draining: l.Draining.with(coh)}
}

func loadAt(mem []byte, off int) Load {
	return Load{
		InFlight: u32(mem, off+ctlInFlight),
		Queued:   u32(mem, off+ctlQueued),
		Workers:  u32(mem, off+ctlWorkers),
		Draining: u32(mem, off+ctlDraining),
	}
}

// ListenerInfo is one reading of a listener segment, for tools that show
// a pool (notnets pool ls). Every value but Owner comes from a file that
// other processes write: a caller bounds what it makes of them.
type ListenerInfo struct {
	Owner     FileOwner // the file's owner and identity, as fstat says
	PID       int       // the creator's pid, from the header
	Host      Host      // the creator's host identity, from the header (F14)
	State     uint32    // the server control block's state word: StateNew, StateOpen, StateClosed, or anything
	Heartbeat uint64    // the server control block's heartbeat
	// The load words (Load) as read.
	InFlight, Queued, Workers, Draining uint32
}

// ReadListener reads the listener segment of base (an instance,
// <service>+<id>, or an older <name>) in the pool dir, as OpenIn would
// open it: relative to the checked directory, refusing a symbolic link,
// a file that is not regular or that the pool's access rules say nobody
// of the pool made (the error wraps ErrAccess; Owner is set), and a
// header that is not a listener's. Unlike OpenIn it maps nothing: it
// reads a copy of the file with pread(2) on a read-only descriptor, so
// it can write nothing, and a file truncated meanwhile is a short read,
// not a SIGBUS. The copy is not one atomic snapshot: a word being written
// as the kernel copies it may read torn, which is fine for showing, not
// for deciding.
func ReadListener(dir, base string, a Access) (ListenerInfo, error) {
	var info ListenerInfo
	buf, owner, err := readSegment(dir, ListenerFile(base), ListenerSize, a)
	info.Owner = owner
	if err != nil {
		return info, err
	}
	lay, err := MapListener(buf) // a view of the private copy
	if err != nil {
		return info, fmt.Errorf("notnets: listener %s: %w", base, err)
	}
	info.PID, info.Host = lay.PID, lay.Host
	info.State, info.Heartbeat = lay.Server.State.Load(), lay.Server.Heartbeat.Load()
	info.InFlight, info.Queued = lay.Load.InFlight.Load(), lay.Load.Queued.Load()
	info.Workers, info.Draining = lay.Load.Workers.Load(), lay.Load.Draining.Load()
	return info, nil
}

// readSegment reads the whole segment file name of the pool dir, which
// must be size bytes, with pread(2), checked as OpenIn checks it.
func readSegment(dir, name string, size int, a Access) ([]byte, FileOwner, error) {
	path := filepath.Join(dir, name)
	dfd, dst, err := openDirStat(dir, a)
	if err != nil {
		return nil, FileOwner{}, err
	}
	defer unix.Close(dfd)
	d, err := readDeviceAt(dfd, dir, dst.Uid)
	if err != nil {
		return nil, FileOwner{}, err
	}
	// O_NONBLOCK: a FIFO put in its place must not block the reader.
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, FileOwner{}, fmt.Errorf("notnets: open segment %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, FileOwner{}, fmt.Errorf("notnets: stat segment %s: %w", path, err)
	}
	owner := ownerOf(&st)
	if err := a.checkFile(path, &st); err != nil {
		return nil, owner, err
	}
	buf := make([]byte, size)
	if d != nil { // a descriptor of the segment's chunks (F17, F18)
		n, length, err := d.pread(dfd, dir, name, a, fd, buf, 0)
		switch {
		case err != nil:
			return nil, owner, err
		case length != size:
			return nil, owner, fmt.Errorf("notnets: segment %s has size %d, want %d bytes", path, length, size)
		case n != size:
			return nil, owner, fmt.Errorf("notnets: read segment %s on device %s: %d of %d bytes", path, d.Path, n, size)
		}
		return buf, owner, nil
	}
	if st.Size != int64(size) {
		return nil, owner, fmt.Errorf("notnets: segment %s has size %d, want %d bytes", path, st.Size, size)
	}
	if n, err := unix.Pread(fd, buf, 0); err != nil || n != size {
		return nil, owner, fmt.Errorf("notnets: read segment %s: %d of %d bytes (%v)", path, n, size, err)
	}
	return buf, owner, nil
}
