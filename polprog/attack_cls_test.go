package polprog

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// oddAddrs6 are IPv6 addresses at the edges of the families: ::, ::1,
// IPv4-compatible, inside ::fffe:0:0/95 next to the IPv4-mapped block,
// with ffff:a00:1 low bits, and the top of the space.
var oddAddrs6 = []netip.Addr{
	mustAddr("::"), mustAddr("::1"), mustAddr("::a00:1"), mustAddr("::fffe:a00:1"),
	mustAddr("::fffe:ffff:ffff"), mustAddr("2001:db8::ffff:a00:1"), mustAddr("::ffff:0:0:a00:1"),
	mustAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), mustAddr("::fffd:ffff:ffff"),
}

// attackClsGen is newGen with the odd IPv6 addresses in its pools and
// extra IP sets of both families, so that runs name more than eight
// sets per field.
func attackClsGen(seed uint64) *gen {
	g := newGen(seed)
	g.addrs6 = append(g.addrs6, oddAddrs6...)
	g.addrs = append(g.addrs, mustAddr("0.0.0.0"), mustAddr("255.255.255.255"), mustAddr("10.0.0.1"))
	for i := 0; i < 10; i++ {
		id := g.r.Uint64()
		var s IPSet
		for j := 1 + g.r.IntN(3); j > 0; j-- {
			s.Nets = append(s.Nets, g.prefix())
		}
		for j := g.r.IntN(3); j > 0; j-- {
			a := g.addr()
			if g.chance(2) {
				a = g.addr6()
			}
			s.NamedPorts = append(s.NamedPorts, NamedPortMember{Addr: a, Protocol: g.proto(), Port: g.port()})
		}
		g.sets[id] = s
		g.setIDs = append(g.setIDs, id)
	}
	return g
}

// TestAttackClassifierRandom holds random policies with long tiers,
// every run classified (ClassifierRules 1), to Evaluate on packets from
// pools with odd IPv6 addresses and IPv4-mapped packet addresses.
func TestAttackClassifierRandom(t *testing.T) {
	k := newKernel(t)
	st := newDiffStats()
	seeds := 120
	if testing.Short() {
		seeds = 20
	}
	for seed := uint64(0); seed < uint64(seeds); seed++ {
		g := attackClsGen(seed + 7000)
		rules := Rules{NoMatchRuleID: g.id(), Tiers: g.tiers(1+g.r.IntN(3), 2, 40)}
		if g.chance(2) {
			rules.Profiles = g.tiers(1, 2, 30)[0].Policies
		}
		if g.chance(3) {
			rules.ForHost = true
			rules.PreDNATTiers = g.tiers(1+g.r.IntN(2), 3, 30)
			rules.ApplyOnForwardTiers = g.tiers(g.r.IntN(2), 3, 20)
		}
		opts := Options{ClassifierRules: 1 + g.r.IntN(3)}
		switch seed % 4 {
		case 1:
			opts.SplitJumps = 40 + g.r.IntN(60)
			opts.MaxParts = MaxParts
		case 2:
			opts.MergeThreshold = -1
		case 3:
			opts.FallThroughRules = 1
		}
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatalf("seed %d: evaluator: %v", seed, err)
		}
		c, err := Compile(rules, opts)
		for opts.SplitJumps != 0 && err != nil && opts.SplitJumps < DefaultSplitJumps {
			opts.SplitJumps += 40
			c, err = Compile(rules, opts)
		}
		if err != nil {
			t.Fatalf("seed %d: compile (%+v): %v", seed, opts, err)
		}
		st.classified += classifiedRuns(c)
		k.setIPSets(t, g.sets)
		slots, free := k.allocSlots(t, len(c.Parts))
		p, err := c.Load(k.maps, slots)
		if err != nil {
			free()
			t.Fatalf("seed %d: load (%+v): %v", seed, opts, err)
		}
		for i := 0; i < 150; i++ {
			pkt := g.packet()
			switch g.r.IntN(8) {
			case 0:
				pkt.Src = netip.AddrFrom16(g.addr().As16()) // IPv4-mapped
			case 1:
				pkt.Dst = oddAddrs6[g.r.IntN(len(oddAddrs6))]
			case 2:
				pkt.PreNATDst = oddAddrs6[g.r.IntN(len(oddAddrs6))]
			}
			want := ev.Evaluate(g.sets, pkt)
			got := k.run(t, p, pkt)
			if diff := cmp.Diff(want, got, decisionCmp); diff != "" {
				p.Close()
				free()
				t.Fatalf("seed %d (options %+v, %d parts, %d classified runs), packet %d %+v: kernel differs from Evaluate (-evaluate +kernel):\n%s",
					seed, opts, len(c.Parts), classifiedRuns(c), i, pkt, diff)
			}
			st.cases++
			st.verdicts[got.Verdict]++
		}
		p.Close()
		free()
	}
	t.Logf("%d cases, %d classified runs, verdicts %v", st.cases, st.classified, st.verdicts)
}

