package pool

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// deadPID is a pid no process has: above the kernel's pid_max.
const deadPID = 0x3ffffff0

func TestScanAndClean(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, kind uint16, pid int) {
		seg, err := Create(dir, name, 3*PageSize)
		if err != nil {
			t.Fatal(err)
		}
		writeHeader(seg.Mem, kind, 0, 0, pid)
		seg.Close()
	}
	mk("live.listener", KindListener, os.Getpid())
	mk("dead.listener", KindListener, deadPID)
	mk(ConnPrefix+"00000000000000000000000000000001", KindConn, os.Getpid())
	mk(ConnPrefix+"00000000000000000000000000000002", KindConn, deadPID)
	old := ConnPrefix + "00000000000000000000000000000003"
	mk(old, KindConn, os.Getpid())
	past := time.Now().Add(-2 * staleConnection)
	os.Chtimes(filepath.Join(dir, old), past, past)
	if err := os.WriteFile(filepath.Join(dir, "garbage.listener"), []byte("not a segment"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	entries, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{ // name: stale
		"live.listener": false, "dead.listener": true,
		ConnPrefix + "00000000000000000000000000000001": false,
		ConnPrefix + "00000000000000000000000000000002": true,
		old:                true,
		"garbage.listener": false, // unreadable but new: maybe being created
		"notes.txt":        false,
	}
	if len(entries) != len(want) {
		t.Fatalf("Scan found %d entries, want %d: %+v", len(entries), len(want), entries)
	}
	for _, e := range entries {
		if e.Stale != want[e.Name] {
			t.Errorf("%s: stale %v (%s), want %v", e.Name, e.Stale, e.Why, want[e.Name])
		}
	}
	removed, err := Clean(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 3 {
		t.Errorf("Clean removed %d files, want 3: %+v", len(removed), removed)
	}
	for name, stale := range want {
		_, err := os.Stat(filepath.Join(dir, name))
		if gone := os.IsNotExist(err); gone != stale {
			t.Errorf("%s: removed %v, want %v", name, gone, stale)
		}
	}
}

func TestProcessAlive(t *testing.T) {
	if !ProcessAlive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	if ProcessAlive(deadPID) || ProcessAlive(0) || ProcessAlive(-1) {
		t.Error("a pid no process has is alive")
	}
	s1, ok1 := ProcessStart(os.Getpid())
	s2, ok2 := ProcessStart(os.Getpid())
	if !ok1 || !ok2 || s1 != s2 {
		t.Errorf("start time of this process: %d %v, %d %v", s1, ok1, s2, ok2)
	}
}

// plantPool fills dir with stale files of every kind Clean removes: a
// connection and a listener segment of a dead process, and a socket
// nobody listens on. It returns their names.
func plantPool(t *testing.T, dir string) []string {
	t.Helper()
	mk := func(name string, kind uint16) {
		seg, err := Create(dir, name, 3*PageSize)
		if err != nil {
			t.Fatal(err)
		}
		writeHeader(seg.Mem, kind, 0, 0, deadPID)
		seg.Close()
	}
	conn := ConnPrefix + "00000000000000000000000000000009"
	mk(conn, KindConn)
	mk("victim.listener", KindListener)
	deadSocket(t, filepath.Join(dir, "victim.sock"))
	return []string{conn, "victim.listener", "victim.sock"}
}

// deadSocket leaves a Unix socket file at path that no process listens
// on, as a listener that was killed leaves it.
func deadSocket(t *testing.T, path string) {
	t.Helper()
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(s, 1); err != nil {
		t.Fatal(err)
	}
}

// TestCleanRefusesSymlink: a pool path that is a symbolic link (to a
// directory full of files Clean would remove) is refused by Scan and
// Clean as by Listen and Dial, and nothing is removed through it.
func TestCleanRefusesSymlink(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	names := plantPool(t, target)
	link := filepath.Join(base, "pool")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{link, link + "/", link + "/."} {
		if _, err := Clean(dir); !errors.Is(err, ErrAccess) || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("Clean(%s) = %v, want ErrAccess naming the symbolic link", dir, err)
		}
		if _, err := CleanIn(dir, Access{Shared: true, Group: os.Getegid()}); !errors.Is(err, ErrAccess) {
			t.Errorf("CleanIn(%s, group) = %v, want ErrAccess", dir, err)
		}
		if _, err := Scan(dir); !errors.Is(err, ErrAccess) {
			t.Errorf("Scan(%s) = %v, want ErrAccess", dir, err)
		}
	}
	for _, name := range names {
		if _, err := os.Lstat(filepath.Join(target, name)); err != nil {
			t.Errorf("%s was removed through the link: %v", name, err)
		}
	}
	// The same files in the real directory are stale, and go.
	removed, err := Clean(target)
	if err != nil || len(removed) != len(names) {
		t.Errorf("Clean of the real directory removed %v, %v; want %v", removed, err, names)
	}
}

// TestCleanChecksDirectory: Clean refuses what Listen and Dial refuse.
func TestCleanChecksDirectory(t *testing.T) {
	base := t.TempDir()
	for _, tc := range []struct {
		dir  string
		mode os.FileMode
		want string
	}{
		{filepath.Join(base, "open"), 0o777, "writable by others"},
		{filepath.Join(base, "groupw"), 0o770, "writable by its group"},
		{filepath.Join(base, "none"), 0, "no such file"},
	} {
		var names []string
		if tc.mode != 0 {
			os.Mkdir(tc.dir, 0o700)
			names = plantPool(t, tc.dir)
			os.Chmod(tc.dir, tc.mode)
		}
		if _, err := Clean(tc.dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Clean(%s) = %v, want an error with %q", tc.dir, err, tc.want)
		}
		for _, name := range names {
			if _, err := os.Lstat(filepath.Join(tc.dir, name)); err != nil {
				t.Errorf("%s was removed from a refused pool: %v", name, err)
			}
		}
	}
	if os.Geteuid() != 0 {
		return
	}
	theirs := filepath.Join(base, "theirs")
	os.Mkdir(theirs, 0o700)
	names := plantPool(t, theirs)
	os.Chown(theirs, 65534, 65534)
	if _, err := Clean(theirs); !errors.Is(err, ErrAccess) || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("Clean of another user's pool = %v, want ErrAccess", err)
	}
	for _, name := range names {
		if _, err := os.Lstat(filepath.Join(theirs, name)); err != nil {
			t.Errorf("%s was removed from another user's pool: %v", name, err)
		}
	}
}

