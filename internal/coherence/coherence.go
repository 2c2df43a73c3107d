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
	start = addr &^ (LineSize - 1)
	end := (addr + uintptr(len(b)) + LineSize - 1) &^ (LineSize - 1)
	return start, (end - start) / LineSize
}