// TestAttackClassifierThenInline puts a classified tier of log rules (both
// port alternatives, CIDRs of both families) before a short tier that is
// checked inline, with CIDRs of both families and negations: the inline
// checks need regFamily and the tagged words after the classifier's loop
// and its helper calls.
func TestAttackClassifierThenInline(t *testing.T) {
	k := newKernel(t)
	set4, set6 := uint64(11), uint64(12)
	sets := IPSetMembers{
		set4: {NamedPorts: []NamedPortMember{{Addr: mustAddr("10.0.0.1"), Protocol: 6, Port: 8080}}, Nets: []netip.Prefix{mustPrefix("10.0.0.0/8")}},
		set6: {NamedPorts: []NamedPortMember{{Addr: mustAddr("2001:db8::ffff:a00:1"), Protocol: 6, Port: 8080}}, Nets: []netip.Prefix{mustPrefix("::/0")}},
	}
	var logs []Rule
	for i := 0; i < 70; i++ {
		r := Rule{ID: uint64(1000 + i), Action: ActionLog, DstPorts: []PortRange{Port(80)}, DstNamedPorts: []uint64{set4, set6}}
		switch i % 3 {
		case 0:
			r.SrcNets = []netip.Prefix{mustPrefix("::/0")}
		case 1:
			r.NotSrcNets = []netip.Prefix{mustPrefix("::fffe:0:0/95"), mustPrefix("10.0.0.0/8")}
		}
		logs = append(logs, r)
	}
	inline := []Rule{
		{ID: 1, Action: ActionDeny, SrcNets: []netip.Prefix{mustPrefix("::/0")}, DstNets: []netip.Prefix{mustPrefix("0.0.0.0/0")}},
		{ID: 2, Action: ActionAllow, NotSrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}, DstNets: []netip.Prefix{mustPrefix("2001:db8::/32")}},
		{ID: 3, Action: ActionAllow, SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}, NotDstNets: []netip.Prefix{mustPrefix("::/0")}},
		{ID: 4, Action: ActionAllow, SrcIPSets: []uint64{set6}, DstIPSets: []uint64{set4}},
	}
	for _, forHost := range []bool{false, true} {
		rules := Rules{NoMatchRuleID: 9, ForHost: forHost, Tiers: []Tier{
			{Name: "cls", EndAction: EndPass, Policies: []Policy{{Name: "p", Rules: logs}}},
			{Name: "inline", EndAction: EndDeny, EndRuleID: 5, Policies: []Policy{{Name: "p", Rules: inline}}},
		}}
		if forHost {
			rules.PreDNATTiers = []Tier{{Name: "pre", EndAction: EndPass, Policies: []Policy{{Name: "p", Rules: logs}}}}
		}
		c, err := Compile(rules, Options{ClassifierRules: 64})
		if err != nil {
			t.Fatal(err)
		}
		if classifiedRuns(c) == 0 {
			t.Fatal("no classified run")
		}
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		p := k.loadCompiled(t, c)
		k.setIPSets(t, sets)
		addrs := append([]netip.Addr{mustAddr("10.0.0.1"), mustAddr("192.168.0.1"), netip.AddrFrom16(mustAddr("10.0.0.1").As16())}, oddAddrs6...)
		n := 0
		for _, src := range addrs {
			for _, dst := range addrs {
				for _, port := range []uint16{80, 8080, 443} {
					pkt := Packet{Src: src, Dst: dst, PreNATDst: dst, SrcPort: 1, DstPort: port, PreNATDstPort: port, Protocol: 6, SrcIsHost: n%2 == 0}
					n++
					want := ev.Evaluate(sets, pkt)
					if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
						t.Fatalf("forHost %v, packet %+v (-evaluate +kernel):\n%s", forHost, pkt, diff)
					}
				}
			}
		}
	}
}

