package pool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/notnets/notnets/internal/ring"
)

// failBound bounds every wait in these tests. It only turns a hang into a
// failure; no test relies on it for synchronization.
const failBound = 10 * time.Second

// withUmask sets the process umask for the duration of the test, so that
// mode checks do not depend on the environment. Tests in this file do not
// run in parallel, so the process-wide setting is safe.
func withUmask(t *testing.T, mask int) {
	t.Helper()
	old := unix.Umask(mask)
	t.Cleanup(func() { unix.Umask(old) })
}

func wantErrContaining(t *testing.T, what string, err error, substr string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want one containing %q", what, substr)
		return
	}
	if !strings.Contains(err.Error(), substr) {
		t.Errorf("%s: error %q does not contain %q", what, err, substr)
	}
}

// --- Prepare ---

func TestPrepareCreatesPrivateDirectory(t *testing.T) {
	withUmask(t, 0o022)
	dir := filepath.Join(t.TempDir(), "pool")
	if err := Prepare(dir, OwnerOnly); err != nil {
		t.Fatalf("Prepare(%s) = %v", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() {
		t.Fatalf("Prepare made %v, want a directory", fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("pool directory mode %v, want 0700", perm)
	}
	// An existing, acceptable directory is fine the second time.
	if err := Prepare(dir, OwnerOnly); err != nil {
		t.Errorf("Prepare of an existing pool = %v", err)
	}
}

func TestPrepareRefusesGroupWritableWithoutAGroup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pool")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o770); err != nil {
		t.Fatal(err)
	}
	wantErrContaining(t, "Prepare of a group-writable directory", Prepare(dir, OwnerOnly), "writable by its group")
}

func TestPrepareRefuses(t *testing.T) {
	base := t.TempDir()

	target := filepath.Join(base, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil { // chmod ignores the umask
		t.Fatal(err)
	}
	sticky := filepath.Join(base, "sticky")
	if err := os.Mkdir(sticky, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sticky, os.ModeSticky|0o703); err != nil { // /tmp-like, for others only
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, dir, want string
	}{
		{"empty path", "", "empty pool directory"},
		{"symlink to a directory", link, "symbolic link"},
		{"regular file", file, "not a directory"},
		{"world-writable directory", open, "writable by others"},
		{"world-writable sticky directory", sticky, "writable by others"},
		{"missing parent (not created recursively)", filepath.Join(base, "no", "such"), "create pool directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErrContaining(t, "Prepare("+tc.dir+")", Prepare(tc.dir, OwnerOnly), tc.want)
		})
	}

	// Refusing must not have changed what was there.
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("symlink after Prepare: %v, %v", fi, err)
	}
	if fi, err := os.Stat(open); err != nil || fi.Mode().Perm() != 0o777 {
		t.Errorf("world-writable directory after Prepare: %v, %v", fi, err)
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv(EnvPool, "/some/pool")
	if got := DefaultDir(); got != "/some/pool" {
		t.Errorf("DefaultDir with $%s set = %q", EnvPool, got)
	}
	t.Setenv(EnvPool, "")
	want := fmt.Sprintf("notnets-%d", os.Getuid())
	if got := DefaultDir(); filepath.Base(got) != want {
		t.Errorf("DefaultDir with $%s empty = %q, want a directory named %s", EnvPool, got, want)
	}
}

// --- Names ---

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
		want string // part of the error when !ok
	}{
		{"a", true, ""},
		{"greeter", true, ""},
		{"Greeter_v2.prod-1", true, ""},
		{"a.", true, ""},
		{"a..b", true, ""},
		{"-x", true, ""},
		{"0", true, ""},
		{strings.Repeat("n", 200), true, ""},

		{"", false, "length must be 1 to 200"},
		{strings.Repeat("n", 201), false, "length must be 1 to 200"},
		{".x", false, "must not start with a dot"},
		{".", false, "must not start with a dot"},
		{"..", false, "must not start with a dot"},
		{"a/b", false, "has character '/'"},
		{"/abs", false, "has character '/'"},
		{"a b", false, "has character ' '"},
		{"a\x00b", false, "has character"},
		{"a\\b", false, "has character"},
		{"caf\u00e9", false, "has character"},
		{"a:b", false, "has character ':'"},
	} {
		err := ValidName(tc.name)
		label := tc.name
		if len(label) > 20 {
			label = fmt.Sprintf("%.10s... (%d bytes)", label, len(label))
		}
		switch {
		case tc.ok && err != nil:
			t.Errorf("ValidName(%q) = %v, want nil", label, err)
		case !tc.ok:
			wantErrContaining(t, fmt.Sprintf("ValidName(%q)", label), err, tc.want)
		}
	}
}

