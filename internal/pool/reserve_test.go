package pool

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// allocated returns the bytes the file system has allocated for path.
func allocated(t *testing.T, path string) int {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return int(st.Blocks) * 512
}

// countFallocate counts the calls of fallocate for the rest of the test.
func countFallocate(t *testing.T) *atomic.Int64 {
	var n atomic.Int64
	old := fallocate
	fallocate = func(fd int, mode uint32, off, len int64) error {
		n.Add(1)
		return old(fd, mode, off, len)
	}
	t.Cleanup(func() { fallocate = old })
	return &n
}

// testSpec is a connection segment with small rings and heaps of 1 MiB.
var testSpec = ConnSpec{C2S: 16 << 10, S2C: 16 << 10, C2SHeap: 1 << 20, S2CHeap: 1 << 20}

func TestCreateAllocatesEverything(t *testing.T) {
	dir := t.TempDir()
	seg, err := Create(dir, "seg", ListenerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	if got := allocated(t, seg.Path); got < ListenerSize {
		t.Errorf("a new segment has %d bytes allocated, want all %d", got, ListenerSize)
	}
	if !seg.Reserved(0, ListenerSize) {
		t.Error("Reserved(whole segment) = false after CreateIn")
	}
}

func TestConnSpecRanges(t *testing.T) {
	s := testSpec
	f := s.Fixed()
	h := s.Heaps()
	if len(f) != 2 || f[0] != (Range{0, 3*PageSize + s.C2S + s.S2C}) || f[1].End() != s.Size() ||
		f[1].Len != ReturnsSize(s.C2SHeap)+ReturnsSize(s.S2CHeap) {
		t.Errorf("Fixed() = %v", f)
	}
	if h[0] != (Range{f[0].End(), s.C2SHeap}) || h[1] != (Range{h[0].End(), s.S2CHeap}) || h[1].End() != f[1].Off {
		t.Errorf("Heaps() = %v, Fixed() = %v", h, f)
	}
	// The ranges agree with the layout MapConn computes.
	seg := newSeg(t, s.Size())
	InitConnSpec(seg.Mem, s, 1)
	lay, err := MapConn(seg.Mem, func(int) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if lay.Spec != s {
		t.Errorf("ConnLayout.Spec = %+v, want %+v", lay.Spec, s)
	}
	off := func(b []byte) int {
		return int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) - uintptr(unsafe.Pointer(unsafe.SliceData(seg.Mem))))
	}
	if off(lay.C2SHeap) != h[0].Off || off(lay.S2CHeap) != h[1].Off || off(lay.C2SReturns) != f[1].Off {
		t.Errorf("layout offsets %d %d %d, ranges %v %v", off(lay.C2SHeap), off(lay.S2CHeap), off(lay.C2SReturns), h, f)
	}
	none := ConnSpec{C2S: 4096, S2C: 4096}
	if f := none.Fixed(); len(f) != 1 || f[0].End() != none.Size() {
		t.Errorf("Fixed() without heaps = %v", f)
	}
}

