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
	"time"

	"golang.org/x/sys/unix"
)

// Entry describes one file of a pool.
type Entry struct {
	Name     string
	Kind     string // "listener", "connection", "socket", "registry" or "other"
	Size     int64
	Modified time.Time
	PID      int    // the creator's pid from the segment header (a socket: its listener's), 0 if unknown
	Stale    bool   // left by a process that is gone, or unreadable and old
	Why      string // why Stale, or the state of a live file

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
func ScanIn(dir string, a Access) ([]Entry, error) {
	f, err := openDirList(dir, a)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return scanAt(f, dir)
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
func CleanIn(dir string, a Access) ([]Entry, error) {
	f, err := openDirList(dir, a)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := scanAt(f, dir)
	if err != nil {
		return nil, err
	}
	dfd := int(f.Fd())
	var removed []Entry
	for _, e := range entries {
		if e.Stale && removeAt(dfd, dir, &e) == nil {
			removed = append(removed, e)
		}
	}
	return removed, nil
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
func scanAt(f *os.File, dir string) ([]Entry, error) {
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("notnets: scan pool %s: %w", dir, err)
	}
	dfd := int(f.Fd())
	var out []Entry
	for _, name := range names {
		if e, err := judgeAt(dfd, dir, name); err == nil {
			out = append(out, e)
		} // else removed meanwhile
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// judgeAt describes and judges the file name of the directory dfd.
func judgeAt(dfd int, dir, name string) (Entry, error) {
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
	}
	switch {
	case (e.Kind == "listener" || e.Kind == "connection") && e.typ == unix.S_IFREG:
		judge(dfd, &e)
	case e.Kind == "socket" && e.typ == unix.S_IFSOCK:
		var lis *Entry
		if l, err := judgeAt(dfd, dir, ListenerFile(base)); err == nil {
			lis = &l
		}
		judgeSocket(dfd, dir, &e, lis)
	case e.Kind == "registry" && e.typ == unix.S_IFREG:
		judgeRegistry(dfd, &e)
	default:
		e.Kind, e.Why = "other", "not a notnets file; left alone"
	}
	return e, nil
}

func judge(dfd int, e *Entry) {
	age := time.Since(e.Modified)
	kind := uint16(KindListener)
	if e.Kind == "connection" {
		kind = KindConn
	}
	pid, err := headerPID(dfd, e.Name, kind)
	switch {
	case err != nil && age > staleUnreadable:
		e.Stale, e.Why = true, fmt.Sprintf("unreadable header (%v), %v old", err, age.Round(time.Second))
	case err != nil:
		e.Why = fmt.Sprintf("unreadable header (%v), being created?", err)
	case !ProcessAlive(pid):
		e.PID, e.Stale, e.Why = pid, true, fmt.Sprintf("process %d is gone", pid)
	case e.Kind == "connection" && age > staleConnection:
		e.PID, e.Stale, e.Why = pid, true, fmt.Sprintf("announced %v ago and never taken", age.Round(time.Second))
	default:
		e.PID, e.Why = pid, fmt.Sprintf("process %d is alive", pid)
	}
}

// judgeRegistry judges the registry file e. A registry that clients can
// map is never stale, whoever made it: it has no owner process, and
// clients waiting on its generation word would not see a new one. One
// they cannot map (a bad header or size, a minute after its creation)
// only makes them poll; removing it lets the next Listen make a good one.
func judgeRegistry(dfd int, e *Entry) {
	age := time.Since(e.Modified)
	_, err := headerPID(dfd, e.Name, KindRegistry)
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
func removeAt(dfd int, dir string, e *Entry) error {
	now, err := judgeAt(dfd, dir, e.Name)
	if err != nil {
		return err
	}
	// (A socket's pid is its listener's, which may have gone first.)
	if !now.Stale || now.dev != e.dev || now.ino != e.ino || now.typ != e.typ || (e.typ == unix.S_IFREG && now.PID != e.PID) {
		return errors.New("replaced or revived since it was judged")
	}
	return unix.Unlinkat(dfd, e.Name, 0)
}

// headerPID reads the creator's pid from the header of the segment name of
// the directory dfd.
func headerPID(dfd int, name string, kind uint16) (int, error) {
	// O_NONBLOCK: a FIFO put in its place since must not block the scan.
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, errors.New("not a regular file")
	}
	var h [24]byte
	if n, err := unix.Pread(fd, h[:], 0); err != nil || n < len(h) {
		return 0, errors.New("shorter than a header")
	}
	if binary.LittleEndian.Uint32(h[offMagic:]) != Magic {
		return 0, errors.New("bad magic")
	}
	if binary.LittleEndian.Uint16(h[offKind:]) != kind {
		return 0, errors.New("wrong kind")
	}
	return int(binary.LittleEndian.Uint32(h[offPID:])), nil
}
