package coherence

import (
	"sync"
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
// pays two atomic adds per operation on its segment's counter, shared by
// the goroutines that use the segment (BenchmarkFlushCounted: a few ns beside the tens to
// hundreds of ns of the write-back itself).

// counting is set by EnableCounting.
var counting atomic.Bool

// EnableCounting makes Counted wrap the Coherence of every segment set up
// from now on in this process, so that SegmentLines and KindLines count
// their operations. Segments set up before keep their Coherence as
// it was, uncounted. It cannot be undone: a benchmark process enables it
// once, at its start.
func EnableCounting() { counting.Store(true) }

// CountingEnabled reports whether EnableCounting has been called.
func CountingEnabled() bool { return counting.Load() }

// Counted returns c wrapped in a Counting that adds to the counter of
// segment (a name: a pool's segment file; the same name in one process is
// one counter), when counting is enabled, and c itself otherwise. A nil c
// (coherent memory) stays nil: nothing is flushed, nothing is counted.
func Counted(c Coherence, segment string) Coherence {
	if c == nil || !counting.Load() {
		return c
	}
	kind := KindOther
	switch c.(type) {
	case Software:
		kind = KindSoftware
	case *Sim:
		kind = KindSimulated
	}
	counters.Lock()
	defer counters.Unlock()
	if counters.m == nil {
		counters.m = map[string]*Counter{}
	}
	ctr := counters.m[segment]
	if ctr == nil {
		ctr = &Counter{kind: kind}
		counters.m[segment] = ctr
	}
	return Counting{Inner: c, Counter: ctr}
}

// Kind is the kind of Coherence a counter counts.
type Kind int

// Kinds of Coherence.
const (
	KindSoftware  Kind = iota + 1 // Software: the processor's flush instructions
	KindSimulated                 // a *Sim
	KindOther                     // anything else given to Counted
)

// counters are the segments' counters, by name, for as long as the
// process lives: a benchmark's segments are few.
var counters struct {
	sync.Mutex
	m map[string]*Counter
}

// SegmentLines returns what has been counted for the segments named, in
// all (a name never counted adds nothing).
func SegmentLines(names ...string) Lines {
	counters.Lock()
	defer counters.Unlock()
	var l Lines
	for _, n := range names {
		if c := counters.m[n]; c != nil {
			l = l.Add(c.Lines())
		}
	}
	return l
}

// KindLines returns what has been counted for every segment of kind k.
func KindLines(k Kind) Lines {
	counters.Lock()
	defer counters.Unlock()
	var l Lines
	for _, c := range counters.m {
		if c.kind == k {
			l = l.Add(c.Lines())
		}
	}
	return l
}

// Segments returns the names of the segments counted so far, in no
// order.
func Segments() []string {
	counters.Lock()
	defer counters.Unlock()
	names := make([]string, 0, len(counters.m))
	for n := range counters.m {
		names = append(names, n)
	}
	return names
}

// Counter counts Flush and Invalidate operations and the cache lines
// (of LineSize bytes) they cover. Its methods may be called from any
// goroutine. The flush and invalidate counts are on separate cache lines:
// a connection's writer flushes while its reader invalidates.
type Counter struct {
	kind                     Kind
	flushes, flushed         atomic.Uint64
	_                        [LineSize - 24]byte
	invalidates, invalidated atomic.Uint64
	changed                  atomic.Uint64
	_                        [LineSize - 24]byte
}

// Lines is what a Counter has counted: operations (each one ends with a
// fence on real hardware) and the lines they covered, partial lines
// included. Changed is, over a Sim only, how many of the invalidated
// lines had been changed in memory by another side since this side last
// had them: the lines that carried data, where the others were polls
// that found nothing new.
type Lines struct {
	Flushes     uint64 `json:"flushes"`
	Flushed     uint64 `json:"flushed_lines"`
	Invalidates uint64 `json:"invalidates"`
	Invalidated uint64 `json:"invalidated_lines"`
	Changed     uint64 `json:"changed_lines,omitempty"`
}

// Sub returns l minus an earlier reading of the same counter.
func (l Lines) Sub(earlier Lines) Lines {
	return Lines{Flushes: l.Flushes - earlier.Flushes, Flushed: l.Flushed - earlier.Flushed,
		Invalidates: l.Invalidates - earlier.Invalidates, Invalidated: l.Invalidated - earlier.Invalidated,
		Changed: l.Changed - earlier.Changed}
}

// Add returns the sum of l and m.
func (l Lines) Add(m Lines) Lines {
	return Lines{Flushes: l.Flushes + m.Flushes, Flushed: l.Flushed + m.Flushed,
		Invalidates: l.Invalidates + m.Invalidates, Invalidated: l.Invalidated + m.Invalidated,
		Changed: l.Changed + m.Changed}
}

// Lines returns what c has counted so far.
func (c *Counter) Lines() Lines {
	return Lines{Flushes: c.flushes.Load(), Flushed: c.flushed.Load(),
		Invalidates: c.invalidates.Load(), Invalidated: c.invalidated.Load(), Changed: c.changed.Load()}
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

// Invalidate counts the lines of b as invalidated, then invalidates them;
// over a Sim, it counts those that had changed too.
func (c Counting) Invalidate(b []byte) {
	c.Counter.countInvalidate(b)
	if s, ok := c.Inner.(*Sim); ok && len(b) > 0 {
		c.Counter.changed.Add(s.invalidateChanged(b))
		return
	}
	c.Inner.Invalidate(b)
}
