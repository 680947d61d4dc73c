package polprog

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Attacks on b18d8b3: Update looks only at program.fresh (rules validated
// afresh, in eachRule's order), and regroup skips the rows whose keeper
// bits equal the old bits of their first key (rows are exact).

// rowsExactErr checks the claim regroup relies on: every row of every
// address and array dimension of p's classified runs holds, for every
// position, exactly whether the position accepts the addresses (values)
// of each key of the row.
func rowsExactErr(p *Program) string {
	for ci, cc := range p.class.compiled.classes {
		cl := cc.cl
		check := func(d *classDim, key string, row uint32, holds func(q *position) bool) string {
			for i := range cl.pos {
				q := &cl.pos[i]
				if q.r == &padRule {
					continue
				}
				if got := d.rows[row][i/64]&(1<<(i%64)) != 0; got != holds(q) {
					return fmt.Sprintf("run %d dim %d key %s row %d position %d (rule %d): bit %v, accepts %v",
						ci, d.kind, key, row, i, q.r.id, got, !got)
				}
			}
			return ""
		}
		for _, d := range cl.dims {
			switch d.kind {
			case dimSrcAddr, dimDstAddr:
				src := d.kind == dimSrcAddr
				if e := check(d, "none", 0, func(q *position) bool { return q.addrHolds(src, netip.Prefix{}) }); e != "" {
					return e
				}
				for _, pr := range d.prefix {
					if e := check(d, pr.p.String(), pr.row, func(q *position) bool { return q.addrHolds(src, pr.p) }); e != "" {
						return e
					}
				}
			case dimProto, dimICMP, dimSrcPort, dimDstPort:
				of := d.rowsByKey()
				for v := range int(dimArraySize(d.kind)) {
					if e := check(d, fmt.Sprint(v), of[v], func(q *position) bool { return q.arrayHolds(d.kind, v) }); e != "" {
						return e
					}
				}
			}
		}
	}
	return ""
}

// patchSame holds patchRows with np validated against the program in
// force (fresh: only the rules that differ) to patchRows with every rule
// validated afresh (what Update compared before b18d8b3): the same
// outcome and the same contents of every map.
func patchSame(p *Program, next Rules) string {
	s := p.class
	all, err := validateWith(next, validator{max: s.compiled.opts.MaxRules, noWhere: true})
	if err != nil {
		return ""
	}
	byPrev, err := validateWith(next, validator{max: s.compiled.opts.MaxRules, noWhere: true, prev: s.prog})
	if err != nil {
		return "validated alone but not against the program in force: " + err.Error()
	}
	if !sameShape(s.prog, all) {
		return ""
	}
	wa, _, oka := s.patchRows(all)
	wp, _, okp := s.patchRows(byPrev)
	if oka != okp {
		return fmt.Sprintf("patchRows ok %v with every rule fresh, %v with fresh %v", oka, okp, byPrev.fresh)
	}
	if !oka {
		return ""
	}
	for _, name := range slices.Sorted(maps.Keys(wa)) {
		if !sameContents(wa[name], wp[name]) || !sameContents(wp[name], wa[name]) {
			return fmt.Sprintf("map %s differs with fresh %v from every rule fresh", name, byPrev.fresh)
		}
	}
	return ""
}

// hostCIDRRules is a host policy of four sections, each of the rules of
// cidrRules (IDs apart): pre-DNAT, normal and apply-on-forward tiers and
// profiles, so that the rule at a validation index is at another index in
// eachRule's order.
func (g *gen) hostCIDRRules(n int) Rules {
	section := func(base uint64) []Rule {
		rs := g.cidrRules(n).Tiers[0].Policies[0].Rules
		for i := range rs {
			rs[i].ID += base
		}
		return rs
	}
	return Rules{ForHost: true, NoMatchRuleID: 7,
		PreDNATTiers: []Tier{{Name: "pre", EndAction: EndPass, EndRuleID: 9,
			Policies: []Policy{{Name: "a", Rules: section(10000)}}}},
		Tiers: []Tier{{Name: "t", EndAction: EndPass, EndRuleID: 8,
			Policies: []Policy{{Name: "a", Rules: section(20000)[:n/2]}, {Name: "b", Rules: section(30000)[:n-n/2]}}}},
		ApplyOnForwardTiers: []Tier{{Name: "fwd", EndAction: EndPass, EndRuleID: 11,
			Policies: []Policy{{Name: "a", Rules: section(40000)}}}},
		Profiles: []Policy{{Name: "prof", Rules: section(50000)}},
	}
}

// hostPackets are cidrPackets to, from and through the host, some DNATed.
func (g *gen) hostPackets(n int) []Packet {
	pkts := g.cidrPackets(n)
	addrs := edgeAddrs(cidrPool)
	for i := range pkts {
		pkts[i].SrcIsHost, pkts[i].DstIsHost = g.chance(3), g.chance(2)
		if g.chance(4) {
			a := addrs[g.r.IntN(len(addrs))]
			if a.Is4() == pkts[i].Dst.Is4() {
				pkts[i].PreNATDst, pkts[i].PreNATDstPort = a, uint16(g.r.IntN(4))
			}
		}
	}
	return pkts
}

// mutateCIDRRule changes r as TestAttackCIDRUpdateChain does, and more:
// several CIDRs, negations of both families, ports, ID and action.
func (g *gen) mutateCIDRRule(r *Rule) {
	switch g.r.IntN(9) {
	case 0:
		r.DstNets = g.poolNets()
	case 1:
		r.NotSrcNets = g.poolNets()
	case 2:
		r.NotDstNets = nil
	case 3:
		r.ID, r.Action = g.id(), []Action{ActionAllow, ActionDeny, ActionLog, ActionPass}[g.r.IntN(4)]
	case 4:
		r.NotDstNets = g.poolNets()
	case 5:
		if len(r.DstPorts) > 0 {
			first := uint16(g.r.IntN(3))
			r.DstPorts = []PortRange{{First: first, Last: first + uint16(g.r.IntN(2))}}
		}
	case 6:
		r.SrcNets = append(g.poolNets(), g.poolNets()...)
	default:
		r.SrcNets = g.poolNets()
	}
}

// updateChain runs steps updates of 1 to 3 rules (of those pick gives)
// on p, each held first by patchSame and rowsExactErr, then by packets
// through the kernel, twice, against Evaluate. It returns the count of
// updates the address-row path took.
func updateChain(t *testing.T, k *kernel, g *gen, p *Program, rules Rules, pkts []Packet, steps int,
	mutate func(next *Rules)) int {
	t.Helper()
	fast := 0
	for step := range steps {
		next := cloneRules(rules)
		mutate(&next)
		if e := patchSame(p, next); e != "" {
			t.Fatalf("step %d: %s", step, e)
		}
		np, err := validateWith(next, validator{noWhere: true, prev: p.class.prog})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, ok := p.class.patchRows(np); ok {
			fast++
		}
		uerr := p.Update(next)
		switch {
		case uerr == nil:
			rules = next
		case !errors.Is(uerr, ErrNeedsReload):
			t.Fatalf("step %d: %v", step, uerr)
		}
		if e := rowsExactErr(p); e != "" {
			t.Fatalf("step %d (update err %v): rows not exact: %s", step, uerr, e)
		}
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		ids := ruleIDs(&rules)
		for _, pkt := range pkts {
			want := ev.Evaluate(g.sets, pkt)
			for run := range 2 {
				if msg := k.checkRunHits(t, p, ids, pkt, want); msg != "" {
					t.Fatalf("step %d (update err %v), run %d, packet %+v: %s", step, uerr, run, pkt, msg)
				}
			}
		}
	}
	return fast
}

// TestAttackFreshHostChain chains updates of a classified host policy:
// rules of every section (pre-DNAT, normal, apply-on-forward, profiles)
// change, so that a wrong map from validation order to eachRule's order
// leaves a changed rule out of patchRows (or puts another in), and now
// and then a rule moves from one policy of the normal tier to the other
// (the rules between change places). Each
// update's patchRows is held to that of every rule fresh, and packets of
// all directions to Evaluate.
func TestAttackFreshHostChain(t *testing.T) {
	k := newKernel(t)
	fast, steps := 0, 0
	for seed := uint64(0); seed < 3; seed++ {
		g := attackClsGen(seed + 7100)
		rules := g.hostCIDRRules(10)
		k.setIPSets(t, g.sets)
		p := k.load(t, rules, Options{ClassifierRules: 1})
		if len(p.class.compiled.classes) < 4 {
			t.Fatalf("seed %d: %d classified runs, want one per section at least", seed, len(p.class.compiled.classes))
		}
		pkts := g.hostPackets(120)
		sections := func(next *Rules) [][]*Rule {
			var out [][]*Rule
			for _, ts := range [][]Tier{next.PreDNATTiers, next.Tiers, next.ApplyOnForwardTiers, {{Policies: next.Profiles}}} {
				out = append(out, allRules(&Rules{Tiers: ts}))
			}
			return out
		}
		fast += updateChain(t, k, g, p, rules, pkts, 25, func(next *Rules) {
			if g.chance(6) {
				// A rule of the tier's first policy moves to the end of
				// its second: the rules between change places (the
				// tier's count stays), each fresh where it differs from
				// the rule that was at its place.
				a, b := &next.Tiers[0].Policies[0], &next.Tiers[0].Policies[1]
				if len(a.Rules) > 1 {
					i := g.r.IntN(len(a.Rules))
					moved := a.Rules[i]
					a.Rules = slices.Delete(slices.Clone(a.Rules), i, i+1)
					b.Rules = append(slices.Clone(b.Rules), moved)
				}
			}
			secs := sections(next)
			// Mostly one section, so that only its index mapping is
			// at stake; now and then several.
			for n := 1 + g.r.IntN(3); n > 0; n-- {
				sec := secs[g.r.IntN(len(secs))]
				g.mutateCIDRRule(sec[g.r.IntN(len(sec))])
			}
		})
		steps += 25
	}
	t.Logf("%d steps, %d by the address-row path", steps, fast)
	if fast < steps/3 {
		t.Errorf("only %d of %d updates took the address-row path", fast, steps)
	}
}

// TestAttackFreshRegroupEdges updates a classified tier along the edges
// of regroup's claim that a prefix the change adds has the row of its
// longest old match: IPv6 prefixes covering ::ffff:0:0/96 added (the IPv4
// /0 comes with them) to a run that had none, positively and negated;
// prefixes no rule names any more, named again; rows left free and taken
// again; rules of several CIDRs of both families; log rules of two
// positions (named-port alternatives) whose CIDRs change.
func TestAttackFreshRegroupEdges(t *testing.T) {
	k := newKernel(t)
	v4only := []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("10.1.0.0/16"), mustPrefix("10.1.2.0/24"),
		mustPrefix("10.1.2.3/32"), mustPrefix("192.168.0.0/16"), mustPrefix("0.0.0.0/32")}
	covers := []netip.Prefix{mustPrefix("::/0"), mustPrefix("::fffe:0:0/95"), mustPrefix("::/64")}
	fast, steps := 0, 0
	for seed := uint64(0); seed < 4; seed++ {
		g := attackClsGen(seed + 7300)
		// A run whose CIDRs are IPv4 only (and an IPv6 /128 far from
		// the mapped block), so that no IPv4 /0 is in its trie.
		var rs []Rule
		for i := range 16 {
			r := Rule{ID: uint64(2000 + i), Action: []Action{ActionAllow, ActionDeny, ActionLog, ActionPass}[g.r.IntN(4)],
				Protocol: []string{"tcp", "udp"}[g.r.IntN(2)], DstPorts: []PortRange{{First: uint16(g.r.IntN(3)), Last: 3}}}
			r.SrcNets = []netip.Prefix{v4only[g.r.IntN(len(v4only))]}
			if g.chance(3) {
				r.DstNets = []netip.Prefix{v4only[g.r.IntN(len(v4only))], mustPrefix("2001:db8:1::1/128")}
			}
			if i%4 == 0 {
				// Two positions: ports by range and by named port.
				r.Action = ActionLog
				r.SrcNamedPorts = []uint64{g.setIDs[g.r.IntN(len(g.setIDs))]}
				r.SrcPorts = []PortRange{Port(uint16(g.r.IntN(3)))}
			}
			rs = append(rs, r)
		}
		rules := Rules{NoMatchRuleID: 7, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 8,
			Policies: []Policy{{Name: "p", Rules: rs}}}}}
		k.setIPSets(t, g.sets)
		p := k.load(t, rules, Options{ClassifierRules: 1})
		if len(p.class.compiled.classes) == 0 {
			t.Fatal("no classified run")
		}
		pkts := g.cidrPackets(150)
		fast += updateChain(t, k, g, p, rules, pkts, 30, func(next *Rules) {
			all := allRules(next)
			r := all[g.r.IntN(len(all))]
			pick := func(ps []netip.Prefix) netip.Prefix { return ps[g.r.IntN(len(ps))] }
			switch g.r.IntN(7) {
			case 0: // an IPv6 cover of the mapped block, alone
				r.SrcNets = []netip.Prefix{pick(covers)}
			case 1: // negated, beside an IPv4 prefix
				r.SrcNets, r.NotSrcNets = []netip.Prefix{pick(v4only)}, []netip.Prefix{pick(covers)}
			case 2: // both families in one list
				r.DstNets = []netip.Prefix{pick(covers), pick(v4only), pick(cidrPool)}
			case 3: // back to IPv4 only: the covers are named by no rule
				r.SrcNets, r.NotSrcNets, r.DstNets = []netip.Prefix{pick(v4only)}, nil, nil
			case 4: // a negated IPv4 prefix inside another
				r.SrcNets, r.NotSrcNets = []netip.Prefix{mustPrefix("10.0.0.0/8")}, []netip.Prefix{pick(v4only[1:4])}
			case 5:
				r.ID = g.id()
			default:
				r.NotDstNets = []netip.Prefix{pick(cidrPool)}
			}
		})
		steps += 30
	}
	t.Logf("%d steps, %d by the address-row path", steps, fast)
	if fast < steps/3 {
		t.Errorf("only %d of %d updates took the address-row path", fast, steps)
	}
}