// TestAttackUpdateProfilePass changes a classified profile rule from
// allow to pass (which denies in the profiles) with Update.
func TestAttackUpdateProfilePass(t *testing.T) {
	k := newKernel(t)
	mk := func(a Action) Rules {
		var rs []Rule
		for i := 0; i < 4; i++ {
			rs = append(rs, Rule{ID: uint64(10 + i), Action: ActionAllow, DstPorts: []PortRange{Port(uint16(80 + i))}})
		}
		rs[1].Action = a
		return Rules{NoMatchRuleID: 9, Profiles: []Policy{{Name: "p", Rules: rs}}}
	}
	p := k.load(t, mk(ActionAllow), Options{ClassifierRules: 1})
	next := mk(ActionPass)
	err := p.Update(next)
	pkt := Packet{Src: mustAddr("10.0.0.1"), Dst: mustAddr("10.0.0.2"), DstPort: 81, Protocol: 6}
	want, _ := Evaluate(next, nil, pkt)
	if err != nil {
		t.Logf("update: %v", err)
		want, _ = Evaluate(mk(ActionAllow), nil, pkt)
	}
	if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
		t.Fatalf("after update to pass (err %v) (-evaluate +kernel):\n%s", err, diff)
	}
}

// TestAttackUpdateFamilies updates small random policies whose every run is
// classified, one rule at a time: CIDRs that change family (among them
// ::/0 and ::fffe:0:0/95, which cover the IPv4-mapped block in the trie),
// negations, IDs and actions, and IP set contents between updates. After
// each update the kernel must agree with Evaluate of the rules it now has
// (the old ones when Update refused).
func TestAttackUpdateFamilies(t *testing.T) {
	k := newKernel(t)
	odd := []netip.Prefix{mustPrefix("::/0"), mustPrefix("::fffe:0:0/95"), mustPrefix("0.0.0.0/0"),
		mustPrefix("10.0.0.0/8"), mustPrefix("::a00:0/104"), mustPrefix("2001:db8::ffff:a00:0/120")}
	updated, refused := 0, 0
	for seed := uint64(0); seed < 25; seed++ {
		g := attackClsGen(seed + 9100)
		rules := Rules{NoMatchRuleID: g.id(), Tiers: g.tiers(1+g.r.IntN(2), 2, 30)}
		if g.chance(2) {
			rules.Profiles = g.tiers(1, 2, 20)[0].Policies
		}
		if len(allRules(&rules)) == 0 {
			continue
		}
		opts := Options{ClassifierRules: 1}
		c, err := Compile(rules, opts)
		if err != nil {
			t.Fatalf("seed %d: compile: %v", seed, err)
		}
		k.setIPSets(t, g.sets)
		slots, free := k.allocSlots(t, len(c.Parts))
		p, err := c.Load(k.maps, slots)
		if err != nil {
			free()
			t.Fatalf("seed %d: load: %v", seed, err)
		}
		cur := rules
		for step := 0; step < 8; step++ {
			next := cloneRules(cur)
			all := allRules(&next)
			r := all[g.r.IntN(len(all))]
			switch g.r.IntN(5) {
			case 0:
				r.SrcNets = []netip.Prefix{odd[g.r.IntN(len(odd))]}
			case 1:
				r.NotDstNets = []netip.Prefix{odd[g.r.IntN(len(odd))], g.prefix()}
			case 2:
				r.Action, r.ID = g.action(), g.id()
			case 3:
				if len(r.SrcNets) > 0 {
					r.SrcNets = []netip.Prefix{g.prefix()}
				} else {
					r.ID = g.id()
				}
			default:
				// Change an IP set's members instead of a rule.
				id := g.setIDs[g.r.IntN(len(g.setIDs))]
				s := g.sets[id]
				s.Nets = []netip.Prefix{odd[g.r.IntN(len(odd))]}
				g.sets[id] = s
				k.setIPSets(t, g.sets)
			}
			err := p.Update(next)
			if err == nil {
				cur = next
				updated++
			} else {
				refused++
			}
			ev, eerr := NewEvaluator(cur)
			if eerr != nil {
				t.Fatal(eerr)
			}
			for i := 0; i < 60; i++ {
				pkt := g.packetFor(all[g.r.IntN(len(all))])
				if g.chance(4) {
					pkt.Src = oddAddrs6[g.r.IntN(len(oddAddrs6))]
				}
				want := ev.Evaluate(g.sets, pkt)
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					p.Close()
					free()
					t.Fatalf("seed %d step %d (update err %v), packet %+v (-evaluate +kernel):\n%s", seed, step, err, pkt, diff)
				}
			}
		}
		p.Close()
		free()
	}
	t.Logf("%d updates applied, %d refused", updated, refused)
}

