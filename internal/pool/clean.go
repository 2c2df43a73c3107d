//go:build linux

package pool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Entry describes one file of a pool.
type Entry struct {
	Name     string
	Kind     string // "listener", "connection", "socket", "registry", "hosts" (the marker), "device" (its marker), "chunks" or "other"
	Size     int64
	Modified time.Time
	PID      int // the creator's pid from the segment header (a socket: its listener's), 0 if unknown
	// Host is the creator's host identity from the segment header (a
	// socket: its listener's), zero if unknown: whether PID names a
	// process of this host (Host.Local).
	Host  Host
	Stale bool   // left by a process that is gone, or unreadable and old
	Why   string // why Stale, or the state of a live file

	// What was judged: Clean removes the name only if it still names
	// this file.
	dev, ino uint64
	typ      uint32 // S_IFREG or S_IFSOCK
}

// SockSuffix ends the file name of a listener's Unix socket,
// <name>.sock (PROTOCOL.md 10.4).
const SockSuffix = ".sock"

// SockFile returns the file name of the listener socket for name.
func SockFile(name string) string { return name + SockSuffix }

// staleUnreadable is how old a segment file with an unreadable header must
// be before it counts as stale: a segment is briefly unreadable while its
// creator writes it.
const staleUnreadable = time.Minute

// staleConnection is how old a connection segment may get: its file lives
// only while the client announces it, which Dial bounds by its timeout.
const staleConnection = 10 * time.Minute

// RemoteStaleAfter is how long a listener that a process cannot judge by
// its pid (one of another host or pid namespace, or any listener of a
// cross-host pool) must have kept the same heartbeat, seen in two
// readings of that process at least this far apart, before it is stale
// (PROTOCOL.md 3.6, rule F15): ten times the default liveness timeout.
// A live listener beats every 100 ms; this leaves room for a host that
// stalls for seconds.
const RemoteStaleAfter = 20 * time.Second

// MinRemoteStaleAfter is the least bound PROTOCOL.md 3.6 allows in place
// of RemoteStaleAfter (20 heartbeats).
const MinRemoteStaleAfter = 2 * time.Second

// Scan lists the files of the pool dir of one user; see ScanIn.
func Scan(dir string) ([]Entry, error) { return ScanIn(dir, OwnerOnly) }

// ScanIn lists the files of the pool dir and tells which are stale. It
// checks the directory exactly as Listen and Dial do (CheckDir: a real
// directory, not a symbolic link, with the owner and mode that a says)
// and reads it through a descriptor opened without following a link. It
// reads at most a segment's header and never maps anything.
//
// Stale are: a listener or connection segment whose creator's process is
// gone, or whose header is still unreadable after a minute; a connection
// segment announced more than ten minutes ago; a registry file that is
// not a registry a minute after its creation (one that is, is never
// stale); and a listener's socket, <name>.sock (an instance's:
// <service>+<id>.sock), whose listener file is gone or stale and on which
// no process listens (a connect(2) to it is refused). The socket is
// probed, rather than looked up in /proc/net/unix, because that table
// shows the address a socket was bound with (the reference listener binds
// /proc/self/fd/N/<name>.sock, not the pool's path) and only the sockets
// of this network namespace; a refused connect is the kernel's own answer
// for the very file, wherever its listener runs. A socket whose listener
// is live is not probed.
//
// A listener whose pid this process cannot look up (it was made on
// another host or in another pid namespace, Host.Local, or the pool is
// cross-host: every listener then) is judged by its heartbeat alone: it
// is stale once this process has read the same heartbeat in it at least
// RemoteStaleAfter apart (a process remembers the heartbeats it read).
// A single scan therefore never finds it stale; a process that scans
// again later may. Connection segments of other hosts are stale by age
// alone. The pool's marker (hosts) is never stale; a pool whose marker
// fails rule F13 is still listed, its listeners judged as remote, its
// marker's entry saying why (CleanIn refuses such a pool).
func ScanIn(dir string, a Access) ([]Entry, error) { return ScanAfter(dir, a, RemoteStaleAfter) }

