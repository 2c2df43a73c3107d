package coherence

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"unsafe"
)

// withCounting runs the test with counting enabled as it asks, and
// restores the process's setting afterwards (EnableCounting alone cannot
// be undone).
func withCounting(t *testing.T, on bool) {
	was := counting.Load()
	counting.Store(on)
	t.Cleanup(func() { counting.Store(was) })
}

// stub is a Coherence that records the ranges it is given.
type stub struct{ flushed, invalidated *int }

func (s stub) Flush(b []byte)      { *s.flushed += len(b) }
func (s stub) Invalidate(b []byte) { *s.invalidated += len(b) }

// TestCountedOff: without EnableCounting, Counted returns what it is
// given, so nothing in the data path changes.
func TestCountedOff(t *testing.T) {
	withCounting(t, false)
	if c := Counted(Software{}, "seg"); c != (Software{}) {
		t.Errorf("Counted(Software{}) with counting off = %#v, want Software{} itself", c)
	}
	if c := Counted(nil, "seg"); c != nil {
		t.Errorf("Counted(nil) = %#v, want nil", c)
	}
}

// TestCounting: with counting on, every operation is counted in its
// segment's counter, in lines touched (partial lines included), and in
// its kind's totals; the operation still reaches the wrapped Coherence;
// empty ranges count nothing; two segments' counts stay apart, and one
// name in one process is one counter.
func TestCounting(t *testing.T) {
	withCounting(t, true)
	run := fmt.Sprint(testRuns.Add(1))
	seg := func(s string) string { return t.Name() + "/" + run + "/" + s } // names no other test or run (-count) uses
	if c := Counted(nil, seg("nil")); c != nil {
		t.Errorf("Counted(nil) with counting on = %#v, want nil: coherent memory has nothing to count", c)
	}

	// A Sim: its lines must still move.
	shared := make([]byte, 4096)
	sim := newSim(t, shared)
	simKind := KindLines(KindSimulated)
	c := Counted(sim, seg("sim"))
	if _, ok := c.(Counting); !ok {
		t.Fatalf("Counted(*Sim) = %#v, want a Counting", c)
	}
	sim.View[100] = 7
	c.Flush(sim.View[63:65])    // lines 0 and 1
	c.Flush(sim.View[128:1152]) // 16 whole lines
	c.Flush(sim.View[0:0])      // nothing
	shared[2048] = 9
	Counted(sim, seg("sim")).Invalidate(sim.View[2048:2049]) // one line, changed; the same counter
	c.Invalidate(sim.View[2048 : 2048+3*LineSize])           // 3 lines, none changed since
	want := Lines{Flushes: 2, Flushed: 18, Invalidates: 2, Invalidated: 4, Changed: 1}
	if got := SegmentLines(seg("sim")); got != want {
		t.Errorf("counted %+v, want %+v", got, want)
	}
	if got := KindLines(KindSimulated).Sub(simKind); got != want {
		t.Errorf("the Sim kind's totals grew by %+v, want %+v", got, want)
	}
	if shared[100] != 7 || sim.View[2048] != 9 {
		t.Errorf("the counted operations did not reach the Sim: shared[100] = %d (want 7), View[2048] = %d (want 9)", shared[100], sim.View[2048])
	}
	// The counting Invalidate keeps this side's unflushed stores, as
	// Invalidate does, and takes the other side's.
	sim.View[3000] = 5
	shared[3000], shared[2952] = 6, 8 // one line: 2944 to 3007
	before := SegmentLines(seg("sim"))
	c.Invalidate(sim.View[3000:3001])
	if sim.View[3000] != 5 || sim.View[2952] != 8 {
		t.Errorf("after a counted Invalidate: View[3000] = %d (want 5, this side's store), View[2952] = %d (want 8, memory's)", sim.View[3000], sim.View[2952])
	}
	if got := SegmentLines(seg("sim")).Sub(before); got != (Lines{Invalidates: 1, Invalidated: 1, Changed: 1}) {
		t.Errorf("counted %+v for one changed line", got)
	}
	want = want.Add(Lines{Invalidates: 1, Invalidated: 1, Changed: 1})

	// Any other Coherence, in another segment: the wrapped one sees the
	// ranges, and the Sim's segment counts none of them.
	var fl, inv int
	o := Counted(stub{&fl, &inv}, seg("other"))
	o.Flush(make([]byte, 64*3+1))
	o.Invalidate(make([]byte, 10))
	o.Invalidate(nil)
	if fl != 193 || inv != 10 {
		t.Errorf("the wrapped Coherence saw %d flushed and %d invalidated bytes, want 193 and 10", fl, inv)
	}
	got := SegmentLines(seg("other"))
	// make's slices are at least 8-byte aligned, not line aligned: 193
	// bytes touch 4 or 5 lines, 10 bytes 1 or 2.
	if got.Flushes != 1 || got.Flushed < 4 || got.Flushed > 5 || got.Invalidates != 1 || got.Invalidated < 1 || got.Invalidated > 2 {
		t.Errorf("counted %+v for a flush of 193 bytes and an invalidation of 10", got)
	}
	if SegmentLines(seg("sim")) != want || KindLines(KindSimulated).Sub(simKind) != want {
		t.Errorf("another segment's operations were counted as the Sim's")
	}
	if both := SegmentLines(seg("sim"), seg("other"), seg("never")); both != want.Add(got) {
		t.Errorf("SegmentLines of both = %+v, want %+v", both, want.Add(got))
	}
	if !slices.Contains(Segments(), seg("other")) || slices.Contains(Segments(), seg("nil")) {
		t.Errorf("Segments() = %q: want %q, not %q", Segments(), seg("other"), seg("nil"))
	}

	// Software: only where the instructions are.
	if Supported() {
		s := Counted(Software{}, seg("software"))
		buf := make([]byte, 4096+LineSize)
		off := LineSize - int(uintptr(unsafe.Pointer(&buf[0]))%LineSize) // to a line boundary
		s.Flush(buf[off : off+4096])
		s.Invalidate(buf[off : off+LineSize])
		if got := SegmentLines(seg("software")); got != (Lines{Flushes: 1, Flushed: 64, Invalidates: 1, Invalidated: 1}) {
			t.Errorf("Software counted %+v, want one flush of 64 lines and one invalidation of 1", got)
		}
	}
}

// testRuns tells apart the runs of a test under -count: a counter, once
// made, lives as long as the process.
var testRuns atomic.Int64

// TestLinesArithmetic checks Add and Sub.
func TestLinesArithmetic(t *testing.T) {
	a := Lines{Flushes: 5, Flushed: 50, Invalidates: 7, Invalidated: 70}
	b := Lines{Flushes: 1, Flushed: 2, Invalidates: 3, Invalidated: 4}
	if got := a.Sub(b); got != (Lines{4, 48, 4, 66, 0}) {
		t.Errorf("Sub = %+v", got)
	}
	if got := a.Sub(b).Add(b); got != a {
		t.Errorf("Sub then Add = %+v, want %+v", got, a)
	}
}

// BenchmarkFlushCounted is BenchmarkFlush through Counting: what the
// bench's counting adds to each operation.
func BenchmarkFlushCounted(b *testing.B) {
	if !Supported() {
		b.Skip("skipped: no cache-line flush instructions here")
	}
	c := Counting{Inner: Software{}, Counter: &Counter{}}
	for _, n := range []int{64, 4096, 1 << 20} {
		buf := make([]byte, n)
		b.Run(sizeName(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			for b.Loop() {
				touch(buf)
				c.Flush(buf)
			}
		})
	}
}