// TestAttackManySets names twelve IP sets and twelve named-port sets of
// both families (more than eight per field) in one run of rules, with
// negations, log rules with both port alternatives and a pass.
func TestAttackManySets(t *testing.T) {
	k := newKernel(t)
	sets := IPSetMembers{}
	addrs := append([]netip.Addr{mustAddr("10.0.0.1"), mustAddr("10.0.0.2"), mustAddr("192.168.1.1"), mustAddr("0.0.0.0")}, oddAddrs6...)
	nets := []netip.Prefix{mustPrefix("::/0"), mustPrefix("::fffe:0:0/95"), mustPrefix("0.0.0.0/0"), mustPrefix("10.0.0.0/31"),
		mustPrefix("::a00:0/120"), mustPrefix("2001:db8::/32"), mustPrefix("192.168.0.0/16"), mustPrefix("::/1"),
		mustPrefix("10.0.0.2/32"), mustPrefix("::1/128"), mustPrefix("ffff::/16"), mustPrefix("0.0.0.0/1")}
	for i := range 12 {
		a := addrs[i%len(addrs)]
		sets[uint64(100+i)] = IPSet{Nets: []netip.Prefix{nets[i]},
			NamedPorts: []NamedPortMember{{Addr: a, Protocol: 6, Port: uint16(8000 + i%3)}, {Addr: addrs[(i+5)%len(addrs)], Protocol: 17, Port: 53}}}
	}
	var rs []Rule
	for i := range 40 {
		r := Rule{ID: uint64(500 + i), Action: []Action{ActionLog, ActionLog, ActionDeny, ActionAllow, ActionPass}[i%5]}
		s := uint64(100 + i%12)
		o := uint64(100 + (i*7+3)%12)
		switch i % 6 {
		case 0:
			r.SrcIPSets = []uint64{s}
		case 1:
			r.NotDstIPSets = []uint64{s, o}
		case 2:
			r.DstNamedPorts, r.DstPorts = []uint64{s, o}, []PortRange{Port(80)}
		case 3:
			r.SrcNamedPorts, r.NotDstIPSets = []uint64{s}, []uint64{o}
		case 4:
			r.NotSrcNamedPorts, r.DstNets = []uint64{o}, []netip.Prefix{nets[i%12]}
		default:
			r.SrcIPSets, r.DstIPSets, r.SrcPorts, r.SrcNamedPorts = []uint64{s}, []uint64{o}, []PortRange{{First: 50, Last: 60}}, []uint64{o}
		}
		rs = append(rs, r)
	}
	for _, forHost := range []bool{false, true} {
		rules := Rules{NoMatchRuleID: 9, ForHost: forHost, Tiers: []Tier{
			{Name: "a", EndAction: EndPass, Policies: []Policy{{Name: "p", Rules: rs[:20]}}},
			{Name: "b", EndAction: EndDeny, EndRuleID: 7, Policies: []Policy{{Name: "p", Rules: rs[20:]}}},
		}, Profiles: []Policy{{Name: "pr", Rules: rs}}}
		if forHost {
			rules.PreDNATTiers = []Tier{{Name: "pre", EndAction: EndPass, Policies: []Policy{{Name: "p", Rules: rs[10:30]}}}}
		}
		for _, opts := range []Options{{ClassifierRules: 1}, {ClassifierRules: 1, SplitJumps: 60, MaxParts: MaxParts}} {
			c, err := Compile(rules, opts)
			if err != nil {
				t.Fatalf("compile %+v: %v", opts, err)
			}
			ev, err := NewEvaluator(rules)
			if err != nil {
				t.Fatal(err)
			}
			p := k.loadCompiled(t, c)
			k.setIPSets(t, sets)
			n := 0
			for _, src := range addrs {
				for _, dst := range addrs {
					for _, pp := range [][2]uint16{{55, 8000}, {8001, 80}, {53, 53}, {8002, 8001}} {
						proto := uint8(6)
						if pp[0] == 53 {
							proto = 17
						}
						pkt := Packet{Src: src, Dst: dst, PreNATDst: addrs[n%len(addrs)], SrcPort: pp[0], DstPort: pp[1], PreNATDstPort: pp[1], Protocol: proto, DstIsHost: n%3 == 0}
						n++
						want := ev.Evaluate(sets, pkt)
						if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
							t.Fatalf("forHost %v opts %+v (%d parts, %d classified), packet %+v (-evaluate +kernel):\n%s", forHost, opts, len(c.Parts), classifiedRuns(c), pkt, diff)
						}
					}
				}
			}
			t.Logf("forHost %v opts %+v: %d parts, %d classified runs, %d packets", forHost, opts, len(c.Parts), classifiedRuns(c), n)
		}
	}
}

