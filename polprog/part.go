package polprog

import (
	"fmt"
	"slices"
	"unsafe"

	ebpfasm "github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/asm"
	"github.com/sluicenet/sluice/bpf"
)

// Offsets of struct sl_state fields, from the generated mirror (generated from
// BTF, and checked against it in TestStateLayout).
var (
	offSrcAddr       = int16(unsafe.Offsetof(bpf.State{}.SrcAddr))
	offDstAddr       = int16(unsafe.Offsetof(bpf.State{}.DstAddr))
	offPreNATDstAddr = int16(unsafe.Offsetof(bpf.State{}.PreNATDstAddr))
	offSrcPort       = int16(unsafe.Offsetof(bpf.State{}.SrcPort))
	offDstPort       = int16(unsafe.Offsetof(bpf.State{}.DstPort))
	offPreNATDstPort = int16(unsafe.Offsetof(bpf.State{}.PreNATDstPort))
	offProto         = int16(unsafe.Offsetof(bpf.State{}.IPProto))
	offICMPType      = int16(unsafe.Offsetof(bpf.State{}.ICMPType))
	offICMPCode      = int16(unsafe.Offsetof(bpf.State{}.ICMPCode))
	offFlags         = int16(unsafe.Offsetof(bpf.State{}.Flags))
	offPolicyRC      = int16(unsafe.Offsetof(bpf.State{}.PolicyRC))
	offResume        = int16(unsafe.Offsetof(bpf.State{}.Resume))
	offRuleID        = int16(unsafe.Offsetof(bpf.State{}.RuleID))
)

// Offsets in struct sl_ipset_key, from the generated mirror like the
// state's; the prefix length of every lookup is ipsets.NamedPortBits.
var (
	ipsetKeySetID  = int16(unsafe.Offsetof(bpf.IPSetKey{}.SetID))
	ipsetKeyFamily = int16(unsafe.Offsetof(bpf.IPSetKey{}.Family))
	ipsetKeyAddr   = int16(unsafe.Offsetof(bpf.IPSetKey{}.Addr))
	ipsetKeyPort   = int16(unsafe.Offsetof(bpf.IPSetKey{}.Port))
	ipsetKeyProto  = int16(unsafe.Offsetof(bpf.IPSetKey{}.Proto))
	ipsetKeySize   = int16(unsafe.Sizeof(bpf.IPSetKey{}))
)

// Offsets in struct sl_ipsetm_key and struct sl_ipsetm_value, the
// membership lookups of classified runs; the prefix length of every lookup
// is ipsets.MemberLookupBits.
var (
	memberKeyGen      = int16(unsafe.Offsetof(bpf.IPSetMKey{}.Gen))
	memberKeyFamily   = int16(unsafe.Offsetof(bpf.IPSetMKey{}.Family))
	memberKeyAddr     = int16(unsafe.Offsetof(bpf.IPSetMKey{}.Addr))
	memberKeyPort     = int16(unsafe.Offsetof(bpf.IPSetMKey{}.Port))
	memberKeyProto    = int16(unsafe.Offsetof(bpf.IPSetMKey{}.Proto))
	memberKeySize     = int16(unsafe.Sizeof(bpf.IPSetMKey{}))
	memberValueMember = int16(unsafe.Offsetof(bpf.IPSetMValue{}.Member))
	memberValueShared = int16(unsafe.Offsetof(bpf.IPSetMValue{}.Shared))
	memberValueIDs    = int16(unsafe.Offsetof(bpf.IPSetMValue{}.Ids))
)

// Stack layout (offsets from R10). The verifier wants aligned stack
// accesses, hence the 32-bit halves of the IP set key's 64-bit set ID.
const (
	stackStateKey = -4  // u32 0, the key of sl_state_map
	stackHitsOne  = -8  // u64 1, a new hit counter's value
	stackLogID    = -16 // u64 ID of a log rule, a sl_rule_hits key
	stackLPMKey   = -24 // u32 prefixlen + data, the key of lookup maps
	stackIPSetKey = -64 // struct sl_ipset_key (36 bytes), or struct sl_ipsetm_key (32)
	// Tagged IPv4 words of the checked addresses (family.go).
	stackTaggedSrc    = -72
	stackTaggedDst    = -80
	stackTaggedPreNAT = -88
)

