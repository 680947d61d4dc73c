package polprog

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
	ebpfasm "github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// A group is a run of consecutive rules with terminal actions (allow, deny,
// pass) that are identical except for their IDs, actions and one list
// field. Instead of checking each rule, the program checks the shared
// fields once and looks the packet's address or port up in an LPM trie
// whose value is the first rule, in order, that the packet matches.
//
// That is exact: the prefixes inserted that contain an address are all
// prefixes of it, so each contains the longest one that matches. Storing at
// every inserted prefix the lowest rule index among the prefixes containing
// it makes the longest match carry the lowest index of any rule matching.
type group struct {
	field field
	rules []rule
}

// Lookup map actions (the u32 after the rule ID in a value).
const (
	groupAllow = 1
	groupDeny  = 2
	groupPass  = 3
)

// groupValueSize is a lookup map value: u64 rule ID, u32 action, u32 pad.
const groupValueSize = 16

func terminal(a Action) bool { return a == ActionAllow || a == ActionDeny || a == ActionPass }

// fieldLen returns how many alternatives r has in f, 0 when f cannot be
// merged for r (empty, or ports ORed with named ports).
func fieldLen(r *rule, f field) int {
	switch f {
	case fieldSrcNets:
		return ipv4Len(r.srcNets)
	case fieldDstNets:
		return ipv4Len(r.dstNets)
	case fieldSrcPorts:
		if len(r.srcNamed) > 0 {
			return 0
		}
		return len(r.srcPorts)
	case fieldDstPorts:
		if len(r.dstNamed) > 0 {
			return 0
		}
		return len(r.dstPorts)
	}
	return 0
}

// ipv4Len returns len(nets) when every prefix is IPv4, else 0: lookup
// maps key on the IPv4 word of the address.
func ipv4Len(nets []netip.Prefix) int {
	for _, n := range nets {
		if !n.Addr().Is4() {
			return 0
		}
	}
	return len(nets)
}

// shapeKey describes r without its ID, action and field skip.
func shapeKey(r *rule, skip field) string {
	var s strings.Builder
	fmt.Fprint(&s, r.proto, r.notProto, r.notSrcNets, r.notDstNets, r.srcSets, r.notSrcSets, r.dstSets,
		r.notDstSets, r.notSrcPorts, r.notDstPorts, r.srcNamed, r.notSrcNamed, r.dstNamed, r.notDstNamed)
	if r.icmp != nil {
		fmt.Fprint(&s, "i", *r.icmp)
	}
	if r.notICMP != nil {
		fmt.Fprint(&s, "ni", *r.notICMP)
	}
	if skip != fieldSrcNets {
		fmt.Fprint(&s, "s", r.srcNets)
	}
	if skip != fieldDstNets {
		fmt.Fprint(&s, "d", r.dstNets)
	}
	if skip != fieldSrcPorts {
		fmt.Fprint(&s, "sp", r.srcPorts)
	}
	if skip != fieldDstPorts {
		fmt.Fprint(&s, "dp", r.dstPorts)
	}
	return s.String()
}

// shapeCache memoizes shapeKey over one list of rules.
type shapeCache struct {
	rules []rule
	keys  map[[2]int]string
}

func (sc *shapeCache) key(i int, f field) string {
	k := [2]int{i, int(f)}
	if s, ok := sc.keys[k]; ok {
		return s
	}
	s := shapeKey(&sc.rules[i], f)
	sc.keys[k] = s
	return s
}

// findGroup returns the group starting at rs[i] with the most
// alternatives, or nil when none reaches the merge threshold.
func (c *compiler) findGroup(sc *shapeCache, i int) *group {
	rs := sc.rules
	if c.opts.MergeThreshold < 0 || !terminal(rs[i].action) {
		return nil
	}
	var best *group
	bestAlts := 0
	for _, f := range []field{fieldSrcNets, fieldDstNets, fieldSrcPorts, fieldDstPorts} {
		if fieldLen(&rs[i], f) == 0 {
			continue
		}
		shape := sc.key(i, f)
		alts, j := 0, i
		for ; j < len(rs) && terminal(rs[j].action) && fieldLen(&rs[j], f) > 0; j++ {
			if j > i && sc.key(j, f) != shape {
				break
			}
			alts += fieldLen(&rs[j], f)
		}
		if alts > bestAlts {
			best, bestAlts = &group{field: f, rules: rs[i:j]}, alts
		}
	}
	if bestAlts < c.opts.MergeThreshold {
		return nil
	}
	return best
}

