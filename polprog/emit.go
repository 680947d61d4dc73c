package polprog

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"slices"

	ebpfasm "github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/ipsets"
)

// ruleCode emits one rule: each check jumps to the rule's end when it
// fails, and the action follows the last check.
func (c *compiler) ruleCode(st stage, r *rule, tierEnd string) {
	next := c.newLabel("rule_end")
	c.part.b.Comment(fmt.Sprintf("rule %s: %s, id %d", r.where, r.action, r.id))
	c.part.key.valid = false
	c.part.invertMismatch = c.fallThrough
	c.checks(st, r, fieldNone, next)
	c.part.invertMismatch = false
	c.action(r.action, r.id, tierEnd)
	c.label(next)
}

// action emits what a matched rule does.
func (c *compiler) action(action Action, id uint64, tierEnd string) {
	b := c.part.b
	switch action {
	case ActionPass:
		c.crossJa(tierEnd)
	case ActionLog:
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, regState, offFlags, ebpfasm.Word),
			ebpfasm.Or.Imm32(ebpfasm.R1, int32(bpf.StateFlagLog)),
			ebpfasm.StoreMem(regState, offFlags, ebpfasm.R1, ebpfasm.Word),
		)
		if id != 0 {
			b.Emit(
				ebpfasm.LoadImm(ebpfasm.R1, int64(id), ebpfasm.DWord),
				ebpfasm.StoreMem(ebpfasm.R10, stackLogID, ebpfasm.R1, ebpfasm.DWord),
			)
			c.bumpHits(ebpfasm.R10, stackLogID)
		}
	default:
		c.decide(action, id)
	}
}

// field names the list field a merged group looks up instead of checking
// inline.
type field int

const (
	fieldNone field = iota
	fieldSrcNets
	fieldDstNets
	fieldSrcPorts
	fieldDstPorts
)

// checks emits every match of r except skip, jumping to fail when one does
// not hold. A packet that reaches a rule it does not match usually fails on
// the rule's most selective field, so the positive register compares come
// first, most selective first (see checkOrder): a non-matching rule then
// costs one compare, and in the fall-through layout the inverted first
// check is the one that fails. Negations, which usually hold, follow; map
// lookups (named ports, IP sets) come last.
func (c *compiler) checks(st stage, r *rule, skip field, fail string) {
	for _, k := range checkOrder(r, skip) {
		c.check(st, r, k, fail)
	}
	if skip != fieldSrcPorts && len(r.srcNamed) > 0 {
		c.portRanges(offSrcPort, r.srcPorts, r.srcNamed, offSrcAddr, fail, false)
	}
	if len(r.notSrcNamed) > 0 {
		c.portRanges(offSrcPort, r.notSrcPorts, r.notSrcNamed, offSrcAddr, fail, true)
	}
	if skip != fieldDstPorts && len(r.dstNamed) > 0 {
		c.portRanges(st.dstPort, r.dstPorts, r.dstNamed, st.dstAddr, fail, false)
	}
	if len(r.notDstNamed) > 0 {
		c.portRanges(st.dstPort, r.notDstPorts, r.notDstNamed, st.dstAddr, fail, true)
	}
	for _, id := range r.srcSets {
		c.ipsetLookup(id, offSrcAddr, -1, ebpfasm.JEq, fail)
	}
	for _, id := range r.notSrcSets {
		c.ipsetLookup(id, offSrcAddr, -1, ebpfasm.JNE, fail)
	}
	for _, id := range r.dstSets {
		c.ipsetLookup(id, st.dstAddr, -1, ebpfasm.JEq, fail)
	}
	for _, id := range r.notDstSets {
		c.ipsetLookup(id, st.dstAddr, -1, ebpfasm.JNE, fail)
	}
}

// checkKind is one register-compare check of a rule.
type checkKind int

const (
	checkProto checkKind = iota
	checkICMP
	checkSrcPorts
	checkDstPorts
	checkSrcNets
	checkDstNets
	checkNotProto
	checkNotICMP
	checkNotSrcPorts
	checkNotDstPorts
	checkNotSrcNets
	checkNotDstNets
)