// nextSlotPlaceholder is the immediate of the instruction that loads the
// next part's sl_policy_jumps slot until Load sets it. As a u32 index it
// is past the end of any prog array, so an unpatched tail call fails (and
// the policy ends as failed) rather than reaching a wrong slot.
const nextSlotPlaceholder = -1

// nextSlotMeta is the metadata key that marks the instruction loading the
// next part's slot.
type nextSlotMeta struct{}

// Names of cross-part labels and footer labels.
const (
	labelForward    = "forward"
	labelFailed     = "failed"
	labelNoState    = "no_state"
	labelNextPart   = "next_part"
	labelAllowRec   = "allow_counted"
	labelAllowNoRec = "allow_uncounted"
	labelAllowDone  = "allow"
	labelDenyRec    = "deny_counted"
	labelDenyNoRec  = "deny_uncounted"
	labelDenyDone   = "deny"
)

// Registers with a fixed role.
const (
	regCtx = ebpfasm.R6 // the context: the skb, or the xdp_md
	// R7 is regFamily (family.go).
	regRuleID = ebpfasm.R8 // the deciding rule's ID, at the footer labels
	regState  = ebpfasm.R9 // &sl_state
)

// partBuilder is the program being built.
type partBuilder struct {
	b     *asm.Block
	index int
	// crossRefs and crossDefs are the cross-part labels this part jumps
	// to and defines; those referenced but not defined get landing pads
	// that resume in the next part.
	crossRefs, crossDefs map[string]bool
	// used are the footer labels that code jumped to.
	used       map[string]bool
	lookupMaps int
	rules      int
	key        ipsetKeyCache
	// invertMismatch: the next mismatch jump is a rule's first (see
	// compiler.mismatch).
	invertMismatch bool
}

// ipsetKeyCache remembers what the IP set key on the stack holds, so that a
// rule's second lookup rewrites only what differs. Labels forget it.
type ipsetKeyCache struct {
	addr  int16 // state offset of the address copied in; 0: unknown
	tail  int8  // 0 unknown, 1 zero port and protocol, 2 port and protocol
	port  int16 // state offset of the port copied in, when tail is 2
	valid bool
}

func (c *compiler) newLabel(prefix string) string {
	c.nextLabelID++
	return fmt.Sprintf("%s_%d", prefix, c.nextLabelID)
}

// newCrossLabel names a label that jumps may reach from an earlier part.
func (c *compiler) newCrossLabel(prefix string) string {
	l := c.newLabel(prefix)
	c.crossIDs[l] = c.nextLabelID
	return l
}

func (c *compiler) crossID(label string) uint32 {
	if id, ok := c.crossIDs[label]; ok {
		return id
	}
	c.nextLabelID++
	c.crossIDs[label] = c.nextLabelID
	return c.nextLabelID
}

// label places a part-local label.
func (c *compiler) label(name string) {
	c.part.b.Label(name)
	c.part.key.valid = false
}

func (c *compiler) crossLabel(name string) {
	c.crossID(name)
	c.part.crossDefs[name] = true
	c.label(name)
}

func (c *compiler) crossJa(label string) {
	c.crossID(label)
	c.part.crossRefs[label] = true
	c.part.b.Ja(label)
}

func (c *compiler) crossJump32(op ebpfasm.JumpOp, dst ebpfasm.Register, imm int32, label string) {
	c.crossID(label)
	c.part.crossRefs[label] = true
	c.part.b.Jump32(op, dst, imm, label)
}

// use jumps to a footer label.
func (c *compiler) use(label string) {
	c.part.used[label] = true
	c.part.b.Ja(label)
}