func TestListenerFile(t *testing.T) {
	if got := ListenerFile("greeter"); got != "greeter.listener" {
		t.Errorf("ListenerFile(greeter) = %q", got)
	}
}

func TestConnNameRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		name, err := NewConnName()
		if err != nil {
			t.Fatal(err)
		}
		if !ValidConnName(name) {
			t.Fatalf("ValidConnName(%q) = false for a NewConnName result", name)
		}
		if len(name) != 37 || !strings.HasPrefix(name, "conn-") {
			t.Fatalf("NewConnName = %q, want conn- and 32 hex digits (37 bytes)", name)
		}
		if strings.ToLower(name) != name {
			t.Fatalf("NewConnName = %q, want lowercase hex (PROTOCOL.md 3.3)", name)
		}
		if seen[name] {
			t.Fatalf("NewConnName returned %q twice", name)
		}
		seen[name] = true
	}
}

func TestValidConnName(t *testing.T) {
	hex32 := "0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"conn-" + hex32, true},
		// PROTOCOL.md 3.3: senders write lowercase, the server accepts both.
		{"conn-" + strings.ToUpper(hex32), true},

		{"", false},
		{"conn-", false},
		{"conn-" + hex32[:31], false},
		{"conn-" + hex32 + "0", false},
		{"conn-" + hex32[:31] + "g", false},
		{"conn-" + hex32[:30] + "/x", false},
		{"conn-" + hex32[:31] + " ", false},
		{"Conn-" + hex32, false},
		{"conn_" + hex32, false},
		{"xconn-" + hex32[:31], false},
		{hex32, false},
		{"conn-../" + hex32[:29], false},
		{"conn-" + hex32 + ".listener", false},
	} {
		if got := ValidConnName(tc.name); got != tc.ok {
			t.Errorf("ValidConnName(%q) = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

// --- Create, Open ---

func TestCreate(t *testing.T) {
	withUmask(t, 0o022)
	dir := t.TempDir()
	seg, err := Create(dir, "seg", 2*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	if seg.Path != filepath.Join(dir, "seg") {
		t.Errorf("Path = %q", seg.Path)
	}
	if len(seg.Mem) != 2*PageSize {
		t.Fatalf("len(Mem) = %d, want %d", len(seg.Mem), 2*PageSize)
	}
	if !bytes.Equal(seg.Mem, make([]byte, 2*PageSize)) {
		t.Error("a new segment is not all zero")
	}
	fi, err := os.Lstat(seg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("segment file mode %v, want a regular file with mode 0600", fi.Mode())
	}
	if fi.Size() != 2*PageSize {
		t.Errorf("segment file size %d, want %d", fi.Size(), 2*PageSize)
	}

	// The mapping is shared: stores reach the file.
	copy(seg.Mem[PageSize:], "shared")
	b, err := os.ReadFile(seg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[PageSize:PageSize+6]) != "shared" {
		t.Errorf("file holds %q after a store into the mapping", b[PageSize:PageSize+6])
	}

	// O_EXCL: the name is taken now.
	again, err := Create(dir, "seg", PageSize)
	if err == nil {
		again.Close()
		t.Fatal("second Create of the same name succeeded")
	}
	if !errors.Is(err, syscall.EEXIST) {
		t.Errorf("second Create = %v, want EEXIST (Listen relies on it)", err)
	}
	if fi, err := os.Stat(seg.Path); err != nil || fi.Size() != 2*PageSize {
		t.Errorf("the failed Create changed the existing file: %v, %v", fi, err)
	}
}

func TestCreateRefusesSymlinks(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")

	// A dangling symlink: creating through it would make target.
	if err := os.Symlink(target, filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	if seg, err := Create(dir, "dangling", PageSize); err == nil {
		seg.Close()
		t.Error("Create through a dangling symlink succeeded")
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Create through a dangling symlink made its target: %v", err)
	}

	// A symlink to an existing file: neither followed nor truncated.
	if err := os.WriteFile(target, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "live")); err != nil {
		t.Fatal(err)
	}
	if seg, err := Create(dir, "live", PageSize); err == nil {
		seg.Close()
		t.Error("Create through a symlink to a file succeeded")
	}
	if b, err := os.ReadFile(target); err != nil || string(b) != "keep" {
		t.Errorf("symlink target after Create: %q, %v", b, err)
	}
}

func TestCreateFailureRemovesFile(t *testing.T) {
	dir := t.TempDir()
	// mmap of zero bytes fails (EINVAL) after the file was made: Create
	// must not leave it behind.
	if seg, err := Create(dir, "empty", 0); err == nil {
		seg.Close()
		t.Fatal("Create of a 0-byte segment succeeded")
	}
	if _, err := os.Lstat(filepath.Join(dir, "empty")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed Create left its file: %v", err)
	}
}

func TestUnlinkAndClose(t *testing.T) {
	dir := t.TempDir()
	seg, err := Create(dir, "seg", PageSize)
	if err != nil {
		t.Fatal(err)
	}
	seg.Mem[0] = 42
	if err := seg.Unlink(); err != nil {
		t.Fatalf("Unlink = %v", err)
	}
	if _, err := os.Lstat(seg.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file still there after Unlink: %v", err)
	}
	if seg.Mem[0] != 42 {
		t.Error("mapping changed by Unlink")
	}
	if err := seg.Unlink(); err != nil {
		t.Errorf("second Unlink = %v, want nil (ENOENT is ignored)", err)
	}
	if err := seg.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if seg.Mem != nil {
		t.Error("Mem not cleared by Close")
	}
	if err := seg.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func writeFile(t *testing.T, path string, size int) {
	t.Helper()
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	seg, err := Create(dir, "seg", 3*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	copy(seg.Mem[PageSize:], "hello")

	o, err := Open(dir, "seg", 3*PageSize, 3*PageSize)
	if err != nil {
		t.Fatalf("Open with exact bounds = %v", err)
	}
	defer o.Close()
	if len(o.Mem) != 3*PageSize {
		t.Fatalf("len(Mem) = %d", len(o.Mem))
	}
	if string(o.Mem[PageSize:PageSize+5]) != "hello" {
		t.Error("Open does not see the creator's stores")
	}
	// Both mappings are of the same file: stores go both ways.
	o.Mem[2*PageSize] = 7
	if seg.Mem[2*PageSize] != 7 {
		t.Error("creator does not see the opener's stores")
	}
	if &o.Mem[0] == &seg.Mem[0] {
		t.Error("Open returned the creator's mapping, not a new one")
	}
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "file"), 2*PageSize)
	if err := os.Symlink(filepath.Join(dir, "file"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "empty"), 0)

	for _, tc := range []struct {
		what, name string
		min, max   int
		want       string
	}{
		{"symlink to a valid segment", "link", 0, 1 << 20, "open segment"},
		{"directory", "dir", 0, 1 << 20, ""},
		// O_RDWR on a FIFO does not block on Linux, so fstat sees it.
		{"fifo", "fifo", 0, 1 << 20, "not a regular file"},
		{"missing file", "none", 0, 1 << 20, "open segment"},
		{"smaller than the minimum", "file", 2*PageSize + 1, 1 << 20, "has size 8192"},
		{"larger than the maximum", "file", 0, 2*PageSize - 1, "has size 8192"},
		{"empty file (cannot be mapped)", "empty", 0, 1 << 20, "map segment"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			seg, err := Open(dir, tc.name, tc.min, tc.max)
			if err == nil {
				seg.Close()
				t.Fatalf("Open(%s) succeeded", tc.name)
			}
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open(%s) = %q, want it to contain %q", tc.name, err, tc.want)
			}
		})
	}
	// The symlink is refused because of O_NOFOLLOW, not by chance.
	if _, err := Open(dir, "link", 0, 1<<20); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("Open of a symlink = %v, want ELOOP", err)
	}
	if _, err := Open(dir, "none", 0, 1<<20); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of a missing file = %v, want ErrNotExist", err)
	}
}

