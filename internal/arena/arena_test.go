package arena

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
)

func TestBlockSize(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{1, 4096}, {4096, 4096}, {4097, 8192}, {8192, 8192}, {8193, 16384},
		{1 << 20, 1 << 20}, {1<<20 + 1, 2 << 20}, {64 << 20, 64 << 20},
	} {
		if got := BlockSize(tc.n); got != tc.want {
			t.Errorf("BlockSize(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

// TestEverySizeClass allocates every size class until the heap is full,
// checks the blocks are aligned, disjoint and inside the heap, then frees
// them and checks the heap merges back into one block.
func TestEverySizeClass(t *testing.T) {
	const size = 1 << 20
	for bs := MinBlock; bs <= size; bs *= 2 {
		h := NewHeap(make([]byte, size))
		seen := map[int]bool{}
		var offs []int
		for {
			off, ok := h.Alloc(bs)
			if !ok {
				break
			}
			if off%bs != 0 || off+bs > size || seen[off] {
				t.Fatalf("class %d: block at %d misaligned, outside or repeated", bs, off)
			}
			if len(h.Block(off)) != bs {
				t.Fatalf("class %d: Block(%d) has %d bytes", bs, off, len(h.Block(off)))
			}
			seen[off] = true
			offs = append(offs, off)
		}
		if len(offs) != size/bs || h.InUse() != size {
			t.Fatalf("class %d: %d blocks, %d bytes in use; want %d blocks filling the heap", bs, len(offs), h.InUse(), size/bs)
		}
		if _, ok := h.Alloc(1); ok {
			t.Fatalf("class %d: Alloc succeeded on a full heap", bs)
		}
		rand.Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
		for _, off := range offs {
			if err := h.Free(off); err != nil {
				t.Fatalf("class %d: Free(%d) = %v", bs, off, err)
			}
		}
		if h.InUse() != 0 {
			t.Fatalf("class %d: %d bytes in use after freeing all", bs, h.InUse())
		}
		if off, ok := h.Alloc(size); !ok || off != 0 {
			t.Fatalf("class %d: whole-heap Alloc after freeing = %d, %v: buddies did not merge", bs, off, ok)
		}
	}
}

func TestAllocTooLarge(t *testing.T) {
	h := NewHeap(make([]byte, 64<<10))
	if _, ok := h.Alloc(64<<10 + 1); ok {
		t.Fatal("Alloc larger than the heap succeeded")
	}
}

func TestReuse(t *testing.T) {
	h := NewHeap(make([]byte, 1<<20))
	a, _ := h.Alloc(100 << 10)
	if err := h.Free(a); err != nil {
		t.Fatal(err)
	}
	b, _ := h.Alloc(100 << 10)
	if a != b {
		t.Fatalf("a freed block was not reused: %d then %d", a, b)
	}
}

func TestFreeRejects(t *testing.T) {
	h := NewHeap(make([]byte, 1<<20))
	a, _ := h.Alloc(8192)
	for _, tc := range []struct {
		name string
		off  int
		want string
	}{
		{"misaligned", a + 1, "not a multiple"},
		{"outside", 1 << 20, "outside the heap"},
		{"negative", -4096, "outside the heap"},
		{"inside a block", a + 4096, "not allocated"},
		{"never allocated", 512 << 10, "not allocated"},
	} {
		if err := h.Free(tc.off); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Free(%d) = %v, want an error containing %q", tc.name, tc.off, err, tc.want)
		}
	}
	if err := h.Free(a); err != nil {
		t.Fatal(err)
	}
	if err := h.Free(a); err == nil || !strings.Contains(err.Error(), "freed twice") {
		t.Errorf("double Free = %v", err)
	}
	if h.InUse() != 0 {
		t.Errorf("rejected frees changed the heap: %d in use", h.InUse())
	}
}

// TestRandomAllocFree checks the allocator against a model: live blocks
// never overlap, and the bytes in use add up.
func TestRandomAllocFree(t *testing.T) {
	const size = 4 << 20
	h := NewHeap(make([]byte, size))
	owner := make([]int, size/MinBlock) // page -> block id+1
	live := map[int]int{}               // offset -> block size
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		if len(live) > 0 && r.IntN(2) == 0 {
			for off, bs := range live {
				if err := h.Free(off); err != nil {
					t.Fatal(err)
				}
				for p := off / MinBlock; p < (off+bs)/MinBlock; p++ {
					owner[p] = 0
				}
				delete(live, off)
				break
			}
			continue
		}
		n := 1 + r.IntN(300<<10)
		off, ok := h.Alloc(n)
		if !ok {
			continue
		}
		bs := BlockSize(n)
		for p := off / MinBlock; p < (off+bs)/MinBlock; p++ {
			if owner[p] != 0 {
				t.Fatalf("block %d+%d overlaps a live block at page %d", off, bs, p)
			}
			owner[p] = i + 1
		}
		live[off] = bs
	}
	sum := 0
	for _, bs := range live {
		sum += bs
	}
	if sum != h.InUse() {
		t.Fatalf("InUse = %d, live blocks sum to %d", h.InUse(), sum)
	}
}

func TestHeldTake(t *testing.T) {
	const size = 1 << 20
	for _, tc := range []struct {
		name string
		ref  Ref
		want string
	}{
		{"empty", Ref{0, 0}, "empty"},
		{"misaligned", Ref{100, 10}, "not a multiple"},
		{"past the end", Ref{size, 1}, "within the heap"},
		{"runs off the end", Ref{size - 4096, 4097}, "within the heap"},
		{"huge length", Ref{4096, 1<<64 - 1}, "within the heap"},
		{"huge offset", Ref{1<<64 - 4096, 1}, "within the heap"},
	} {
		h := NewHeld(size)
		if _, err := h.Take(tc.ref); !errors.Is(err, ErrRef) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Take(%+v) = %v, want ErrRef containing %q", tc.name, tc.ref, err, tc.want)
		}
		if h.Count() != 0 {
			t.Errorf("%s: a refused reference left %d pages held", tc.name, h.Count())
		}
	}
	h := NewHeld(size)
	a := Ref{8192, 5000} // pages 2 and 3
	if p, err := h.Take(a); err != nil || p != 2 {
		t.Fatalf("Take(%+v) = %d, %v", a, p, err)
	}
	for _, r := range []Ref{{8192, 1}, {12288, 1}, {4096, 8192}, {0, 64 << 10}} {
		if _, err := h.Take(r); err == nil || !strings.Contains(err.Error(), "referenced twice") {
			t.Errorf("Take(%+v) overlapping a held block = %v", r, err)
		}
	}
	if _, err := h.Take(Ref{16384, 1}); err != nil {
		t.Errorf("adjacent reference refused: %v", err)
	}
	h.Release(a)
	if _, err := h.Take(Ref{4096, 8192}); err != nil {
		t.Errorf("reference to released pages refused: %v", err)
	}
	if h.Count() != 3 {
		t.Errorf("Count = %d, want 3", h.Count())
	}
	whole := NewHeld(size)
	if _, err := whole.Take(Ref{0, size}); err != nil || whole.Count() != size/MinBlock {
		t.Errorf("whole-heap reference: %v, %d pages", err, whole.Count())
	}
}