// TestAttackFreshTrieMapped gives a source dimension more IPv4 /32s than a
// stride table holds, so that IPv4 sources are looked up in the trie, as
// IPv4-mapped addresses, where an IPv6 prefix covering ::ffff:0:0/96 would
// be their longest match but for the IPv4 /0 (withFresh adds it, with the
// row of no prefix). Updates add such covers, positive and negated, to a
// run that had none, take them off and put them back, and IPv4 and IPv6
// sources, under the /32s and under none, are held to Evaluate.
func TestAttackFreshTrieMapped(t *testing.T) {
	k := newKernel(t)
	const n = 2100 // past maxStrideChunks' 2038 /32s in as many /24s
	dsts := []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("192.168.0.0/16"), mustPrefix("2001:db8::/32")}
	var rs []Rule
	for i := range n {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 255}), 32)
		rs = append(rs, Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny, ActionLog}[i%3],
			SrcNets: []netip.Prefix{p}, DstNets: []netip.Prefix{dsts[i%len(dsts)]}})
	}
	rules := strideRules(rs)
	p := k.load(t, rules, Options{ClassifierRules: 1, MergeThreshold: -1})
	cc := p.class.compiled.classes
	if len(cc) != 1 {
		t.Fatalf("%d classified runs, want 1", len(cc))
	}
	for di, kind := range cc[0].layout.dims {
		if kind == dimSrcAddr && cc[0].layout.v4Cap[di] != 0 {
			t.Fatalf("source IPv4 stride table of %d chunks: the trie is not used", cc[0].layout.v4Cap[di])
		}
	}
	srcs := edgeAddrs([]netip.Prefix{mustPrefix("10.0.1.255/32"), mustPrefix("10.8.51.255/32"), mustPrefix("0.0.0.0/0"),
		mustPrefix("20.0.0.0/8"), mustPrefix("::/0"), mustPrefix("::fffe:0:0/95"), mustPrefix("::ffff:0:0/96"),
		mustPrefix("2001:db8::/32"), mustPrefix("10.0.0.0/16")})
	var pkts []Packet
	for _, s := range srcs {
		for _, d := range []string{"10.1.1.1", "192.168.0.1", "2001:db8::1", "::ffff:10.1.1.1"} {
			dst := mustAddr(d)
			pkts = append(pkts, Packet{Src: s, Dst: dst, Protocol: 6, SrcPort: 1, DstPort: 2})
		}
	}
	type change struct {
		rule      int
		src, nsrc []string
	}
	steps := [][]change{
		{{0, []string{"::/0"}, nil}},
		{{1, []string{"10.0.0.0/8"}, []string{"::fffe:0:0/95"}}},
		{{0, []string{"10.0.0.255/32"}, nil}},
		{{5, []string{"::/64", "10.0.1.0/24"}, nil}, {3, []string{"0.0.0.0/0"}, nil}},
		{{0, []string{"::fffe:0:0/95", "20.0.0.0/8"}, nil}, {5, []string{"10.0.5.255/32"}, nil}},
		{{1, []string{"10.0.1.255/32"}, nil}, {3, []string{"10.0.3.255/32"}, nil}},
		{{0, []string{"::/0"}, []string{"::ffff:0:0/95"}}},
	}
	fast := 0
	for si, step := range steps {
		next := cloneRules(rules)
		for _, c := range step {
			r := &next.Tiers[0].Policies[0].Rules[c.rule]
			r.SrcNets, r.NotSrcNets = nil, nil
			for _, s := range c.src {
				r.SrcNets = append(r.SrcNets, mustPrefix(s))
			}
			for _, s := range c.nsrc {
				r.NotSrcNets = append(r.NotSrcNets, mustPrefix(s))
			}
		}
		if e := patchSame(p, next); e != "" {
			t.Fatalf("step %d: %s", si, e)
		}
		np, err := validateWith(next, validator{noWhere: true, prev: p.class.prog})
		if err != nil {
			t.Fatalf("step %d: %v", si, err)
		}
		if _, _, ok := p.class.patchRows(np); ok {
			fast++
		}
		uerr := p.Update(next)
		switch {
		case uerr == nil:
			rules = next
		case !errors.Is(uerr, ErrNeedsReload):
			t.Fatalf("step %d: %v", si, uerr)
		}
		if e := rowsExactErr(p); e != "" {
			t.Fatalf("step %d: rows not exact: %s", si, e)
		}
		for _, pkt := range pkts {
			want, err := Evaluate(rules, nil, pkt)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
				t.Fatalf("step %d (update err %v): %v to %v (-evaluate +kernel):\n%s", si, uerr, pkt.Src, pkt.Dst, diff)
			}
		}
	}
	if fast < len(steps)-1 {
		t.Errorf("only %d of %d updates took the address-row path", fast, len(steps))
	}
}