// groupCode emits the shared checks of g and its lookup.
func (c *compiler) groupCode(st stage, g *group, tierEnd string) error {
	b := c.part.b
	next := c.newLabel("group_end")
	first, last := g.rules[0], g.rules[len(g.rules)-1]
	b.Comment(fmt.Sprintf("rules %s to %s (%d) merged into one lookup", first.where, last.where, len(g.rules)))
	c.part.key.valid = false
	c.checks(st, &first, g.field, next)

	spec, err := groupMapSpec(g, len(c.out.LookupMaps))
	if err != nil {
		return err
	}
	name := fmt.Sprintf("polprog_lpm_%d", len(c.out.LookupMaps))
	c.out.LookupMaps = append(c.out.LookupMaps, LookupMap{Name: name, Spec: spec})
	c.part.lookupMaps++

	switch g.field {
	case fieldSrcNets, fieldDstNets:
		off := offSrcAddr
		if g.field == fieldDstNets {
			off = st.dstAddr
		}
		// The trie holds IPv4 prefixes only: an IPv6 address matches none.
		v6bit, _, _ := familyBits(off)
		c.familyJump(v6bit, next)
		b.Emit(ebpfasm.StoreImm(ebpfasm.R10, stackLPMKey, int64(groupKeyBits(g.field)), ebpfasm.Word))
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, off+12, ebpfasm.Word),
			ebpfasm.StoreMem(ebpfasm.R10, stackLPMKey+4, ebpfasm.R1, ebpfasm.Word))
	default:
		off := offSrcPort
		if g.field == fieldDstPorts {
			off = st.dstPort
		}
		b.Emit(ebpfasm.StoreImm(ebpfasm.R10, stackLPMKey, int64(groupKeyBits(g.field)), ebpfasm.Word))
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, off, ebpfasm.Half),
			ebpfasm.HostTo(ebpfasm.BE, ebpfasm.R1, ebpfasm.Half),
			ebpfasm.StoreMem(ebpfasm.R10, stackLPMKey+4, ebpfasm.R1, ebpfasm.Half))
	}
	b.Emit(
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(name),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackLPMKey),
		ebpfasm.FnMapLookupElem.Call(),
	)
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, next)
	b.Emit(ebpfasm.LoadMem(regRuleID, ebpfasm.R0, 0, ebpfasm.DWord))

	actions := map[Action]bool{}
	zeroID := false
	for _, r := range g.rules {
		actions[r.action] = true
		zeroID = zeroID || r.id == 0
	}
	var order []Action
	for _, a := range []Action{ActionAllow, ActionDeny, ActionPass} {
		if actions[a] {
			order = append(order, a)
		}
	}
	if len(order) > 1 {
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 8, ebpfasm.Word))
	}
	for i, a := range order {
		var here string
		if i < len(order)-1 {
			here = c.newLabel("group_" + a.String())
			b.Jump32(ebpfasm.JNE, ebpfasm.R1, groupActionCode(a), here)
		}
		c.groupAction(a, zeroID, tierEnd)
		if here != "" {
			c.label(here)
		}
	}
	c.label(next)
	return nil
}

// groupAction jumps to a footer with the rule ID loaded from the map.
func (c *compiler) groupAction(a Action, zeroID bool, tierEnd string) {
	if a == ActionPass {
		c.crossJa(tierEnd)
		return
	}
	rec, noRec := labelDenyRec, labelDenyNoRec
	if a == ActionAllow {
		rec, noRec = labelAllowRec, labelAllowNoRec
	}
	if zeroID {
		c.part.used[noRec] = true
		c.part.b.Jump(ebpfasm.JEq, regRuleID, 0, noRec)
	}
	c.use(rec)
}