// ScanAfter is ScanIn with another bound than RemoteStaleAfter for
// listeners judged by their heartbeat; a bound below MinRemoteStaleAfter
// is taken as MinRemoteStaleAfter.
func ScanAfter(dir string, a Access, after time.Duration) ([]Entry, error) {
	f, err := openDirList(dir, a)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	j, err := newJudging(f, dir, a, after)
	if err != nil {
		return nil, err
	}
	return scanAt(f, dir, j)
}

// Clean removes the stale files of the pool dir of one user; see CleanIn.
func Clean(dir string) ([]Entry, error) { return CleanIn(dir, OwnerOnly) }

// CleanIn removes the stale files of the pool dir (see ScanIn) and returns
// them. It checks the directory as ScanIn does and removes every file with
// unlinkat(2) relative to the descriptor of the directory it checked, so
// it removes nothing through a symbolic link and nothing outside that
// directory. Right before removing a file it judges it again, and leaves
// it if it is no longer stale or no longer the file judged (device, inode,
// type, pid): a listener that took a stale listener's name meanwhile
// keeps its file. (Between that last check and unlinkat there is no
// atomic way to make sure; the window is a few system calls.)
//
// A pool whose marker fails rule F13 is refused (the error wraps
// ErrAccess): what is stale there depends on a mode nobody can read.
func CleanIn(dir string, a Access) ([]Entry, error) { return CleanAfter(dir, a, RemoteStaleAfter) }

// CleanAfter is CleanIn with another bound than RemoteStaleAfter for
// listeners judged by their heartbeat (see ScanAfter).
func CleanAfter(dir string, a Access, after time.Duration) ([]Entry, error) {
	f, err := openDirList(dir, a)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	j, err := newJudging(f, dir, a, after)
	if err != nil {
		return nil, err
	}
	if j.modeErr != nil {
		return nil, j.modeErr
	}
	if j.devErr != nil {
		return nil, j.devErr
	}
	entries, err := scanAt(f, dir, j)
	if err != nil {
		return nil, err
	}
	dfd := int(f.Fd())
	var removed []Entry
	for _, e := range entries {
		if e.Stale && removeAt(dfd, dir, &e, j) == nil {
			removed = append(removed, e)
		}
	}
	if j.dev != nil {
		// The chunks of the segments removed, and of any other whose
		// file is gone and that no process maps (device_claim.go).
		if cfd, err := openChunks(dfd, dir, a); err == nil {
			j.dev.reap(dfd, cfd)
			unix.Close(cfd)
		}
	}
	return removed, nil
}

// judging is what a scan judges the files of a pool by.
type judging struct {
	mode    Mode
	modeErr error // the marker fails F13: listeners are judged as remote
	after   time.Duration
	dir     string
	access  Access
	dev     *Device // the pool's device (F16), nil if its segments are files
	devErr  error   // the device marker fails F16
}

// newJudging reads the mode of the pool directory f for a scan.
func newJudging(f *os.File, dir string, a Access, after time.Duration) (*judging, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("notnets: scan pool %s: %w", dir, err)
	}
	j := &judging{after: max(after, MinRemoteStaleAfter), dir: dir, access: a}
	j.mode, j.modeErr = readModeAt(int(f.Fd()), dir, st.Uid)
	j.dev, j.devErr = readDeviceAt(int(f.Fd()), dir, st.Uid)
	if j.dev != nil && j.mode.Coherence == CoherenceSoftware {
		j.dev.readBack = func(fd int, off int64, n int) { readBack(fd, off, n, int64(j.dev.ChunkSize)) } // 18.3
	}
	return j, nil
}

// pread reads the segment file name of the directory dfd, open as fd,
// at off: in a pool on a device, from the segment's chunks (F17, F18).
func (j *judging) pread(dfd int, name string, fd int, buf []byte, off int64) (int, error) {
	if j.dev == nil {
		if j.mode.Coherence == CoherenceSoftware {
			readBack(fd, off, len(buf), PageSize) // 18.3
		}
		return unix.Pread(fd, buf, off)
	}
	n, _, err := j.dev.pread(dfd, j.dir, name, j.access, fd, buf, off)
	return n, err
}

