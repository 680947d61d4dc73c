package polprog

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// cloneRules copies rules deeply enough that changing one rule of the copy
// leaves rules alone.
func cloneRules(rules Rules) Rules {
	tiers := func(ts []Tier) []Tier {
		out := slices.Clone(ts)
		for i := range out {
			out[i].Policies = slices.Clone(out[i].Policies)
			for j := range out[i].Policies {
				out[i].Policies[j].Rules = slices.Clone(out[i].Policies[j].Rules)
			}
		}
		return out
	}
	rules.Tiers, rules.PreDNATTiers, rules.ApplyOnForwardTiers = tiers(rules.Tiers), tiers(rules.PreDNATTiers), tiers(rules.ApplyOnForwardTiers)
	rules.Profiles = tiers([]Tier{{Policies: rules.Profiles}})[0].Policies
	return rules
}

// allRules returns pointers to every rule of rules.
func allRules(rules *Rules) []*Rule {
	var all []*Rule
	for _, ts := range [][]Tier{rules.Tiers, rules.PreDNATTiers, rules.ApplyOnForwardTiers, {{Policies: rules.Profiles}}} {
		for i := range ts {
			for j := range ts[i].Policies {
				for k := range ts[i].Policies[j].Rules {
					all = append(all, &ts[i].Policies[j].Rules[k])
				}
			}
		}
	}
	return all
}

// mutateRule changes, in place, the rule of rules whose ID is id (a random
// one when none has it): its action and ID, its source CIDR, a
// destination port or the protocol, as an operator editing one rule would.
func (g *gen) mutateRule(rules *Rules, id uint64) *Rule {
	all := allRules(rules)
	r := all[g.r.IntN(len(all))]
	if i := slices.IndexFunc(all, func(r *Rule) bool { return id != 0 && r.ID == id }); i >= 0 {
		r = all[i]
	}
	switch g.r.IntN(4) {
	case 0:
		r.Action, r.ID = g.action(), g.id()
	case 1:
		r.SrcNets = []netip.Prefix{g.prefix()}
	case 2:
		r.DstPorts = []PortRange{Port(g.port())}
	default:
		if r.ICMP == nil && r.NotICMP == nil {
			r.Protocol = protoName(g.proto())
		}
	}
	return r
}

// packetFor returns a random packet moved towards matching r: its source,
// destination, ports and protocol taken from r's positive fields.
func (g *gen) packetFor(r *Rule) Packet {
	p := g.packet()
	if len(r.SrcNets) > 0 {
		p.Src = r.SrcNets[0].Masked().Addr()
	}
	if len(r.DstNets) > 0 {
		p.Dst = r.DstNets[0].Masked().Addr()
		p.PreNATDst = netip.Addr{}
	}
	if len(r.SrcPorts) > 0 {
		p.SrcPort = r.SrcPorts[0].First
	}
	if len(r.DstPorts) > 0 {
		p.DstPort = r.DstPorts[0].First
		p.PreNATDstPort = p.DstPort
	}
	if r.Protocol != "" {
		if n, err := ParseProtocol(r.Protocol); err == nil && n != 1 {
			p.Protocol = n
		}
	}
	return p
}

// TestUpdateDifferential changes one rule at a time of 10,000-rule random
// policies (the one deciding a random packet) and, after each Update,
// holds the kernel to Evaluate of the rules the program now has (the new
// ones, or the old ones when Update asked for a reload).
func TestUpdateDifferential(t *testing.T) {
	k := newKernel(t)
	updates, packets := 20, 150
	if testing.Short() {
		updates = 5
	}
	var n updateCounts
	for seed := uint64(0); seed < 2; seed++ {
		g := newGen(100 + seed)
		p, rules := k.loadLarge(t, g, seed == 1)
		c := updateRounds(t, k, p, g, rules, updates, packets, func(before *Evaluator, next *Rules) []Packet {
			// Change the rule that decides a random packet, and send
			// that packet, packets aimed at the rule and random ones.
			aim := g.packet()
			mutated := g.mutateRule(next, before.Evaluate(g.sets, aim).RuleID)
			pkts := []Packet{aim}
			for range packets / 2 {
				pkts = append(pkts, g.packetFor(mutated))
			}
			return pkts
		})
		n.applied, n.reloads, n.seen = n.applied+c.applied, n.reloads+c.reloads, n.seen+c.seen
	}
	t.Logf("%d updates applied, %d needed a reload; after %d some packet was decided otherwise", n.applied, n.reloads, n.seen)
	if n.seen < n.applied/5 {
		t.Errorf("only %d of %d updates changed a decision: the test does not see updates", n.seen, n.applied)
	}
	if n.applied < (n.applied+n.reloads)/2 {
		t.Errorf("only %d of %d one-rule updates applied without a reload", n.applied, n.applied+n.reloads)
	}
}

