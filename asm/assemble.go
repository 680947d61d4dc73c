package asm

import (
	"fmt"
	"math"
	"slices"

	ebpfasm "github.com/cilium/ebpf/asm"
)

// placedKind says where an assembled instruction came from.
type placedKind uint8

const (
	// placedUser is an instruction the caller added.
	placedUser placedKind = iota
	// placedSkip is the "ja over" that lets straight-line code run past a
	// trampoline.
	placedSkip
	// placedEntry is a trampoline entry: "ja target" for one far target.
	placedEntry
)

// placed is one instruction of the assembled program.
type placed struct {
	ins  ebpfasm.Instruction
	slot int
	kind placedKind
	// finalItem is, for jumps, the index of the reachable item the jump must
	// end up at, possibly through trampoline entries; -1 for other
	// instructions.
	finalItem int
	// viaEntry is the index in assembly.out of the trampoline entry a jump
	// goes to first, or -1 when it goes straight to finalItem.
	viaEntry int
	// label is the label a jump was written for.
	label    string
	labels   []string
	comments []string
}

// assembly is a laid-out program: instructions in order with their slots.
type assembly struct {
	out      []placed
	itemSlot []int
	slots    int
}

func slotsOf(ins ebpfasm.Instruction) int {
	return int(ins.Size() / ebpfasm.InstructionSize)
}

// Assemble resolves labels into numeric jump offsets, drops instructions no
// path reaches, routes forward jumps longer than the trampoline stride through
// trampolines, and checks every jump's final target. It returns an error, never
// a wrong jump, for anything it cannot encode. The Block is not modified and
// can be assembled again.
func (b *Block) Assemble() (ebpfasm.Instructions, error) {
	a, err := b.assemble()
	if err != nil {
		return nil, err
	}
	insns := make(ebpfasm.Instructions, len(a.out))
	for i := range a.out {
		insns[i] = a.out[i].ins
	}
	return insns, nil
}

func (b *Block) assemble() (*assembly, error) {
	if b.err != nil {
		return nil, b.err
	}
	if len(b.nextLabels) > 0 {
		return nil, fmt.Errorf("asm: label %q: %w", b.nextLabels[0], ErrDanglingLabel)
	}
	if len(b.items) == 0 {
		return nil, fmt.Errorf("asm: empty block: %w", ErrFallsOffEnd)
	}
	targets := make([]int, len(b.items))
	for i := range b.items {
		targets[i] = -1
		it := &b.items[i]
		if !it.isJump() {
			continue
		}
		t, ok := b.labelItem[it.target]
		if !ok {
			return nil, fmt.Errorf("asm: %v at instruction %d: label %q: %w", it.ins.OpCode, i, it.target, ErrUndefinedLabel)
		}
		if t == i {
			return nil, fmt.Errorf("asm: %v at instruction %d: label %q: %w", it.ins.OpCode, i, it.target, ErrJumpToSelf)
		}
		targets[i] = t
	}
	live, err := reachable(b.items, targets)
	if err != nil {
		return nil, err
	}

	// Renumber the reachable items; jump targets are reachable by
	// construction, so every target survives.
	newIndex := make([]int, len(b.items))
	items := make([]item, 0, len(b.items))
	for i := range b.items {
		newIndex[i] = -1
		if live[i] {
			newIndex[i] = len(items)
			items = append(items, b.items[i])
		}
	}
	liveTargets := make([]int, 0, len(items))
	for i := range b.items {
		if !live[i] {
			continue
		}
		t := -1
		if targets[i] >= 0 {
			t = newIndex[targets[i]]
		}
		liveTargets = append(liveTargets, t)
	}

	a, err := b.layout(items, liveTargets)
	if err != nil {
		return nil, err
	}
	if err := a.encodeOffsets(); err != nil {
		return nil, err
	}
	if err := a.selfCheck(); err != nil {
		return nil, err
	}
	return a, nil
}

