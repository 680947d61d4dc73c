package asm_test

import (
	"errors"
	"testing"

	ebpfasm "github.com/cilium/ebpf/asm"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/asm"
)

// rawIns is the comparable part of an instruction: go-cmp cannot look inside
// cilium/ebpf's Metadata, so tests compare encodings plus the reference name.
type rawIns struct {
	Op       string
	Dst, Src ebpfasm.Register
	Offset   int16
	Constant int64
	Ref      string
}

func raw(insns ebpfasm.Instructions) []rawIns {
	out := make([]rawIns, len(insns))
	for i, ins := range insns {
		out[i] = rawIns{ins.OpCode.String(), ins.Dst, ins.Src, ins.Offset, ins.Constant, ins.Reference()}
	}
	return out
}

// withOffset sets a raw offset on a jump built by cilium/ebpf's constructors
// and drops the label reference they attach.
func withOffset(ins ebpfasm.Instruction, off int16) ebpfasm.Instruction {
	return ebpfasm.Instruction{OpCode: ins.OpCode, Dst: ins.Dst, Src: ins.Src, Offset: off, Constant: ins.Constant}
}

func TestAssembleEncoding(t *testing.T) {
	tests := []struct {
		name  string
		build func(b *asm.Block)
		want  ebpfasm.Instructions
	}{
		{
			name: "forward label",
			build: func(b *asm.Block) {
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 1))
				b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, "out")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 2), ebpfasm.Return())
				b.Label("out")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 3), ebpfasm.Return())
			},
			want: ebpfasm.Instructions{
				ebpfasm.Mov.Imm(ebpfasm.R0, 1),
				withOffset(ebpfasm.JEq.Imm(ebpfasm.R1, 0, ""), 2),
				ebpfasm.Mov.Imm(ebpfasm.R0, 2),
				ebpfasm.Return(),
				ebpfasm.Mov.Imm(ebpfasm.R0, 3),
				ebpfasm.Return(),
			},
		},
		{
			name: "backward label (bounded loop)",
			build: func(b *asm.Block) {
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
				b.Label("loop")
				b.Emit(ebpfasm.Add.Imm(ebpfasm.R0, 1))
				b.Jump(ebpfasm.JLT, ebpfasm.R0, 10, "loop")
				b.Emit(ebpfasm.Return())
			},
			want: ebpfasm.Instructions{
				ebpfasm.Mov.Imm(ebpfasm.R0, 0),
				ebpfasm.Add.Imm(ebpfasm.R0, 1),
				withOffset(ebpfasm.JLT.Imm(ebpfasm.R0, 10, ""), -2),
				ebpfasm.Return(),
			},
		},
		{
			name: "Jump32 and JumpReg",
			build: func(b *asm.Block) {
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
				b.Jump32(ebpfasm.JNE, ebpfasm.R1, -1, "a")
				b.JumpReg(ebpfasm.JSGT, ebpfasm.R1, ebpfasm.R2, "b")
				b.Emit(ebpfasm.Return())
				b.Label("a")
				b.Label("b")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 1), ebpfasm.Return())
			},
			want: ebpfasm.Instructions{
				ebpfasm.Mov.Imm(ebpfasm.R0, 0),
				withOffset(ebpfasm.JNE.Imm32(ebpfasm.R1, -1, ""), 2),
				withOffset(ebpfasm.JSGT.Reg(ebpfasm.R1, ebpfasm.R2, ""), 1),
				ebpfasm.Return(),
				ebpfasm.Mov.Imm(ebpfasm.R0, 1),
				ebpfasm.Return(),
			},
		},
		{
			name: "LoadImm64 and LoadMapPtr span two slots",
			build: func(b *asm.Block) {
				b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, "end")
				b.Emit(ebpfasm.LoadImm(ebpfasm.R2, 1<<40, ebpfasm.DWord))
				b.Emit(ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference("ipsets"))
				b.Label("end")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0), ebpfasm.Return())
			},
			want: ebpfasm.Instructions{
				withOffset(ebpfasm.JEq.Imm(ebpfasm.R1, 0, ""), 4),
				ebpfasm.LoadImm(ebpfasm.R2, 1<<40, ebpfasm.DWord),
				ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference("ipsets"),
				ebpfasm.Mov.Imm(ebpfasm.R0, 0),
				ebpfasm.Return(),
			},
		},
		{
			name: "unconditional jump and unreachable code dropped",
			build: func(b *asm.Block) {
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 1))
				b.Ja("out")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 2)) // dead: after ja, no label
				b.Emit(ebpfasm.Return())               // dead
				b.Label("out")
				b.Emit(ebpfasm.Return())
				b.Label("unused")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 3), ebpfasm.Return()) // dead: label nobody jumps to
			},
			want: ebpfasm.Instructions{
				ebpfasm.Mov.Imm(ebpfasm.R0, 1),
				withOffset(ebpfasm.Ja.Label(""), 0),
				ebpfasm.Return(),
			},
		},
		{
			name: "dead code reached only from dead code is dropped",
			build: func(b *asm.Block) {
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 1), ebpfasm.Return())
				b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, "deadtarget") // dead
				b.Emit(ebpfasm.Return())                         // dead
				b.Label("deadtarget")
				b.Emit(ebpfasm.Return()) // dead: only the dead jump targets it
			},
			want: ebpfasm.Instructions{
				ebpfasm.Mov.Imm(ebpfasm.R0, 1),
				ebpfasm.Return(),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := asm.NewBlock()
			tt.build(b)
			got, err := b.Assemble()
			if err != nil {
				t.Fatalf("Assemble: %v", err)
			}
			if diff := cmp.Diff(raw(tt.want), raw(got)); diff != "" {
				t.Errorf("instructions (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStats(t *testing.T) {
	b := asm.NewBlock()
	b.Label("start")
	b.Emit(ebpfasm.LoadImm(ebpfasm.R0, 7, ebpfasm.DWord))
	b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, "x")
	b.Jump32(ebpfasm.JEq, ebpfasm.R1, 0, "x")
	b.JumpReg(ebpfasm.JEq, ebpfasm.R1, ebpfasm.R2, "x")
	b.Ja("x")
	b.Label("x")
	b.Emit(ebpfasm.Return())
	want := asm.Stats{Instructions: 7, Jumps: 3, Labels: 2}
	if diff := cmp.Diff(want, b.Stats()); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
}

func TestAssembleErrors(t *testing.T) {
	filler := func(b *asm.Block, n int) {
		for range n {
			b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
		}
	}
	tests := []struct {
		name  string
		build func(b *asm.Block)
		want  error
	}{
		{"undefined label", func(b *asm.Block) {
			b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, "nowhere")
			b.Emit(ebpfasm.Return())
		}, asm.ErrUndefinedLabel},
		{"duplicate label", func(b *asm.Block) {
			b.Label("x")
			b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
			b.Label("x")
			b.Emit(ebpfasm.Return())
		}, asm.ErrDuplicateLabel},
		{"jump to self", func(b *asm.Block) {
			b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
			b.Label("self")
			b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, "self")
			b.Emit(ebpfasm.Return())
		}, asm.ErrJumpToSelf},
		{"ja to self", func(b *asm.Block) {
			b.Label("self")
			b.Ja("self")
		}, asm.ErrJumpToSelf},
		{"backward jump too far", func(b *asm.Block) {
			b.Label("top")
			filler(b, 32768)
			b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, "top")
			b.Emit(ebpfasm.Return())
		}, asm.ErrJumpOutOfRange},
		{"label after last instruction", func(b *asm.Block) {
			b.Emit(ebpfasm.Return())
			b.Label("end")
		}, asm.ErrDanglingLabel},
		{"falls off the end", func(b *asm.Block) {
			b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
		}, asm.ErrFallsOffEnd},
		{"empty block", func(b *asm.Block) {}, asm.ErrFallsOffEnd},
		{"raw jump passed to Emit", func(b *asm.Block) {
			b.Emit(ebpfasm.JEq.Imm(ebpfasm.R1, 0, "x"), ebpfasm.Return())
		}, asm.ErrInvalidInstruction},
		{"bpf-to-bpf call passed to Emit", func(b *asm.Block) {
			b.Emit(ebpfasm.Call.Label("fn"), ebpfasm.Return())
		}, asm.ErrInvalidInstruction},
		{"Ja as a conditional jump", func(b *asm.Block) {
			b.Jump(ebpfasm.Ja, ebpfasm.R1, 0, "x")
		}, asm.ErrInvalidInstruction},
		{"Exit as a jump", func(b *asm.Block) {
			b.JumpReg(ebpfasm.Exit, ebpfasm.R1, ebpfasm.R2, "x")
		}, asm.ErrInvalidInstruction},
		{"bad register", func(b *asm.Block) {
			b.Jump(ebpfasm.JEq, ebpfasm.Register(11), 0, "x")
		}, asm.ErrInvalidInstruction},
		{"empty jump label", func(b *asm.Block) {
			b.Ja("")
		}, asm.ErrUndefinedLabel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := asm.NewBlock()
			tt.build(b)
			_, err := b.Assemble()
			if !errors.Is(err, tt.want) {
				t.Fatalf("Assemble error = %v, want %v", err, tt.want)
			}
			if _, lerr := b.Listing(); !errors.Is(lerr, tt.want) {
				t.Errorf("Listing error = %v, want %v", lerr, tt.want)
			}
		})
	}
}

func TestStrideOption(t *testing.T) {
	for _, n := range []int{-1, 0, 3, 1 << 16} {
		b := asm.NewBlock(asm.WithTrampolineStride(n))
		if !errors.Is(b.Err(), asm.ErrJumpOutOfRange) {
			t.Errorf("stride %d: Err() = %v, want ErrJumpOutOfRange", n, b.Err())
		}
	}
	if err := asm.NewBlock(asm.WithTrampolineStride(4)).Err(); err != nil {
		t.Errorf("stride 4: %v", err)
	}
}

// TestErrorIsSticky checks that builder calls after an error are ignored and
// the first error is the one reported.
func TestErrorIsSticky(t *testing.T) {
	b := asm.NewBlock()
	b.Label("x")
	b.Label("x")
	b.Jump(ebpfasm.Ja, ebpfasm.R0, 0, "x")
	if !errors.Is(b.Err(), asm.ErrDuplicateLabel) {
		t.Fatalf("Err() = %v, want ErrDuplicateLabel", b.Err())
	}
}
