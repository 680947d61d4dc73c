package asm

import (
	"errors"
	"fmt"
	"math"

	ebpfasm "github.com/cilium/ebpf/asm"
)

// Verifier limits that callers split programs against. Stats reports the
// quantities to compare with them.
const (
	// MaxInstructions is the largest program, in instruction slots, that a
	// privileged loader may submit (BPF_COMPLEXITY_LIMIT_INSNS); it is also
	// the verifier's budget of processed instructions.
	MaxInstructions = 1_000_000
	// MaxJumpSequences is the verifier's limit on branch states pending
	// exploration at once (BPF_COMPLEXITY_LIMIT_JMP_SEQ). Every conditional
	// jump on a path can push one, so callers keep Stats.Jumps on any path
	// below it with a margin.
	MaxJumpSequences = 8192
)

// DefaultTrampolineStride is the longest forward jump, in instruction slots,
// that a Block encodes directly. It leaves room below the int16 offset limit
// for the trampoline's own instructions.
const DefaultTrampolineStride = math.MaxInt16 - 100

// minTrampolineStride is the smallest stride a Block accepts: a trampoline
// needs room for "ja over", one entry and the instruction that follows.
const minTrampolineStride = 4

// Errors returned (wrapped) by Block methods, for errors.Is.
var (
	// ErrUndefinedLabel: a jump names a label that no instruction carries.
	ErrUndefinedLabel = errors.New("undefined label")
	// ErrDuplicateLabel: a label was defined twice.
	ErrDuplicateLabel = errors.New("duplicate label")
	// ErrDanglingLabel: a label was defined after the last instruction.
	ErrDanglingLabel = errors.New("label names no instruction")
	// ErrJumpToSelf: a jump targets itself, an infinite loop the verifier
	// rejects.
	ErrJumpToSelf = errors.New("jump to itself")
	// ErrJumpOutOfRange: a jump's offset does not fit the 16-bit offset field
	// and no trampoline can carry it (backward jumps, or a stride too small
	// for the number of pending jump targets).
	ErrJumpOutOfRange = errors.New("jump out of range")
	// ErrInvalidInstruction: an instruction that the Block cannot place, such
	// as a raw jump passed to Emit.
	ErrInvalidInstruction = errors.New("invalid instruction")
	// ErrFallsOffEnd: a path runs past the last instruction without an exit.
	ErrFallsOffEnd = errors.New("control falls off the end of the block")
	// ErrSelfCheck: the assembled program failed the final jump check. It
	// indicates a bug in this package, reported instead of a wrong jump.
	ErrSelfCheck = errors.New("assembler self-check failed")
)

// Option configures a Block.
type Option func(*Block)

// WithTrampolineStride sets the longest forward jump, in instruction slots,
// that the Block encodes directly; longer ones go through trampolines. The
// default is DefaultTrampolineStride; tests use small values to exercise
// trampolines in short programs. Values outside [4, math.MaxInt16] are
// recorded as an error.
//
// A trampoline is placed only when some pending forward jump would otherwise
// span more than n slots. It holds one "ja" entry per distinct label that
// pending jumps are waiting for, and those entries must reach the next
// trampoline in turn, so n must exceed about twice the number of such labels
// at any point; Assemble returns ErrJumpOutOfRange when it does not. With the
// default that means some 16,000 labels pending at once.
func WithTrampolineStride(n int) Option {
	return func(b *Block) {
		if n < minTrampolineStride || n > math.MaxInt16 {
			b.fail(fmt.Errorf("trampoline stride %d outside [%d, %d]: %w",
				n, minTrampolineStride, math.MaxInt16, ErrJumpOutOfRange))
			return
		}
		b.stride = n
	}
}

// Stats counts what a Block holds so far, before unreachable code is dropped
// and trampolines are added, so it is an upper bound on the former and a
// lower bound on the latter.
type Stats struct {
	// Instructions counts instruction slots: a 64-bit immediate load
	// (LoadImm64, LoadMapPtr) occupies two.
	Instructions int
	// Jumps counts conditional jumps, the instructions that can each push a
	// verifier branch state (compare with MaxJumpSequences).
	Jumps int
	// Labels counts defined labels.
	Labels int
}