// startPart begins a program: find the state, then resume at one of the
// pending labels when this is not the first part.
func (c *compiler) startPart(pending []string) error {
	idx := len(c.out.Parts)
	if idx >= c.opts.MaxParts {
		return fmt.Errorf("policy needs more than %d programs: %w", c.opts.MaxParts, ErrTooLarge)
	}
	var opts []asm.Option
	if c.opts.TrampolineStride != 0 {
		opts = append(opts, asm.WithTrampolineStride(c.opts.TrampolineStride))
	}
	c.part = &partBuilder{b: asm.NewBlock(opts...), index: idx,
		crossRefs: map[string]bool{}, crossDefs: map[string]bool{}, used: map[string]bool{}}
	b := c.part.b
	b.Comment(fmt.Sprintf("policy part %d: R6 = %s, R7 = address families, R9 = &sl_state", idx, c.opts.Hook.contextName()))
	b.Emit(
		ebpfasm.Mov.Reg(regCtx, ebpfasm.R1),
		ebpfasm.StoreImm(ebpfasm.R10, stackStateKey, 0, ebpfasm.Word),
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(bpf.MapState),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackStateKey),
		ebpfasm.FnMapLookupElem.Call(),
	)
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, labelNoState)
	b.Emit(ebpfasm.Mov.Reg(regState, ebpfasm.R0))
	c.familyPrologue()
	if c.classifying {
		b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, -1), ebpfasm.StoreMem(ebpfasm.R10, stackGen, ebpfasm.R1, ebpfasm.DWord),
			ebpfasm.StoreMem(ebpfasm.R10, stackSetGen, ebpfasm.R1, ebpfasm.DWord))
	}
	if idx == 0 {
		return nil
	}
	b.Comment("resume where the previous part left off")
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, regState, offResume, ebpfasm.Word),
		ebpfasm.StoreImm(regState, offResume, 0, ebpfasm.Word),
	)
	for _, l := range pending {
		c.crossJump32(ebpfasm.JEq, ebpfasm.R1, int32(c.crossID(l)), l)
	}
	b.Comment("no resume point: the policy cannot finish")
	b.Ja(labelFailed)
	return nil
}

// finishPart writes the footers and, unless last, the landing pads that
// carry pending jumps into the next part.
func (c *compiler) finishPart(last bool) error {
	p := c.part
	b := p.b
	st := p.used
	if st[labelAllowRec] || st[labelAllowNoRec] {
		c.verdictFooter(labelAllowRec, labelAllowNoRec, labelAllowDone, bpf.PolicyAllow, c.opts.AllowSlot, labelFailed)
	}
	if st[labelDenyRec] || st[labelDenyNoRec] {
		// Failing again through labelFailed would only retry this tail
		// call.
		c.verdictFooter(labelDenyRec, labelDenyNoRec, labelDenyDone, bpf.PolicyDeny, c.opts.DenySlot, labelNoState)
	}
	var pending []string
	for l := range p.crossRefs {
		if !p.crossDefs[l] {
			pending = append(pending, l)
		}
	}
	slices.SortFunc(pending, func(a, b string) int { return int(c.crossIDs[a]) - int(c.crossIDs[b]) })
	if len(pending) > 0 {
		if last {
			return fmt.Errorf("labels %v are never defined", pending)
		}
		for _, l := range pending {
			b.Label(l)
			b.Emit(ebpfasm.StoreImm(regState, offResume, int64(c.crossIDs[l]), ebpfasm.Word))
			b.Ja(labelNextPart)
		}
		b.Label(labelNextPart)
		b.Comment("tail call the next part (Load sets its slot)")
		slot := ebpfasm.Mov.Imm(ebpfasm.R3, nextSlotPlaceholder)
		slot.Metadata.Set(nextSlotMeta{}, true)
		b.Emit(
			ebpfasm.Mov.Reg(ebpfasm.R1, regCtx),
			ebpfasm.LoadMapPtr(ebpfasm.R2, 0).WithReference(bpf.MapPolicyJumps),
			slot,
			ebpfasm.FnTailCall.Call(),
		)
	}
	b.Label(labelFailed)
	b.Comment("a tail call failed or no resume point: the deny continuation counts a failed policy")
	b.Emit(
		ebpfasm.StoreImm(regState, offPolicyRC, int64(bpf.PolicyFailed), ebpfasm.Word),
		ebpfasm.Mov.Reg(ebpfasm.R1, regCtx),
		ebpfasm.LoadMapPtr(ebpfasm.R2, 0).WithReference(bpf.MapConts),
		ebpfasm.Mov.Imm(ebpfasm.R3, int32(c.opts.DenySlot)),
		ebpfasm.FnTailCall.Call(),
	)
	b.Label(labelNoState)
	b.Comment("no state, or the deny continuation failed: drop")
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R0, c.opts.Hook.dropCode()), ebpfasm.Return())
	insns, err := b.Assemble()
	if err != nil {
		return fmt.Errorf("assemble part %d: %w", p.index, err)
	}
	c.out.Parts = append(c.out.Parts, Part{Instructions: insns, Stats: b.Stats(), Rules: p.rules, block: b})
	c.lastPending = pending
	return nil
}

