//go:build linux

package pool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// testChunk is the chunk size of the test devices: small, so that a
// device of a few hundred KiB has many chunks.
const testChunk = 64 << 10

// devicePool makes a pool on a regular file of chunks×testChunk bytes
// standing in for a devdax device, and returns the pool and the file.
func devicePool(t *testing.T, chunks int) (dir, dev string) {
	t.Helper()
	base := t.TempDir()
	dev = filepath.Join(base, "dax0.0")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, int64(chunks*testChunk)); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(base, "pool")
	if err := PrepareDevice(dir, OwnerOnly, DeviceConfig{Path: dev, ChunkSize: testChunk}); err != nil {
		t.Fatal(err)
	}
	return dir, dev
}

// claimed returns how many chunks of the pool's device are claimed.
func claimed(t *testing.T, dir string) int {
	t.Helper()
	c, err := ClaimedChunks(dir, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	return len(c)
}

func TestDeviceMarker(t *testing.T) {
	dir, dev := devicePool(t, 16)
	d, err := ReadDevice(dir, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	if d == nil || d.Path != dev || d.ChunkSize != testChunk || d.Chunks != 16 {
		t.Fatalf("device %+v, want %s with 16 chunks of %d", d, dev, testChunk)
	}
	mode, err := ReadMode(dir, OwnerOnly)
	if err != nil || mode.Device == nil || mode.Device.ID != d.ID {
		t.Fatalf("ReadMode: %+v, %v: want the device", mode, err)
	}
	// Again on the same device: taken as it is; on another: refused.
	if err := PrepareDevice(dir, OwnerOnly, DeviceConfig{Path: dev, ChunkSize: testChunk}); err != nil {
		t.Fatalf("PrepareDevice again: %v", err)
	}
	other := filepath.Join(t.TempDir(), "dax1.0")
	os.WriteFile(other, make([]byte, testChunk), 0o600)
	if err := PrepareDevice(dir, OwnerOnly, DeviceConfig{Path: other, ChunkSize: testChunk}); !errors.Is(err, ErrPoolInUse) {
		t.Fatalf("PrepareDevice on another device: %v, want ErrPoolInUse", err)
	}
	// A chunk size that is not a power of two, and a device smaller
	// than a chunk.
	if err := PrepareDevice(filepath.Join(t.TempDir(), "p"), OwnerOnly, DeviceConfig{Path: dev, ChunkSize: 3 * PageSize}); err == nil {
		t.Fatal("chunk size 3 pages accepted")
	}
	if err := PrepareDevice(filepath.Join(t.TempDir(), "p"), OwnerOnly, DeviceConfig{Path: dev, ChunkSize: 1 << 30}); err == nil {
		t.Fatal("a device smaller than one chunk accepted")
	}
	if err := PrepareDevice(filepath.Join(t.TempDir(), "p"), OwnerOnly, DeviceConfig{Path: t.TempDir()}); err == nil {
		t.Fatal("a directory accepted as a device")
	}
}

func TestDeviceSegment(t *testing.T) {
	dir, dev := devicePool(t, 16)
	size := testChunk + 3*PageSize // two chunks
	seg, err := CreateIn(dir, "a.listener", size, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	if len(seg.Mem) != size {
		t.Fatalf("Mem of %d bytes, want %d", len(seg.Mem), size)
	}
	if fi, err := os.Stat(filepath.Join(dir, "a.listener")); err != nil || fi.Size() != extentSize {
		t.Fatalf("segment file: %v, %v: want a descriptor of %d bytes", fi, err, extentSize)
	}
	if n := claimed(t, dir); n != 2 {
		t.Fatalf("%d chunks claimed, want 2", n)
	}
	// Reserve has nothing to do: everything is there.
	if err := seg.Reserve(0, size); err != nil || !seg.Reserved(0, size) {
		t.Fatalf("Reserve: %v, Reserved %v", err, seg.Reserved(0, size))
	}
	mark := []byte("bytes in the device")
	copy(seg.Mem[size-len(mark):], mark)
	img, err := os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(img, mark) {
		t.Fatal("what the segment wrote is not in the device file")
	}
	for _, write := range []bool{true, false} {
		open := OpenIn
		if !write {
			open = OpenReadOnlyIn
		}
		o, err := open(dir, "a.listener", size, size, OwnerOnly)
		if err != nil {
			t.Fatalf("open (write %v): %v", write, err)
		}
		if !bytes.Equal(o.Mem[size-len(mark):], mark) {
			t.Fatalf("open (write %v): the opener does not see the creator's bytes", write)
		}
		if o.Owner != seg.Owner {
			t.Fatalf("owner %+v, creator's %+v", o.Owner, seg.Owner)
		}
		o.Close()
	}
	if _, err := OpenIn(dir, "a.listener", size+1, 2*size, OwnerOnly); err == nil || !strings.Contains(err.Error(), "bytes, want") {
		t.Fatalf("open with a larger minimum size: %v", err)
	}
	if _, err := CreateIn(dir, "a.listener", PageSize, OwnerOnly); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("create an existing name: %v, want EEXIST", err)
	}
	if n := claimed(t, dir); n != 2 {
		t.Fatalf("%d chunks claimed after a failed create, want 2", n)
	}
	// The registry, made and then opened, lives there too.
	for range 2 {
		r, err := OpenRegistry(dir, OwnerOnly, CoherenceHardware)
		if err != nil {
			t.Fatal(err)
		}
		r.Generation.Add(1)
		r.Close()
	}
	if gen, err := ReadGeneration(dir, OwnerOnly); err != nil || gen != 2 {
		t.Fatalf("ReadGeneration: %d, %v; want 2", gen, err)
	}
}

func TestDeviceExhaustionAndReuse(t *testing.T) {
	dir, _ := devicePool(t, 8)
	var segs []*Segment
	for i := range 4 {
		seg, err := CreateIn(dir, fmt.Sprintf("s%d", i), 2*testChunk, OwnerOnly)
		if err != nil {
			t.Fatalf("segment %d: %v", i, err)
		}
		for j := range seg.Mem {
			seg.Mem[j] = byte(i + 1)
		}
		segs = append(segs, seg)
	}
	_, err := CreateIn(dir, "more", PageSize, OwnerOnly)
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "8 of 8 chunks are claimed") {
		t.Fatalf("create on a full device: %v, want ErrExhausted saying why", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "more")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed create left its file: %v", err)
	}
	// Removed and closed: its chunks are free, and a new segment in them
	// reads zeros.
	if err := segs[1].Unlink(); err != nil {
		t.Fatal(err)
	}
	if n := claimed(t, dir); n != 8 {
		t.Fatalf("%d chunks claimed while the removed segment is still mapped, want 8", n)
	}
	segs[1].Close()
	if n := claimed(t, dir); n != 6 {
		t.Fatalf("%d chunks claimed after the last close, want 6", n)
	}
	seg, err := CreateIn(dir, "reused", 2*testChunk, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	if bytes.IndexFunc(seg.Mem, func(r rune) bool { return r != 0 }) >= 0 {
		t.Fatal("a segment in reused chunks does not read as zeros")
	}
	// Closed first and removed after: freed by Unlink.
	segs[2].Close()
	if err := segs[2].Unlink(); err != nil {
		t.Fatal(err)
	}
	if n := claimed(t, dir); n != 6 {
		t.Fatalf("%d chunks claimed after close then unlink, want 6", n)
	}
	// The others were not touched.
	for _, i := range []int{0, 3} {
		if bytes.IndexFunc(segs[i].Mem, func(r rune) bool { return r != rune(i+1) }) >= 0 {
			t.Fatalf("segment %d was overwritten", i)
		}
		segs[i].Close()
	}
}

func TestDeviceSegmentsNeverShareChunks(t *testing.T) {
	dir, _ := devicePool(t, 64)
	const n = 24
	segs := make([]*Segment, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seg, err := CreateIn(dir, fmt.Sprintf("s%d", i), testChunk+PageSize*(1+i%3), OwnerOnly)
			if err != nil {
				t.Error(err)
				return
			}
			for j := range seg.Mem {
				seg.Mem[j] = byte(i + 1)
			}
			segs[i] = seg
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, seg := range segs {
		if bytes.IndexFunc(seg.Mem, func(r rune) bool { return r != rune(i+1) }) >= 0 {
			t.Fatalf("segment %d shares bytes with another", i)
		}
		seg.Close()
	}
	if got := claimed(t, dir); got != 2*n {
		t.Fatalf("%d chunks claimed, want %d", got, 2*n)
	}
}

func TestDeviceHostileDescriptor(t *testing.T) {
	dir, dev := devicePool(t, 8)
	a, err := CreateIn(dir, "a", 2*testChunk, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	d, err := ReadDevice(dir, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := d.parseExtent(good, 1, d.Size())
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(e *extent)) []byte { x := *e; f(&x); return x.encode() }
	cases := map[string][]byte{
		"a copy of another segment's": good,
		"longer":                      append(append([]byte{}, good...), 0),
		"shorter":                     good[:extentSize-1],
		"another device":              mutate(func(e *extent) { e.device[0] ^= 1 }),
		"another segment id":          mutate(func(e *extent) { e.id[0] ^= 1 }),
		"past the device":             mutate(func(e *extent) { e.first = 7 }),
		"far past the device":         mutate(func(e *extent) { e.first = 1 << 62 }),
		"overflowing count":           mutate(func(e *extent) { e.first, e.count, e.length = 1, -1, -1 }),
		"more chunks than its length": mutate(func(e *extent) { e.count = 3 }),
		"longer than its chunks":      mutate(func(e *extent) { e.length = 2*testChunk + 1 }),
		"zero length":                 mutate(func(e *extent) { e.length, e.count = 0, 0 }),
		"free chunks":                 mutate(func(e *extent) { e.first = 4 }),
		"half another's chunks":       mutate(func(e *extent) { e.first, e.length, e.count = 1, testChunk, 1 }),
	}
	for what, b := range cases {
		if err := os.WriteFile(filepath.Join(dir, "evil"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		seg, err := OpenIn(dir, "evil", 1, d.Size(), OwnerOnly)
		if err == nil {
			seg.Close()
			t.Errorf("%s: opened", what)
			continue
		}
		if !errors.Is(err, ErrAccess) {
			t.Errorf("%s: %v, want ErrAccess", what, err)
		}
		if _, err := readSegmentBytes(dir, "evil", 2*testChunk); err == nil {
			t.Errorf("%s: read", what)
		}
	}
	// A device that shrank under the pool is refused, not faulted on.
	if err := os.Truncate(dev, testChunk); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenIn(dir, "a", 1, d.Size(), OwnerOnly); !errors.Is(err, ErrAccess) {
		t.Fatalf("open on a shrunk device: %v, want ErrAccess", err)
	}
}

// readSegmentBytes is what readSegment reads, alone.
func readSegmentBytes(dir, name string, size int) ([]byte, error) {
	b, _, err := readSegment(dir, name, size, OwnerOnly)
	return b, err
}

func TestDeviceReap(t *testing.T) {
	dir, _ := devicePool(t, 16)
	spec := ConnSpec{C2S: 4096, S2C: 4096}
	name := ConnPrefix + "00000000000000000000000000000002"
	seg, err := CreateConn(dir, name, spec, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	InitConnSpec(seg.Mem, spec, deadPID)
	seg.Close() // its process "died": the file stays
	want := (spec.Size() + testChunk - 1) / testChunk
	if n := claimed(t, dir); n != want {
		t.Fatalf("%d chunks claimed, want %d", n, want)
	}
	if n, err := ReapDevice(dir, OwnerOnly); err != nil || n != 0 {
		t.Fatalf("ReapDevice with the file there: %d, %v; want 0", n, err)
	}
	// ls reads its header from the device, and shows its size.
	entries, err := ScanIn(dir, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]Entry{}
	for _, e := range entries {
		kinds[e.Kind] = e
	}
	if c := kinds["connection"]; !c.Stale || c.PID != deadPID || c.Size != int64(spec.Size()) {
		t.Fatalf("connection entry %+v: want stale, pid %d, size %d", c, deadPID, spec.Size())
	}
	if kinds["device"].Why == "" || kinds["chunks"].Stale || kinds["device"].Stale {
		t.Fatalf("device entries %+v, %+v", kinds["device"], kinds["chunks"])
	}
	removed, err := CleanIn(dir, OwnerOnly)
	if err != nil || len(removed) != 1 || removed[0].Name != name {
		t.Fatalf("CleanIn: %+v, %v: want %s removed", removed, err, name)
	}
	if n := claimed(t, dir); n != 0 {
		t.Fatalf("%d chunks claimed after the clean, want 0", n)
	}

	// A segment removed while a process maps it keeps its chunks until
	// that process closes it.
	a, err := CreateIn(dir, "a", PageSize, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenIn(dir, "a", PageSize, PageSize, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	a.Unlink()
	a.Close()
	if n, _ := ReapDevice(dir, OwnerOnly); n != 0 || claimed(t, dir) != 1 {
		t.Fatalf("reaped %d chunks of a segment still mapped", n)
	}
	b.Close()
	if n := claimed(t, dir); n != 0 {
		t.Fatalf("%d chunks claimed after the last close, want 0", n)
	}
	if _, err := readSegmentBytes(dir, "a", PageSize); err == nil {
		t.Fatal("read a removed segment")
	}
}

func TestDeviceClaimOwnership(t *testing.T) {
	dir, _ := devicePool(t, 8)
	a, err := CreateIn(dir, "a", PageSize, OwnerOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// A claim made writable is refused: its content is what is trusted.
	head := filepath.Join(dir, ChunksDir, chunkName(0))
	if err := os.Chmod(head, 0o622); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenIn(dir, "a", PageSize, PageSize, OwnerOnly); !errors.Is(err, ErrAccess) {
		t.Fatalf("open with a claim writable by others: %v, want ErrAccess", err)
	}
	os.Chmod(head, 0o400)
	// A claim of another segment's name, put in place of a's.
	os.Remove(head)
	c := &claim{first: 0, count: 1, length: PageSize, name: "b"}
	if err := os.WriteFile(head, c.encode(), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenIn(dir, "a", PageSize, PageSize, OwnerOnly); !errors.Is(err, ErrAccess) {
		t.Fatalf("open with another segment's claim: %v, want ErrAccess", err)
	}
}
