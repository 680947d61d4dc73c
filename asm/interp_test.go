package asm_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	ebpfasm "github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/internal/testutil"
)

// interpret runs assembled instructions the way the kernel would run a socket
// filter on an skb of pktLen bytes, for the small instruction set the tests
// use: 64-bit ALU with Mov/Add/Sub, LoadImm64, the load of skb->len from the
// context, conditional jumps (64 and 32 bit, immediate and register), Ja and
// Exit. It follows raw offsets only, independently of the assembler, and
// fails if a jump lands outside the program or inside a two-slot instruction.
func interpret(insns ebpfasm.Instructions, pktLen uint32) (uint32, error) {
	var starts []int // slot -> index, -1 inside a two-slot instruction
	for i, ins := range insns {
		starts = append(starts, i)
		if ins.OpCode.IsDWordLoad() {
			starts = append(starts, -1)
		}
	}
	slotOf := make([]int, len(insns))
	for slot, i := range starts {
		if i >= 0 {
			slotOf[i] = slot
		}
	}
	var r [11]uint64
	r[1] = 0xc0 // the context pointer; only read through the skb->len load
	slot := 0
	for steps := 0; steps < 10_000_000; steps++ {
		if slot < 0 || slot >= len(starts) || starts[slot] < 0 {
			return 0, fmt.Errorf("control reaches slot %d, not an instruction start", slot)
		}
		ins := insns[starts[slot]]
		next := slot + slotsOfIns(ins)
		op := ins.OpCode
		src := uint64(ins.Constant)
		if op.Source() == ebpfasm.RegSource {
			src = r[ins.Src]
		}
		switch class := op.Class(); {
		case class == ebpfasm.ALU64Class:
			switch op.ALUOp() {
			case ebpfasm.Mov:
				r[ins.Dst] = src
			case ebpfasm.Add:
				r[ins.Dst] += src
			case ebpfasm.Sub:
				r[ins.Dst] -= src
			default:
				return 0, fmt.Errorf("slot %d: unsupported %v", slot, ins)
			}
		case op.IsDWordLoad() && ins.Reference() == "":
			r[ins.Dst] = uint64(ins.Constant)
		case class == ebpfasm.LdXClass && ins.Src == ebpfasm.R1 && ins.Offset == 0 && op.Size() == ebpfasm.Word:
			r[ins.Dst] = uint64(pktLen)
		case class.IsJump():
			switch jop := op.JumpOp(); jop {
			case ebpfasm.Exit:
				return uint32(r[0]), nil
			case ebpfasm.Ja:
				next = slot + 1 + int(ins.Offset)
			default:
				taken, err := compare(jop, class == ebpfasm.Jump32Class, r[ins.Dst], src)
				if err != nil {
					return 0, fmt.Errorf("slot %d: %w", slot, err)
				}
				if taken {
					next = slot + 1 + int(ins.Offset)
				}
			}
		default:
			return 0, fmt.Errorf("slot %d: unsupported %v", slot, ins)
		}
		slot = next
	}
	return 0, errors.New("step limit reached")
}

func slotsOfIns(ins ebpfasm.Instruction) int {
	return int(ins.Size() / ebpfasm.InstructionSize)
}

func compare(op ebpfasm.JumpOp, is32 bool, a, b uint64) (bool, error) {
	sa, sb := int64(a), int64(b)
	if is32 {
		a, b = uint64(uint32(a)), uint64(uint32(b))
		sa, sb = int64(int32(a)), int64(int32(b))
	}
	switch op {
	case ebpfasm.JEq:
		return a == b, nil
	case ebpfasm.JNE:
		return a != b, nil
	case ebpfasm.JGT:
		return a > b, nil
	case ebpfasm.JGE:
		return a >= b, nil
	case ebpfasm.JLT:
		return a < b, nil
	case ebpfasm.JLE:
		return a <= b, nil
	case ebpfasm.JSet:
		return a&b != 0, nil
	case ebpfasm.JSGT:
		return sa > sb, nil
	case ebpfasm.JSGE:
		return sa >= sb, nil
	case ebpfasm.JSLT:
		return sa < sb, nil
	case ebpfasm.JSLE:
		return sa <= sb, nil
	}
	return false, fmt.Errorf("unsupported jump %v", op)
}

// ethHeaderLen is what BPF_PROG_TEST_RUN strips from a socket filter's input
// (eth_type_trans pulls the Ethernet header), so skb->len is the data length
// minus this.
const ethHeaderLen = 14

// kernelResults loads insns as a socket filter and runs it once per skb->len
// with BPF_PROG_TEST_RUN, returning the program's return values.
func kernelResults(tb testing.TB, insns ebpfasm.Instructions, pktLens []uint32) []uint32 {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SocketFilter,
		Instructions: insns,
		License:      "Apache-2.0",
	})
	if err != nil {
		tb.Fatalf("load program: %v", err)
	}
	defer prog.Close()
	got := make([]uint32, len(pktLens))
	for i, n := range pktLens {
		ret, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, ethHeaderLen+n)})
		if err != nil {
			tb.Fatalf("run with skb->len %d: %v", n, err)
		}
		got[i] = ret
	}
	return got
}

// interpretResults runs interpret once per skb->len.
func interpretResults(tb testing.TB, insns ebpfasm.Instructions, pktLens []uint32) []uint32 {
	tb.Helper()
	got := make([]uint32, len(pktLens))
	for i, n := range pktLens {
		ret, err := interpret(insns, n)
		if err != nil {
			tb.Fatalf("interpret with skb->len %d: %v", n, err)
		}
		got[i] = ret
	}
	return got
}

// loadLen emits r2 = skb->len, the value the test programs branch on.
func loadLen(b interface{ Emit(...ebpfasm.Instruction) }) {
	b.Emit(ebpfasm.LoadMem(ebpfasm.R2, ebpfasm.R1, 0, ebpfasm.Word))
}

// filler emits n single-slot instructions that leave r2 and r3 alone.
func filler(b interface{ Emit(...ebpfasm.Instruction) }, n int) {
	for range n {
		b.Emit(ebpfasm.Mov.Imm(ebpfasm.R4, 0))
	}
}