// TestAttackUpdateTrieOverflow replaces every source CIDR of a classified
// run twice. Writing the idle generation's new prefixes before deleting
// its stale ones overflowed the trie (a capacity per generation) and
// left the Program needing a reload; the stale ones now go first (see
// TestAttackCIDRReplaceAll). The kernel must agree with Evaluate of the
// rules it reports to have.
func TestAttackUpdateTrieOverflow(t *testing.T) {
	k := newKernel(t)
	const n = 64
	mk := func(f func(i int) netip.Prefix) Rules {
		var rs []Rule
		for i := range n {
			rs = append(rs, Rule{ID: uint64(1 + i), Action: ActionAllow, SrcNets: []netip.Prefix{f(i)}})
		}
		return Rules{NoMatchRuleID: 999, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 998, Policies: []Policy{{Name: "p", Rules: rs}}}}}
	}
	pfx := func(b, i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(b), byte(i), 1}), 32)
	}
	a := mk(func(i int) netip.Prefix { return pfx(0, i) })
	b := mk(func(i int) netip.Prefix { return pfx(1, i) })
	c := mk(func(i int) netip.Prefix { return pfx(2, i) })
	// d reuses only A's first half: its prefixes are all in the trie's
	// generation 0 already, so writing it needs no new entry.
	d := mk(func(i int) netip.Prefix { return pfx(0, i%(n/2)) })
	p := k.load(t, a, Options{ClassifierRules: 1, MergeThreshold: -1})
	cur := a
	check := func(step string, err error) {
		t.Helper()
		t.Logf("%s: update: %v", step, err)
		for bb := range 3 {
			for i := range n {
				pkt := Packet{Src: pfx(bb, i).Addr(), Dst: mustAddr("10.9.9.9"), Protocol: 6, DstPort: 80}
				want, _ := Evaluate(cur, nil, pkt)
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					t.Fatalf("%s (update err %v), packet from %v (-evaluate +kernel):\n%s", step, err, pkt.Src, diff)
				}
			}
		}
	}
	for _, st := range []struct {
		name  string
		rules Rules
	}{{"a->b", b}, {"b->c", c}, {"->d", d}} {
		err := p.Update(st.rules)
		if err == nil {
			cur = st.rules
		}
		check(st.name, err)
	}
}
