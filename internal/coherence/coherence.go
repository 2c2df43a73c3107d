package coherence

// LineSize is the cache line size the operations work in.
const LineSize = 64

// Coherence is what a side calls around its accesses to shared memory:
// Flush after writing b, Invalidate before reading b. Both cover every
// line that b touches, partial lines included.
type Coherence interface {
	Flush(b []byte)
	Invalidate(b []byte)
}

// Hardware is the Coherence of memory that hardware keeps coherent (one
// host, or CXL with back-invalidation): both operations do nothing.
type Hardware struct{}

// Flush does nothing.
func (Hardware) Flush([]byte) {}

// Invalidate does nothing.
func (Hardware) Invalidate([]byte) {}

// Software is the Coherence of memory that hardware does not keep
// coherent, on a processor that has the instructions (Supported).
type Software struct{}

// Flush writes back every line of b to memory and waits until the
// write-backs are ordered before later stores.
func (Software) Flush(b []byte) {
	if len(b) > 0 {
		flush(b)
	}
}

// Invalidate drops this processor's cached copies of every line of b, so
// that the loads that follow read memory.
func (Software) Invalidate(b []byte) {
	if len(b) > 0 {
		invalidate(b)
	}
}

// lines returns the address of the first line that b touches and how many
// lines it touches.
func lines(b []byte, addr uintptr) (start uintptr, n uintptr) {
	return linesOf(addr, len(b), LineSize)
}

// linesOf returns the address of the first line of size bytes (a power of
// two) that the n bytes at addr touch, and how many such lines they touch.
// It is lines for a line size other than LineSize: on arm64 the loop steps
// by the processor's own line size, which need not be 64.
func linesOf(addr uintptr, n int, size uintptr) (start uintptr, count uintptr) {
	start = addr &^ (size - 1)
	end := (addr + uintptr(n) + size - 1) &^ (size - 1)
	return start, (end - start) / size
}

// ctrDminLine returns the smallest data cache line size, in bytes, that
// an arm64 CTR_EL0 value reports: DminLine, bits 19:16, is the log2 of
// the number of 4-byte words in the line. It is here rather than in
// flush_arm64.go so that it is tested on every architecture.
func ctrDminLine(ctr uint64) uintptr {
	return 4 << ((ctr >> 16) & 0xf)
}
