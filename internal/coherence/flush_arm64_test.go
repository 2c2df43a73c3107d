//go:build arm64 && linux

package coherence

import (
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
)

// TestARM64LineSize checks the line size the DC loops step by: on Linux it
// is CTR_EL0's DminLine, a power of two, and Supported and Instructions
// agree with it.
func TestARM64LineSize(t *testing.T) {
	ctr := ctrEL0()
	t.Logf("CTR_EL0 %#x: %d-byte data lines", ctr, dcLine)
	if dcLineFrom != "CTR_EL0" {
		t.Errorf("line size from %q on Linux, want CTR_EL0", dcLineFrom)
	}
	if want := ctrDminLine(ctr); dcLine != want {
		t.Errorf("dcLine = %d, want %d from CTR_EL0", dcLine, want)
	}
	if dcLine&(dcLine-1) != 0 || dcLine < 4 {
		t.Errorf("dcLine = %d, not a power of two of at least a word", dcLine)
	}
	if ctr>>31 != 1 {
		// Bit 31 is RES1 in the Armv8 format of CTR_EL0; a value without
		// it did not come from the register.
		t.Errorf("CTR_EL0 %#x: bit 31 clear", ctr)
	}
	if got, want := Supported(), dcLine <= LineSize; got != want {
		t.Errorf("Supported() = %v with %d-byte lines, want %v", got, dcLine, want)
	}
	f, i := Instructions()
	if !strings.HasPrefix(f, "DC CVAC+DSB SY") || !strings.Contains(i, "DC CIVAC+DSB SY") {
		t.Errorf("Instructions() = %q, %q", f, i)
	}
}

// TestARM64StaysInRange runs Flush and Invalidate on ranges that end at
// the end of a mapping followed by an inaccessible page: DC CVAC and DC
// CIVAC fault on an address that cannot be read, so a loop that went one
// line past the range would fault here on hardware. (An emulator that
// does not translate the DC address cannot catch that; the arithmetic is
// checked by TestLinesOf.)
func TestARM64StaysInRange(t *testing.T) {
	page := syscall.Getpagesize()
	mem, err := syscall.Mmap(-1, 0, 2*page, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(mem)
	if err := syscall.Mprotect(mem[page:], syscall.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	usable := mem[:page]
	for _, n := range []int{1, 63, 64, 65, 4096} {
		for _, tail := range []int{0, 1, 13} {
			if n+tail > page {
				continue
			}
			b := usable[page-n-tail : page-tail]
			for k := range b {
				b[k] = byte(n + k)
			}
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("%d bytes ending %d before the guard page: %v", n, tail, r)
					}
				}()
				Software{}.Flush(b)
				Software{}.Invalidate(b)
			}()
			for k := range b {
				if b[k] != byte(n+k) {
					t.Fatalf("%d bytes ending %d before the guard page: byte %d changed", n, tail, k)
				}
			}
		}
	}
}
