#include "textflag.h"

// func matchGroupAsm(b *bucket, home *int32, tags *uint32, refs *keyRef, pend *uint8, n int, keys *[]byte, arena *byte, arenaLen int) int
//
// For each key j < n: the eight tags of bucket b[home[j]] are compared with
// tags[j] four at a time (PCMPEQL), the two masks joined, and the first
// matching slot's ref stored in refs[j] (refEmpty when none matches). A
// matched ref above refTomb has its arena entry prefetched at once: the line
// of its first byte and the line of byte 4+len(keys[j]), when that is below
// arenaLen. A key without a match whose bucket has no empty slot (no ref of
// 0) is displaced: its index goes to pend. Returns how many were listed.
TEXT ·matchGroupAsm(SB), NOSPLIT, $0-80
	MOVQ b+0(FP), SI
	MOVQ home+8(FP), R8
	MOVQ tags+16(FP), R9
	MOVQ refs+24(FP), R10
	MOVQ pend+32(FP), R11
	MOVQ n+40(FP), CX
	MOVQ arena+56(FP), DI
	XORQ DX, DX
	XORQ R12, R12
	PXOR X7, X7

loop:
	CMPQ DX, CX
	JGE  done
	MOVLQSX (R8)(DX*4), AX
	SHLQ $6, AX
	ADDQ SI, AX
	MOVL (R9)(DX*4), BX
	MOVQ BX, X0
	PSHUFD $0, X0, X0
	MOVOU 0(AX), X1
	MOVOU 16(AX), X2
	PCMPEQL X0, X1
	PCMPEQL X0, X2
	MOVMSKPS X1, R13
	MOVMSKPS X2, R14
	SHLQ $4, R14
	ORQ  R14, R13
	JZ   nomatch
	BSFQ R13, R13
	MOVL 32(AX)(R13*4), BX
	MOVL BX, (R10)(DX*4)
	CMPL BX, $1
	JLS  next // refEmpty or refTomb: no entry
	MOVQ keys+48(FP), R13
	LEAQ (DX)(DX*2), R14
	MOVQ 8(R13)(R14*8), R14 // len(keys[j])
	SHLQ $1, BX             // the entry's offset: ref*arenaUnit
	LEAQ 4(BX)(R14*1), R14  // its last key byte, as resolveHashedLocked computes it
	CMPQ R14, arenaLen+64(FP)
	JGE  next
	PREFETCHT0 (DI)(BX*1)
	PREFETCHT0 (DI)(R14*1)
	INCQ DX
	JMP  loop

nomatch:
	MOVL $0, (R10)(DX*4)
	MOVOU 32(AX), X1
	MOVOU 48(AX), X2
	PCMPEQL X7, X1
	PCMPEQL X7, X2
	POR  X2, X1
	MOVMSKPS X1, R13
	TESTQ R13, R13
	JNZ  next
	MOVB DX, (R11)(R12*1)
	INCQ R12

next:
	INCQ DX
	JMP  loop

done:
	MOVQ R12, ret+72(FP)
	RET