func groupActionCode(a Action) int32 {
	switch a {
	case ActionAllow:
		return groupAllow
	case ActionDeny:
		return groupDeny
	}
	return groupPass
}

// groupKeyBits is the width of the data a lookup map keys on.
func groupKeyBits(f field) int {
	if f == fieldSrcNets || f == fieldDstNets {
		return 32
	}
	return 16
}

// bitPrefix is a prefix of a width-bit big-endian value.
type bitPrefix struct {
	val  uint32
	bits int
}

func (p bitPrefix) ancestor(bits, width int) bitPrefix {
	if bits == 0 {
		return bitPrefix{}
	}
	mask := uint32(0xffffffff) << (32 - bits) >> (32 - width)
	return bitPrefix{val: p.val & mask, bits: bits}
}

// portPrefixes splits an inclusive range into aligned prefixes of 16 bits.
func portPrefixes(pr PortRange) []bitPrefix {
	var out []bitPrefix
	lo, hi := uint32(pr.First), uint32(pr.Last)
	for lo <= hi {
		size := uint32(1)
		for lo&(size*2-1) == 0 && lo+size*2-1 <= hi && size < 1<<16 {
			size *= 2
		}
		bits := 16
		for s := size; s > 1; s >>= 1 {
			bits--
		}
		out = append(out, bitPrefix{val: lo, bits: bits})
		lo += size
	}
	return out
}

// groupMapSpec builds the LPM trie of g: every prefix of every rule, mapped
// to the first rule whose prefixes contain it.
func groupMapSpec(g *group, n int) (*ebpf.MapSpec, error) {
	width := groupKeyBits(g.field)
	first := map[bitPrefix]int{}
	add := func(p bitPrefix, idx int) {
		if old, ok := first[p]; !ok || idx < old {
			first[p] = idx
		}
	}
	for i := range g.rules {
		r := &g.rules[i]
		switch g.field {
		case fieldSrcNets, fieldDstNets:
			nets := r.srcNets
			if g.field == fieldDstNets {
				nets = r.dstNets
			}
			for _, p := range nets {
				a := p.Addr().As4()
				add(bitPrefix{val: binary.BigEndian.Uint32(a[:]), bits: p.Bits()}, i)
			}
		default:
			ports := r.srcPorts
			if g.field == fieldDstPorts {
				ports = r.dstPorts
			}
			for _, pr := range ports {
				for _, p := range portPrefixes(pr) {
					add(p, i)
				}
			}
		}
	}
	keySize := 4 + width/8
	contents := make([]ebpf.MapKV, 0, len(first))
	for p, idx := range first {
		for bits := 0; bits < p.bits; bits++ {
			if a, ok := first[p.ancestor(bits, width)]; ok && a < idx {
				idx = a
			}
		}
		key := make([]byte, keySize)
		binary.NativeEndian.PutUint32(key, uint32(p.bits))
		if width == 32 {
			binary.BigEndian.PutUint32(key[4:], p.val)
		} else {
			binary.BigEndian.PutUint16(key[4:], uint16(p.val))
		}
		value := make([]byte, groupValueSize)
		binary.NativeEndian.PutUint64(value, g.rules[idx].id)
		binary.NativeEndian.PutUint32(value[8:], uint32(groupActionCode(g.rules[idx].action)))
		contents = append(contents, ebpf.MapKV{Key: key, Value: value})
	}
	if len(contents) == 0 {
		return nil, fmt.Errorf("merged rules %s: no prefixes", g.rules[0].where)
	}
	return &ebpf.MapSpec{
		Name:       fmt.Sprintf("slp_lpm%d", n),
		Type:       ebpf.LPMTrie,
		KeySize:    uint32(keySize),
		ValueSize:  groupValueSize,
		MaxEntries: uint32(len(contents)),
		Flags:      unix.BPF_F_NO_PREALLOC,
		Contents:   contents,
	}, nil
}
