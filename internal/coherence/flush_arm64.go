//go:build arm64

package coherence

import (
	"fmt"
	"runtime"
	"unsafe"
)

// dcLine is the step of the DC loops: the smallest data cache line size of
// this system, in bytes, and dcLineFrom says where it came from.
//
// It is read from CTR_EL0 (DminLine) once, at init, rather than assumed to
// be 64: Armv8 lets it be smaller or larger, and a loop that steps by more
// than the real line size skips lines and leaves them unflushed. On
// Linux the read always works from EL0: the kernel either sets
// SCTLR_EL1.UCT, or, when CPUs disagree about their cache geometry
// (big.LITTLE with mismatched lines) or an erratum needs it, clears UCT and
// emulates the read with the system-wide safe value, the smallest line of
// any CPU. That is the value a goroutine that may migrate between CPUs
// must step by, so reading it once is enough. Elsewhere UCT is not known
// to be set, and an MRS that traps is a SIGILL that the Go runtime cannot
// recover from, so dcLine falls back to 64 without reading the register
// (no Armv8 processor known to us has data lines smaller than 64 bytes).
var dcLine, dcLineFrom = lineSize()

func lineSize() (uintptr, string) {
	switch runtime.GOOS {
	case "linux", "android":
		return ctrDminLine(ctrEL0()), "CTR_EL0"
	}
	return LineSize, "assumed: CTR_EL0 not known to be readable at EL0 on " + runtime.GOOS
}

// Supported reports whether Flush and Invalidate can be relied on here.
// Every arm64 processor has DC CVAC and DC CIVAC, and Linux lets EL0 use
// them (it sets SCTLR_EL1.UCI, or traps and performs them itself when an
// erratum needs it, as it does on Cortex-A53 to upgrade DC CVAC to DC
// CIVAC). Supported is false only when the processor's line is larger
// than LineSize: the instructions still cover every line of a range then,
// but the shared layout, aligned to LineSize, no longer keeps what
// different hosts write on different lines, and writing back one host's
// copy of a shared line (DC CVAC, or the clean half of DC CIVAC) would
// overwrite the other host's half in memory with stale bytes.
func Supported() bool { return dcLine <= LineSize }

// Instructions names the instructions Flush and Invalidate use here, and
// the line size their loops step by and where it came from.
func Instructions() (flush, invalidate string) {
	lines := fmt.Sprintf(" (%d-byte lines, %s)", dcLine, dcLineFrom)
	return "DC CVAC+DSB SY" + lines, "DSB SY+DC CIVAC+DSB SY" + lines
}

func flush(b []byte) {
	start, n := linesOf(uintptr(unsafe.Pointer(&b[0])), len(b), dcLine)
	cleanLines(start, n, dcLine)
}

func invalidate(b []byte) {
	start, n := linesOf(uintptr(unsafe.Pointer(&b[0])), len(b), dcLine)
	cleanInvalidateLines(start, n, dcLine)
}

// Implemented in flush_arm64.s.

// ctrEL0 returns the Cache Type Register.
func ctrEL0() uint64

// cleanLines runs DC CVAC on the n lines of step bytes from start, then
// DSB SY.
func cleanLines(start, n, step uintptr)

// cleanInvalidateLines runs DSB SY, DC CIVAC on the n lines of step bytes
// from start, then DSB SY.
func cleanInvalidateLines(start, n, step uintptr)
