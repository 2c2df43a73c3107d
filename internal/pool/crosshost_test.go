//go:build linux

package pool

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/ring"
)

// TestHostIdentity: LocalHost is the kernel's boot id, this process's pid
// namespace and its host name; InitListener and InitConnSpec write it at
// the offsets of PROTOCOL.md section 4 and MapListener, MapConn and
// ReadListener read it back; a name length over MaxHostName reads as no
// name (F14) without refusing the segment; pids are comparable only
// within one host id and pid namespace.
func TestHostIdentity(t *testing.T) {
	h := LocalHost()
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skipf("no boot id: %v", err)
	}
	if got := strings.ReplaceAll(strings.TrimSpace(string(boot)), "-", ""); got[:8] != h.Short() {
		t.Errorf("host id starts %s, boot id is %s", h.Short(), got)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil || st.Ino != h.PIDNS {
		t.Errorf("pid namespace %d, /proc/self/ns/pid has inode %d (%v)", h.PIDNS, st.Ino, err)
	}
	if name, _ := os.Hostname(); name != h.Name {
		t.Errorf("host name %q, os.Hostname %q", h.Name, name)
	}
	if !h.Local() || h.String() != h.Name+"@"+h.Short() {
		t.Errorf("LocalHost %+v: Local %v, String %q", h, h.Local(), h.String())
	}

	le := binary.LittleEndian
	lmem := make([]byte, ListenerSize)
	InitListener(lmem, 42, 0)
	if string(lmem[1088:1104]) != string(h.ID[:]) || le.Uint64(lmem[1104:]) != h.PIDNS ||
		int(le.Uint16(lmem[1112:])) != len(h.Name) || string(lmem[1114:1114+len(h.Name)]) != h.Name {
		t.Errorf("listener header bytes 1088-1177 do not hold %+v", h)
	}
	lay, err := MapListener(lmem)
	if err != nil || lay.Host != h {
		t.Errorf("MapListener host = %+v, %v; want %+v", lay.Host, err, h)
	}

	other := Host{ID: [16]byte{1, 2, 3}, PIDNS: 7, Name: "elsewhere"}
	cmem := make([]byte, ConnSize(4096, 4096))
	InitConn(cmem, 4096, 4096, 42)
	WriteHost(cmem, other)
	clay, err := MapConn(cmem, ring.CheckCap)
	if err != nil || clay.Host != other || clay.Host.Local() {
		t.Errorf("MapConn host = %+v (local %v), %v; want %+v, not local", clay.Host, clay.Host.Local(), err, other)
	}
	le.PutUint16(cmem[1112:], MaxHostName+1)
	if clay, err := MapConn(cmem, ring.CheckCap); err != nil || clay.Host.Name != "" || clay.Host.ID != other.ID {
		t.Errorf("host name length %d: MapConn = %+v, %v; want no name, the same id, no error (F14)", MaxHostName+1, clay.Host, err)
	}

	for _, c := range []struct {
		a, b Host
		same bool
	}{
		{h, h, true},
		{h, Host{ID: h.ID, PIDNS: h.PIDNS + 1}, false}, // another container of this machine
		{h, Host{ID: [16]byte{9}, PIDNS: h.PIDNS}, false},
		{Host{}, Host{}, false},                 // nobody's
		{Host{ID: h.ID}, Host{ID: h.ID}, false}, // pid namespaces unknown
	} {
		if got := c.a.SamePIDs(c.b); got != c.same {
			t.Errorf("%+v.SamePIDs(%+v) = %v, want %v", c.a, c.b, got, c.same)
		}
	}
}