// reachable marks the items some path from the first one reaches. The
// verifier rejects unreachable instructions, so they must go.
func reachable(items []item, targets []int) ([]bool, error) {
	seen := make([]bool, len(items))
	seen[0] = true
	stack := []int{0}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		var buf [2]int
		next := buf[:0]
		if t := targets[i]; t >= 0 {
			next = append(next, t)
		}
		if items[i].fallsThrough() {
			if i+1 == len(items) {
				return nil, fmt.Errorf("asm: after %v at instruction %d: %w", items[i].ins, i, ErrFallsOffEnd)
			}
			next = append(next, i+1)
		}
		for _, j := range next {
			if !seen[j] {
				seen[j] = true
				stack = append(stack, j)
			}
		}
	}
	return seen, nil
}

// pendingJump is a forward jump whose target has not been placed yet.
type pendingJump struct {
	slot   int // slot of the jump instruction
	target int // item index of the target
	out    int // index of the jump in assembly.out
}

// layouter places items and trampolines in one pass.
//
// Invariant: before each item is placed, a trampoline placed right there
// would give every pending jump an offset of at most stride. Before placing an
// item the layouter checks whether the invariant would still hold one item
// later; if not, it places a trampoline now.
type layouter struct {
	a      *assembly
	stride int
	// queue holds pending jumps in slot order; entries before head, and any
	// whose target is already placed, are stale.
	queue []pendingJump
	head  int
	// byTarget maps a pending target to the jumps (indices in a.out) that
	// still need it.
	byTarget map[int][]int
}

func (b *Block) layout(items []item, targets []int) (*assembly, error) {
	l := &layouter{
		a:        &assembly{itemSlot: make([]int, len(items)), out: make([]placed, 0, len(items)+len(items)/8)},
		stride:   b.stride,
		byTarget: map[int][]int{},
	}
	for i := range items {
		for l.head < len(l.queue) && l.queue[l.head].target < i {
			l.head++
		}
		size := slotsOf(items[i].ins)
		if len(l.byTarget) > 0 && !l.canDefer(i, size, targets[i]) {
			l.trampoline(i)
			if !l.canDefer(i, size, targets[i]) {
				return nil, fmt.Errorf("asm: trampoline stride %d too small for %d pending jump targets at slot %d: %w",
					l.stride, len(l.byTarget), l.a.slots, ErrJumpOutOfRange)
			}
		}
		l.place(i, &items[i], targets[i])
	}
	if len(l.byTarget) != 0 {
		return nil, fmt.Errorf("asm: %d jump targets never placed: %w", len(l.byTarget), ErrSelfCheck)
	}
	return l.a, nil
}

// canDefer reports whether item i (size slots, jumping to target or -1) can be
// placed without a trampoline first, keeping the invariant for the next item.
func (l *layouter) canDefer(i, size, target int) bool {
	p := l.a.slots
	pending := len(l.byTarget)
	if _, ok := l.byTarget[i]; ok {
		pending-- // these jumps land on item i now
	}
	oldest := -1
	for j := l.head; j < len(l.queue); j++ {
		if l.queue[j].target > i {
			oldest = l.queue[j].slot
			break
		}
	}
	if target > i {
		if oldest < 0 {
			oldest = p
		}
		if _, ok := l.byTarget[target]; !ok {
			pending++
		}
	}
	if pending == 0 {
		return true
	}
	// A trampoline after item i starts at p+size with "ja over"; its last
	// entry sits at p+size+pending.
	return p+size+pending-oldest-1 <= l.stride
}