func TestReturnQueue(t *testing.T) {
	const heap = 64 << 10 // 16 pages: 16 entries
	region := make([]byte, 4096)
	var tail, head atomic.Uint64
	w := NewReturnWriter(region, heap, &tail, &head)
	r := NewReturnReader(region, heap, &tail, &head)
	var got []uint32
	collect := func(p uint32) error { got = append(got, p); return nil }
	for round := 0; round < 3; round++ {
		got = got[:0]
		for i := uint32(0); i < 16; i++ {
			if err := w.Push(i); err != nil {
				t.Fatalf("round %d: Push %d: %v", round, i, err)
			}
		}
		if err := w.Push(99); err == nil || !strings.Contains(err.Error(), "does not take back") {
			t.Fatalf("Push to a full queue = %v", err)
		}
		if err := r.Drain(collect); err != nil || len(got) != 16 || got[15] != 15 {
			t.Fatalf("Drain = %v, %v", err, got)
		}
		if head.Load() != tail.Load() {
			t.Fatalf("head %d != tail %d after drain", head.Load(), tail.Load())
		}
	}
	tail.Store(tail.Load() + 17)
	if err := r.Drain(collect); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Fatalf("Drain of a tail beyond the capacity = %v", err)
	}
	r2 := NewReturnReader(region, heap, &tail, &head)
	r2.next = tail.Load() + 1
	if err := r2.Drain(collect); err == nil {
		t.Fatal("Drain of a tail that went backwards succeeded")
	}
	stop := errors.New("stop")
	var tail3, head3 atomic.Uint64
	w3 := NewReturnWriter(region, heap, &tail3, &head3)
	r3 := NewReturnReader(region, heap, &tail3, &head3)
	w3.Push(1)
	w3.Push(2)
	if err := r3.Drain(func(uint32) error { return stop }); err != stop || head3.Load() != 1 {
		t.Fatalf("Drain stopping at an entry = %v, head %d; want stop, head 1", err, head3.Load())
	}
}