// TestUpdateNeedsReload checks that Update refuses, and changes nothing,
// when the code would change, and accepts unchanged rules.
func TestUpdateNeedsReload(t *testing.T) {
	k := newKernel(t)
	rules := benchPolicy(1000, benchShapes[2])
	p := k.load(t, rules, Options{})
	if err := p.Update(rules); err != nil {
		t.Fatalf("unchanged rules: %v", err)
	}
	// A new dimension (ICMP) changes the code.
	next := cloneRules(rules)
	next.Tiers[0].Policies[0].Rules[3] = Rule{ID: 99, Action: ActionAllow, Protocol: "icmp", ICMP: &ICMPMatch{Type: 8}}
	if err := p.Update(next); !errors.Is(err, ErrNeedsReload) {
		t.Fatalf("new dimension: %v, want ErrNeedsReload", err)
	}
	// So does a change of the linear rules of a small policy.
	small := benchPolicy(10, benchShapes[2])
	ps := k.load(t, small, Options{})
	next = cloneRules(small)
	next.Tiers[0].Policies[0].Rules[0].ID = 12345
	if err := ps.Update(next); !errors.Is(err, ErrNeedsReload) {
		t.Fatalf("linear rule: %v, want ErrNeedsReload", err)
	}
	pkt := benchPackets["last-match"]
	for _, tc := range []struct {
		p     *Program
		rules Rules
	}{{p, rules}, {ps, small}} {
		want, err := Evaluate(tc.rules, nil, pkt)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, k.run(t, tc.p, pkt), decisionCmp); diff != "" {
			t.Errorf("after a refused update (-evaluate +kernel):\n%s", diff)
		}
	}
	var nilProg *Program
	if err := nilProg.Update(rules); err == nil {
		t.Error("nil Program: no error")
	}
}

// TestUpdateAtomic runs a packet on every CPU while Update switches
// between two policies of two classified tiers. Under A the first tier
// passes and the second allows; under B the first allows and the second
// denies. Both allow; only a mix (A's first tier with B's second) denies.
func TestUpdateAtomic(t *testing.T) {
	k := newKernel(t)
	const n = 600
	pkt := Packet{Src: mustAddr("10.9.9.9"), Dst: mustAddr("10.200.0.1"), Protocol: 6, SrcPort: 5555, DstPort: 80}
	policy := func(first, second Action) Rules {
		tier := func(name string, a Action, id uint64) Tier {
			var rs []Rule
			for i := 0; i < n; i++ {
				rs = append(rs, benchRule(i, "tcp", true))
			}
			rs[n/2] = Rule{ID: id, Action: a, SrcNets: []netip.Prefix{mustPrefix("10.9.9.0/24")}}
			return Tier{Name: name, EndAction: EndDeny, EndRuleID: id + 1, Policies: []Policy{{Name: "p", Rules: rs}}}
		}
		return Rules{NoMatchRuleID: 1 << 40, Tiers: []Tier{tier("one", first, 1<<30), tier("two", second, 1<<31)}}
	}
	a, b := policy(ActionPass, ActionAllow), policy(ActionAllow, ActionDeny)
	updateAtomic(t, k, a, b, pkt)
}

