package asm_test

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	ebpfasm "github.com/cilium/ebpf/asm"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/asm"
)

var update = flag.Bool("update", false, "rewrite the golden listings in testdata")

func TestListingGolden(t *testing.T) {
	tests := []struct {
		name  string
		opts  []asm.Option
		build func(b *asm.Block)
	}{
		{
			name: "labels_comments_deadcode",
			build: func(b *asm.Block) {
				b.Comment("r2 = skb->len")
				loadLen(b)
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
				b.Comment("look the packet up in a map")
				b.Emit(ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference("ipsets"))
				b.Jump(ebpfasm.JGT, ebpfasm.R2, 100, "big")
				b.Jump32(ebpfasm.JLT, ebpfasm.R2, 20, "small")
				b.Ja("out")
				b.Comment("dropped: nothing jumps here")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 9))
				b.Label("big")
				b.Label("large")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 2))
				b.Label("out")
				b.Emit(ebpfasm.Return())
				b.Label("small")
				b.Comment("small packets")
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 1), ebpfasm.Return())
				b.Label("unused")
				b.Emit(ebpfasm.Return())
			},
		},
		{
			name: "trampolines",
			opts: []asm.Option{asm.WithTrampolineStride(6)},
			build: func(b *asm.Block) {
				loadLen(b)
				b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0))
				b.Jump(ebpfasm.JEq, ebpfasm.R2, 1, "a")
				b.JumpReg(ebpfasm.JNE, ebpfasm.R2, ebpfasm.R0, "mid")
				filler(b, 2)
				b.Comment("the trampoline after this exit needs no skip")
				b.Emit(ebpfasm.Return())
				b.Label("mid")
				b.Emit(ebpfasm.LoadImm(ebpfasm.R0, 1<<40, ebpfasm.DWord))
				b.Jump(ebpfasm.JGT, ebpfasm.R2, 50, "b")
				filler(b, 3)
				b.Emit(ebpfasm.Return())
				b.Label("a")
				filler(b, 4)
				b.Emit(ebpfasm.Return())
				b.Label("b")
				b.Emit(ebpfasm.Return())
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := asm.NewBlock(tt.opts...)
			tt.build(b)
			got, err := b.Listing()
			if err != nil {
				t.Fatalf("Listing: %v", err)
			}
			path := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatalf("update golden file: %v", err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file (run with -update to create it): %v", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("listing (-want +got):\n%s", diff)
			}
		})
	}
}
