//go:build !linux

package coherence

import "unsafe"

// private allocates n bytes for a Sim's view: on the Go heap here, where
// the pool does not run (it needs Linux) and only the package's own
// tests use a Sim.
func private(n int) ([]byte, func() error, error) {
	b := make([]byte, n+LineSize)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & (LineSize - 1))
	return b[off : off+n : off+n], func() error { return nil }, nil
}
