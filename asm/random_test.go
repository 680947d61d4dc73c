package asm_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	ebpfasm "github.com/cilium/ebpf/asm"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/asm"
)

// srcKind is one kind of statement in a random source program.
type srcKind uint8

const (
	srcMov     srcKind = iota // r0 = imm
	srcLdImm64                // r0 = imm (two slots)
	srcJump                   // if r2 <op> imm goto label
	srcJump32                 // if w2 <op> imm goto label
	srcJumpReg                // if r2 <op> r3 goto label
	srcJa                     // goto label
	srcExit                   // return r0
)

// srcIns is a statement of a random program, written with labels: the
// reference model runs these directly, never the assembled output.
type srcIns struct {
	kind   srcKind
	op     ebpfasm.JumpOp
	imm    int64
	label  int      // jump target, for jumps
	labels []string // labels naming this statement
}

// srcProgram is the prologue r2 = skb->len, r0 = 0, r3 = r3Value followed by
// body. Jumps only go forward, so every run ends.
type srcProgram struct {
	r3Value int32
	body    []srcIns
	// labelAt maps label number to the index in body it names.
	labelAt []int
}

var randomJumpOps = []ebpfasm.JumpOp{
	ebpfasm.JEq, ebpfasm.JNE, ebpfasm.JGT, ebpfasm.JGE, ebpfasm.JLT,
	ebpfasm.JLE, ebpfasm.JSet, ebpfasm.JSGT, ebpfasm.JSLE,
}

// randomProgram returns a program of n statements with at most maxLabels
// labels.
func randomProgram(rng *rand.Rand, n, maxLabels int) srcProgram {
	p := srcProgram{r3Value: rng.Int32N(40)}
	labels := 1 + rng.IntN(min(n/4+1, maxLabels))
	for range labels {
		p.labelAt = append(p.labelAt, 1+rng.IntN(n-1))
	}
	p.body = make([]srcIns, n)
	for l, at := range p.labelAt {
		p.body[at].labels = append(p.body[at].labels, fmt.Sprintf("L%d", l))
	}
	for i := range n {
		s := &p.body[i]
		var forward []int
		for l, at := range p.labelAt {
			if at > i {
				forward = append(forward, l)
			}
		}
		roll := rng.IntN(100)
		switch {
		case i == n-1 || roll < 2:
			s.kind = srcExit
		case roll < 40 || len(forward) == 0:
			s.kind, s.imm = srcMov, int64(rng.IntN(1000))
		case roll < 50:
			s.kind, s.imm = srcLdImm64, int64(1)<<33|int64(rng.IntN(1000))
		case roll < 55:
			s.kind = srcJa
		default:
			s.kind = []srcKind{srcJump, srcJump32, srcJumpReg}[rng.IntN(3)]
			s.op = randomJumpOps[rng.IntN(len(randomJumpOps))]
			s.imm = int64(rng.IntN(40))
		}
		if len(forward) > 0 {
			s.label = forward[rng.IntN(len(forward))]
		}
	}
	return p
}

// run is the reference model: it executes the source statements directly.
func (p srcProgram) run(pktLen uint32) (uint32, error) {
	r0, r2, r3 := uint64(0), uint64(pktLen), uint64(p.r3Value)
	for pc := 0; pc < len(p.body); {
		s := p.body[pc]
		next := pc + 1
		switch s.kind {
		case srcMov, srcLdImm64:
			r0 = uint64(s.imm)
		case srcExit:
			return uint32(r0), nil
		case srcJa:
			next = p.labelAt[s.label]
		default:
			other := uint64(s.imm)
			if s.kind == srcJumpReg {
				other = r3
			}
			taken, err := compare(s.op, s.kind == srcJump32, r2, other)
			if err != nil {
				return 0, err
			}
			if taken {
				next = p.labelAt[s.label]
			}
		}
		pc = next
	}
	return 0, fmt.Errorf("ran off the end")
}

func (p srcProgram) build(b *asm.Block) {
	loadLen(b)
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, 0), ebpfasm.Mov.Imm(ebpfasm.R3, p.r3Value))
	for _, s := range p.body {
		for _, l := range s.labels {
			b.Label(l)
		}
		label := fmt.Sprintf("L%d", s.label)
		switch s.kind {
		case srcMov:
			b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, int32(s.imm)))
		case srcLdImm64:
			b.Emit(ebpfasm.LoadImm(ebpfasm.R0, s.imm, ebpfasm.DWord))
		case srcJump:
			b.Jump(s.op, ebpfasm.R2, int32(s.imm), label)
		case srcJump32:
			b.Jump32(s.op, ebpfasm.R2, int32(s.imm), label)
		case srcJumpReg:
			b.JumpReg(s.op, ebpfasm.R2, ebpfasm.R3, label)
		case srcJa:
			b.Ja(label)
		case srcExit:
			b.Emit(ebpfasm.Return())
		}
	}
}

// TestRandomProgramsDifferential holds assembled random programs, with
// strides small enough to force trampolines, to the reference model: the
// Go interpreter and the kernel must both return what the source program
// returns, for every packet length tried.
func TestRandomProgramsDifferential(t *testing.T) {
	programs := 40
	if testing.Short() {
		programs = 10
	}
	seed := uint64(20261121)
	rng := rand.New(rand.NewPCG(seed, seed))
	strides := []int{4, 6, 8, 12, 24, asm.DefaultTrampolineStride}
	var pktLens []uint32
	for n := range uint32(41) {
		pktLens = append(pktLens, n)
	}
	withTrampolines := 0
	for i := range programs {
		stride := strides[i%len(strides)]
		// A trampoline holds one entry per distinct pending target, and its
		// entries must reach the next one: stride >= 2*targets + 2 (see
		// WithTrampolineStride). TestStrideTooSmall covers the error.
		prog := randomProgram(rng, 20+rng.IntN(300), (stride-2)/2)
		t.Run(fmt.Sprintf("program %d stride %d", i, stride), func(t *testing.T) {
			want := make([]uint32, len(pktLens))
			for j, n := range pktLens {
				ret, err := prog.run(n)
				if err != nil {
					t.Fatalf("reference model, skb->len %d: %v", n, err)
				}
				want[j] = ret
			}
			b := asm.NewBlock(asm.WithTrampolineStride(stride))
			prog.build(b)
			insns, err := b.Assemble()
			if err != nil {
				t.Fatalf("Assemble: %v", err)
			}
			checkJumpRange(t, insns, stride)
			if listing, err := b.Listing(); err == nil && strings.Contains(listing, "trampoline ->") {
				withTrampolines++
			}
			if diff := cmp.Diff(want, interpretResults(t, insns, pktLens)); diff != "" {
				t.Errorf("interpreter vs reference model (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want, kernelResults(t, insns, pktLens)); diff != "" {
				t.Errorf("kernel vs reference model (-want +got):\n%s", diff)
			}
		})
	}
	t.Logf("%d of %d programs needed trampolines", withTrampolines, programs)
	if withTrampolines == 0 {
		t.Error("no random program needed a trampoline; the test proves nothing about them")
	}
}