// checkOrder returns r's register-compare checks (not skip, not those
// with named ports) in the order they are emitted: positive checks by
// ascending estimated chance that a packet passes them, then negations.
// The chance of a CIDR list is its share of the address space, that of a
// port list its share of the ports; a protocol is assumed to pass half the
// packets (traffic is mostly TCP and UDP) and an ICMP type a sixteenth.
// Ties keep the order above.
func checkOrder(r *rule, skip field) []checkKind {
	type scored struct {
		k    checkKind
		pass float64
	}
	var pos []scored
	if r.proto >= 0 {
		pos = append(pos, scored{checkProto, 0.5})
	}
	if r.icmp != nil {
		pos = append(pos, scored{checkICMP, 1.0 / 16})
	}
	if skip != fieldSrcPorts && len(r.srcPorts) > 0 && len(r.srcNamed) == 0 {
		pos = append(pos, scored{checkSrcPorts, portShare(r.srcPorts)})
	}
	if skip != fieldDstPorts && len(r.dstPorts) > 0 && len(r.dstNamed) == 0 {
		pos = append(pos, scored{checkDstPorts, portShare(r.dstPorts)})
	}
	if skip != fieldSrcNets && len(r.srcNets) > 0 {
		pos = append(pos, scored{checkSrcNets, netShare(r.srcNets)})
	}
	if skip != fieldDstNets && len(r.dstNets) > 0 {
		pos = append(pos, scored{checkDstNets, netShare(r.dstNets)})
	}
	slices.SortStableFunc(pos, func(a, b scored) int { return cmp.Compare(a.pass, b.pass) })
	out := make([]checkKind, 0, len(pos)+6)
	for _, s := range pos {
		out = append(out, s.k)
	}
	if r.notProto >= 0 {
		out = append(out, checkNotProto)
	}
	if r.notICMP != nil {
		out = append(out, checkNotICMP)
	}
	if len(r.notSrcPorts) > 0 && len(r.notSrcNamed) == 0 {
		out = append(out, checkNotSrcPorts)
	}
	if len(r.notDstPorts) > 0 && len(r.notDstNamed) == 0 {
		out = append(out, checkNotDstPorts)
	}
	if len(r.notSrcNets) > 0 {
		out = append(out, checkNotSrcNets)
	}
	if len(r.notDstNets) > 0 {
		out = append(out, checkNotDstNets)
	}
	return out
}

func portShare(ranges []PortRange) float64 {
	n := 0
	for _, pr := range ranges {
		n += int(pr.Last) - int(pr.First) + 1
	}
	return float64(n) / 65536
}

func netShare(nets []netip.Prefix) float64 {
	s := 0.0
	for _, n := range nets {
		s += math.Ldexp(1, -n.Bits())
	}
	return s
}

// check emits one register-compare check.
func (c *compiler) check(st stage, r *rule, k checkKind, fail string) {
	b := c.part.b
	switch k {
	case checkProto:
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, offProto, ebpfasm.Byte))
		c.mismatch(false, ebpfasm.JNE, ebpfasm.R1, int32(r.proto), fail)
	case checkNotProto:
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, offProto, ebpfasm.Byte))
		b.Jump(ebpfasm.JEq, ebpfasm.R1, int32(r.notProto), fail)
	case checkICMP:
		c.icmpCheck(r.icmp, fail, false)
	case checkNotICMP:
		c.icmpCheck(r.notICMP, fail, true)
	case checkSrcPorts:
		c.portRanges(offSrcPort, r.srcPorts, nil, offSrcAddr, fail, false)
	case checkNotSrcPorts:
		c.portRanges(offSrcPort, r.notSrcPorts, nil, offSrcAddr, fail, true)
	case checkDstPorts:
		c.portRanges(st.dstPort, r.dstPorts, nil, st.dstAddr, fail, false)
	case checkNotDstPorts:
		c.portRanges(st.dstPort, r.notDstPorts, nil, st.dstAddr, fail, true)
	case checkSrcNets:
		c.nets(offSrcAddr, r.srcNets, fail, false)
	case checkNotSrcNets:
		c.nets(offSrcAddr, r.notSrcNets, fail, true)
	case checkDstNets:
		c.nets(st.dstAddr, r.dstNets, fail, false)
	case checkNotDstNets:
		c.nets(st.dstAddr, r.notDstNets, fail, true)
	}
}