// TestPrepareCrossHost: a new pool is made with its marker already in it
// (no temporary directory or file left behind), an existing unused
// directory is marked, a marked pool is taken as it is, and a pool with a
// listener file is refused (ErrPoolInUse) and left unmarked.
func TestPrepareCrossHost(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "pool")
	if err := PrepareCrossHost(dir, OwnerOnly); err != nil {
		t.Fatal(err)
	}
	mode, err := ReadMode(dir, OwnerOnly)
	if err != nil || !mode.CrossHost || mode.Creator != LocalHost() {
		t.Fatalf("ReadMode of a new cross-host pool = %+v, %v", mode, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil || st.Mode&0o7777 != 0o700 {
		t.Errorf("pool directory mode %04o (%v), want 0700", st.Mode&0o7777, err)
	}
	if err := unix.Lstat(filepath.Join(dir, HostsFile), &st); err != nil || st.Mode&0o777 != 0o600 || st.Size != PageSize {
		t.Errorf("marker mode %04o size %d (%v), want 0600 and %d bytes", st.Mode&0o777, st.Size, err, PageSize)
	}
	if names := dirNames(t, parent); len(names) != 1 {
		t.Errorf("the parent holds %v, want the pool alone", names)
	}
	if names := dirNames(t, dir); len(names) != 1 || names[0] != HostsFile {
		t.Errorf("the new pool holds %v, want the marker alone", names)
	}
	if err := PrepareCrossHost(dir, OwnerOnly); err != nil {
		t.Errorf("PrepareCrossHost of a cross-host pool: %v", err)
	}

	unused := t.TempDir()
	if err := Prepare(unused, OwnerOnly); err != nil {
		t.Fatal(err)
	}
	if mode, err := ReadMode(unused, OwnerOnly); err != nil || mode.CrossHost {
		t.Fatalf("ReadMode of a pool without a marker = %+v, %v", mode, err)
	}
	if _, err := OpenRegistry(unused, OwnerOnly, CoherenceHardware); err != nil { // a waiting client makes it
		t.Fatal(err)
	}
	if err := PrepareCrossHost(unused, OwnerOnly); err != nil {
		t.Fatalf("PrepareCrossHost of an unused pool: %v", err)
	}
	if mode, err := ReadMode(unused, OwnerOnly); err != nil || !mode.CrossHost {
		t.Errorf("ReadMode of a marked pool = %+v, %v", mode, err)
	}
	for _, n := range dirNames(t, unused) {
		if strings.HasPrefix(n, ".hosts-") {
			t.Errorf("temporary marker %s left in the pool", n)
		}
	}

	used := t.TempDir()
	seg, err := CreateIn(used, "svc+0123456789abcdef.listener", ListenerSize, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	InitListener(seg.Mem, os.Getpid(), 0)
	seg.Close()
	if err := PrepareCrossHost(used, OwnerOnly); !errors.Is(err, ErrPoolInUse) || !strings.Contains(err.Error(), "svc+0123456789abcdef.listener") {
		t.Errorf("PrepareCrossHost of a pool with a listener = %v, want ErrPoolInUse naming it", err)
	}
	if mode, err := ReadMode(used, OwnerOnly); err != nil || mode.CrossHost {
		t.Errorf("a pool in use was marked: %+v, %v", mode, err)
	}
}

// TestPrepareCrossHostRace: processes that make the same new pool at
// once all succeed, on one pool with one marker.
func TestPrepareCrossHostRace(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "pool")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- PrepareCrossHost(dir, OwnerOnly)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if mode, err := ReadMode(dir, OwnerOnly); err != nil || !mode.CrossHost {
		t.Errorf("ReadMode = %+v, %v", mode, err)
	}
	if names := dirNames(t, parent); len(names) != 1 {
		t.Errorf("the parent holds %v, want the pool alone", names)
	}
}

// TestReadModeRefuses: a hosts file of the pool's owner that is not a
// valid marker refuses the pool (F13: ErrAccess, from ReadMode and
// CleanIn, and ScanIn says why on the marker's entry); one that is not
// the owner's is ignored (a member cannot change a pool's mode).
func TestReadModeRefuses(t *testing.T) {
	good := make([]byte, PageSize)
	writeHeader(good, KindHosts, PoolCrossHost, 0, 0)
	for _, c := range []struct {
		name  string
		make  func(path string) error
		whyIs string
	}{
		{"short", func(p string) error { return os.WriteFile(p, good[:100], 0o600) }, "has 100 bytes"},
		{"bad magic", func(p string) error {
			b := append([]byte{}, good...)
			b[0] = 0
			return os.WriteFile(p, b, 0o600)
		}, "bad magic"},
		{"wrong kind", func(p string) error {
			b := append([]byte{}, good...)
			binary.LittleEndian.PutUint16(b[offKind:], KindRegistry)
			return os.WriteFile(p, b, 0o600)
		}, "segment kind 3"},
		{"unknown flags", func(p string) error {
			b := append([]byte{}, good...)
			binary.LittleEndian.PutUint32(b[offParamA:], PoolCrossHost|8)
			return os.WriteFile(p, b, 0o600)
		}, "flags 0x9"},
		{"two coherences", func(p string) error {
			b := append([]byte{}, good...)
			binary.LittleEndian.PutUint32(b[offParamA:], PoolCrossHost|PoolFlushes|PoolSimulated)
			return os.WriteFile(p, b, 0o600)
		}, "flags 0x7"},
		{"coherence of one host", func(p string) error {
			b := append([]byte{}, good...)
			binary.LittleEndian.PutUint32(b[offParamA:], PoolFlushes)
			return os.WriteFile(p, b, 0o600)
		}, "flags 0x2"},
		{"no flag", func(p string) error {
			b := append([]byte{}, good...)
			binary.LittleEndian.PutUint32(b[offParamA:], 0)
			return os.WriteFile(p, b, 0o600)
		}, "flags 0x0"},
		{"group-writable", func(p string) error {
			if err := os.WriteFile(p, good, 0o600); err != nil {
				return err
			}
			return os.Chmod(p, 0o620)
		}, "writable by others"},
		{"symbolic link", func(p string) error { return os.Symlink("/etc/passwd", p) }, "regular file"},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }, "regular file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := c.make(filepath.Join(dir, HostsFile)); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadMode(dir, OwnerOnly); !errors.Is(err, ErrAccess) || !strings.Contains(err.Error(), c.whyIs) {
				t.Errorf("ReadMode = %v, want ErrAccess saying %q", err, c.whyIs)
			}
			if _, err := Clean(dir); !errors.Is(err, ErrAccess) {
				t.Errorf("Clean = %v, want ErrAccess", err)
			}
			entries, err := Scan(dir)
			if err != nil || len(entries) != 1 || entries[0].Kind != "hosts" || !strings.HasPrefix(entries[0].Why, "refused: ") || entries[0].Stale {
				t.Errorf("Scan = %+v, %v; want the marker, refused, not stale", entries, err)
			}
		})
	}
	t.Run("another user's", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to make a file of another user")
		}
		dir := t.TempDir()
		p := filepath.Join(dir, HostsFile)
		if err := os.WriteFile(p, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		mode, err := ReadMode(dir, OwnerOnly)
		if err != nil || mode.CrossHost || !strings.Contains(mode.Ignored, "uid 65534") {
			t.Errorf("ReadMode = %+v, %v; want a pool of one host, the marker ignored", mode, err)
		}
		if err := PrepareCrossHost(dir, OwnerOnly); !errors.Is(err, ErrAccess) || !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("PrepareCrossHost over another user's marker = %v, want ErrAccess naming it", err)
		}
	})
}