// --- Layouts ---

// newSeg makes a segment of size bytes in a fresh directory.
func newSeg(t *testing.T, size int) *Segment {
	t.Helper()
	seg, err := Create(t.TempDir(), "seg", size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seg.Close() })
	return seg
}

// at reports whether p points at mem[off].
func at[T any](p *T, mem []byte, off int) bool {
	return unsafe.Pointer(p) == unsafe.Pointer(&mem[off])
}

func TestMapConnFresh(t *testing.T) {
	const a, b = 4096, 8192
	seg := newSeg(t, ConnSize(a, b))
	mem := seg.Mem
	if len(mem) != 12288+a+b {
		t.Fatalf("ConnSize(%d, %d) = %d, want 12288 + A + B", a, b, len(mem))
	}
	InitConn(mem, a, b, 4242)

	// The header as PROTOCOL.md section 4 lays it out.
	want := []byte{0x4e, 0x4e, 0x54, 0x53, 1, 0, 1, 0}
	if !bytes.Equal(mem[:8], want) {
		t.Errorf("header bytes 0-7 = % x, want % x", mem[:8], want)
	}
	le := binary.LittleEndian
	if s := le.Uint64(mem[8:]); s != uint64(len(mem)) {
		t.Errorf("header size %d, want %d", s, len(mem))
	}
	if pid, pa, pb := le.Uint32(mem[16:]), le.Uint32(mem[20:]), le.Uint32(mem[24:]); pid != 4242 || pa != a || pb != b {
		t.Errorf("header pid, A, B = %d, %d, %d; want 4242, %d, %d", pid, pa, pb, a, b)
	}

	lay, err := MapConn(mem, ring.CheckCap)
	if err != nil {
		t.Fatalf("MapConn of a fresh segment = %v", err)
	}
	if lay.PeerPID != 4242 {
		t.Errorf("PeerPID = %d", lay.PeerPID)
	}
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"client state at 4096", at(lay.Client.State.Ptr(), mem, 4096)},
		{"client heartbeat at 4104", at(lay.Client.Heartbeat.Ptr(), mem, 4104)},
		{"C2S tail at 4160", at(lay.Client.Tail.Ptr(), mem, 4160)},
		{"S2C head at 4224", at(lay.Client.Head.Ptr(), mem, 4224)},
		{"client sleeping at 4288", at(lay.Client.Sleeping.Ptr(), mem, 4288)},
		{"server state at 8192", at(lay.Server.State.Ptr(), mem, 8192)},
		{"server heartbeat at 8200", at(lay.Server.Heartbeat.Ptr(), mem, 8200)},
		{"S2C tail at 8256", at(lay.Server.Tail.Ptr(), mem, 8256)},
		{"C2S head at 8320", at(lay.Server.Head.Ptr(), mem, 8320)},
		{"server sleeping at 8384", at(lay.Server.Sleeping.Ptr(), mem, 8384)},
		{"C2S data at 12288", at(&lay.C2S[0], mem, 12288)},
		{"S2C data at 12288 + A", at(&lay.S2C[0], mem, 12288+a)},
	} {
		if !f.ok {
			t.Errorf("layout: %s: wrong address", f.name)
		}
	}
	if len(lay.C2S) != a || cap(lay.C2S) != a || len(lay.S2C) != b || cap(lay.S2C) != b {
		t.Errorf("ring regions len/cap %d/%d and %d/%d, want %d and %d exactly",
			len(lay.C2S), cap(lay.C2S), len(lay.S2C), cap(lay.S2C), a, b)
	}
	if lay.Client.State.Load() != StateNew || lay.Server.State.Load() != StateNew {
		t.Error("states of a fresh segment are not new (0)")
	}
}

