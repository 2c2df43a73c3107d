#include "textflag.h"

// Cache maintenance for memory shared with other hosts or devices that do
// not snoop this processor's caches (CXL without back-invalidation).
//
// The point of coherence (PoC) is what matters for such memory, not the
// point of unification: DC CVAC and DC CIVAC clean to the PoC, where every
// agent, this host's or not, sees the same copy. DC CVAU would only reach
// the PoU, which suffices for instruction fetch on this PE and nothing
// else.
//
// The barrier is DSB SY, not DSB ISH: a DSB waits for the maintenance to
// complete only for the observers in its shareability domain, and another
// host on CXL or a device is not in this host's inner shareable domain, so
// only the full system domain covers it. Linux makes the same choice:
// dcache_clean_poc and dcache_clean_inval_poc (used for DMA) end in
// DSB SY, while the PoU maintenance for self-modifying code ends in
// DSB ISH.
//
// The Go assembler has mnemonics for all of these (checked with go tool
// objdump); the encodings, with Xt = X0, are:
//	MRS X0, CTR_EL0   d53b0020  (MRS op0=3 op1=3 CRn=0 CRm=0 op2=1)
//	DC CVAC, X0       d50b7a20  (SYS #3, C7, C10, #1, X0)
//	DC CIVAC, X0      d50b7e20  (SYS #3, C7, C14, #1, X0)
//	DSB SY            d5033f9f  (CRm = 0b1111: $15 below)
// DC CVAC and DC CIVAC at EL0 need SCTLR_EL1.UCI, which Linux sets (or
// traps and emulates, see flush_arm64.go); MRS CTR_EL0 needs
// SCTLR_EL1.UCT, and is only run on Linux.

// func ctrEL0() uint64
TEXT ·ctrEL0(SB), NOSPLIT, $0-8
	MRS	CTR_EL0, R0
	MOVD	R0, ret+0(FP)
	RET

// func cleanLines(start, n, step uintptr)
TEXT ·cleanLines(SB), NOSPLIT, $0-24
	MOVD	start+0(FP), R0
	MOVD	n+8(FP), R1
	MOVD	step+16(FP), R2
	CBZ	R1, done
loop:
	DC	CVAC, R0
	ADD	R2, R0
	SUB	$1, R1
	CBNZ	R1, loop
done:
	// The write-backs must reach the PoC before the stores that follow
	// (a sequence number, a doorbell) can be seen by another agent.
	DSB	$15 // SY
	RET

// func cleanInvalidateLines(start, n, step uintptr)
TEXT ·cleanInvalidateLines(SB), NOSPLIT, $0-24
	MOVD	start+0(FP), R0
	MOVD	n+8(FP), R1
	MOVD	step+16(FP), R2
	// The leading barrier keeps the invalidation after the loads that
	// came before it, typically the reader's load of a sequence number
	// that said the data is ready. Without it DC CIVAC may be performed
	// before that load, a speculative or prefetched refill of the line
	// may read memory before the writer's data reached it, and the loads
	// after the trailing barrier would hit that stale copy. A DMB would
	// order them too; DSB SY is used because it is unambiguous for cache
	// maintenance and costs little next to the memory reads that follow.
	DSB	$15 // SY
	CBZ	R1, done
loop:
	// CIVAC rather than IVAC: invalidating without cleaning would
	// discard this host's own unflushed stores on the line, and DC IVAC
	// is not available at EL0 at all.
	DC	CIVAC, R0
	ADD	R2, R0
	SUB	$1, R1
	CBNZ	R1, loop
done:
	// The lines must be gone before the loads that follow, so that they
	// miss and read memory.
	DSB	$15 // SY
	RET
