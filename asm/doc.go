// Package asm builds eBPF instruction sequences on top of
// github.com/cilium/ebpf/asm, adding what that package leaves to its callers.
//
// Instruction encoding is cilium/ebpf's: a [Block] stores ordinary
// [github.com/cilium/ebpf/asm.Instruction] values and only fills in jump
// offsets. On top of that it adds:
//
//   - named labels whose jumps the Block resolves itself into numeric offsets,
//     so nothing relies on cilium/ebpf's reference resolution, which truncates
//     an offset beyond ±32767 instructions to int16 without complaint (a
//     conditional jump over 70,000 instructions becomes a jump of +4464 that
//     the verifier accepts);
//   - trampolines for forward jumps beyond that range, and an error for any
//     jump that still cannot be encoded, never a wrong jump;
//   - a self-check that follows every assembled jump, through trampolines, to
//     its final instruction and compares it with the label it was written for;
//   - removal of instructions no path reaches, which the verifier would reject;
//   - counts of instructions and conditional jumps ([Block.Stats]), so callers
//     can split a program before the verifier's limits ([MaxInstructions],
//     [MaxJumpSequences]);
//   - an annotated listing with labels and comments ([Block.Listing]).
//
// References other than jumps (a map load's WithReference name for
// AssociateMap, for example) pass through untouched.
//
// # Kernel features
//
// None beyond loading a program. Trampolines are chains of ordinary 16-bit
// "ja" instructions; the package never emits the v4-ISA "gotol" (JA with a
// 32-bit immediate, Linux 6.6+). JMP32 comparisons ([Block.Jump32]) need
// Linux 5.1, but only if the caller uses them. Backward jumps are encoded when
// asked for; whether the verifier accepts the loop they form is the caller's
// concern (bounded loops need Linux 5.3). [Block.MayGoto] emits may_goto
// (Linux 6.9), which lets the verifier accept a loop it cannot bound; callers
// probe for it before relying on it.
package asm