func TestMapConnRejects(t *testing.T) {
	const a, b = 4096, 8192
	size := ConnSize(a, b)
	le := binary.LittleEndian
	for _, tc := range []struct {
		name   string
		size   int // segment size; 0 means size
		mutate func(mem []byte)
		want   string
	}{
		{"bad magic", 0, func(m []byte) { le.PutUint32(m[0:], 0x53544e4f) }, "bad magic"},
		{"bad version", 0, func(m []byte) { le.PutUint16(m[4:], 2) }, "protocol version 2"},
		{"version 0", 0, func(m []byte) { le.PutUint16(m[4:], 0) }, "protocol version 0"},
		{"listener kind", 0, func(m []byte) { le.PutUint16(m[6:], KindListener) }, "segment kind 2"},
		{"kind 0", 0, func(m []byte) { le.PutUint16(m[6:], 0) }, "segment kind 0"},
		{"header size larger than the file", 0, func(m []byte) { le.PutUint64(m[8:], uint64(size+PageSize)) }, "header says"},
		{"header size smaller than the file", 0, func(m []byte) { le.PutUint64(m[8:], uint64(size-1)) }, "header says"},
		{"C2S capacity not a power of two", 0, func(m []byte) { le.PutUint32(m[20:], 4096+16) }, "client-to-server ring capacity"},
		{"C2S capacity below 4096", 0, func(m []byte) { le.PutUint32(m[20:], 2048) }, "client-to-server ring capacity"},
		{"C2S capacity 0", 0, func(m []byte) { le.PutUint32(m[20:], 0) }, "client-to-server ring capacity"},
		{"S2C capacity above 1 GiB", 0, func(m []byte) { le.PutUint32(m[24:], 1<<31) }, "server-to-client ring capacity"},
		{"S2C capacity not a power of two", 0, func(m []byte) { le.PutUint32(m[24:], 3*4096) }, "server-to-client ring capacity"},
		{"rings do not add up to the size", 0, func(m []byte) { le.PutUint32(m[24:], 4096) }, "does not match rings"},
		{"file larger than its rings", ConnSize(a, b) + PageSize, func(m []byte) {}, "does not match rings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.size
			if n == 0 {
				n = size
			}
			seg := newSeg(t, n)
			InitConn(seg.Mem, a, b, 1)
			tc.mutate(seg.Mem)
			lay, err := MapConn(seg.Mem, ring.CheckCap)
			if lay != nil {
				t.Error("MapConn returned a layout with its error")
			}
			wantErrContaining(t, "MapConn", err, tc.want)
		})
	}

	t.Run("smaller than a page", func(t *testing.T) {
		_, err := MapConn(make([]byte, 100), ring.CheckCap)
		wantErrContaining(t, "MapConn of 100 bytes", err, "smaller than its header page")
	})
	t.Run("uses the given capacity check", func(t *testing.T) {
		seg := newSeg(t, size)
		InitConn(seg.Mem, a, b, 1)
		_, err := MapConn(seg.Mem, func(c int) error {
			if c == b {
				return fmt.Errorf("capacity %d refused", c)
			}
			return nil
		})
		wantErrContaining(t, "MapConn with a refusing check", err, "server-to-client capacity 8192 refused")
	})
}