func TestRefRoundTrip(t *testing.T) {
	r := Ref{Offset: 1 << 40, Length: 12345}
	b := r.Append(nil)
	if len(b) != RefSize {
		t.Fatalf("encoded to %d bytes", len(b))
	}
	got, err := DecodeRef(b)
	if err != nil || got != r {
		t.Fatalf("DecodeRef = %+v, %v", got, err)
	}
	if _, err := DecodeRef(b[:15]); err == nil {
		t.Fatal("short payload accepted")
	}
}

// FuzzRef feeds arbitrary MESSAGE_REF payloads to the decoder and the
// receiver's checks, and verifies that an accepted reference always lies
// inside the heap, page-aligned, and never overlaps one held before.
func FuzzRef(f *testing.F) {
	f.Add(Ref{0, 1}.Append(nil), Ref{4096, 4096}.Append(nil))
	f.Add(Ref{0, 1 << 20}.Append(nil), Ref{0, 1}.Append(nil))
	f.Add(Ref{1<<64 - 4096, 8192}.Append(nil), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		const size = 1 << 20
		h := NewHeld(size)
		var taken []Ref
		for _, p := range [][]byte{a, b, a} {
			r, err := DecodeRef(p)
			if err != nil {
				continue
			}
			if _, err := h.Take(r); err != nil {
				continue
			}
			if r.Offset%MinBlock != 0 || r.Length == 0 || r.Offset+r.Length > size || r.Offset+r.Length < r.Offset {
				t.Fatalf("accepted %+v", r)
			}
			for _, o := range taken {
				if r.Offset < o.Offset+o.Length && o.Offset < r.Offset+r.Length {
					t.Fatalf("accepted %+v overlapping held %+v", r, o)
				}
			}
			taken = append(taken, r)
		}
	})
}

func TestLendReturn(t *testing.T) {
	h := NewHeap(make([]byte, 1<<20))
	a, _ := h.Alloc(8192)
	if err := h.Return(a); err == nil || !strings.Contains(err.Error(), "not lent") {
		t.Errorf("Return of a block never sent = %v", err)
	}
	h.Lend(a)
	if err := h.Free(a); err == nil || !strings.Contains(err.Error(), "lent") {
		t.Errorf("local Free of a lent block = %v", err)
	}
	if err := h.Return(a); err != nil {
		t.Fatalf("Return of a lent block = %v", err)
	}
	if err := h.Return(a); err == nil {
		t.Error("second Return succeeded")
	}
	if h.InUse() != 0 {
		t.Errorf("%d bytes in use after the return", h.InUse())
	}
	b, _ := h.Alloc(8192)
	if err := h.Return(b); err == nil {
		t.Error("Return of a reallocated block that was never sent succeeded")
	}
}