// TestUpdateAtomicCIDR is TestUpdateAtomic with CIDR changes: under A the
// first tier's pass and the second tier's allow hold the packet's source,
// under B the first tier's allow after the pass does. Only A's first tier
// with B's second denies.
func TestUpdateAtomicCIDR(t *testing.T) {
	k := newKernel(t)
	const n = 600
	pkt := Packet{Src: mustAddr("10.9.9.9"), Dst: mustAddr("10.200.0.1"), Protocol: 6, SrcPort: 5555, DstPort: 80}
	hit, miss := []netip.Prefix{mustPrefix("10.9.9.0/24")}, []netip.Prefix{mustPrefix("192.168.77.0/24")}
	policy := func(pass, allowOne, allowTwo []netip.Prefix) Rules {
		tier := func(name string, id uint64, special []Rule) Tier {
			var rs []Rule
			for i := 0; i < n; i++ {
				rs = append(rs, benchRule(i, "tcp", true))
			}
			copy(rs[n/2:], special)
			return Tier{Name: name, EndAction: EndDeny, EndRuleID: id + 1, Policies: []Policy{{Name: "p", Rules: rs}}}
		}
		return Rules{NoMatchRuleID: 1 << 40, Tiers: []Tier{
			tier("one", 1<<30, []Rule{{ID: 1 << 30, Action: ActionPass, SrcNets: pass}, {ID: 1<<30 + 2, Action: ActionAllow, SrcNets: allowOne}}),
			tier("two", 1<<31, []Rule{{ID: 1 << 31, Action: ActionAllow, SrcNets: allowTwo}}),
		}}
	}
	a, b := policy(hit, miss, hit), policy(miss, hit, miss)
	if d, _ := Evaluate(Rules{NoMatchRuleID: 1 << 40, Tiers: []Tier{a.Tiers[0], b.Tiers[1]}}, nil, pkt); d.Verdict != VerdictDeny {
		t.Fatalf("the mix decides %+v", d)
	}
	updateAtomic(t, k, a, b, pkt)
}

// updateAtomic loads a, switches between a and b (both allowing pkt, one
// part, two classified runs) while every CPU runs pkt, and fails on any
// run not allowed.
func updateAtomic(t *testing.T, k *kernel, a, b Rules, pkt Packet) {
	for _, rules := range []Rules{a, b} {
		if d, _ := Evaluate(rules, nil, pkt); d.Verdict != VerdictAllow {
			t.Fatalf("policy decides %+v", d)
		}
	}
	c, err := Compile(a, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Parts) != 1 || len(c.classes) != 2 {
		t.Fatalf("%d parts, %d classified runs; want 1 and 2", len(c.Parts), len(c.classes))
	}
	p := k.loadCompiled(t, c)
	s := stateOf(pkt)
	for i := range k.state {
		k.state[i] = s
	}
	if err := k.maps.State.Put(uint32(0), k.state); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var runs, mixed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < max(2, k.ncpu); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ret, _, err := p.Programs()[0].Benchmark(packetData, 1, nil)
				if err != nil {
					t.Error(err)
					return
				}
				runs.Add(1)
				if ret != stubAllowRC+1 {
					mixed.Add(1)
				}
			}
		}()
	}
	// A broken switch (one generation read per classified run, not per
	// part) shows up in a few runs of some thousand updates.
	updates := 3000
	if testing.Short() {
		updates = 300
	}
	for u := 0; u < updates; u++ {
		rules := b
		if u%2 == 1 {
			rules = a
		}
		if err := p.Update(rules); err != nil {
			t.Fatalf("update %d: %v", u, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d runs during %d updates, %d not allowed", runs.Load(), updates, mixed.Load())
	if mixed.Load() != 0 {
		t.Errorf("%d of %d runs saw a half-applied policy", mixed.Load(), runs.Load())
	}
}

// TestUpdateCIDRDifferential changes the CIDRs (positive ones kept
// positive, negations freely, both families, /0 among them) of a few
// rules at a time of a 10,000-rule random policy and holds the kernel to
// Evaluate after each Update, which must take the address-row path (no
// compile) for most.
func TestUpdateCIDRDifferential(t *testing.T) {
	k := newKernel(t)
	updates, packets := 30, 200
	if testing.Short() {
		updates = 8
	}
	g := newGen(300)
	p, rules := k.loadLarge(t, g, false)
	n := updateRounds(t, k, p, g, rules, updates, packets, func(before *Evaluator, next *Rules) []Packet {
		all := allRules(next)
		var pkts []Packet
		for range 1 + g.r.IntN(3) {
			aim, r := g.aimedRule(before, all)
			for _, nets := range []*[]netip.Prefix{&r.SrcNets, &r.DstNets, &r.NotSrcNets, &r.NotDstNets} {
				if !g.chance(2) {
					continue
				}
				switch positive := nets == &r.SrcNets || nets == &r.DstNets; {
				case positive && len(*nets) == 0:
				case !positive && g.chance(3):
					*nets = nil
				default:
					*nets = g.prefixes()
				}
			}
			pkts = append(pkts, aim, g.packetFor(r))
		}
		return pkts
	})
	t.Logf("%d of %d updates without a compile", n.patched, updates)
	if n.patched < updates/2 {
		t.Errorf("only %d of %d updates took the map-only path", n.patched, updates)
	}
}