func TestMapListener(t *testing.T) {
	seg := newSeg(t, ListenerSize)
	mem := seg.Mem
	if len(mem) != 12288 {
		t.Fatalf("ListenerSize = %d, want 12288", len(mem))
	}
	InitListener(mem, 777, 0)
	le := binary.LittleEndian
	if k, pa, pb := le.Uint16(mem[6:]), le.Uint32(mem[20:]), le.Uint32(mem[24:]); k != KindListener || pa != 31 || pb != 0 {
		t.Errorf("listener header kind, A, B = %d, %d, %d; want 2, 31, 0", k, pa, pb)
	}
	lay, err := MapListener(mem)
	if err != nil {
		t.Fatalf("MapListener of a fresh listener = %v", err)
	}
	if lay.PID != 777 {
		t.Errorf("PID = %d", lay.PID)
	}
	if !at(lay.Server.State.Ptr(), mem, 4096) {
		t.Error("listener server state not at 4096")
	}
	if !at(lay.Knock.Ptr(), mem, 8192) {
		t.Error("knock not at 8192")
	}
	if len(lay.Slots) != 31 {
		t.Fatalf("%d slots, want 31", len(lay.Slots))
	}
	for i, s := range lay.Slots {
		off := 8256 + 128*i
		if !at(s.State.Ptr(), mem, off) || !at(s.PID.Ptr(), mem, off+4) {
			t.Errorf("slot %d: state or pid not at %d", i, off)
		}
	}
	if end := 8256 + 128*31; end+64 != len(mem) {
		t.Errorf("slots end at %d, want 64 reserved bytes before %d", end, len(mem))
	}
}