// item is one instruction as the caller wrote it.
type item struct {
	ins      ebpfasm.Instruction
	labels   []string
	comments []string
	// target is the label a jump goes to; empty for other instructions.
	target string
}

func (it *item) isJump() bool { return it.target != "" }

// fallsThrough reports whether execution can continue with the next
// instruction.
func (it *item) fallsThrough() bool {
	return fallsThrough(it.ins)
}

func fallsThrough(ins ebpfasm.Instruction) bool {
	if !ins.OpCode.Class().IsJump() {
		return true
	}
	op := ins.OpCode.JumpOp()
	return op != ebpfasm.Exit && op != ebpfasm.Ja
}

// Block builds a sequence of eBPF instructions with named labels. Its methods
// never panic: the first error is recorded, later calls are ignored, and Err,
// Assemble and Listing report it.
//
// The zero value is not usable; call NewBlock.
type Block struct {
	stride int
	items  []item
	// labelItem maps a label to the index of the item it names.
	labelItem map[string]int
	// nextLabels and nextComments wait for the next instruction.
	nextLabels   []string
	nextComments []string
	stats        Stats
	err          error
}

// NewBlock returns an empty Block.
func NewBlock(opts ...Option) *Block {
	b := &Block{stride: DefaultTrampolineStride, labelItem: map[string]int{}}
	for _, opt := range opts {
		opt(b)
	}
	return b
}

func (b *Block) fail(err error) {
	if b.err == nil {
		b.err = fmt.Errorf("asm: %w", err)
	}
}

// Err returns the first error recorded by a builder method, or nil.
func (b *Block) Err() error {
	return b.err
}

// Stats returns counts of what has been added so far.
func (b *Block) Stats() Stats {
	return b.stats
}

// Label names the next instruction. An instruction may carry several labels;
// a label defined twice is an error.
func (b *Block) Label(name string) {
	if b.err != nil {
		return
	}
	if name == "" {
		b.fail(fmt.Errorf("empty label name: %w", ErrUndefinedLabel))
		return
	}
	if _, ok := b.labelItem[name]; ok {
		b.fail(fmt.Errorf("label %q: %w", name, ErrDuplicateLabel))
		return
	}
	b.labelItem[name] = len(b.items)
	b.nextLabels = append(b.nextLabels, name)
	b.stats.Labels++
}

// Comment attaches text to the next instruction; it appears in the listing.
func (b *Block) Comment(text string) {
	if b.err != nil {
		return
	}
	b.nextComments = append(b.nextComments, text)
}

// Emit appends instructions that are not jumps: ALU, loads and stores,
// LoadImm64 and LoadMapPtr (with any WithReference name, kept for
// AssociateMap), helper and kfunc calls, and Exit. Jumps go through Jump,
// Jump32, JumpReg and Ja so that the Block can resolve them.
func (b *Block) Emit(ins ...ebpfasm.Instruction) {
	for _, in := range ins {
		if b.err != nil {
			return
		}
		if err := checkEmit(in); err != nil {
			b.fail(fmt.Errorf("emit %v at slot %d: %w", in, b.stats.Instructions, err))
			return
		}
		b.add(in, "")
	}
}

func checkEmit(ins ebpfasm.Instruction) error {
	op := ins.OpCode
	switch {
	case op == ebpfasm.InvalidOpCode:
		return fmt.Errorf("invalid opcode: %w", ErrInvalidInstruction)
	case ins.Symbol() != "":
		return fmt.Errorf("symbol %q: use Label: %w", ins.Symbol(), ErrInvalidInstruction)
	case ins.IsFunctionCall(), ins.IsLoadOfFunctionPointer():
		return fmt.Errorf("bpf-to-bpf function references are not supported: %w", ErrInvalidInstruction)
	case !op.Class().IsJump():
		return nil
	case op.JumpOp() == ebpfasm.Exit, op.JumpOp() == ebpfasm.Call:
		return nil
	}
	return fmt.Errorf("jump passed to Emit, use Jump, Jump32, JumpReg or Ja: %w", ErrInvalidInstruction)
}

