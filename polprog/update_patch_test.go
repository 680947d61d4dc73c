package polprog

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// mutateField sets one random match field of r (a protocol, ICMP, CIDR,
// port, IP set or named-port list, or a negation of one) to that of a
// fresh random rule: set, changed or cleared.
func (g *gen) mutateField(r *Rule) {
	f := g.rule()
	switch g.r.IntN(13) {
	case 0:
		r.Protocol, r.ICMP, r.NotICMP = f.Protocol, f.ICMP, f.NotICMP
	case 1:
		r.NotProtocol = f.NotProtocol
	case 2:
		r.ICMP, r.NotICMP = f.ICMP, f.NotICMP
	case 3:
		r.SrcNets = f.SrcNets
	case 4:
		r.DstNets = f.DstNets
	case 5:
		r.NotSrcNets, r.NotDstNets = f.NotSrcNets, f.NotDstNets
	case 6:
		r.SrcPorts = f.SrcPorts
	case 7:
		r.DstPorts = f.DstPorts
	case 8:
		r.NotSrcPorts, r.NotDstPorts = f.NotSrcPorts, f.NotDstPorts
	case 9:
		r.SrcIPSets, r.NotSrcIPSets = f.SrcIPSets, f.NotSrcIPSets
	case 10:
		r.DstIPSets, r.NotDstIPSets = f.DstIPSets, f.NotDstIPSets
	case 11:
		r.SrcNamedPorts, r.NotDstNamedPorts = f.SrcNamedPorts, f.NotDstNamedPorts
	default:
		r.Action, r.ID = f.Action, f.ID
	}
}

// edgePackets returns packets aimed at r (packetFor) with, one field at a
// time, a port or address at an edge of one of r's ranges and CIDRs, or
// just outside it: where a changed rule splits its dimensions' rows.
func (g *gen) edgePackets(r *Rule) []Packet {
	base := g.packetFor(r)
	out := []Packet{base}
	ports := func(rs ...[]PortRange) []uint16 {
		var out []uint16
		for _, pr := range slices.Concat(rs...) {
			out = append(out, pr.First, pr.Last, pr.First-1, pr.Last+1)
		}
		return out
	}
	for _, v := range ports(r.SrcPorts, r.NotSrcPorts) {
		p := base
		p.SrcPort = v
		out = append(out, p)
	}
	for _, v := range ports(r.DstPorts, r.NotDstPorts) {
		p := base
		p.DstPort, p.PreNATDstPort = v, v
		out = append(out, p)
	}
	for _, a := range edgeAddrs(slices.Concat(r.SrcNets, r.NotSrcNets)) {
		if a.Is4() == base.Src.Is4() {
			p := base
			p.Src = a
			out = append(out, p)
		}
	}
	for _, a := range edgeAddrs(slices.Concat(r.DstNets, r.NotDstNets)) {
		if a.Is4() == base.Dst.Is4() {
			p := base
			p.Dst = a
			out = append(out, p)
		}
	}
	return out
}

// aimedRule returns a random packet and the rule of all that decides it
// by before (a random rule when none of all does).
func (g *gen) aimedRule(before *Evaluator, all []*Rule) (Packet, *Rule) {
	aim := g.packet()
	if id := before.Evaluate(g.sets, aim).RuleID; id != 0 {
		if i := slices.IndexFunc(all, func(r *Rule) bool { return r.ID == id }); i >= 0 {
			return aim, all[i]
		}
	}
	return aim, all[g.r.IntN(len(all))]
}

// TestUpdateFieldsDifferential changes random match fields (every kind,
// gained, changed and lost) of one to three rules at a time of 10,000-rule
// random policies and holds the kernel to Evaluate after each Update, on
// packets aimed at the changed rules and random ones. Most updates must
// take the map-only path (patchRows: all but those that change a rule's
// named-port alternatives or name a set its run does not), and enough of them must change a
// decision that a no-op Update would fail.
func TestUpdateFieldsDifferential(t *testing.T) {
	k := newKernel(t)
	updates, packets := 40, 120
	if testing.Short() {
		updates = 10
	}
	var n updateCounts
	for seed := uint64(0); seed < 2; seed++ {
		g := newGen(500 + seed)
		p, rules := k.loadLarge(t, g, seed == 1)
		c := updateRounds(t, k, p, g, rules, updates, packets, func(before *Evaluator, next *Rules) []Packet {
			all := allRules(next)
			var pkts []Packet
			for range 1 + g.r.IntN(3) {
				aim, r := g.aimedRule(before, all)
				was := *r
				for try := 0; try < 10 && reflect.DeepEqual(was, *r); try++ {
					g.mutateField(r)
				}
				if _, err := validateWith(*next, validator{noWhere: true}); err != nil {
					*r = was // a rule Validate refuses: not an update
					continue
				}
				pkts = append(pkts, aim)
				pkts = append(pkts, g.edgePackets(r)...)
				pkts = append(pkts, g.edgePackets(&was)...)
			}
			return pkts
		})
		n.patched, n.seen = n.patched+c.patched, n.seen+c.seen
	}
	tried := 2 * updates
	t.Logf("%d of %d updates without a compile; after %d some packet was decided otherwise", n.patched, tried, n.seen)
	if n.patched < tried*3/4 {
		t.Errorf("only %d of %d updates took the map-only path", n.patched, tried)
	}
	if n.seen < tried/5 {
		t.Errorf("only %d of %d updates changed a decision: the test does not see updates", n.seen, tried)
	}
}

// TestUpdateCallerEdits edits, in place, a list of the Rules the loaded
// program was compiled from and then passes them to Update: the program
// must not have kept the caller's lists (it would see no change), and must
// decide by the edited rules after the Update, not before it.
func TestUpdateCallerEdits(t *testing.T) {
	k := newKernel(t)
	var rs []Rule
	for i := range 300 {
		rs = append(rs, Rule{ID: uint64(i + 1), Action: ActionAllow, Protocol: "tcp",
			SrcNets:  []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24)},
			DstPorts: []PortRange{Port(uint16(1000 + i))}})
	}
	rules := Rules{Tiers: []Tier{{Name: "t", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}, NoMatchRuleID: 1 << 41}
	p := k.load(t, rules, Options{ClassifierRules: 1, MergeThreshold: -1})
	moved := Packet{Src: mustAddr("172.16.0.1"), Dst: mustAddr("10.9.9.9"), Protocol: 6, SrcPort: 5, DstPort: 9999}
	old := Packet{Src: mustAddr("10.1.7.1"), Dst: mustAddr("10.9.9.9"), Protocol: 6, SrcPort: 5, DstPort: 1007}
	k.agree(t, p, rules, nil, old)
	// The caller edits rule 7's lists in place.
	r := &rules.Tiers[0].Policies[0].Rules[7]
	r.SrcNets[0] = mustPrefix("172.16.0.0/16")
	r.DstPorts[0] = Port(9999)
	// Before the Update the program decides by what it was given.
	if d := k.run(t, p, moved); d.RuleID == 8 {
		t.Fatalf("before Update the edit already applies: %+v", d)
	}
	if err := p.Update(rules); err != nil {
		t.Fatal(err)
	}
	for _, pkt := range []Packet{moved, old} {
		k.agree(t, p, rules, nil, pkt)
	}
	if d := k.run(t, p, moved); d.RuleID != 8 {
		t.Fatalf("after Update: %+v, want rule 8", d)
	}
}