// TestAttackFreshInPlaceEdits updates with the caller's own Rules edited
// in place between calls (CIDRs, ports and IDs written into the slices
// the previous Update was given): a rule is fresh only if validation
// compares it with copies of what the program in force was made of, not
// with the caller's memory.
func TestAttackFreshInPlaceEdits(t *testing.T) {
	k := newKernel(t)
	g := attackClsGen(7500)
	rules := g.hostCIDRRules(8)
	k.setIPSets(t, g.sets)
	p := k.load(t, rules, Options{ClassifierRules: 1})
	if err := p.Update(rules); err != nil {
		t.Fatal(err)
	}
	pkts := g.hostPackets(120)
	all := allRules(&rules)
	fast := 0
	for step := range 20 {
		for n := 1 + g.r.IntN(2); n > 0; n-- {
			r := all[g.r.IntN(len(all))]
			switch {
			case len(r.SrcNets) > 0 && g.chance(2):
				r.SrcNets[g.r.IntN(len(r.SrcNets))] = cidrPool[g.r.IntN(len(cidrPool))]
			case len(r.NotSrcNets) > 0 && g.chance(2):
				r.NotSrcNets[0] = cidrPool[g.r.IntN(len(cidrPool))]
			case len(r.DstPorts) > 0 && g.chance(2):
				r.DstPorts[0].Last = r.DstPorts[0].First + uint16(g.r.IntN(3))
			default:
				r.ID = g.id()
			}
		}
		if e := patchSame(p, rules); e != "" {
			t.Fatalf("step %d: %s", step, e)
		}
		np, err := validateWith(rules, validator{noWhere: true, prev: p.class.prog})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, ok := p.class.patchRows(np); ok {
			fast++
		}
		if err := p.Update(rules); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		ids := ruleIDs(&rules)
		for _, pkt := range pkts {
			if msg := k.checkRunHits(t, p, ids, pkt, ev.Evaluate(g.sets, pkt)); msg != "" {
				t.Fatalf("step %d, packet %+v: %s", step, pkt, msg)
			}
		}
	}
	if fast < 10 {
		t.Errorf("only %d of 20 updates took the address-row path", fast)
	}
}