func (b *Block) add(ins ebpfasm.Instruction, target string) {
	b.items = append(b.items, item{
		ins:      ins,
		labels:   b.nextLabels,
		comments: b.nextComments,
		target:   target,
	})
	b.nextLabels, b.nextComments = nil, nil
	b.stats.Instructions += int(ins.Size() / ebpfasm.InstructionSize)
	if target != "" && ins.OpCode.JumpOp() != ebpfasm.Ja {
		b.stats.Jumps++
	}
}

// Jump appends a conditional jump to label that compares the 64-bit dst with
// the sign-extended imm.
func (b *Block) Jump(op ebpfasm.JumpOp, dst ebpfasm.Register, imm int32, label string) {
	b.jump(ebpfasm.JumpClass, ebpfasm.ImmSource, op, dst, 0, imm, label)
}

// Jump32 appends a conditional jump to label that compares the low 32 bits of
// dst with imm (the JMP32 class, Linux 5.1+).
func (b *Block) Jump32(op ebpfasm.JumpOp, dst ebpfasm.Register, imm int32, label string) {
	b.jump(ebpfasm.Jump32Class, ebpfasm.ImmSource, op, dst, 0, imm, label)
}

// JumpReg appends a conditional jump to label that compares the 64-bit dst
// with the 64-bit src.
func (b *Block) JumpReg(op ebpfasm.JumpOp, dst, src ebpfasm.Register, label string) {
	b.jump(ebpfasm.JumpClass, ebpfasm.RegSource, op, dst, src, 0, label)
}

// Ja appends an unconditional jump to label.
func (b *Block) Ja(label string) {
	if b.err != nil {
		return
	}
	if label == "" {
		b.fail(fmt.Errorf("ja with empty label: %w", ErrUndefinedLabel))
		return
	}
	b.add(ebpfasm.Instruction{OpCode: ebpfasm.Ja.Op(ebpfasm.ImmSource)}, label)
}

func (b *Block) jump(class ebpfasm.Class, src ebpfasm.Source, op ebpfasm.JumpOp, dst, srcReg ebpfasm.Register, imm int32, label string) {
	if b.err != nil {
		return
	}
	switch op {
	case ebpfasm.Ja, ebpfasm.Call, ebpfasm.Exit, ebpfasm.JCOND, ebpfasm.InvalidJumpOp:
		b.fail(fmt.Errorf("%v is not a conditional jump: %w", op, ErrInvalidInstruction))
		return
	}
	if dst > ebpfasm.R10 || srcReg > ebpfasm.R10 {
		b.fail(fmt.Errorf("%v: register out of range: %w", op, ErrInvalidInstruction))
		return
	}
	if label == "" {
		b.fail(fmt.Errorf("%v with empty label: %w", op, ErrUndefinedLabel))
		return
	}
	opCode := ebpfasm.OpCode(class).SetJumpOp(op).SetSource(src)
	if opCode == ebpfasm.InvalidOpCode {
		b.fail(fmt.Errorf("%v: invalid jump opcode: %w", op, ErrInvalidInstruction))
		return
	}
	// The instruction carries no reference: the Block computes Offset itself,
	// so cilium/ebpf's unchecked int16 conversion never sees it.
	b.add(ebpfasm.Instruction{OpCode: opCode, Dst: dst, Src: srcReg, Constant: int64(imm)}, label)
}

// MayGoto appends a may_goto instruction (BPF_JMP | BPF_JCOND with src
// BPF_MAY_GOTO, Linux 6.9+): it falls through while the program's
// implicit loop budget lasts and jumps to label once it is spent. A loop
// whose back edge passes a may_goto is accepted by the verifier without
// proving a bound on its iterations.
func (b *Block) MayGoto(label string) {
	if b.err != nil {
		return
	}
	if label == "" {
		b.fail(fmt.Errorf("may_goto with empty label: %w", ErrUndefinedLabel))
		return
	}
	op := ebpfasm.OpCode(ebpfasm.JumpClass).SetJumpOp(ebpfasm.JCOND).SetSource(ebpfasm.ImmSource)
	b.add(ebpfasm.Instruction{OpCode: op, Src: ebpfasm.PseudoMayGoto}, label)
}
