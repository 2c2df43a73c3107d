package coherence

import (
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
	if c := Counted(Software{}); c != (Software{}) {
		t.Errorf("Counted(Software{}) with counting off = %#v, want Software{} itself", c)
	}
	if c := Counted(nil); c != nil {
		t.Errorf("Counted(nil) = %#v, want nil", c)
	}
}

// TestCounting: with counting on, every operation of each kind of
// Coherence is counted in its kind's counter, in lines touched (partial
// lines included), the operation still reaches the wrapped Coherence,
// and empty ranges count nothing.
func TestCounting(t *testing.T) {
	withCounting(t, true)
	if c := Counted(nil); c != nil {
		t.Errorf("Counted(nil) with counting on = %#v, want nil: coherent memory has nothing to count", c)
	}

	// A Sim: its lines must still move.
	shared := make([]byte, 4096)
	sim := newSim(t, shared)
	c := Counted(sim)
	if w, ok := c.(Counting); !ok || w.Counter != &SimulatedLines {
		t.Fatalf("Counted(*Sim) = %#v, want a Counting on SimulatedLines", c)
	}
	before := SimulatedLines.Lines()
	sim.View[100] = 7
	c.Flush(sim.View[63:65])    // lines 0 and 1
	c.Flush(sim.View[128:1152]) // 16 whole lines
	c.Flush(sim.View[0:0])      // nothing
	shared[2048] = 9
	c.Invalidate(sim.View[2048:2049]) // one line
	got := SimulatedLines.Lines().Sub(before)
	if want := (Lines{Flushes: 2, Flushed: 18, Invalidates: 1, Invalidated: 1}); got != want {
		t.Errorf("counted %+v, want %+v", got, want)
	}
	if shared[100] != 7 || sim.View[2048] != 9 {
		t.Errorf("the counted operations did not reach the Sim: shared[100] = %d (want 7), View[2048] = %d (want 9)", shared[100], sim.View[2048])
	}

	// Any other Coherence: OtherLines, and the wrapped one sees the ranges.
	var fl, inv int
	before = OtherLines.Lines()
	simBefore := SimulatedLines.Lines()
	o := Counted(stub{&fl, &inv})
	o.Flush(make([]byte, 64*3+1))
	o.Invalidate(make([]byte, 10))
	o.Invalidate(nil)
	if fl != 193 || inv != 10 {
		t.Errorf("the wrapped Coherence saw %d flushed and %d invalidated bytes, want 193 and 10", fl, inv)
	}
	got = OtherLines.Lines().Sub(before)
	// make's slices are at least 8-byte aligned, not line aligned: 193
	// bytes touch 4 or 5 lines, 10 bytes 1 or 2.
	if got.Flushes != 1 || got.Flushed < 4 || got.Flushed > 5 || got.Invalidates != 1 || got.Invalidated < 1 || got.Invalidated > 2 {
		t.Errorf("counted %+v for a flush of 193 bytes and an invalidation of 10", got)
	}
	if SimulatedLines.Lines() != simBefore {
		t.Errorf("another kind's operations were counted as the Sim's")
	}

	// Software: only where the instructions are.
	if Supported() {
		before = SoftwareLines.Lines()
		s := Counted(Software{})
		buf := make([]byte, 4096+LineSize)
		off := LineSize - int(uintptr(unsafe.Pointer(&buf[0]))%LineSize) // to a line boundary
		s.Flush(buf[off : off+4096])
		s.Invalidate(buf[off : off+LineSize])
		if got := SoftwareLines.Lines().Sub(before); got != (Lines{Flushes: 1, Flushed: 64, Invalidates: 1, Invalidated: 1}) {
			t.Errorf("Software counted %+v, want one flush of 64 lines and one invalidation of 1", got)
		}
	}
}

// TestLinesArithmetic checks Add and Sub.
func TestLinesArithmetic(t *testing.T) {
	a := Lines{Flushes: 5, Flushed: 50, Invalidates: 7, Invalidated: 70}
	b := Lines{Flushes: 1, Flushed: 2, Invalidates: 3, Invalidated: 4}
	if got := a.Sub(b); got != (Lines{4, 48, 4, 66}) {
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
	c := Counting{Inner: Software{}, Counter: &OtherLines}
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