// trampoline places, before item i, one "ja target" entry per pending target
// and redirects the pending jumps to them. The entries become the new pending
// jumps, so a target still too far is reached through the next trampoline.
// Jumps to item i itself keep going straight to it when they still reach it
// past the trampoline.
func (l *layouter) trampoline(i int) {
	a := l.a
	var targets []int
	seen := map[int]bool{}
	for j := l.head; j < len(l.queue); j++ {
		if t := l.queue[j].target; t >= i && !seen[t] {
			seen[t] = true
			targets = append(targets, t)
		}
	}
	skip := 0
	if n := len(a.out); n > 0 && fallsThrough(a.out[n-1].ins) {
		skip = 1
	}
	var queue []pendingJump
	byTarget := map[int][]int{}
	if jumps, ok := l.byTarget[i]; ok {
		oldest := a.out[jumps[0]].slot
		if a.slots+skip+len(targets)-1-oldest-1 <= l.stride {
			for _, o := range jumps {
				queue = append(queue, pendingJump{slot: a.out[o].slot, target: i, out: o})
			}
			byTarget[i] = jumps
			targets = slices.DeleteFunc(targets, func(t int) bool { return t == i })
		}
	}
	if len(targets) == 0 {
		return
	}
	if skip == 1 {
		a.out = append(a.out, placed{
			ins:       ebpfasm.Instruction{OpCode: ebpfasm.Ja.Op(ebpfasm.ImmSource)},
			slot:      a.slots,
			kind:      placedSkip,
			finalItem: i,
			viaEntry:  -1,
		})
		a.slots++
	}
	for _, t := range targets {
		jumps := l.byTarget[t]
		entry := len(a.out)
		a.out = append(a.out, placed{
			ins:       ebpfasm.Instruction{OpCode: ebpfasm.Ja.Op(ebpfasm.ImmSource)},
			slot:      a.slots,
			kind:      placedEntry,
			finalItem: t,
			viaEntry:  -1,
			label:     a.out[jumps[0]].label,
		})
		for _, o := range jumps {
			a.out[o].viaEntry = entry
		}
		queue = append(queue, pendingJump{slot: a.slots, target: t, out: entry})
		byTarget[t] = []int{entry}
		a.slots++
	}
	l.queue, l.head, l.byTarget = queue, 0, byTarget
}

func (l *layouter) place(i int, it *item, target int) {
	a := l.a
	a.itemSlot[i] = a.slots
	delete(l.byTarget, i)
	o := len(a.out)
	a.out = append(a.out, placed{
		ins:       it.ins,
		slot:      a.slots,
		kind:      placedUser,
		finalItem: target,
		viaEntry:  -1,
		label:     it.target,
		labels:    it.labels,
		comments:  it.comments,
	})
	if target > i {
		l.queue = append(l.queue, pendingJump{slot: a.slots, target: target, out: o})
		l.byTarget[target] = append(l.byTarget[target], o)
	}
	a.slots += slotsOf(it.ins)
}

// encodeOffsets fills in every jump's Offset, refusing any that does not fit.
func (a *assembly) encodeOffsets() error {
	for i := range a.out {
		p := &a.out[i]
		if p.finalItem < 0 {
			continue
		}
		dest := a.itemSlot[p.finalItem]
		if p.viaEntry >= 0 {
			dest = a.out[p.viaEntry].slot
		}
		off := dest - p.slot - 1
		if off < math.MinInt16 || off > math.MaxInt16 {
			dir := "forward"
			if off < 0 {
				dir = "backward"
			}
			return fmt.Errorf("asm: %v at slot %d to label %q: %s offset %d: %w",
				p.ins.OpCode, p.slot, p.label, dir, off, ErrJumpOutOfRange)
		}
		p.ins.Offset = int16(off)
	}
	return nil
}

// selfCheck follows every jump from its encoded offset, through trampoline
// entries, and confirms it ends at the instruction it was written for.
func (a *assembly) selfCheck() error {
	owner := make([]int, a.slots)
	for i := range owner {
		owner[i] = -1
	}
	for i := range a.out {
		owner[a.out[i].slot] = i
	}
	for i := range a.out {
		p := &a.out[i]
		if p.finalItem < 0 {
			continue
		}
		cur := p.slot + 1 + int(p.ins.Offset)
		for hops := 0; ; hops++ {
			if cur < 0 || cur >= a.slots || owner[cur] < 0 {
				return fmt.Errorf("asm: %v at slot %d lands on slot %d, not an instruction: %w", p.ins, p.slot, cur, ErrSelfCheck)
			}
			next := &a.out[owner[cur]]
			if next.kind != placedEntry || hops > len(a.out) {
				break
			}
			cur = next.slot + 1 + int(next.ins.Offset)
		}
		if want := a.itemSlot[p.finalItem]; cur != want {
			return fmt.Errorf("asm: %v at slot %d ends at slot %d, want %d (label %q): %w", p.ins, p.slot, cur, want, p.label, ErrSelfCheck)
		}
	}
	return nil
}
