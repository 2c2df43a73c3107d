package coherence

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// TestLines checks the lines a range touches, partial lines included.
func TestLines(t *testing.T) {
	for _, tc := range []struct {
		addr, n      uintptr
		start, lines uintptr
	}{
		{0, 1, 0, 1}, {63, 1, 0, 1}, {63, 2, 0, 2}, {64, 64, 64, 1}, {65, 64, 64, 2}, {128, 4096, 128, 64},
	} {
		start, n := lines(make([]byte, tc.n), tc.addr)
		if start != tc.start || n != tc.lines {
			t.Errorf("lines(%d bytes at %d) = %d, %d; want %d, %d", tc.n, tc.addr, start, n, tc.start, tc.lines)
		}
	}
}

// TestLinesOf checks the lines a range touches for line sizes other than
// LineSize, smaller and larger, as the arm64 loops step by the
// processor's own line size.
func TestLinesOf(t *testing.T) {
	for _, tc := range []struct {
		addr         uintptr
		n            int
		size         uintptr
		start, lines uintptr
	}{
		{0, 1, 16, 0, 1}, {15, 2, 16, 0, 2}, {16, 64, 16, 16, 4}, {17, 64, 16, 16, 5},
		{0, 64, 32, 0, 2}, {63, 2, 32, 32, 2},
		{0, 1, 128, 0, 1}, {64, 64, 128, 0, 1}, {64, 65, 128, 0, 2}, {127, 2, 128, 0, 2}, {4096, 4096, 128, 4096, 32},
		{65, 64, 64, 64, 2},
	} {
		start, n := linesOf(tc.addr, tc.n, tc.size)
		if start != tc.start || n != tc.lines {
			t.Errorf("linesOf(%d bytes at %d, %d-byte lines) = %d, %d; want %d, %d", tc.n, tc.addr, tc.size, start, n, tc.start, tc.lines)
		}
	}
}

// TestCTRDminLine decodes the line size from CTR_EL0 values: DminLine is
// bits 19:16, log2 of 4-byte words, and the other fields (IminLine in
// bits 3:0, ERG and CWG above DminLine) must not leak into it.
func TestCTRDminLine(t *testing.T) {
	for _, tc := range []struct {
		ctr  uint64
		want uintptr
	}{
		{0x8444c004, 64},  // Cortex-A57/A72, and qemu's models of them
		{0x84448004, 64},  // Cortex-A53
		{0x80030003, 32},  // DminLine 3, IminLine 3
		{0x8005000f, 128}, // DminLine 5 with IminLine all ones
		{0xfff0ffff, 4},   // DminLine 0, every other field all ones
		{0x000f0000, 4 << 15},
	} {
		if got := ctrDminLine(tc.ctr); got != tc.want {
			t.Errorf("ctrDminLine(%#x) = %d, want %d", tc.ctr, got, tc.want)
		}
	}
}

// TestSoftwareKeepsData writes, flushes, invalidates and reads ranges of
// every alignment: on coherent hardware the bytes must be unchanged (the
// instructions write back and drop lines, never change them).
func TestSoftwareKeepsData(t *testing.T) {
	f, i := Instructions()
	if !Supported() {
		// No instructions here (neither amd64 nor arm64), or an arm64 line
		// larger than LineSize (flush_arm64_test.go still runs them).
		t.Skipf("skipped: Supported() is false (flush %s, invalidate %s)", f, i)
	}
	t.Logf("flush %s, invalidate %s", f, i)
	buf := make([]byte, 3*4096)
	for off := 0; off < 130; off += 13 {
		for _, n := range []int{1, 63, 64, 65, 4096} {
			b := buf[off : off+n]
			for k := range b {
				b[k] = byte(off + n + k)
			}
			var c Coherence = Software{}
			c.Flush(b)
			c.Invalidate(b)
			for k := range b {
				if b[k] != byte(off+n+k) {
					t.Fatalf("byte %d of %d at %d changed", k, n, off)
				}
			}
		}
	}
	Software{}.Flush(nil) // empty ranges do nothing
	Software{}.Invalidate(buf[:0])
}