func TestMapListenerRejects(t *testing.T) {
	le := binary.LittleEndian
	for _, tc := range []struct {
		name   string
		size   int
		mutate func(mem []byte)
		want   string
	}{
		{"bad magic", ListenerSize, func(m []byte) { m[3] = 0 }, "bad magic"},
		{"bad version", ListenerSize, func(m []byte) { le.PutUint16(m[4:], 9) }, "protocol version 9"},
		{"connection kind", ListenerSize, func(m []byte) { le.PutUint16(m[6:], KindConn) }, "segment kind 1"},
		{"header size mismatch", ListenerSize, func(m []byte) { le.PutUint64(m[8:], 1<<20) }, "header says"},
		{"30 slots", ListenerSize, func(m []byte) { le.PutUint32(m[20:], 30) }, "listener with 30 slots"},
		{"wrong total size", ListenerSize + PageSize, func(m []byte) {}, "want 31 slots in 12288"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seg := newSeg(t, tc.size)
			InitListener(seg.Mem, 1, 0)
			tc.mutate(seg.Mem)
			lay, err := MapListener(seg.Mem)
			if lay != nil {
				t.Error("MapListener returned a layout with its error")
			}
			wantErrContaining(t, "MapListener", err, tc.want)
		})
	}
}

// --- Slots ---

func newListener(t *testing.T) (*ListenerLayout, []byte) {
	t.Helper()
	seg := newSeg(t, ListenerSize)
	InitListener(seg.Mem, 1, 0)
	lay, err := MapListener(seg.Mem)
	if err != nil {
		t.Fatal(err)
	}
	return lay, seg.Mem
}

