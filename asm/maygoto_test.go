package asm_test

import (
	"errors"
	"testing"

	ebpfasm "github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/asm"
	"github.com/sluicenet/sluice/internal/testutil"
)

// TestMayGotoEncoding checks the may_goto encoding (opcode 0xe5, src 0,
// the offset to its label) against cilium/ebpf's decoder's form.
func TestMayGotoEncoding(t *testing.T) {
	b := asm.NewBlock()
	b.Label("top")
	b.MayGoto("out")
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 1))
	b.Ja("top")
	b.Label("out")
	b.Emit(ebpfasm.Return())
	insns, err := b.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	mg := insns[0]
	if mg.OpCode != 0xe5 || mg.Src != ebpfasm.PseudoMayGoto || mg.Offset != 2 {
		t.Fatalf("may_goto encoded as %v (opcode %#x, src %v, offset %d)", mg, uint8(mg.OpCode), mg.Src, mg.Offset)
	}
	if got := b.Stats().Jumps; got != 1 {
		t.Errorf("may_goto counted as %d conditional jumps, want 1", got)
	}
	bad := asm.NewBlock()
	bad.MayGoto("")
	if !errors.Is(bad.Err(), asm.ErrUndefinedLabel) {
		t.Errorf("may_goto without label: %v", bad.Err())
	}
}

// TestMayGotoLoop runs, in the kernel, a loop the verifier cannot bound
// (it counts down skb->len) that is accepted because of may_goto.
func TestMayGotoLoop(t *testing.T) {
	testutil.RequirePrivileged(t)
	b := asm.NewBlock()
	loadLen(b)
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
	b.Label("top")
	b.MayGoto("out")
	b.Jump(ebpfasm.JEq, ebpfasm.R2, 0, "out")
	b.Emit(ebpfasm.Add.Imm(ebpfasm.R0, 3), ebpfasm.Add.Imm(ebpfasm.R2, -1))
	b.Ja("top")
	b.Label("out")
	b.Emit(ebpfasm.Return())
	insns, err := b.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	lens := []uint32{0, 1, 7, 300}
	got := kernelResults(t, insns, lens)
	for i, n := range lens {
		if got[i] != 3*n {
			t.Errorf("skb->len %d: got %d, want %d", n, got[i], 3*n)
		}
	}
}