// TestPatchRowsAgainstOther: a program validated against another than
// the one in force (here, against one of its own rules, so that its
// changed rule is taken over and not fresh) still has its change found:
// patchRows compares every rule then, and writes what a validation of
// every rule afresh writes.
func TestPatchRowsAgainstOther(t *testing.T) {
	k := newKernel(t)
	const n = 600
	policy := func(action Action) Rules { return midActionPolicy(n, action) }
	p := k.load(t, policy(ActionAllow), Options{})
	if len(p.class.compiled.classes) == 0 {
		t.Fatal("no classified run")
	}
	next := policy(ActionDeny)
	other, err := validateWith(next, validator{noWhere: true})
	if err != nil {
		t.Fatal(err)
	}
	np, err := validateWith(next, validator{noWhere: true, prev: other})
	if err != nil {
		t.Fatal(err)
	}
	if len(np.fresh) != 0 {
		t.Fatalf("fresh %v against a program of the same rules, want none", np.fresh)
	}
	all, err := validateWith(next, validator{noWhere: true})
	if err != nil {
		t.Fatal(err)
	}
	wn, _, okn := p.class.patchRows(np)
	wa, _, oka := p.class.patchRows(all)
	if !okn || !oka {
		t.Fatalf("patchRows ok %v against another program, %v alone", okn, oka)
	}
	for name := range wa {
		if !sameContents(wa[name], wn[name]) || !sameContents(wn[name], wa[name]) {
			t.Errorf("map %s differs against another program from every rule fresh", name)
		}
	}
	if sameContents(p.class.written[p.class.gen][p.class.compiled.classes[0].names[1]], wn[p.class.compiled.classes[0].names[1]]) {
		t.Error("the table is unchanged: the action change was not found")
	}
}
