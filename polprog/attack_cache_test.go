package polprog

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// ruleIDs returns every ID rules can count: rule IDs, tier end IDs and the
// no-match ID, without 0.
func ruleIDs(rules *Rules) []uint64 {
	var ids []uint64
	for _, r := range allRules(rules) {
		ids = append(ids, r.ID)
	}
	for _, ts := range [][]Tier{rules.Tiers, rules.PreDNATTiers, rules.ApplyOnForwardTiers} {
		for _, t := range ts {
			ids = append(ids, t.EndRuleID)
		}
	}
	ids = append(ids, rules.NoMatchRuleID)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) > 0 && ids[0] == 0 {
		ids = ids[1:]
	}
	return ids
}

// hitCounts reads the kernel's counters of ids.
func (k *kernel) hitCounts(tb testing.TB, ids []uint64) map[uint64]uint64 {
	tb.Helper()
	out := map[uint64]uint64{}
	for _, id := range ids {
		out[id] = k.hits(tb, id)
	}
	return out
}

// checkRunHits runs pkt through p and holds its verdict, rule ID, log flag
// and the counters it bumps to Evaluate's decision want.
func (k *kernel) checkRunHits(tb testing.TB, p *Program, ids []uint64, pkt Packet, want Decision) string {
	tb.Helper()
	before := k.hitCounts(tb, ids)
	got := k.run(tb, p, pkt)
	after := k.hitCounts(tb, ids)
	if diff := cmp.Diff(want, got, decisionCmp); diff != "" {
		return "decision (-evaluate +kernel):\n" + diff
	}
	wantHits := map[uint64]uint64{}
	for _, id := range want.Hits {
		if id != 0 {
			wantHits[id]++
		}
	}
	gotHits := map[uint64]uint64{}
	for _, id := range ids {
		if d := after[id] - before[id]; d != 0 {
			gotHits[id] = d
		}
	}
	if diff := cmp.Diff(wantHits, gotHits); diff != "" {
		return "hits (-evaluate +kernel):\n" + diff
	}
	return ""
}

// TestAttackCacheHits runs each packet three times through random policies
// whose runs are all classified, so the second and third runs take the
// outcome cache, and holds the counters each run bumps (the deciding rule,
// log rules, tier ends) to Evaluate's Hits as well as the decision.
func TestAttackCacheHits(t *testing.T) {
	k := newKernel(t)
	for seed := uint64(0); seed < 12; seed++ {
		g := attackClsGen(seed + 7700)
		rules := Rules{NoMatchRuleID: g.id(), Tiers: g.tiers(1+g.r.IntN(3), 2, 25)}
		if g.chance(2) {
			rules.Profiles = g.tiers(1, 2, 15)[0].Policies
		}
		if len(allRules(&rules)) == 0 {
			continue
		}
		k.setIPSets(t, g.sets)
		c, err := Compile(rules, Options{ClassifierRules: 1})
		if err != nil {
			t.Fatalf("seed %d: compile: %v", seed, err)
		}
		if len(c.classes) == 0 {
			t.Fatalf("seed %d: no classified run", seed)
		}
		slots, free := k.allocSlots(t, len(c.Parts))
		p, err := c.Load(k.maps, slots)
		if err != nil {
			free()
			t.Fatalf("seed %d: load: %v", seed, err)
		}
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		ids := ruleIDs(&rules)
		all := allRules(&rules)
		for i := 0; i < 40; i++ {
			pkt := g.packet()
			if g.chance(2) {
				pkt = g.packetFor(all[g.r.IntN(len(all))])
			}
			want := ev.Evaluate(g.sets, pkt)
			for run := range 3 {
				if msg := k.checkRunHits(t, p, ids, pkt, want); msg != "" {
					p.Close()
					free()
					t.Fatalf("seed %d, run %d, packet %+v: %s", seed, run, pkt, msg)
				}
			}
		}
		p.Close()
		free()
	}
}