func (c *compiler) icmpCheck(m *ICMPMatch, fail string, negate bool) {
	b := c.part.b
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, offICMPType, ebpfasm.Byte))
	if !m.HasCode {
		if negate {
			b.Jump(ebpfasm.JEq, ebpfasm.R1, int32(m.Type), fail)
		} else {
			c.mismatch(false, ebpfasm.JNE, ebpfasm.R1, int32(m.Type), fail)
		}
		return
	}
	if !negate {
		c.mismatch(false, ebpfasm.JNE, ebpfasm.R1, int32(m.Type), fail)
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, offICMPCode, ebpfasm.Byte))
		c.mismatch(false, ebpfasm.JNE, ebpfasm.R1, int32(m.Code), fail)
		return
	}
	differs := c.newLabel("icmp_differs")
	b.Jump(ebpfasm.JNE, ebpfasm.R1, int32(m.Type), differs)
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, offICMPCode, ebpfasm.Byte))
	b.Jump(ebpfasm.JEq, ebpfasm.R1, int32(m.Code), fail)
	c.label(differs)
}

// mismatch jumps to fail, where a positive check goes when it does not
// hold. The first such jump of a rule is the one a non-matching packet
// usually takes, rule after rule; a taken conditional branch the predictor
// has not seen costs a misprediction, and thousands of rules outgrow the
// branch target buffer. So that jump is inverted into a rarely taken branch
// over an unconditional jump, which the CPU predicts at decode.
func (c *compiler) mismatch(jump32 bool, op ebpfasm.JumpOp, dst ebpfasm.Register, imm int32, fail string) {
	b := c.part.b
	jump := b.Jump
	if jump32 {
		jump = b.Jump32
	}
	if !c.part.invertMismatch {
		jump(op, dst, imm, fail)
		return
	}
	c.part.invertMismatch = false
	inverse := map[ebpfasm.JumpOp]ebpfasm.JumpOp{ebpfasm.JNE: ebpfasm.JEq, ebpfasm.JEq: ebpfasm.JNE, ebpfasm.JGT: ebpfasm.JLE}[op]
	body := c.newLabel("rule_body")
	jump(inverse, dst, imm, body)
	b.Ja(fail)
	b.Label(body) // reached only by the jump: what the key cache knows holds
}

// portRanges checks the port at portOff against ranges and named-port sets
// (ORed). Without negate the port must be in one of them, with negate in
// none.
func (c *compiler) portRanges(portOff int16, ranges []PortRange, named []uint64, addrOff int16, fail string, negate bool) {
	if len(ranges) == 0 && len(named) == 0 {
		return
	}
	b := c.part.b
	if !negate && len(ranges) == 1 && len(named) == 0 {
		// One range: a single jump away when the port is outside.
		pr := ranges[0]
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, portOff, ebpfasm.Half))
		if pr.First == pr.Last {
			c.mismatch(false, ebpfasm.JNE, ebpfasm.R1, int32(pr.First), fail)
			return
		}
		b.Emit(ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R1), ebpfasm.Add.Imm(ebpfasm.R2, -int32(pr.First)))
		c.mismatch(false, ebpfasm.JGT, ebpfasm.R2, int32(pr.Last-pr.First), fail)
		return
	}
	// in is where a port in the list goes: fail when negated.
	in := fail
	if !negate {
		in = c.newLabel("port_ok")
	}
	if len(ranges) > 0 {
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, portOff, ebpfasm.Half))
	}
	for _, pr := range ranges {
		if pr.First == pr.Last {
			b.Jump(ebpfasm.JEq, ebpfasm.R1, int32(pr.First), in)
			continue
		}
		// One unsigned compare: port-First <= Last-First.
		b.Emit(ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R1), ebpfasm.Add.Imm(ebpfasm.R2, -int32(pr.First)))
		b.Jump(ebpfasm.JLE, ebpfasm.R2, int32(pr.Last-pr.First), in)
	}
	for _, id := range named {
		c.ipsetLookup(id, addrOff, portOff, ebpfasm.JNE, in)
	}
	if !negate {
		b.Ja(fail)
		c.label(in)
	}
}

