package coherence

import (
	"sync/atomic"
	"unsafe"
)

// Counting of cache-line operations, for `notnets bench` (issue 15: the
// lines a call flushes and invalidates are the inputs of the model of its
// latency on memory without coherence, docs/BENCHMARKS.md).
//
// Counting costs nothing while it is off: it is not a test in Flush or
// Invalidate but a wrapper, Counting, that Counted puts around a
// Coherence only once EnableCounting has been called, so a process that
// does not count runs the very code it ran before. A process that counts
// pays two atomic adds per operation on a counter shared by its
// goroutines (BenchmarkFlushCounted: a few ns beside the tens to
// hundreds of ns of the write-back itself).

// counting is set by EnableCounting.
var counting atomic.Bool

// EnableCounting makes Counted wrap the Coherence of every segment set up
// from now on in this process, so that SoftwareLines and SimulatedLines
// count their operations. Segments set up before keep their Coherence as
// it was, uncounted. It cannot be undone: a benchmark process enables it
// once, at its start.
func EnableCounting() { counting.Store(true) }

// CountingEnabled reports whether EnableCounting has been called.
func CountingEnabled() bool { return counting.Load() }

// Counted returns c wrapped in a Counting that adds to the counter of c's
// kind (SoftwareLines for Software, SimulatedLines for a *Sim, OtherLines
// for anything else) when counting is enabled, and c itself otherwise.
// A nil c (coherent memory) stays nil: nothing is flushed, nothing is
// counted.
func Counted(c Coherence) Coherence {
	if c == nil || !counting.Load() {
		return c
	}
	switch c.(type) {
	case Software:
		return Counting{Inner: c, Counter: &SoftwareLines}
	case *Sim:
		return Counting{Inner: c, Counter: &SimulatedLines}
	}
	return Counting{Inner: c, Counter: &OtherLines}
}

// The counters of the process, one per kind of Coherence, so that a
// process with pools of several modes tells their operations apart.
var (
	// SoftwareLines counts the operations of Software (coherence by the
	// processor's flush instructions).
	SoftwareLines Counter
	// SimulatedLines counts the operations of every Sim.
	SimulatedLines Counter
	// OtherLines counts the operations of any other Coherence given to
	// Counted.
	OtherLines Counter
)

// Counter counts Flush and Invalidate operations and the cache lines
// (of LineSize bytes) they cover. Its methods may be called from any
// goroutine. The flush and invalidate counts are on separate cache lines:
// a connection's writer flushes while its reader invalidates.
type Counter struct {
	flushes, flushed         atomic.Uint64
	_                        [LineSize - 16]byte
	invalidates, invalidated atomic.Uint64
	_                        [LineSize - 16]byte
}

// Lines is what a Counter has counted: operations (each one ends with a
// fence on real hardware) and the lines they covered, partial lines
// included.
type Lines struct {
	Flushes     uint64 `json:"flushes"`
	Flushed     uint64 `json:"flushed_lines"`
	Invalidates uint64 `json:"invalidates"`
	Invalidated uint64 `json:"invalidated_lines"`
}

// Sub returns l minus an earlier reading of the same counter.
func (l Lines) Sub(earlier Lines) Lines {
	return Lines{Flushes: l.Flushes - earlier.Flushes, Flushed: l.Flushed - earlier.Flushed,
		Invalidates: l.Invalidates - earlier.Invalidates, Invalidated: l.Invalidated - earlier.Invalidated}
}

// Add returns the sum of l and m.
func (l Lines) Add(m Lines) Lines {
	return Lines{Flushes: l.Flushes + m.Flushes, Flushed: l.Flushed + m.Flushed,
		Invalidates: l.Invalidates + m.Invalidates, Invalidated: l.Invalidated + m.Invalidated}
}

// Lines returns what c has counted so far.
func (c *Counter) Lines() Lines {
	return Lines{Flushes: c.flushes.Load(), Flushed: c.flushed.Load(),
		Invalidates: c.invalidates.Load(), Invalidated: c.invalidated.Load()}
}

// countFlush counts a flush of b; an empty b is no operation (Software
// does nothing for it, not even the fence).
func (c *Counter) countFlush(b []byte) {
	if len(b) == 0 {
		return
	}
	c.flushes.Add(1)
	c.flushed.Add(uint64(lineCount(b)))
}

// countInvalidate counts an invalidation of b, if b is not empty.
func (c *Counter) countInvalidate(b []byte) {
	if len(b) == 0 {
		return
	}
	c.invalidates.Add(1)
	c.invalidated.Add(uint64(lineCount(b)))
}

// lineCount returns how many lines of LineSize b, not empty, touches.
func lineCount(b []byte) uintptr {
	_, n := lines(b, uintptr(unsafe.Pointer(&b[0])))
	return n
}

// Counting is a Coherence that counts the operations of Inner in Counter
// before doing them.
type Counting struct {
	Inner   Coherence
	Counter *Counter
}

// Flush counts the lines of b as flushed, then flushes them.
func (c Counting) Flush(b []byte) {
	c.Counter.countFlush(b)
	c.Inner.Flush(b)
}

// Invalidate counts the lines of b as invalidated, then invalidates them.
func (c Counting) Invalidate(b []byte) {
	c.Counter.countInvalidate(b)
	c.Inner.Invalidate(b)
}