// remote reports whether the pid written by a process of host h must not
// be looked up here: the pool is cross-host (or its marker unreadable),
// or h is another host or pid namespace (PROTOCOL.md F14).
func (j *judging) remote(h Host) bool {
	return j.mode.CrossHost || j.modeErr != nil || !h.Local()
}

// openDirList opens the pool directory dir for listing, without following
// a symbolic link, and checks it as CheckDir does.
func openDirList(dir string, a Access) (*os.File, error) {
	dir = filepath.Clean(dir) // "link/" would follow the link
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			if cerr := CheckDir(dir, a); cerr != nil {
				return nil, cerr // says which: a link, or not a directory
			}
		}
		return nil, fmt.Errorf("notnets: scan pool %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("notnets: scan pool %s: %w", dir, err)
	}
	if err := a.checkDir(dir, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// scanAt lists and judges the files of the directory f.
func scanAt(f *os.File, dir string, j *judging) ([]Entry, error) {
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("notnets: scan pool %s: %w", dir, err)
	}
	dfd := int(f.Fd())
	var out []Entry
	for _, name := range names {
		if e, err := judgeAt(dfd, dir, name, j); err == nil {
			out = append(out, e)
		} // else removed meanwhile
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// judgeAt describes and judges the file name of the directory dfd.
func judgeAt(dfd int, dir, name string, j *judging) (Entry, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return Entry{}, err
	}
	e := Entry{Name: name, Kind: "other", Size: st.Size, Modified: time.Unix(st.Mtim.Unix()),
		dev: st.Dev, ino: st.Ino, typ: st.Mode & unix.S_IFMT}
	base, isSock := strings.CutSuffix(name, SockSuffix)
	switch {
	case strings.HasSuffix(name, ListenerSuffix):
		e.Kind = "listener"
	case strings.HasPrefix(name, ConnPrefix):
		e.Kind = "connection"
	case isSock && (ValidName(base) == nil || ValidInstance(base) == nil):
		e.Kind = "socket" // <service>+<id>.sock, or a <name>.sock of old
	case name == RegistryFile:
		e.Kind = "registry"
	case name == HostsFile:
		e.Kind = "hosts"
	case name == DeviceFile:
		e.Kind = "device"
	case name == ChunksDir && e.typ == unix.S_IFDIR:
		e.Kind = "chunks"
	}
	if j.dev != nil && e.typ == unix.S_IFREG && (e.Kind == "listener" || e.Kind == "connection" || e.Kind == "registry") {
		e.Size = int64(j.length(dfd, name)) // the segment's, not its descriptor's
	}
	switch {
	case (e.Kind == "listener" || e.Kind == "connection") && e.typ == unix.S_IFREG:
		judge(dfd, &e, j)
	case e.Kind == "socket" && e.typ == unix.S_IFSOCK:
		var lis *Entry
		if l, err := judgeAt(dfd, dir, ListenerFile(base), j); err == nil {
			lis = &l
		}
		judgeSocket(dfd, dir, &e, lis)
	case e.Kind == "registry" && e.typ == unix.S_IFREG:
		judgeRegistry(dfd, &e, j)
	case e.Kind == "hosts":
		judgeHosts(&e, j)
	case e.Kind == "device" || e.Kind == "chunks":
		judgeDevice(dfd, &e, j)
	default:
		e.Kind, e.Why = "other", "not a notnets file; left alone"
	}
	return e, nil
}

func judge(dfd int, e *Entry, j *judging) {
	age := time.Since(e.Modified)
	kind := uint16(KindListener)
	if e.Kind == "connection" {
		kind = KindConn
	}
	h, err := readHeaderAt(dfd, e.Name, kind, j)
	remote := j.remote(h.host)
	switch {
	case err != nil && age > staleUnreadable:
		e.Stale, e.Why = true, fmt.Sprintf("unreadable header (%v), %v old", err, age.Round(time.Second))
	case err != nil:
		e.Why = fmt.Sprintf("unreadable header (%v), being created?", err)
	case e.Kind == "connection" && age > staleConnection:
		e.PID, e.Host, e.Stale, e.Why = h.pid, h.host, true, fmt.Sprintf("announced %v ago and never taken", age.Round(time.Second))
	case remote && e.Kind == "connection":
		// Its pid means nothing here (F14): judged by age alone.
		e.PID, e.Host, e.Why = h.pid, h.host, fmt.Sprintf("made by pid %d of %s, %s: judged by its age", h.pid, h.host, j.whyRemote(h.host))
	case remote:
		e.PID, e.Host = h.pid, h.host
		judgeBeat(e, h, j)
	case !ProcessAlive(h.pid):
		e.PID, e.Host, e.Stale, e.Why = h.pid, h.host, true, fmt.Sprintf("process %d is gone", h.pid)
	default:
		e.PID, e.Host, e.Why = h.pid, h.host, fmt.Sprintf("process %d is alive", h.pid)
	}
}

// whyRemote says why a process of host h is judged without its pid.
func (j *judging) whyRemote(h Host) string {
	switch {
	case j.modeErr != nil:
		return "a pool whose marker is unreadable"
	case j.mode.CrossHost:
		return "a cross-host pool"
	case !h.IsZero() && h.ID == LocalHost().ID:
		return "another pid namespace of this host"
	}
	return "another host"
}

// judgeBeat judges the listener e, whose pid cannot be looked up here, by
// its heartbeat (PROTOCOL.md 3.6, F15): stale once this process has read
// the same value in it at least j.after apart.
func judgeBeat(e *Entry, h header, j *judging) {
	stood := observeBeat(beatKey{e.dev, e.ino, h.pid, h.host.ID}, h.beat)
	if stood >= j.after {
		e.Stale, e.Why = true, fmt.Sprintf("heartbeat %d has not moved for %v (pid %d of %s, %s: judged by its heartbeat alone)", h.beat, stood.Round(time.Second), h.pid, h.host, j.whyRemote(h.host))
		return
	}
	e.Why = fmt.Sprintf("heartbeat %d (pid %d of %s, %s: stale once its heartbeat stands still for %v)", h.beat, h.pid, h.host, j.whyRemote(h.host), j.after)
}

// length returns the length of the segment whose descriptor is name in
// a pool on a device, or -1 if it cannot be read.
func (j *judging) length(dfd int, name string) int {
	fd, err := openRegular(dfd, name)
	if err != nil {
		return -1
	}
	defer unix.Close(fd)
	_, n, err := j.dev.pread(dfd, j.dir, name, j.access, fd, nil, 0)
	if err != nil {
		return -1
	}
	return n
}

// judgeDevice describes the pool's device marker or its chunks
// directory, which are never stale.
func judgeDevice(dfd int, e *Entry, j *judging) {
	switch {
	case j.devErr != nil:
		e.Why = "refused: " + j.devErr.Error()
	case j.dev == nil && e.Kind == "device":
		e.Why = "ignored: not the pool owner's (F16)"
	case j.dev == nil:
		e.Why = "no device marker: not used"
	case e.Kind == "device":
		e.Why = fmt.Sprintf("the pool's segments live in device %s: %d chunks of %d bytes", j.dev.Path, j.dev.Chunks, j.dev.ChunkSize)
	default:
		n := -1
		if cfd, err := openChunks(dfd, j.dir, j.access); err == nil {
			claimed, _, _ := listChunks(cfd)
			n = len(claimed)
			unix.Close(cfd)
		}
		e.Why = fmt.Sprintf("claims of the device's chunks: %d of %d claimed", n, j.dev.Chunks)
	}
}

// judgeHosts describes the pool's marker, which is never stale.
func judgeHosts(e *Entry, j *judging) {
	switch {
	case j.modeErr != nil:
		e.Why = "refused: " + j.modeErr.Error()
	case j.mode.Ignored != "":
		e.Why = "ignored: " + j.mode.Ignored
	case j.mode.CrossHost:
		e.Host = j.mode.Creator
		e.Why = "the pool is shared across hosts (marked by " + j.mode.Creator.String() + ")"
	}
}

// beatLog is what this process has read of the heartbeats of listeners
// it judges by their heartbeat (ObserveBeat).
var beatLog struct {
	sync.Mutex
	m     map[beatKey]*beatSeen
	prune time.Time
}

// beatKey names one listener: its file (a new file may take the inode
// of a removed one) and who wrote it.
type beatKey struct {
	dev, ino uint64
	pid      int
	host     [16]byte
}

type beatSeen struct {
	beat        uint64
	since, last time.Time
}

// ObserveBeat records that this process read the heartbeat beat in the
// listener file owner (its device and inode) written by pid of host, and
// returns how long it has read that same value: 0 at its first reading
// and after every change. Heartbeats are counters, not times: only two
// readings apart tell whether one moves.
func ObserveBeat(owner FileOwner, pid int, host Host, beat uint64) time.Duration {
	return observeBeat(beatKey{owner.Dev, owner.Ino, pid, host.ID}, beat)
}

// clock is time.Now; tests move it.
var clock = time.Now

func observeBeat(k beatKey, beat uint64) time.Duration {
	now := clock()
	beatLog.Lock()
	defer beatLog.Unlock()
	if beatLog.m == nil {
		beatLog.m = make(map[beatKey]*beatSeen)
	}
	if now.Sub(beatLog.prune) > time.Minute {
		// Listeners not read for ten minutes are gone or forgotten.
		for k, s := range beatLog.m {
			if now.Sub(s.last) > 10*time.Minute {
				delete(beatLog.m, k)
			}
		}
		beatLog.prune = now
	}
	s := beatLog.m[k]
	if s == nil || s.beat != beat {
		beatLog.m[k] = &beatSeen{beat: beat, since: now, last: now}
		return 0
	}
	s.last = now
	return now.Sub(s.since)
}

// judgeRegistry judges the registry file e. A registry that clients can
// map is never stale, whoever made it: it has no owner process, and
// clients waiting on its generation word would not see a new one. One
// they cannot map (a bad header or size, a minute after its creation)
// only makes them poll; removing it lets the next Listen make a good one.
func judgeRegistry(dfd int, e *Entry, j *judging) {
	age := time.Since(e.Modified)
	_, err := headerPID(dfd, e.Name, KindRegistry, j)
	if err == nil && e.Size != PageSize {
		err = fmt.Errorf("size %d, want %d", e.Size, PageSize)
	}
	switch {
	case err != nil && age > staleUnreadable:
		e.Stale, e.Why = true, fmt.Sprintf("unusable registry (%v), %v old", err, age.Round(time.Second))
	case err != nil:
		e.Why = fmt.Sprintf("unreadable registry (%v), being created?", err)
	default:
		e.Why = "the pool's registry of instances"
	}
}

// judgeSocket judges the socket e, whose listener file is lis (nil if
// there is none).
func judgeSocket(dfd int, dir string, e, lis *Entry) {
	var whose string
	switch {
	case lis == nil || lis.Kind != "listener":
		whose = "its listener file is gone"
	case lis.Stale:
		e.PID = lis.PID
		whose = "its listener file is stale"
	default:
		e.PID, e.Why = lis.PID, "its listener file is not stale ("+lis.Why+")"
		return
	}
	switch err := probeSocket(dfd, dir, e.Name); {
	case errors.Is(err, unix.ECONNREFUSED):
		e.Stale, e.Why = true, whose+" and nobody listens on it"
	case err == nil:
		e.Why = whose + ", but a process listens on it; left alone"
	default:
		e.Why = fmt.Sprintf("%s, but whether a process listens on it is unknown (%v); left alone", whose, err)
	}
}

// probeSocket connects to the socket name of the directory dfd and hangs
// up at once. It returns nil if a process listens on it (also when its
// backlog is full), ECONNREFUSED if none does.
func probeSocket(dfd int, dir, name string) error {
	path := fmt.Sprintf("/proc/self/fd/%d/%s", dfd, name)
	if _, err := os.Stat("/proc/self/fd"); err != nil || len(path) >= 108 {
		path = filepath.Join(dir, name)
		if len(path) >= 108 {
			return errors.New("path too long for a socket address")
		}
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	err = unix.Connect(s, &unix.SockaddrUnix{Name: path})
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINPROGRESS) {
		return nil // a listener with a full backlog
	}
	return err
}

// removeAt removes the file e of the directory dfd if it is still stale
// and its name still names the file that was judged: it judges it again
// right before unlinking it, since a new file may have taken the name
// (and, on most file systems, the inode number of the removed one).
func removeAt(dfd int, dir string, e *Entry, j *judging) error {
	now, err := judgeAt(dfd, dir, e.Name, j)
	if err != nil {
		return err
	}
	// (A socket's pid is its listener's, which may have gone first.)
	if !now.Stale || now.dev != e.dev || now.ino != e.ino || now.typ != e.typ || (e.typ == unix.S_IFREG && now.PID != e.PID) {
		return errors.New("replaced or revived since it was judged")
	}
	return unix.Unlinkat(dfd, e.Name, 0)
}

// header is what a scan reads of a segment's header page: the creator's
// pid and host identity and, for a listener, its heartbeat.
type header struct {
	pid  int
	host Host
	beat uint64
}

// readHeaderAt reads the header of the listener or connection segment
// name of the directory dfd, and a listener's heartbeat.
func readHeaderAt(dfd int, name string, kind uint16, j *judging) (header, error) {
	var h header
	fd, err := openRegular(dfd, name)
	if err != nil {
		return h, err
	}
	defer unix.Close(fd)
	buf := make([]byte, hostEnd)
	if n, err := j.pread(dfd, name, fd, buf, 0); err != nil || n < len(buf) {
		return h, fmt.Errorf("shorter than a header (%v)", err)
	}
	if err := checkMagicKind(buf, kind); err != nil {
		return h, err
	}
	h.pid, h.host = int(binary.LittleEndian.Uint32(buf[offPID:])), readHost(buf)
	if kind == KindListener {
		var b [8]byte
		if n, err := j.pread(dfd, name, fd, b[:], PageSize+ctlHeartbeat); err != nil || n < len(b) {
			return h, errors.New("shorter than a listener")
		}
		h.beat = binary.LittleEndian.Uint64(b[:])
	}
	return h, nil
}

// headerPID reads the creator's pid from the header of the segment name of
// the directory dfd.
func headerPID(dfd int, name string, kind uint16, j *judging) (int, error) {
	fd, err := openRegular(dfd, name)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var h [24]byte
	if n, err := j.pread(dfd, name, fd, h[:], 0); err != nil || n < len(h) {
		return 0, errors.New("shorter than a header")
	}
	if err := checkMagicKind(h[:], kind); err != nil {
		return 0, err
	}
	return int(binary.LittleEndian.Uint32(h[offPID:])), nil
}

// openRegular opens the file name of the directory dfd for reading, and
// checks that it is a regular file.
func openRegular(dfd int, name string) (int, error) {
	// O_NONBLOCK: a FIFO put in its place since must not block the scan.
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, errors.New("not a regular file")
	}
	return fd, nil
}

// checkMagicKind checks the magic and kind at the start of a header.
func checkMagicKind(h []byte, kind uint16) error {
	if binary.LittleEndian.Uint32(h[offMagic:]) != Magic {
		return errors.New("bad magic")
	}
	if binary.LittleEndian.Uint16(h[offKind:]) != kind {
		return errors.New("wrong kind")
	}
	return nil
}
