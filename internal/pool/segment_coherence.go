//go:build linux

package pool

import (
	"errors"
	"fmt"
	"path/filepath"
	"unsafe"

	"github.com/notnets/notnets/internal/coherence"
)

// UseCoherence makes this process keep the segment's memory coherent with
// its peers' as c says (the pool's Mode.Coherence, PROTOCOL.md 18), before
// anything of it is read or written: nothing to do for
// CoherenceHardware; the processor's write-back and invalidate
// instructions for CoherenceSoftware; for CoherenceSimulated, Mem becomes
// a private copy of the mapping (coherence.Sim), empty until this process
// invalidates what it reads, so that a read the protocol does not
// announce with an invalidate, or a store it does not follow with a
// flush, shows up at once. Call it once, right after the segment is made
// or mapped; Close undoes it.
func (s *Segment) UseCoherence(c Coherence) error {
	switch c {
	case CoherenceHardware:
		return nil
	case CoherenceSoftware:
		if !coherence.Supported() {
			return errors.New("notnets: the pool's memory is kept coherent in software, and this processor has no cache-line write-back instruction")
		}
		s.coh = coherence.Counted(coherence.Software{}, filepath.Base(s.Path)) // Software itself unless counting (notnets bench)
		return nil
	case CoherenceSimulated:
		sim, err := coherence.NewSim(s.Mem)
		if err != nil {
			return fmt.Errorf("notnets: simulate segment %s: %w", s.Path, err)
		}
		s.sim, s.shared, s.Mem, s.coh = sim, s.Mem, sim.View, coherence.Counted(sim, filepath.Base(s.Path))
		return nil
	}
	return fmt.Errorf("notnets: unknown coherence %v", c)
}

// Coherence returns what keeps the segment's memory coherent (for
// package ring, package arena and the layouts' words), or nil when the
// hardware does.
func (s *Segment) Coherence() coherence.Coherence { return s.coh }

// Simulated reports whether Mem is a simulated private copy of the
// mapping (CoherenceSimulated); false for a nil segment.
func (s *Segment) Simulated() bool { return s != nil && s.sim != nil }

// Flush writes back the bytes b of Mem that this process wrote, when the
// memory is not coherent.
func (s *Segment) Flush(b []byte) {
	if s.coh != nil {
		s.coh.Flush(b)
	}
}

// Invalidate makes the bytes b of Mem read from memory next, when it is
// not coherent.
func (s *Segment) Invalidate(b []byte) {
	if s.coh != nil {
		s.coh.Invalidate(b)
	}
}

// Mapped returns the bytes of the file's mapping that b, a slice of Mem,
// stands for: b itself, but when Mem is a simulated private copy
// (for mprotect, which must protect the memory, not the copy).
func (s *Segment) Mapped(b []byte) []byte {
	if s.sim == nil || len(b) == 0 {
		return b
	}
	off := int(uintptr(unsafe.Pointer(&b[0])) - uintptr(unsafe.Pointer(&s.Mem[0])))
	return s.shared[off : off+len(b) : off+len(b)]
}

// closeCoherence gives Mem back its mapping, releasing a simulated copy.
func (s *Segment) closeCoherence() {
	if s.sim != nil {
		s.sim.Close()
		s.Mem, s.sim, s.shared = s.shared, nil, nil
	}
	s.coh = nil
}