func TestSlotName(t *testing.T) {
	lay, mem := newListener(t)
	name, err := NewConnName()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{name, "", "x", strings.Repeat("y", SlotNameMax)} {
		s := lay.Slots[5]
		s.SetName(n)
		got, err := s.Name()
		if err != nil || got != n {
			t.Errorf("SetName(%q); Name() = %q, %v", n, got, err)
		}
	}

	// Layout: length at 8, name bytes from 16 (PROTOCOL.md 10.1).
	s := lay.Slots[2]
	s.SetName(name)
	off := 8256 + 128*2
	if l := binary.LittleEndian.Uint32(mem[off+8:]); l != 37 {
		t.Errorf("slot name length word = %d, want 37", l)
	}
	if got := string(mem[off+16 : off+16+37]); got != name {
		t.Errorf("slot name bytes = %q, want %q", got, name)
	}

	// A name does not spill into the next slot.
	next := lay.Slots[3]
	before := append([]byte(nil), mem[off+128:off+256]...)
	s.SetName(strings.Repeat("z", 500))
	if !bytes.Equal(mem[off+128:off+256], before) || next.State.Load() != SlotFree {
		t.Error("SetName of a long name wrote into the next slot")
	}
}

func TestSlotNameTooLong(t *testing.T) {
	lay, mem := newListener(t)
	s := lay.Slots[0]
	s.SetName(strings.Repeat("a", SlotNameMax+1))
	_, err := s.Name()
	wantErrContaining(t, fmt.Sprintf("Name after SetName of %d bytes", SlotNameMax+1), err, "exceeds 64")

	// A hostile length word, as a peer could store it.
	for _, n := range []uint32{SlotNameMax + 1, 112, 1 << 31, 1<<32 - 1} {
		binary.LittleEndian.PutUint32(mem[8256+8:], n)
		if got, err := s.Name(); err == nil {
			t.Errorf("Name with length word %d = %q, nil; want an error", n, got)
		}
	}
}

func TestSlotStateWord(t *testing.T) {
	lay, mem := newListener(t)
	s := lay.Slots[4]
	off := 8256 + 128*4
	word := func() uint32 { return binary.LittleEndian.Uint32(mem[off:]) }

	w, ok := s.Claim()
	if !ok || SlotState(w) != SlotClaimed || w != word() {
		t.Fatalf("Claim of a fresh slot = %#x, %v; word %#x", w, ok, word())
	}
	if _, ok := s.Claim(); ok {
		t.Fatal("Claim of a claimed slot succeeded")
	}
	r, ok := s.Advance(w, SlotReady)
	if !ok || SlotState(r) != SlotReady || r>>8 != w>>8 || r != word() {
		t.Fatalf("Advance(%#x, ready) = %#x, %v; word %#x", w, r, ok, word())
	}
	if _, ok := s.Advance(w, SlotReady); ok {
		t.Error("Advance from a stale word succeeded")
	}
	if _, ok := s.Claim(); ok {
		t.Error("Claim of a ready slot succeeded")
	}
	if s.Free(w) {
		t.Error("Free from a stale (claimed) word succeeded")
	}
	if !s.Free(r) {
		t.Fatal("Free of the ready slot failed")
	}
	f := word()
	if SlotState(f) != SlotFree || f>>8 != r>>8+1 {
		t.Fatalf("word after Free = %#x, want free in generation %d", f, r>>8+1)
	}
	// A late withdrawal or reclaim, from the slot's previous use, must not
	// succeed on its next use.
	w2, ok := s.Claim()
	if !ok || w2>>8 != f>>8 {
		t.Fatalf("Claim after Free = %#x, %v", w2, ok)
	}
	if s.Free(r) || s.Free(w) {
		t.Error("Free with a word of the previous generation succeeded")
	}
	if word() != w2 {
		t.Errorf("word %#x, want %#x", word(), w2)
	}
	// The generation wraps within bits 8-31 without touching the state.
	binary.LittleEndian.PutUint32(mem[off:], 0xffffff00|SlotReady)
	if !s.Free(0xffffff00 | SlotReady) {
		t.Fatal("Free at the last generation failed")
	}
	if word() != SlotFree {
		t.Errorf("word after the generation wrapped = %#x, want 0", word())
	}
	// Other slots are untouched.
	for i, o := range lay.Slots {
		if i != 4 && o.State.Load() != 0 {
			t.Errorf("slot %d state word %#x", i, o.State.Load())
		}
	}
}