// verdictFooter records the rule ID (counting it under rec), sets
// policy_rc and tail calls the continuation, going to onFail if that
// fails.
func (c *compiler) verdictFooter(rec, noRec, done string, rc bpf.PolicyRC, slot uint32, onFail string) {
	b := c.part.b
	b.Label(rec)
	b.Emit(ebpfasm.StoreMem(regState, offRuleID, regRuleID, ebpfasm.DWord))
	c.bumpHits(ebpfasm.R9, offRuleID)
	b.Ja(done)
	b.Label(noRec)
	b.Emit(ebpfasm.StoreMem(regState, offRuleID, regRuleID, ebpfasm.DWord))
	b.Label(done)
	b.Emit(
		ebpfasm.StoreImm(regState, offPolicyRC, int64(rc), ebpfasm.Word),
		ebpfasm.Mov.Reg(ebpfasm.R1, regCtx),
		ebpfasm.LoadMapPtr(ebpfasm.R2, 0).WithReference(bpf.MapConts),
		ebpfasm.Mov.Imm(ebpfasm.R3, int32(slot)),
		ebpfasm.FnTailCall.Call(),
	)
	b.Ja(onFail)
}

// bumpHits adds one to the per-CPU hit counter keyed by the u64 at
// keyBase+keyOff (the state's rule_id, or a stack slot).
func (c *compiler) bumpHits(keyBase ebpfasm.Register, keyOff int16) {
	b := c.part.b
	create, done := c.newLabel("hits_new"), c.newLabel("hits_done")
	keyPtr := []ebpfasm.Instruction{
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(bpf.MapRuleHits),
		ebpfasm.Mov.Reg(ebpfasm.R2, keyBase),
		ebpfasm.Add.Imm(ebpfasm.R2, int32(keyOff)),
	}
	b.Emit(keyPtr...)
	b.Emit(ebpfasm.FnMapLookupElem.Call())
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, create)
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 0, ebpfasm.DWord),
		ebpfasm.Add.Imm(ebpfasm.R1, 1),
		ebpfasm.StoreMem(ebpfasm.R0, 0, ebpfasm.R1, ebpfasm.DWord),
	)
	b.Ja(done)
	b.Label(create)
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R3, 1), ebpfasm.StoreMem(ebpfasm.R10, stackHitsOne, ebpfasm.R3, ebpfasm.DWord))
	b.Emit(keyPtr...)
	b.Emit(
		ebpfasm.Mov.Reg(ebpfasm.R3, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R3, stackHitsOne),
		ebpfasm.Mov.Imm(ebpfasm.R4, 0), // BPF_ANY
		ebpfasm.FnMapUpdateElem.Call(),
	)
	b.Label(done)
	c.part.key.valid = false
}

// decide jumps to the footer for a verdict with rule ID id. Pass is
// handled by the caller.
func (c *compiler) decide(action Action, id uint64) {
	b := c.part.b
	b.Emit(ebpfasm.LoadImm(regRuleID, int64(id), ebpfasm.DWord))
	if action == ActionAllow {
		c.use(pick(id, labelAllowRec, labelAllowNoRec))
		return
	}
	c.use(pick(id, labelDenyRec, labelDenyNoRec))
}

// pick returns the counting label unless the ID is 0.
func pick(id uint64, counted, uncounted string) string {
	if id == 0 {
		return uncounted
	}
	return counted
}