// TestStaleSockets: a listener's socket goes with its listener file, or
// when it has none and nobody listens on it; a socket somebody listens
// on, or whose listener is live, stays.
func TestStaleSockets(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, pid int) {
		seg, err := Create(dir, name, 3*PageSize)
		if err != nil {
			t.Fatal(err)
		}
		writeHeader(seg.Mem, KindListener, 0, 0, pid)
		seg.Close()
	}
	deadSocket(t, filepath.Join(dir, "gone.sock")) // no listener file, nobody listening
	mk("dead.listener", deadPID)
	deadSocket(t, filepath.Join(dir, "dead.sock")) // stale listener file
	mk("live.listener", os.Getpid())
	deadSocket(t, filepath.Join(dir, "live.sock")) // live listener file: not probed, kept
	// Instances' sockets, <service>+<id>.sock, are judged the same way.
	mk("svc+0123456789abcdef.listener", deadPID)
	deadSocket(t, filepath.Join(dir, "svc+0123456789abcdef.sock"))
	mk("svc+fedcba9876543210.listener", os.Getpid())
	deadSocket(t, filepath.Join(dir, "svc+fedcba9876543210.sock"))
	// Somebody listens, though its listener file is gone: kept.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "orphan.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	probed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, err = c.Read(make([]byte, 1)) // the probe hangs up at once
			c.Close()
		}
		probed <- err
	}()
	// Not sockets, or not a listener's: left alone.
	os.WriteFile(filepath.Join(dir, "file.sock"), nil, 0o600)
	deadSocket(t, filepath.Join(dir, ".hidden.sock"))

	entries, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		kind  string
		stale bool
	}{
		"gone.sock": {"socket", true}, "dead.listener": {"listener", true}, "dead.sock": {"socket", true},
		"live.listener": {"listener", false}, "live.sock": {"socket", false}, "orphan.sock": {"socket", false},
		"file.sock": {"other", false}, ".hidden.sock": {"other", false},
		"svc+0123456789abcdef.listener": {"listener", true}, "svc+0123456789abcdef.sock": {"socket", true},
		"svc+fedcba9876543210.listener": {"listener", false}, "svc+fedcba9876543210.sock": {"socket", false},
	}
	if len(entries) != len(want) {
		t.Fatalf("Scan found %d entries, want %d: %+v", len(entries), len(want), entries)
	}
	for _, e := range entries {
		if w := want[e.Name]; e.Kind != w.kind || e.Stale != w.stale {
			t.Errorf("%s: %s, stale %v (%s); want %s, stale %v", e.Name, e.Kind, e.Stale, e.Why, w.kind, w.stale)
		}
	}
	select {
	case err := <-probed:
		if err != io.EOF {
			t.Errorf("the listening socket saw %v from the probe, want EOF", err)
		}
	case <-time.After(failBound):
		t.Error("the socket of a missing listener file was not probed")
	}
	removed, err := Clean(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 5 {
		t.Errorf("Clean removed %+v, want gone.sock, dead.listener, dead.sock and svc+0123456789abcdef's two", removed)
	}
	for name, w := range want {
		_, err := os.Lstat(filepath.Join(dir, name))
		if gone := errors.Is(err, os.ErrNotExist); gone != w.stale {
			t.Errorf("%s: removed %v, want %v", name, gone, w.stale)
		}
	}
}