// TestSimCatchesAMissingFlush runs a one-word mailbox (a writer stores a
// payload, then a sequence number; a reader polls the sequence number and
// reads the payload) over two simulated sides of one shared page: with
// the writer's flushes and the reader's invalidates the reader sees every
// message whole; without the writer's flush of the payload the reader
// sees the new sequence number with a stale payload, which is what the
// simulator is for.
func TestSimCatchesAMissingFlush(t *testing.T) {
	run := func(flushPayload bool) (stale int) {
		shared := make([]byte, 4096)
		w, r := newSim(t, shared), newSim(t, shared)
		payload, seq := 128, 0 // offsets: the payload on its own line, the sequence number on line 0
		for i := uint64(1); i <= 100; i++ {
			binary.LittleEndian.PutUint64(w.View[payload:], i*1000)
			if flushPayload {
				w.Flush(w.View[payload : payload+8])
			}
			binary.LittleEndian.PutUint64(w.View[seq:], i)
			w.Flush(w.View[seq : seq+8])

			r.Invalidate(r.View[seq : seq+8])
			if got := binary.LittleEndian.Uint64(r.View[seq:]); got != i {
				t.Fatalf("reader saw sequence %d, want %d", got, i)
			}
			r.Invalidate(r.View[payload : payload+8])
			if binary.LittleEndian.Uint64(r.View[payload:]) != i*1000 {
				stale++
			}
		}
		return stale
	}
	if n := run(true); n != 0 {
		t.Errorf("with every flush: %d stale payloads, want 0", n)
	}
	if n := run(false); n != 100 {
		t.Errorf("without the payload's flush: %d stale payloads of 100; the simulator should catch every one", n)
	}
}

// TestSimInvalidateKeepsUnflushedStores checks that a side's store
// survives its own invalidate of the line (another goroutine of the side
// may invalidate it), that the other words of the line take the memory's
// values, and that the store reaches the memory only when flushed.
func TestSimInvalidateKeepsUnflushedStores(t *testing.T) {
	shared := bytes.Repeat([]byte{7}, 256)
	s := newSim(t, shared)
	s.View[64] = 9 // the word at 64 is now this side's
	shared[72] = 5 // the other side's store, flushed
	s.Invalidate(s.View[64:65])
	if s.View[64] != 9 || s.View[72] != 5 || shared[64] != 7 {
		t.Fatalf("after invalidate: view %d and %d, shared %d; want 9, 5 and 7", s.View[64], s.View[72], shared[64])
	}
	s.Flush(s.View[64:65])
	if shared[64] != 9 || shared[72] != 5 {
		t.Fatalf("after flush: shared %d and %d; want 9 and 5", shared[64], shared[72])
	}
	shared[64] = 3 // the other side's, now that this side's store is written back
	s.Invalidate(s.View[64:65])
	if s.View[64] != 3 {
		t.Fatalf("a flushed word did not take the memory's new value: %d, want 3", s.View[64])
	}
}

// BenchmarkFlush measures storing to every line of n bytes (one line, a
// 4 KiB page, 1 MiB) and writing them back: what the coherence mode adds
// per record and per MiB, with the stores it follows (compare
// BenchmarkStoreLines).
func BenchmarkFlush(b *testing.B) {
	if !Supported() {
		b.Skip("skipped: no cache-line flush instructions here")
	}
	for _, n := range []int{64, 4096, 1 << 20} {
		buf := make([]byte, n)
		b.Run(sizeName(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			for b.Loop() {
				touch(buf)
				Software{}.Flush(buf)
			}
		})
	}
}

// BenchmarkInvalidate measures dropping n bytes of lines before a read.
func BenchmarkInvalidate(b *testing.B) {
	if !Supported() {
		b.Skip("skipped: no cache-line flush instructions here")
	}
	for _, n := range []int{64, 4096, 1 << 20} {
		buf := make([]byte, n)
		b.Run(sizeName(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			for b.Loop() {
				Software{}.Invalidate(buf)
				sink += load(buf)
			}
		})
	}
}

// BenchmarkStoreLines is BenchmarkFlush without the flush: the stores
// alone, the reference the flush's cost is read against.
func BenchmarkStoreLines(b *testing.B) {
	for _, n := range []int{64, 4096, 1 << 20} {
		buf := make([]byte, n)
		b.Run(sizeName(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			for b.Loop() {
				touch(buf)
			}
		})
	}
}

// BenchmarkLoadLines is BenchmarkInvalidate without the invalidation: the
// loads from cache alone.
func BenchmarkLoadLines(b *testing.B) {
	for _, n := range []int{64, 4096, 1 << 20} {
		buf := make([]byte, n)
		b.Run(sizeName(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			for b.Loop() {
				sink += load(buf)
			}
		})
	}
}

var sink byte

// touch stores to every line of buf.
func touch(buf []byte) {
	for i := 0; i < len(buf); i += LineSize {
		buf[i]++
	}
}

// load reads every line of buf.
func load(buf []byte) (x byte) {
	for i := 0; i < len(buf); i += LineSize {
		x += buf[i]
	}
	return x
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return "1MiB"
	case n >= 4096:
		return "4KiB"
	}
	return "64B"
}

// newSim returns a simulated side of shared, closed when t ends.
func newSim(t testing.TB, shared []byte) *Sim {
	t.Helper()
	s, err := NewSim(shared)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
