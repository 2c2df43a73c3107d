// Package coherence makes writes to shared memory visible to a reader on
// another host when the memory between them is not kept coherent by
// hardware (issue 15: CXL memory shared by hosts without back-invalidation).
// The writer of a record, control word or heap block writes back the cache
// lines it wrote (Flush), and the reader drops its cached copies of the
// lines it is about to read (Invalidate).
//
// On amd64, Flush is CLWB (or CLFLUSHOPT, or CLFLUSH on older processors)
// over every 64-byte line of the range, then SFENCE; Invalidate is
// MFENCE (after the loads before it), CLFLUSHOPT (or CLFLUSH) over the
// lines, then MFENCE, so that the loads that follow miss the cache and
// read memory. On arm64, Flush is DC CVAC
// (clean to the point of coherence) over every line of the range, then
// DSB SY; Invalidate is DSB SY, DC CIVAC (clean and invalidate to the
// point of coherence) over the lines, then DSB SY. The arm64 loops step by
// the processor's smallest data line, read from CTR_EL0 at init on Linux
// (64 bytes assumed elsewhere), and Supported reports false if that line
// is larger than LineSize, which the shared layout is aligned to. On other
// architectures the operations are not implemented yet and Supported
// reports false.
//
// Sim stands in for non-coherent memory on one machine: each side works on
// a private copy of a segment, and Flush and Invalidate are what copy
// lines between the private copy and the shared one, so a missing Flush
// or Invalidate in a protocol shows up as stale data or a hang.
//
// The data path reaches it through the Coherence interface alone, only in
// a pool marked for it (docs/PROTOCOL.md 18): package ring (records and
// counters), package arena (return queues), package pool (Word32 and
// Word64: control, load, slot and registry words; Segment.UseCoherence
// chooses Software or a Sim per segment) and the transport's heap blocks
// and header pages. On coherent memory they hold a nil Coherence and
// call nothing.
package coherence