// TestAttackCacheSetChurn changes IP set members (sl_ipsets only, no
// Update) between runs of packets whose outcomes are cached: a packet
// whose membership changed must get another class and so another
// outcome, and one whose membership is the same may keep its own.
func TestAttackCacheSetChurn(t *testing.T) {
	k := newKernel(t)
	for seed := uint64(0); seed < 6; seed++ {
		g := attackClsGen(seed + 8800)
		var rs []Rule
		for range 60 {
			r := g.rule()
			// Every rule names sets, so that set churn decides.
			switch g.r.IntN(4) {
			case 0:
				r.SrcIPSets = []uint64{g.setIDs[g.r.IntN(len(g.setIDs))]}
			case 1:
				r.NotDstIPSets = []uint64{g.setIDs[g.r.IntN(len(g.setIDs))]}
			case 2:
				r.DstNamedPorts = []uint64{g.setIDs[g.r.IntN(len(g.setIDs))]}
			}
			rs = append(rs, r)
		}
		rules := Rules{NoMatchRuleID: g.id(), Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: g.id(),
			Policies: []Policy{{Name: "p", Rules: rs}}}}}
		if _, err := validate(rules, 0); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		k.setIPSets(t, g.sets)
		p := k.load(t, rules, Options{ClassifierRules: 1})
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		ids := ruleIDs(&rules)
		var pkts []Packet
		for range 40 {
			pkt := g.packetFor(&rs[g.r.IntN(len(rs))])
			pkts = append(pkts, pkt)
		}
		for step := range 10 {
			if step > 0 {
				// Move packets' addresses in and out of sets.
				for range 1 + g.r.IntN(3) {
					id := g.setIDs[g.r.IntN(len(g.setIDs))]
					s := g.sets[id]
					pkt := pkts[g.r.IntN(len(pkts))]
					switch g.r.IntN(3) {
					case 0:
						s.Nets = append(slices.Clone(s.Nets), netip.PrefixFrom(pkt.Src, pkt.Src.BitLen()))
					case 1:
						s.Nets = []netip.Prefix{netip.PrefixFrom(pkt.Dst, pkt.Dst.BitLen())}
					default:
						s.NamedPorts = append(slices.Clone(s.NamedPorts),
							NamedPortMember{Addr: pkt.Dst, Protocol: pkt.Protocol, Port: pkt.DstPort})
					}
					g.sets[id] = s
				}
				k.setIPSets(t, g.sets)
			}
			for _, pkt := range pkts {
				want := ev.Evaluate(g.sets, pkt)
				for run := range 2 {
					if msg := k.checkRunHits(t, p, ids, pkt, want); msg != "" {
						t.Fatalf("seed %d, step %d, run %d, packet %+v: %s", seed, step, run, pkt, msg)
					}
				}
			}
		}
	}
}

// TestAttackCacheTwoPrograms loads one Compiled twice (two interfaces'
// programs) and updates only one: the other must keep deciding by the
// old rules although both start at the same generation value and their
// caches hold the same keys. Then the updated one is closed and the
// policy loaded again (a restarted agent), which must decide by the
// rules it was loaded with.
func TestAttackCacheTwoPrograms(t *testing.T) {
	k := newKernel(t)
	g := attackClsGen(9900)
	var rs []Rule
	for i := range 40 {
		// Ports and protocols differ too, so the run is classified,
		// not merged.
		rs = append(rs, Rule{ID: uint64(100 + i), Action: ActionAllow, Protocol: []string{"tcp", "udp"}[i%2],
			SrcNets:  []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)},
			DstPorts: []PortRange{{First: uint16(80 + i%3), Last: 90}}})
	}
	rules := Rules{NoMatchRuleID: 7, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 8,
		Policies: []Policy{{Name: "p", Rules: rs}}}}}
	c, err := Compile(rules, Options{ClassifierRules: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.classes) == 0 {
		t.Fatal("no classified run")
	}
	a, b := k.loadCompiled(t, c), k.loadCompiled(t, c)
	pkts := []Packet{}
	for i := range 40 {
		pkts = append(pkts, Packet{Src: netip.AddrFrom4([4]byte{10, byte(i), 1, 1}), Dst: mustAddr("10.200.0.1"),
			Protocol: uint8([]int{6, 17}[i%2]), SrcPort: 1000, DstPort: 80})
	}
	check := func(when string, p *Program, rules Rules) {
		t.Helper()
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		for _, pkt := range pkts {
			want := ev.Evaluate(g.sets, pkt)
			for run := range 2 {
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					t.Fatalf("%s, run %d, packet %+v (-evaluate +kernel):\n%s", when, run, pkt, diff)
				}
			}
		}
	}
	check("a before", a, rules)
	check("b before", b, rules)
	next := cloneRules(rules)
	for i := range next.Tiers[0].Policies[0].Rules {
		r := &next.Tiers[0].Policies[0].Rules[i]
		switch i {
		case 3, 17:
			r.SrcNets = []netip.Prefix{mustPrefix("10.250.0.0/16")}
		case 4, 30:
			r.Action = ActionDeny
		}
	}
	if err := a.Update(next); err != nil {
		t.Fatal(err)
	}
	check("a after", a, next)
	check("b after a's update", b, rules)
	a.Close()
	again := k.loadCompiled(t, c)
	check("reloaded", again, rules)
	check("b after a's close", b, rules)
	if err := again.Update(next); err != nil && !errors.Is(err, ErrNeedsReload) {
		t.Fatal(err)
	}
	check("reloaded and updated", again, next)
}