// TestScanRegistry: the pool's registry is listed as such and never
// removed; a file of that name that is no registry a minute after it was
// made is stale.
func TestScanRegistry(t *testing.T) {
	dir := t.TempDir()
	reg, err := OpenRegistry(dir, OwnerOnly, CoherenceHardware)
	if err != nil {
		t.Fatal(err)
	}
	reg.Close()
	old := time.Now().Add(-2 * staleUnreadable)
	os.Chtimes(filepath.Join(dir, RegistryFile), old, old)
	entries, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Kind != "registry" || entries[0].Stale {
		t.Fatalf("Scan of a pool with a registry: %+v, want one registry, not stale", entries)
	}
	// Not a registry: stale once old, not while it may be being written.
	if err := os.WriteFile(filepath.Join(dir, RegistryFile), make([]byte, PageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	if entries, _ := Scan(dir); len(entries) != 1 || entries[0].Kind != "registry" || entries[0].Stale {
		t.Errorf("a new, still blank registry: %+v, want not stale", entries)
	}
	os.Chtimes(filepath.Join(dir, RegistryFile), old, old)
	removed, err := Clean(dir)
	if err != nil || len(removed) != 1 || removed[0].Name != RegistryFile {
		t.Errorf("Clean of an old blank registry: %+v, %v; want it removed", removed, err)
	}
}

// TestCleanLeavesReplacedFiles: a stale file replaced after Scan judged
// it, by a live one of the same name, is not removed.
// testJudging judges a pool of one host with the default bounds.
var testJudging = &judging{after: RemoteStaleAfter}

func TestCleanLeavesReplacedFiles(t *testing.T) {
	dir := t.TempDir()
	seg, err := Create(dir, "svc.listener", 3*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	writeHeader(seg.Mem, KindListener, 0, 0, deadPID)
	seg.Close()
	f, err := openDirList(dir, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := scanAt(f, dir, testJudging)
	if err != nil || len(entries) != 1 || !entries[0].Stale {
		t.Fatalf("scan: %+v, %v", entries, err)
	}
	// A new listener takes the name meanwhile.
	os.Remove(filepath.Join(dir, "svc.listener"))
	seg, err = Create(dir, "svc.listener", 3*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	writeHeader(seg.Mem, KindListener, 0, 0, os.Getpid())
	seg.Close()
	if err := removeAt(int(f.Fd()), dir, &entries[0], testJudging); err == nil {
		t.Error("removeAt removed a file that replaced the one judged")
	}
	if _, err := os.Lstat(filepath.Join(dir, "svc.listener")); err != nil {
		t.Errorf("the new listener file is gone: %v", err)
	}
}

// TestUnlinkChecksDirectory: Segment.Unlink removes through a checked
// descriptor of the pool directory, not through a link put in its place,
// and only the file the segment maps.
func TestUnlinkChecksDirectory(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "pool")
	if err := Prepare(dir, OwnerOnly); err != nil {
		t.Fatal(err)
	}
	seg, err := Create(dir, "seg", PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	// The pool is moved away and a link to it put in its place.
	moved := filepath.Join(base, "moved")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(moved, dir); err != nil {
		t.Fatal(err)
	}
	if err := seg.Unlink(); !errors.Is(err, ErrAccess) {
		t.Errorf("Unlink through a link = %v, want ErrAccess", err)
	}
	if _, err := os.Lstat(filepath.Join(moved, "seg")); err != nil {
		t.Errorf("Unlink removed the file through a link: %v", err)
	}
	os.Remove(dir)
	os.Rename(moved, dir)
	// Another file under the segment's name is left alone.
	os.Remove(seg.Path)
	os.WriteFile(seg.Path, []byte("new"), 0o600)
	if err := seg.Unlink(); err != nil {
		t.Errorf("Unlink of a replaced file = %v", err)
	}
	if b, err := os.ReadFile(seg.Path); err != nil || string(b) != "new" {
		t.Errorf("Unlink removed the file that replaced the segment's: %q, %v", b, err)
	}
}
