package polprog

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// bigPolicy returns n rules in four tiers, each rule matching only its own
// source address and destination port (so no two consecutive rules merge
// unless mergeable is set, when they differ only in the source), with
// alternating allow and deny, a pass every 97th rule, tier ends pass, pass,
// pass, deny, and an allow-all profile that pass rules of the last tier reach.
func bigPolicy(n int, mergeable bool) Rules {
	const tiers = 4
	rs := Rules{NoMatchRuleID: 1 << 40, Profiles: []Policy{{Name: "allow-all", Rules: []Rule{{ID: 1 << 41, Action: ActionAllow}}}}}
	per := n / tiers
	for t := 0; t < tiers; t++ {
		tier := Tier{Name: "big", EndAction: EndPass}
		if t == tiers-1 {
			tier.EndAction, tier.EndRuleID = EndDeny, 1<<42
		}
		var rules []Rule
		for i := t * per; i < (t+1)*per; i++ {
			r := bigRule(i, mergeable)
			if i%97 == 0 {
				r.Action = ActionPass
			}
			rules = append(rules, r)
		}
		tier.Policies = []Policy{{Name: "half-1", Rules: rules[:len(rules)/2]}, {Name: "half-2", Rules: rules[len(rules)/2:]}}
		rs.Tiers = append(rs.Tiers, tier)
	}
	return rs
}

func bigRule(i int, mergeable bool) Rule {
	r := Rule{ID: uint64(i + 1), Action: ActionAllow, Protocol: "tcp",
		SrcNets: []netip.Prefix{netip.PrefixFrom(bigAddr(i), 32)}}
	if i%2 == 1 {
		r.Action = ActionDeny
	}
	if !mergeable {
		r.DstPorts = []PortRange{Port(bigPort(i))}
	}
	return r
}

func bigAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}) }
func bigPort(i int) uint16     { return uint16(1000 + i%5000) }

// TestSplitting loads 20,000-rule policies, which need several parts when
// linear (and one or, forced, several when classified), and
// sends a packet that matches each rule (so every split has matches on both
// sides) plus packets that match none, comparing the kernel with Evaluate.
func TestSplitting(t *testing.T) {
	const n = 20000
	k := newKernel(t)
	for _, tc := range []struct {
		name      string
		mergeable bool
		opts      Options
		minParts  int
	}{
		{"inline", false, Options{ClassifierRules: -1}, 4},
		{"merged", true, Options{ClassifierRules: -1}, 1},
		{"inline-small-parts", false, Options{SplitJumps: 3000, ClassifierRules: -1}, 12},
		{"classified", false, Options{}, 1},
		{"classified-small-parts", false, Options{ClassifierRules: 100, SplitJumps: 30}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules := bigPolicy(n, tc.mergeable)
			c, err := Compile(rules, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Parts) < tc.minParts {
				t.Fatalf("%d parts, want at least %d", len(c.Parts), tc.minParts)
			}
			slots, free := k.allocSlots(t, len(c.Parts))
			defer free()
			p, err := c.Load(k.maps, slots)
			if err != nil {
				t.Fatalf("load: %.2000v", err)
			}
			defer p.Close()
			for i, prog := range p.Programs() {
				info, err := prog.Info()
				if err != nil {
					t.Fatal(err)
				}
				verified, _ := info.VerifiedInstructions()
				t.Logf("part %d: %d instructions, %d jumps, verifier processed %d", i, c.Parts[i].Stats.Instructions, c.Parts[i].Stats.Jumps, verified)
			}
			ev, err := NewEvaluator(rules)
			if err != nil {
				t.Fatal(err)
			}
			check := func(pkt Packet) Decision {
				want := ev.Evaluate(nil, pkt)
				got := k.run(t, p, pkt)
				if diff := cmp.Diff(want, got, decisionCmp); diff != "" {
					t.Fatalf("packet %+v (-evaluate +kernel):\n%s", pkt, diff)
				}
				return got
			}
			base := Packet{Dst: mustAddr("10.200.0.1"), SrcPort: 5555, Protocol: 6}
			// Rules next to every split, and a sample of the rest: the
			// evaluator is linear, so checking all 20,000 is slow.
			near := map[int]bool{}
			first := 0
			for _, part := range c.Parts {
				for d := -8; d < 8; d++ {
					near[first+d] = true
				}
				first += part.Rules
			}
			if first != n+1 {
				t.Fatalf("parts hold %d rules, want %d", first, n+1)
			}
			for i := 0; i < n; i++ {
				if !near[i] && i%11 != 0 {
					continue
				}
				pkt := base
				pkt.Src, pkt.DstPort = bigAddr(i), bigPort(i)
				got := check(pkt)
				if i%97 != 0 && got.RuleID != uint64(i+1) {
					t.Fatalf("packet for rule %d decided by %d", i+1, got.RuleID)
				}
			}
			for _, pkt := range []Packet{
				{Src: mustAddr("10.250.0.1"), Dst: base.Dst, Protocol: 6},
				{Src: bigAddr(5), Dst: base.Dst, Protocol: 17, DstPort: bigPort(5)},
			} {
				check(pkt)
			}
		})
	}
}
