package asm

import (
	"errors"
	"testing"

	ebpfasm "github.com/cilium/ebpf/asm"
)

// TestSelfCheckCatchesWrongJump corrupts an encoded offset, of a direct jump
// and of a trampoline entry, and expects the self-check to refuse it.
func TestSelfCheckCatchesWrongJump(t *testing.T) {
	b := NewBlock(WithTrampolineStride(6))
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
	b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, "far")
	b.Jump(ebpfasm.JEq, ebpfasm.R1, 1, "near")
	b.Emit(ebpfasm.Return())
	b.Label("near")
	for range 10 {
		b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 1))
	}
	b.Emit(ebpfasm.Return())
	b.Label("far")
	b.Emit(ebpfasm.Return())

	a, err := b.assemble()
	if err != nil {
		t.Fatalf("assemble: %v", err)
	}
	for _, kind := range []placedKind{placedUser, placedEntry} {
		corrupted := 0
		for i := range a.out {
			p := &a.out[i]
			if p.kind != kind || p.finalItem < 0 {
				continue
			}
			p.ins.Offset++
			if err := a.selfCheck(); !errors.Is(err, ErrSelfCheck) {
				t.Errorf("kind %d, slot %d: offset off by one: selfCheck = %v, want ErrSelfCheck", kind, p.slot, err)
			}
			p.ins.Offset--
			corrupted++
		}
		if corrupted == 0 {
			t.Errorf("kind %d: no jump to corrupt", kind)
		}
	}
	if err := a.selfCheck(); err != nil {
		t.Errorf("selfCheck after restoring offsets: %v", err)
	}
}

// BenchmarkAssembleMillion assembles a program at the verifier's size limit
// with a long forward jump, to keep Assemble linear.
func BenchmarkAssembleMillion(b *testing.B) {
	blk := NewBlock()
	blk.Jump(ebpfasm.JEq, ebpfasm.R1, 0, "out")
	for range MaxInstructions - 100 {
		blk.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 2))
	}
	blk.Emit(ebpfasm.Return())
	blk.Label("out")
	blk.Emit(ebpfasm.Return())
	for b.Loop() {
		if _, err := blk.Assemble(); err != nil {
			b.Fatal(err)
		}
	}
}
