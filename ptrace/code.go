package ptrace

import "slices"

// injectCode is code for Trap mode and batches, placed in a tracee: a
// restore stub's only code (restart/stub.go), and during a checkpoint a
// page ckpt maps in the target for its injected calls:
//
//	0x00: syscall; int3; jmp 0x00 (+3 bytes of padding)
//
// A single injected call (ptrace.Injector in Trap mode) runs the syscall
// and stops at the int3.
//
//	0x08: batch: cmp r12,r13; jae done
//	      mov rax,[r12]; mov rdi,[r12+8]; mov rsi,[r12+16]; mov rdx,[r12+24]
//	      mov r10,[r12+32]; mov r8,[r12+40]; mov r9,[r12+48]; syscall
//	      mov [r12+56],rax; cmp rax,-4095; jae done
//	      add r12,64; jmp batch
//	0x44: done: int3; jmp done
//	0x48: tiles: ldtilecfg [rdi]; tilezero tmm0; tilerelease; int3
//
// The batch loop runs the 64-byte entries {nr, a1..a6, result} in
// [r12, r13) of scratch memory in order, storing each result, and stops at
// the int3 after the last or at the first that fails: a whole run of
// independent calls costs one ptrace stop instead of one per call (see
// resource.Target.Batch). The tiles routine is a restore stub thread's
// first AMX instruction (Injector.TouchTiles).
var injectCode = []byte{
	0x0f, 0x05, 0xcc, 0xeb, 0xfb, 0x90, 0x90, 0x90,
	0x4d, 0x39, 0xec, 0x73, 0x37, 0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b, 0x7c,
	0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18,
	0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44, 0x24, 0x28, 0x4d, 0x8b,
	0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x48, 0x3d,
	0x01, 0xf0, 0xff, 0xff, 0x73, 0x06, 0x49, 0x83, 0xc4, 0x40, 0xeb, 0xc4,
	0xcc, 0xeb, 0xfd, 0x90,
	0xc4, 0xe2, 0x78, 0x49, 0x07, 0xc4, 0xe2, 0x7b, 0x49, 0xc0, 0xc4, 0xe2,
	0x78, 0x49, 0xc0, 0xcc,
}

// InjectBatchOff is the batch loop's offset in InjectCode, and
// injectTilesOff the tiles routine's.
const (
	InjectBatchOff = 0x08
	injectTilesOff = 0x48
)

// InjectCode returns the code (a copy of injectCode, whose layout is
// above): a restore stub's, or a checkpoint's code page's.
func InjectCode() []byte { return slices.Clone(injectCode) }