// TestStaleByHeartbeat: a listener whose pid this process must not look
// up (made on another host or pid namespace, or any listener of a
// cross-host pool) is stale only once this process has read the same
// heartbeat in it RemoteStaleAfter apart, never for its pid; a moving
// heartbeat keeps it; a connection segment of another host is not judged
// by its pid either. On a pool of one host, a listener of this host with
// a dead pid is stale at once (the control).
func TestStaleByHeartbeat(t *testing.T) {
	now := time.Now()
	clock = func() time.Time { return now }
	defer func() { clock = time.Now }()
	elsewhere := Host{ID: [16]byte{0xee, 1}, PIDNS: 4026531836, Name: "elsewhere"}

	mk := func(dir, name string, kind uint16, pid int, host *Host) *Segment {
		t.Helper()
		seg, err := Create(dir, name, ListenerSize)
		if err != nil {
			t.Fatal(err)
		}
		writeHeader(seg.Mem, kind, 0, 0, pid)
		if host != nil {
			WriteHost(seg.Mem, *host)
		}
		t.Cleanup(func() { seg.Close() })
		return seg
	}
	stale := func(dir string) map[string]bool {
		t.Helper()
		entries, err := Clean(dir)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, e := range entries {
			m[e.Name] = true
		}
		return m
	}

	same := t.TempDir()
	mk(same, "local.listener", KindListener, deadPID, nil)
	mk(same, "remote.listener", KindListener, deadPID, &elsewhere)
	moving := mk(same, "moving.listener", KindListener, deadPID, &elsewhere)
	mk(same, ConnPrefix+"00000000000000000000000000000001", KindConn, deadPID, &elsewhere)
	if got := stale(same); len(got) != 1 || !got["local.listener"] {
		t.Fatalf("first look at a pool of one host removed %v, want local.listener alone (its pid is dead)", got)
	}
	now = now.Add(RemoteStaleAfter - time.Second)
	binary.LittleEndian.PutUint64(moving.Mem[PageSize+ctlHeartbeat:], 1)
	if got := stale(same); len(got) != 0 {
		t.Errorf("before the bound, Clean removed %v", got)
	}
	now = now.Add(2 * time.Second) // remote.listener: the same heartbeat for RemoteStaleAfter+1s
	binary.LittleEndian.PutUint64(moving.Mem[PageSize+ctlHeartbeat:], 2)
	if got := stale(same); len(got) != 1 || !got["remote.listener"] {
		t.Errorf("after the bound, Clean removed %v, want remote.listener alone", got)
	}

	cross := t.TempDir()
	mk(cross, "local.listener", KindListener, deadPID, nil)
	if err := PrepareCrossHost(cross, OwnerOnly); err == nil {
		t.Fatal("PrepareCrossHost marked a pool with a listener")
	}
	// Made cross-host first, as PrepareCrossHost requires; its listener
	// is this host's, with a dead pid: judged by its heartbeat all the same.
	cross = filepath.Join(t.TempDir(), "pool")
	if err := PrepareCrossHost(cross, OwnerOnly); err != nil {
		t.Fatal(err)
	}
	mk(cross, "local.listener", KindListener, deadPID, nil)
	entries, err := ScanIn(cross, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name == "local.listener" && (e.Stale || !strings.Contains(e.Why, "a cross-host pool")) {
			t.Errorf("a cross-host pool's listener with a dead pid: %+v, want not stale, judged by its heartbeat", e)
		}
		if e.Name == HostsFile && (e.Stale || e.Kind != "hosts" || !strings.Contains(e.Why, "shared across hosts")) {
			t.Errorf("the marker's entry: %+v", e)
		}
	}
	now = now.Add(RemoteStaleAfter)
	if got := stale(cross); len(got) != 1 || !got["local.listener"] {
		t.Errorf("cross-host pool after the bound: Clean removed %v, want local.listener alone", got)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	return names
}