// TestAttackCacheHostUpdates holds host endpoint policies (pre-DNAT,
// normal and forward tiers, profiles), every run classified and some
// split into parts, to Evaluate's decisions and counters on packets run
// twice (the second from the cache), across updates of rules (IDs,
// actions, CIDRs, ports, protocols) and of IP set members.
func TestAttackCacheHostUpdates(t *testing.T) {
	k := newKernel(t)
	applied, refused := 0, 0
	for seed := uint64(0); seed < 16; seed++ {
		g := attackClsGen(seed + 4400)
		rules := Rules{NoMatchRuleID: g.id(), Tiers: g.tiers(1+g.r.IntN(2), 2, 20), ForHost: true,
			PreDNATTiers: g.tiers(1+g.r.IntN(2), 3, 15), ApplyOnForwardTiers: g.tiers(g.r.IntN(2), 3, 15)}
		if g.chance(2) {
			rules.Profiles = g.tiers(1, 2, 15)[0].Policies
		}
		if len(allRules(&rules)) == 0 {
			continue
		}
		opts := Options{ClassifierRules: 1}
		if seed%2 == 1 {
			opts.SplitJumps, opts.MaxParts = 60, MaxParts
		}
		c, err := Compile(rules, opts)
		for opts.SplitJumps != 0 && err != nil && opts.SplitJumps < DefaultSplitJumps {
			opts.SplitJumps += 40
			c, err = Compile(rules, opts)
		}
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
		for step := range 6 {
			if step > 0 {
				next := cloneRules(rules)
				ev, err := NewEvaluator(rules)
				if err != nil {
					t.Fatal(err)
				}
				for range 1 + g.r.IntN(2) {
					g.mutateRule(&next, ev.Evaluate(g.sets, g.packet()).RuleID)
				}
				if g.chance(2) {
					id := g.setIDs[g.r.IntN(len(g.setIDs))]
					s := g.sets[id]
					s.Nets = g.prefixes()
					g.sets[id] = s
					k.setIPSets(t, g.sets)
				}
				switch err := p.Update(next); {
				case err == nil:
					rules = next
					applied++
				case errors.Is(err, ErrNeedsReload):
					refused++
				default:
					t.Fatalf("seed %d step %d: %v", seed, step, err)
				}
			}
			ev, err := NewEvaluator(rules)
			if err != nil {
				t.Fatal(err)
			}
			ids := ruleIDs(&rules)
			all := allRules(&rules)
			for i := 0; i < 40; i++ {
				pkt := g.packet()
				if g.chance(2) {
					pkt = g.packetFor(all[g.r.IntN(len(all))])
				}
				want := ev.Evaluate(g.sets, pkt)
				for run := range 2 {
					if msg := k.checkRunHits(t, p, ids, pkt, want); msg != "" {
						p.Close()
						free()
						t.Fatalf("seed %d step %d (%d parts), run %d, packet %+v: %s", seed, step, len(c.Parts), run, pkt, msg)
					}
				}
			}
		}
		p.Close()
		free()
	}
	t.Logf("%d updates applied, %d refused", applied, refused)
}

// TestAttackCacheEviction sends more distinct classes than the outcome
// cache holds (cacheEntries), so that the LRU evicts, then sends the first
// ones again: evicted or kept, each outcome must be Evaluate's.
func TestAttackCacheEviction(t *testing.T) {
	k := newKernel(t)
	var rs []Rule
	for i := range 300 {
		rs = append(rs, Rule{ID: uint64(10 + i), Action: []Action{ActionAllow, ActionDeny}[i%2], Protocol: []string{"tcp", "udp"}[i%2],
			SrcPorts: []PortRange{Port(uint16(1000 + 3*i))}, DstPorts: []PortRange{{First: uint16(100 + 7*i), Last: uint16(100 + 7*i + 3)}}})
	}
	rules := Rules{NoMatchRuleID: 7, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 8,
		Policies: []Policy{{Name: "p", Rules: rs}}}}}
	c, err := Compile(rules, Options{ClassifierRules: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.classes) == 0 {
		t.Fatal("no classified run")
	}
	p := k.loadCompiled(t, c)
	ev, err := NewEvaluator(rules)
	if err != nil {
		t.Fatal(err)
	}
	// Every (source port class, destination port class) pair is its own
	// cache key; one in ten matches a rule.
	var pkts []Packet
	for n := 0; len(pkts) < 3*cacheEntries/2; n++ {
		a, b := n%300, (n*7+n/300)%300
		if n%10 == 0 {
			b = a
		}
		pkts = append(pkts, Packet{Src: mustAddr("10.0.0.1"), Dst: mustAddr("10.0.0.2"), Protocol: []uint8{6, 17}[a%2],
			SrcPort: uint16(1000 + 3*a), DstPort: uint16(100 + 7*b)})
	}
	for _, pass := range []int{0, 1} {
		for i, pkt := range pkts {
			if pass == 1 && i%7 != 0 {
				continue
			}
			if diff := cmp.Diff(ev.Evaluate(nil, pkt), k.run(t, p, pkt), decisionCmp); diff != "" {
				t.Fatalf("pass %d, packet %d %+v (-evaluate +kernel):\n%s", pass, i, pkt, diff)
			}
		}
		if pass == 0 {
			var key [cacheKeySize]byte
			var val [cacheValueSize]byte
			n := 0
			for it := p.class.lookups[cacheMapName].Iterate(); it.Next(&key, &val); {
				n++
			}
			t.Logf("%d packets, %d cached outcomes", len(pkts), n)
			if n < cacheEntries/2 {
				t.Fatalf("only %d cached outcomes: the cache did not fill", n)
			}
		}
	}
}