// ipsetLookup looks up set id in sl_ipsets with the address at addrOff,
// its family and, when portOff >= 0, the port there and the protocol (a
// named-port match). It jumps to label when R0 (the member) is op 0.
func (c *compiler) ipsetLookup(id uint64, addrOff, portOff int16, op ebpfasm.JumpOp, label string) {
	b := c.part.b
	k := &c.part.key
	const base = stackIPSetKey
	idBytes := bpf.IPSetID(id)
	if !k.valid {
		// The key's fields are 4 bytes or less, and the verifier tracks
		// stack liveness by 8-byte slot: only a whole-slot write ends a
		// slot's liveness. Without these, every slot of the key that the
		// helper reads stays live back through earlier rules, and paths
		// that left different set IDs there are never pruned (processed
		// instructions grow with the square of the rules).
		b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, 0))
		for off := int16(base); off < base+ipsetKeySize; off += 8 {
			b.Emit(ebpfasm.StoreMem(ebpfasm.R10, off, ebpfasm.R1, ebpfasm.DWord))
		}
	}
	b.Emit(
		ebpfasm.StoreImm(ebpfasm.R10, base+ipsetKeySetID, int64(int32(binary.NativeEndian.Uint32(idBytes[:4]))), ebpfasm.Word),
		ebpfasm.StoreImm(ebpfasm.R10, base+ipsetKeySetID+4, int64(int32(binary.NativeEndian.Uint32(idBytes[4:]))), ebpfasm.Word),
	)
	if !k.valid {
		b.Emit(ebpfasm.StoreImm(ebpfasm.R10, base, int64(ipsets.NamedPortBits), ebpfasm.Word))
	}
	if !k.valid || k.addr != addrOff {
		for i := int16(0); i < 16; i += 4 {
			b.Emit(
				ebpfasm.LoadMem(ebpfasm.R1, regState, addrOff+i, ebpfasm.Word),
				ebpfasm.StoreMem(ebpfasm.R10, base+ipsetKeyAddr+i, ebpfasm.R1, ebpfasm.Word),
			)
		}
		c.storeKeyFamily(addrOff)
	}
	// The word at port covers port, proto and pad: all zero for an
	// address test.
	switch {
	case portOff < 0 && (!k.valid || k.tail != 1):
		b.Emit(ebpfasm.StoreImm(ebpfasm.R10, base+ipsetKeyPort, 0, ebpfasm.Word))
	case portOff >= 0 && (!k.valid || k.tail != 2 || k.port != portOff):
		b.Emit(
			ebpfasm.StoreImm(ebpfasm.R10, base+ipsetKeyPort, 0, ebpfasm.Word),
			ebpfasm.LoadMem(ebpfasm.R1, regState, portOff, ebpfasm.Half),
			ebpfasm.StoreMem(ebpfasm.R10, base+ipsetKeyPort, ebpfasm.R1, ebpfasm.Half),
			ebpfasm.LoadMem(ebpfasm.R1, regState, offProto, ebpfasm.Byte),
			ebpfasm.StoreMem(ebpfasm.R10, base+ipsetKeyProto, ebpfasm.R1, ebpfasm.Byte),
		)
	}
	b.Emit(
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(bpf.MapIPSets),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, base),
		ebpfasm.FnMapLookupElem.Call(),
	)
	if op == ebpfasm.JEq && portOff < 0 {
		c.mismatch(false, op, ebpfasm.R0, 0, label)
	} else {
		b.Jump(op, ebpfasm.R0, 0, label)
	}
	*k = ipsetKeyCache{valid: true, addr: addrOff, tail: 1}
	if portOff >= 0 {
		k.tail, k.port = 2, portOff
	}
}
