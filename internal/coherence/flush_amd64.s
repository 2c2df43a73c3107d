#include "textflag.h"

// func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET

// func clwbLines(start, n uintptr)
TEXT ·clwbLines(SB), NOSPLIT, $0-16
	MOVQ start+0(FP), AX
	MOVQ n+8(FP), CX
	TESTQ CX, CX
	JZ done
loop:
	CLWB (AX)
	ADDQ $64, AX
	DECQ CX
	JNZ loop
done:
	RET

// func clflushoptLines(start, n uintptr)
TEXT ·clflushoptLines(SB), NOSPLIT, $0-16
	MOVQ start+0(FP), AX
	MOVQ n+8(FP), CX
	TESTQ CX, CX
	JZ done
loop:
	CLFLUSHOPT (AX)
	ADDQ $64, AX
	DECQ CX
	JNZ loop
done:
	RET

// func clflushLines(start, n uintptr)
TEXT ·clflushLines(SB), NOSPLIT, $0-16
	MOVQ start+0(FP), AX
	MOVQ n+8(FP), CX
	TESTQ CX, CX
	JZ done
loop:
	CLFLUSH (AX)
	ADDQ $64, AX
	DECQ CX
	JNZ loop
done:
	RET

// func sfence()
TEXT ·sfence(SB), NOSPLIT, $0-0
	SFENCE
	RET

// func mfence()
TEXT ·mfence(SB), NOSPLIT, $0-0
	MFENCE
	RET
