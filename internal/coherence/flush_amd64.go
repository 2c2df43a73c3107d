//go:build amd64

package coherence

import "unsafe"

// Processor features, from CPUID leaf 7 (EBX bit 23 CLFLUSHOPT, bit 24
// CLWB) and leaf 1 (EDX bit 19 CLFLUSH).
var hasCLWB, hasCLFLUSHOPT, hasCLFLUSH = features()

func features() (clwb, clflushopt, clflush bool) {
	_, _, _, edx1 := cpuid(1, 0)
	max, _, _, _ := cpuid(0, 0)
	if max >= 7 {
		_, ebx7, _, _ := cpuid(7, 0)
		clflushopt = ebx7&(1<<23) != 0
		clwb = ebx7&(1<<24) != 0
	}
	return clwb, clflushopt, edx1&(1<<19) != 0
}

// Supported reports whether this processor can write back and invalidate
// cache lines (it has at least CLFLUSH).
func Supported() bool { return hasCLFLUSH }

// Instructions names the instructions Flush and Invalidate use here.
func Instructions() (flush, invalidate string) {
	switch {
	case hasCLWB:
		flush = "CLWB+SFENCE"
	case hasCLFLUSHOPT:
		flush = "CLFLUSHOPT+SFENCE"
	default:
		flush = "CLFLUSH+SFENCE"
	}
	if hasCLFLUSHOPT {
		return flush, "CLFLUSHOPT+MFENCE"
	}
	return flush, "CLFLUSH+MFENCE"
}

func flush(b []byte) {
	start, n := lines(b, uintptr(unsafe.Pointer(&b[0])))
	switch {
	case hasCLWB:
		clwbLines(start, n)
	case hasCLFLUSHOPT:
		clflushoptLines(start, n)
	default:
		clflushLines(start, n)
	}
	sfence()
}

func invalidate(b []byte) {
	start, n := lines(b, uintptr(unsafe.Pointer(&b[0])))
	// After the loads before it (the tail that says the bytes are ready):
	// CLFLUSHOPT is not ordered with older loads, and a line dropped
	// before the load that announced it could come back stale (Linux's
	// clflush_cache_range fences first too).
	mfence()
	if hasCLFLUSHOPT {
		clflushoptLines(start, n)
	} else {
		clflushLines(start, n)
	}
	mfence()
}

// Implemented in flush_amd64.s.
func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
func clwbLines(start, n uintptr)
func clflushoptLines(start, n uintptr)
func clflushLines(start, n uintptr)
func sfence()
func mfence()