// TestCreateConnLeavesHeapsSparse: an idle connection costs its rings and
// return queues, not its heaps; Reserve allocates a heap block, once.
func TestCreateConnLeavesHeapsSparse(t *testing.T) {
	dir := t.TempDir()
	s := testSpec
	seg, err := CreateConn(dir, "conn", s, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	fixed := s.Size() - s.C2SHeap - s.S2CHeap
	got := allocated(t, seg.Path)
	if got < fixed || got >= fixed+s.C2SHeap/2 {
		t.Fatalf("a new connection segment has %d bytes allocated, want its %d fixed bytes and no heap", got, fixed)
	}
	for _, r := range s.Fixed() {
		if !seg.Reserved(r.Off, r.Len) {
			t.Errorf("fixed range %v not reserved", r)
		}
	}
	heap := s.Heaps()[0]
	if seg.Reserved(heap.Off, PageSize) {
		t.Error("heap reserved before Reserve")
	}

	calls := countFallocate(t)
	block := Range{heap.Off + 8*PageSize, 3*PageSize + 100} // widened to 4 pages
	if err := seg.Reserve(block.Off, block.Len); err != nil {
		t.Fatal(err)
	}
	// (A disk file system may add a block of metadata.)
	if got2 := allocated(t, seg.Path); got2-got < 4*PageSize || got2-got > 6*PageSize {
		t.Errorf("Reserve of 4 pages allocated %d bytes", got2-got)
	}
	if calls.Load() != 1 || !seg.Reserved(block.Off, 4*PageSize) || seg.Reserved(block.Off-PageSize, PageSize) {
		t.Errorf("after Reserve: %d calls, reserved %v", calls.Load(), seg.Reserved(block.Off, 4*PageSize))
	}
	// Again, and any part of it: no system call.
	for _, r := range []Range{block, {block.Off + PageSize, 1}, {block.Off, 4 * PageSize}} {
		if err := seg.Reserve(r.Off, r.Len); err != nil {
			t.Fatal(err)
		}
	}
	if err := seg.ReserveBytes(seg.Mem[block.Off : block.Off+10]); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 {
		t.Errorf("reserving reserved pages made %d more fallocate calls", calls.Load()-1)
	}
	// A range around it: one call for the missing pages on both sides.
	if err := seg.Reserve(block.Off-2*PageSize, 8*PageSize); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || !seg.Reserved(block.Off-2*PageSize, 8*PageSize) {
		t.Errorf("widening: %d calls", calls.Load())
	}
	// The reserved pages can be written and are in the file.
	for i := block.Off - 2*PageSize; i < block.Off+6*PageSize; i += PageSize {
		seg.Mem[i] = 1
	}
	if got3 := allocated(t, seg.Path); got3-got < 8*PageSize || got3-got > 10*PageSize {
		t.Errorf("heap uses %d bytes after writing the 8 reserved pages", got3-got)
	}
	// The whole heap, then the whole segment, across bitmap words.
	if err := seg.ReserveRanges(heap, Range{0, s.Size()}); err != nil {
		t.Fatal(err)
	}
	if !seg.Reserved(0, s.Size()) {
		t.Error("whole segment not reserved")
	}
	if got4 := allocated(t, seg.Path); got4 < s.Size() {
		t.Errorf("%d bytes allocated after reserving all %d", got4, s.Size())
	}
}

func TestReserveRefuses(t *testing.T) {
	seg, err := CreateConn(t.TempDir(), "conn", testSpec, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	size := len(seg.Mem)
	for _, r := range []Range{{-1, 10}, {0, size + 1}, {size, 1}, {size - 10, 11}, {10, -1}} {
		if err := seg.Reserve(r.Off, r.Len); err == nil {
			t.Errorf("Reserve(%d, %d) succeeded", r.Off, r.Len)
		}
	}
	if err := seg.Reserve(size, 0); err != nil {
		t.Errorf("Reserve of 0 bytes = %v", err)
	}
	if err := seg.Reserve(size-1, 1); err != nil {
		t.Errorf("Reserve of the last byte = %v", err)
	}
	if err := seg.ReserveBytes(make([]byte, 10)); err == nil {
		t.Error("ReserveBytes of bytes outside the segment succeeded")
	}
	if err := (&Segment{Mem: seg.Mem}).Reserve(0, 1); err == nil {
		t.Error("Reserve on a Segment without a descriptor succeeded")
	}
	if (&Segment{}).FD() != -1 {
		t.Error("FD of a Segment without a descriptor is not -1")
	}
	if seg.FD() < 0 {
		t.Error("FD of a created segment is -1")
	}
	seg.Close()
	if seg.FD() != -1 {
		t.Error("FD after Close is not -1")
	}
	if err := seg.Reserve(0, 1); err == nil {
		t.Error("Reserve after Close succeeded")
	}
	if err := seg.res.reserve(testSpec.Heaps()[0].Off, 1); err == nil {
		t.Error("reserve of a hole after Close succeeded")
	}
}

// TestReserveConcurrent reserves overlapping ranges from several
// goroutines (run it with -race).
func TestReserveConcurrent(t *testing.T) {
	seg, err := CreateConn(t.TempDir(), "conn", testSpec, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	heap := testSpec.Heaps()[1]
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 64; i++ {
				off := heap.Off + ((i*7+g*13)%200)*PageSize
				if err := seg.Reserve(off, 3*PageSize); err != nil {
					t.Error(err)
					return
				}
				seg.Mem[off] = byte(g)
			}
		}()
	}
	wg.Wait()
}

// TestMemfdSealedAllocate: a memfd sealed against growing and shrinking,
// as the socket handshake makes them, can be allocated within its size
// (fallocate mode 0 changes no size), not beyond it.
func TestMemfdSealedAllocate(t *testing.T) {
	s := testSpec
	fd, err := unix.MemfdCreate("notnets-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Skipf("no memfd here: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(s.Size())); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		t.Fatal(err)
	}
	if err := Allocate(fd, s.Fixed()...); err != nil {
		t.Fatalf("Allocate within a sealed memfd = %v", err)
	}
	if err := Allocate(fd, Range{s.Size() - PageSize, 2 * PageSize}); err == nil {
		t.Error("Allocate beyond the end succeeded")
	}
	// Under the seals, fallocate past the end is refused by the kernel,
	// not only by Allocate's own check.
	if err := unix.Fallocate(fd, 0, int64(s.Size()-PageSize), 2*PageSize); !errors.Is(err, unix.EPERM) {
		t.Errorf("fallocate past the end of a sealed memfd = %v, want EPERM", err)
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	if st.Size != int64(s.Size()) {
		t.Fatalf("size %d after Allocate, want %d", st.Size, s.Size())
	}
	if int(st.Blocks)*512 < s.Size()-s.C2SHeap-s.S2CHeap || int(st.Blocks)*512 >= s.Size()-s.S2CHeap {
		t.Errorf("%d bytes allocated, want the fixed ranges only", st.Blocks*512)
	}
	mem, err := unix.Mmap(fd, 0, s.Size(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	seg, err := NewSegmentFD(fd, mem, FileOwner{Dev: uint64(st.Dev), Ino: st.Ino})
	if err != nil {
		unix.Munmap(mem)
		t.Fatal(err)
	}
	defer seg.Close()
	if seg.FD() == fd || seg.FD() < 0 {
		t.Errorf("FD() = %d, want a duplicate of %d", seg.FD(), fd)
	}
	heap := s.Heaps()[1]
	if err := seg.Reserve(heap.Off, heap.Len); err != nil {
		t.Fatalf("Reserve of a sealed memfd's heap = %v", err)
	}
	seg.Mem[heap.End()-1] = 1
	unix.Fstat(fd, &st)
	if int(st.Blocks)*512 < s.Size()-s.C2SHeap {
		t.Errorf("%d bytes allocated after reserving the heap", st.Blocks*512)
	}
	if seg.Unlink() != nil {
		t.Error("Unlink of a memfd segment failed")
	}
	if _, err := NewSegmentFD(fd, make([]byte, s.Size()+PageSize), FileOwner{}); err == nil {
		t.Error("NewSegmentFD of a mapping longer than the file succeeded")
	}
}

// mountTmpfs mounts a tmpfs of the given size (mount(8) syntax, "2m") on a
// new directory for the test, and unmounts it afterwards. It skips the
// test when it cannot (not root, no CAP_SYS_ADMIN in a container).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root; run the tests as root to check a full pool")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+size+",mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs for the test (%v); a full pool is not checked", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill fills the file system of dir with a file, the way any user can fill
// /dev/shm: from another process, until it is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "fill")
	out, err := exec.Command("dd", "if=/dev/zero", "of="+path, "bs=4096").CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		// No dd: write until ENOSPC here; write(2) reports it as an error.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		for err == nil {
			_, err = f.Write(make([]byte, PageSize))
		}
		f.Close()
	} else if err == nil {
		t.Fatalf("dd filled the test tmpfs without running out of space:\n%s", out)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Bavail != 0 {
		t.Fatalf("the test tmpfs still has %d free blocks after filling it", fs.Bavail)
	}
	return path
}

// TestFullPool fills a small tmpfs holding a pool, as any local user can
// fill /dev/shm, and checks that creating segments and reserving heap
// blocks fail with ENOSPC, wrapped in ErrExhausted, instead of killing
// the process with SIGBUS; and, as a control, that a store into a heap
// page nobody reserved does fault.
func TestFullPool(t *testing.T) {
	mnt := mountTmpfs(t, "2m")
	dir := filepath.Join(mnt, "pool")
	if err := Prepare(dir, OwnerOnly); err != nil {
		t.Fatal(err)
	}
	// A connection segment with heaps far larger than the file system:
	// sparse, it fits while the pool has room for its rings.
	s := ConnSpec{C2S: 64 << 10, S2C: 64 << 10, C2SHeap: 8 << 20, S2CHeap: 8 << 20}
	early, err := CreateConn(dir, "early", s, OwnerOnly)
	if err != nil {
		t.Fatalf("CreateConn of sparse heaps in a 2 MiB pool = %v", err)
	}
	defer early.Close()
	InitConnSpec(early.Mem, s, os.Getpid())
	fillPath := fill(t, mnt)

	wantFull := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s in a full pool succeeded", what)
		} else if !errors.Is(err, ErrExhausted) || !errors.Is(err, unix.ENOSPC) {
			t.Errorf("%s in a full pool = %v, want ErrExhausted and ENOSPC", what, err)
		}
	}
	seg, err := CreateIn(dir, ListenerFile("svc"), ListenerSize, OwnerOnly)
	wantFull("CreateIn of a listener", err)
	if seg != nil {
		seg.Close()
	}
	// The smallest connection segment, and one of the default sizes
	// (1 MiB rings, 64 MiB heaps).
	for _, cs := range []ConnSpec{{C2S: 4096, S2C: 4096}, {C2S: 1 << 20, S2C: 1 << 20, C2SHeap: 64 << 20, S2CHeap: 64 << 20}} {
		seg, err = CreateConn(dir, "conn-full", cs, OwnerOnly)
		wantFull("CreateConn", err)
		if seg != nil {
			seg.Close()
		}
	}
	for _, name := range []string{ListenerFile("svc"), "conn-full"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a failed create left %s behind: %v", name, err)
		}
	}

	// The fixed ranges of the early segment were allocated: its header,
	// control blocks and rings can be written.
	for _, r := range s.Fixed() {
		for i := r.Off; i < r.End(); i += PageSize {
			early.Mem[i] = 1
		}
	}
	// Its heaps cannot grow: Reserve says so, and nothing faults.
	heap := s.Heaps()[0]
	wantFull("Reserve of a heap block", early.Reserve(heap.Off, 3<<20))
	wantFull("ReserveBytes of a heap block", early.ReserveBytes(early.Mem[heap.Off:heap.Off+PageSize]))
	if early.Reserved(heap.Off, PageSize) {
		t.Error("a heap page counts as reserved after a failed Reserve")
	}
	// The control: a store into a heap page nobody reserved faults.
	if !faults(func() { early.Mem[heap.Off] = 1 }) {
		t.Error("a store into an unreserved heap page of a full pool did not fault; the test does not reproduce the problem")
	}

	// Room again: reserving works and the block can be written.
	if err := os.Truncate(fillPath, 0); err != nil {
		t.Fatal(err)
	}
	if err := early.Reserve(heap.Off+PageSize, 256<<10); err != nil {
		t.Fatalf("Reserve after the pool has room again = %v", err)
	}
	for i := heap.Off + PageSize; i < heap.Off+PageSize+256<<10; i += PageSize {
		early.Mem[i] = 2
	}
	seg, err = CreateIn(dir, ListenerFile("svc"), ListenerSize, OwnerOnly)
	if err != nil {
		t.Fatalf("CreateIn after the pool has room again = %v", err)
	}
	InitListener(seg.Mem, os.Getpid(), 0)
	if _, err := MapListener(seg.Mem); err != nil {
		t.Error(err)
	}
	seg.Close()
}

// faults reports whether f faults on a memory access (SIGBUS or SIGSEGV),
// which debug.SetPanicOnFault turns into a panic.
func faults(f func()) (faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			faulted = true
		}
	}()
	f()
	return false
}
