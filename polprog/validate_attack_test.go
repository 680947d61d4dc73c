package polprog

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"testing"
)

// Attacks on validation against a previous program (validator.prev): a
// differential test against fresh validation over random Rules (valid
// and not), random edits, chains of programs and callers scribbling over
// what they passed, with a check that no earlier program changes; the
// memory a chain of programs holds; and Update driven by in-place edits.

func atkDeepRule(r Rule) Rule {
	c := r
	c.SrcNets, c.NotSrcNets = cloneKeepNil(r.SrcNets), cloneKeepNil(r.NotSrcNets)
	c.DstNets, c.NotDstNets = cloneKeepNil(r.DstNets), cloneKeepNil(r.NotDstNets)
	c.SrcIPSets, c.NotSrcIPSets = cloneKeepNil(r.SrcIPSets), cloneKeepNil(r.NotSrcIPSets)
	c.DstIPSets, c.NotDstIPSets = cloneKeepNil(r.DstIPSets), cloneKeepNil(r.NotDstIPSets)
	c.SrcPorts, c.NotSrcPorts = cloneKeepNil(r.SrcPorts), cloneKeepNil(r.NotSrcPorts)
	c.DstPorts, c.NotDstPorts = cloneKeepNil(r.DstPorts), cloneKeepNil(r.NotDstPorts)
	c.SrcNamedPorts, c.NotSrcNamedPorts = cloneKeepNil(r.SrcNamedPorts), cloneKeepNil(r.NotSrcNamedPorts)
	c.DstNamedPorts, c.NotDstNamedPorts = cloneKeepNil(r.DstNamedPorts), cloneKeepNil(r.NotDstNamedPorts)
	if r.ICMP != nil {
		m := *r.ICMP
		c.ICMP = &m
	}
	if r.NotICMP != nil {
		m := *r.NotICMP
		c.NotICMP = &m
	}
	return c
}

// cloneKeepNil is slices.Clone keeping nil and empty apart.
func cloneKeepNil[T any](s []T) []T {
	if s == nil {
		return nil
	}
	return append(make([]T, 0, len(s)), s...)
}

func atkDeep(rules Rules) Rules {
	c := cloneRules(rules)
	for _, r := range allRules(&c) {
		*r = atkDeepRule(*r)
	}
	return c
}

// atkScribble overwrites, in place, every list element and ICMP match of
// rules, as a caller reusing its buffers would.
func atkScribble(rules *Rules) {
	p := mustPrefix("203.0.113.0/24")
	for _, r := range allRules(rules) {
		for _, l := range [][]netip.Prefix{r.SrcNets, r.NotSrcNets, r.DstNets, r.NotDstNets} {
			for i := range l {
				l[i] = p
			}
		}
		for _, l := range [][]uint64{r.SrcIPSets, r.NotSrcIPSets, r.DstIPSets, r.NotDstIPSets,
			r.SrcNamedPorts, r.NotSrcNamedPorts, r.DstNamedPorts, r.NotDstNamedPorts} {
			for i := range l {
				l[i] = 0xdead
			}
		}
		for _, l := range [][]PortRange{r.SrcPorts, r.NotSrcPorts, r.DstPorts, r.NotDstPorts} {
			for i := range l {
				l[i] = PortRange{First: 4242, Last: 4243}
			}
		}
		for _, m := range []*ICMPMatch{r.ICMP, r.NotICMP} {
			if m != nil {
				m.Type, m.Code, m.HasCode = 77, 77, !m.HasCode
			}
		}
		// Also the scalar fields (a Rule is a value, so this cannot
		// reach a program, but costs nothing).
		r.ID, r.Protocol = r.ID+1, "udplite"
	}
}

type atkGen struct{ r *rand.Rand }

var atkProtos = []string{"", "", "", "tcp", "TCP", "6", "06", "icmp", "ICMP", "1", "icmpv6", "ICMPv6", "58", "udp", "17", "sctp", "bogus", "256", "-1"}

var atkPrefixes = []netip.Prefix{
	mustPrefix("10.0.0.0/8"),
	mustPrefix("10.1.7.7/16"), // unmasked
	mustPrefix("10.1.0.0/16"),
	mustPrefix("0.0.0.0/0"),
	mustPrefix("fd00::/64"),
	mustPrefix("fd00::1/64"),          // unmasked
	mustPrefix("::ffff:10.0.0.0/104"), // 4-in-6: invalid
	mustPrefix("::ffff:0:0/96"),       // 4-in-6: invalid
	mustPrefix("::ffff:0:0/95"),       // IPv6: valid
	mustPrefix("::ffff:1.2.3.4/95"),   // unmasked, masks to ::fffe:0:0/95? valid
	mustPrefix("::/0"),
	{}, // invalid
	netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), 33),     // invalid bits
	netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), -1),     // invalid bits
	netip.PrefixFrom(netip.MustParseAddr("fe80::1%eth0"), 64), // zone (stripped)
	netip.PrefixFrom(netip.MustParseAddr("fe80::"), 64),
}

var atkICMPs = []*ICMPMatch{nil, nil, {Type: 8}, {Type: 8, Code: 3}, {Type: 8, Code: 3, HasCode: true}, {Type: 8, HasCode: true}, {Type: 0}}

func (g *atkGen) pick(n int) int { return g.r.IntN(n) }

func (g *atkGen) nets() []netip.Prefix {
	switch g.pick(5) {
	case 0:
		return nil
	case 1:
		return []netip.Prefix{}
	}
	out := make([]netip.Prefix, 1+g.pick(2))
	for i := range out {
		// mostly valid
		if g.pick(40) == 0 {
			out[i] = atkPrefixes[g.pick(len(atkPrefixes))]
		} else {
			out[i] = atkPrefixes[[]int{0, 1, 2, 3, 4, 5, 8, 9, 10, 14, 15}[g.pick(11)]]
		}
	}
	return out
}

func (g *atkGen) ids() []uint64 {
	switch g.pick(5) {
	case 0, 1:
		return nil
	case 2:
		return []uint64{}
	}
	out := make([]uint64, 1+g.pick(2))
	for i := range out {
		out[i] = uint64(g.pick(4))
	}
	return out
}

func (g *atkGen) ports() []PortRange {
	switch g.pick(5) {
	case 0, 1:
		return nil
	case 2:
		return []PortRange{}
	}
	out := make([]PortRange, 1+g.pick(2))
	for i := range out {
		a, b := uint16(g.pick(5)), uint16(g.pick(5))
		if g.pick(40) != 0 && a > b {
			a, b = b, a
		}
		out[i] = PortRange{First: a, Last: b}
	}
	return out
}

func (g *atkGen) icmp() *ICMPMatch {
	m := atkICMPs[g.pick(len(atkICMPs))]
	if m == nil {
		return nil
	}
	c := *m
	return &c
}

func (g *atkGen) rule() Rule {
	r := Rule{ID: uint64(g.pick(4)), Action: Action(1 + g.pick(4))}
	if g.pick(100) == 0 {
		r.Action = Action(g.pick(6))
	}
	if g.pick(10) == 0 {
		r.Protocol = atkProtos[g.pick(len(atkProtos))]
	} else {
		r.Protocol = []string{"", "tcp", "TCP", "6", "icmp", "ICMP", "1", "icmpv6", "58"}[g.pick(9)]
	}
	if g.pick(8) == 0 {
		r.NotProtocol = atkProtos[g.pick(len(atkProtos))]
	}
	icmpOK := map[string]bool{"icmp": true, "ICMP": true, "1": true, "icmpv6": true, "58": true}[r.Protocol]
	if g.pick(2) == 0 && (icmpOK || g.pick(10) == 0) {
		r.ICMP = g.icmp()
	}
	if g.pick(3) == 0 && (icmpOK || g.pick(10) == 0) {
		r.NotICMP = g.icmp()
	}
	r.SrcNets, r.NotSrcNets, r.DstNets, r.NotDstNets = g.nets(), g.nets(), g.nets(), g.nets()
	r.SrcIPSets, r.NotSrcIPSets, r.DstIPSets, r.NotDstIPSets = g.ids(), g.ids(), g.ids(), g.ids()
	r.SrcPorts, r.NotSrcPorts, r.DstPorts, r.NotDstPorts = g.ports(), g.ports(), g.ports(), g.ports()
	r.SrcNamedPorts, r.NotSrcNamedPorts, r.DstNamedPorts, r.NotDstNamedPorts = g.ids(), g.ids(), g.ids(), g.ids()
	return r
}

// tweak changes one field of r in place (or replaces a list), maybe to
// something equivalent, maybe to something invalid.
func (g *atkGen) tweak(r *Rule) {
	switch g.pick(14) {
	case 0:
		r.ID = uint64(g.pick(4))
	case 1:
		r.Action = Action(1 + g.pick(4))
	case 2:
		r.Protocol = atkProtos[g.pick(len(atkProtos))]
	case 3:
		r.NotProtocol = atkProtos[g.pick(len(atkProtos))]
	case 4:
		if r.ICMP != nil && g.pick(2) == 0 {
			// in place: Code with or without HasCode
			switch g.pick(3) {
			case 0:
				r.ICMP.Code++
			case 1:
				r.ICMP.HasCode = !r.ICMP.HasCode
			default:
				r.ICMP.Type++
			}
		} else {
			r.ICMP = g.icmp()
		}
	case 5:
		if r.NotICMP != nil && g.pick(2) == 0 {
			r.NotICMP.Code++
		} else {
			r.NotICMP = g.icmp()
		}
	case 6:
		l := []*[]netip.Prefix{&r.SrcNets, &r.NotSrcNets, &r.DstNets, &r.NotDstNets}[g.pick(4)]
		if len(*l) > 0 && g.pick(2) == 0 {
			(*l)[g.pick(len(*l))] = atkPrefixes[g.pick(len(atkPrefixes))]
		} else {
			*l = g.nets()
		}
	case 7:
		l := []*[]PortRange{&r.SrcPorts, &r.NotSrcPorts, &r.DstPorts, &r.NotDstPorts}[g.pick(4)]
		if len(*l) > 0 && g.pick(2) == 0 {
			(*l)[g.pick(len(*l))].Last = uint16(g.pick(5))
		} else {
			*l = g.ports()
		}
	case 8:
		l := []*[]uint64{&r.SrcIPSets, &r.NotSrcIPSets, &r.DstIPSets, &r.NotDstIPSets,
			&r.SrcNamedPorts, &r.NotSrcNamedPorts, &r.DstNamedPorts, &r.NotDstNamedPorts}[g.pick(8)]
		if len(*l) > 0 && g.pick(2) == 0 {
			(*l)[g.pick(len(*l))]++
		} else {
			*l = g.ids()
		}
	case 9:
		// nil <-> empty of some list
		l := []*[]uint64{&r.SrcIPSets, &r.DstNamedPorts}[g.pick(2)]
		if *l == nil {
			*l = []uint64{}
		} else if len(*l) == 0 {
			*l = nil
		}
	case 10:
		// an unmasked form of a kept prefix
		if len(r.SrcNets) > 0 && r.SrcNets[0].IsValid() {
			a := r.SrcNets[0].Addr().As16()
			a[15] |= 1
			addr := netip.AddrFrom16(a)
			if r.SrcNets[0].Addr().Is4() {
				addr = addr.Unmap()
			}
			r.SrcNets[0] = netip.PrefixFrom(addr, r.SrcNets[0].Bits())
		}
	case 11:
		// same protocol number, another spelling
		alike := map[string][]string{"tcp": {"TCP", "6", "Tcp"}, "TCP": {"tcp", "6"}, "6": {"tcp", "06"},
			"icmp": {"ICMP", "1"}, "ICMP": {"icmp", "1"}, "1": {"icmp", "01"}, "icmpv6": {"58", "ICMPv6"}, "58": {"icmpv6"}}
		if s := alike[r.Protocol]; s != nil {
			r.Protocol = s[g.pick(len(s))]
		}
	default:
		*r = g.rule()
	}
}

func (g *atkGen) tiers(max int) []Tier {
	var out []Tier
	for i := range g.pick(max + 1) {
		t := Tier{Name: fmt.Sprintf("t%d", g.pick(3)), EndAction: EndAction(g.pick(2)), EndRuleID: uint64(i)}
		for range g.pick(3) {
			p := Policy{Name: fmt.Sprintf("p%d", g.pick(3))}
			for range g.pick(6) {
				p.Rules = append(p.Rules, g.rule())
			}
			t.Policies = append(t.Policies, p)
		}
		out = append(out, t)
	}
	return out
}

func (g *atkGen) rules() Rules {
	r := Rules{Tiers: g.tiers(3), ForHost: g.pick(2) == 0, NoMatchRuleID: uint64(g.pick(2))}
	for range g.pick(3) {
		p := Policy{Name: "prof"}
		for range g.pick(4) {
			p.Rules = append(p.Rules, g.rule())
		}
		r.Profiles = append(r.Profiles, p)
	}
	if r.ForHost {
		r.PreDNATTiers, r.ApplyOnForwardTiers = g.tiers(2), g.tiers(2)
	}
	return r
}

// edit changes rules in place: rule tweaks, and the structure.
func (g *atkGen) edit(rules *Rules) {
	for range 1 + g.pick(3) {
		all := allRules(rules)
		switch op := g.pick(12); {
		case op < 6 && len(all) > 0:
			g.tweak(all[g.pick(len(all))])
		case op == 6:
			rules.ForHost = !rules.ForHost
		case op == 7 && len(rules.Tiers) > 1:
			i, j := g.pick(len(rules.Tiers)), g.pick(len(rules.Tiers))
			rules.Tiers[i], rules.Tiers[j] = rules.Tiers[j], rules.Tiers[i]
		case op == 8 && len(rules.Tiers) > 0:
			// a rule moves to another place (delete + insert)
			t := &rules.Tiers[g.pick(len(rules.Tiers))]
			if len(t.Policies) > 0 {
				p := &t.Policies[g.pick(len(t.Policies))]
				if len(p.Rules) > 0 {
					i := g.pick(len(p.Rules))
					r := p.Rules[i]
					p.Rules = slices.Delete(p.Rules, i, i+1)
					dst := &rules.Profiles
					if len(*dst) == 0 {
						*dst = append(*dst, Policy{Name: "moved"})
					}
					q := &(*dst)[g.pick(len(*dst))]
					q.Rules = slices.Insert(q.Rules, g.pick(len(q.Rules)+1), r)
				}
			}
		case op == 9:
			// a tier added or removed, in any kind
			ts := []*[]Tier{&rules.Tiers, &rules.PreDNATTiers, &rules.ApplyOnForwardTiers}[g.pick(3)]
			if len(*ts) > 0 && g.pick(2) == 0 {
				*ts = slices.Delete(*ts, 0, 1)
			} else {
				*ts = slices.Insert(*ts, 0, g.tiers(1)...)
			}
		case op == 10 && len(rules.Profiles) > 0 && len(rules.Tiers) > 0:
			// a profile's rules become a tier's
			rules.Tiers[0].Policies = append(rules.Tiers[0].Policies, rules.Profiles[0])
			rules.Profiles = rules.Profiles[1:]
		case op == 11:
			// duplicate a rule in place: aliasing lists of two Rules
			if len(all) > 1 {
				*all[g.pick(len(all))] = *all[g.pick(len(all))]
			}
		}
	}
}

func atkErrString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestValidateReuseRandom: validateWith(prev) against validate,
// over chains of random edits, with and without noWhere, with a small
// rule limit sometimes.
func TestValidateReuseRandom(t *testing.T) {
	seeds := 400
	var valid, invalid, reusedN, allN, tooMany int
	defer func() {
		t.Logf("rounds valid %d invalid %d (too many %d); rules reused %d of %d", valid, invalid, tooMany, reusedN, allN)
	}()
	for seed := range seeds {
		g := &atkGen{r: rand.New(rand.NewPCG(uint64(seed), 7))}
		rules := g.rules()
		maxRules := 0
		if g.pick(4) == 0 {
			maxRules = 1 + g.pick(20)
		}
		noWhere := g.pick(2) == 0
		prev, err := validateWith(atkDeep(rules), validator{max: maxRules, noWhere: noWhere})
		if err != nil {
			continue
		}
		var older []*program
		var olderWant []*program
		var callers []Rules
		for round := range 8 {
			g.edit(&rules)
			want, werr := validateWith(atkDeep(rules), validator{max: maxRules, noWhere: noWhere})
			got, gerr := validateWith(rules, validator{max: maxRules, noWhere: noWhere, prev: prev})
			if atkErrString(werr) != atkErrString(gerr) {
				t.Fatalf("seed %d round %d: fresh error %q, reused error %q", seed, round, atkErrString(werr), atkErrString(gerr))
			}
			if werr != nil {
				invalid++
				if errors.Is(werr, ErrTooManyRules) {
					tooMany++
				}
				continue
			}
			valid++
			reusedN, allN = reusedN+got.takenOver, allN+got.ruleCount
			if diff := programDiff(want, got); diff != "" {
				t.Fatalf("seed %d round %d: reusing differs from validating (-fresh +reused):\n%s", seed, round, diff)
			}
			if e := freshErr(nil, want) + freshErr(prev, got); e != "" {
				t.Fatalf("seed %d round %d: %s", seed, round, e)
			}
			if !noWhere {
				if diff := programDiffWhere(want, got); diff != "" {
					t.Fatalf("seed %d round %d: where differs:\n%s", seed, round, diff)
				}
			}
			// The caller edits what it passed: no program may change.
			callers = append(callers, rules)
			older = append(older, got)
			olderWant = append(olderWant, want)
			rules = atkDeep(rules)
			prev = got
		}
		for _, c := range callers {
			atkScribble(&c)
		}
		for i := range older {
			if diff := programDiff(olderWant[i], older[i]); diff != "" {
				t.Fatalf("seed %d: program %d changed after the caller's edits or later validations:\n%s", seed, i, diff)
			}
		}
	}
}

func programDiffWhere(want, got *program) string {
	var w, g []string
	want.eachRule(func(_ int, r *rule) { w = append(w, r.where) })
	got.eachRule(func(_ int, r *rule) { g = append(g, r.where) })
	if !slices.Equal(w, g) {
		return fmt.Sprintf("fresh %q\nreused %q", w, g)
	}
	return ""
}

// TestValidateReuseCallerEdits: prev validated from the very Rules
// (same lists) that are then edited in place and validated again, the
// way TestUpdateCallerEdits drives Update, many rounds.
func TestValidateReuseCallerEdits(t *testing.T) {
	for seed := range 300 {
		g := &atkGen{r: rand.New(rand.NewPCG(uint64(seed), 11))}
		rules := g.rules()
		prev, err := validate(rules, 0)
		if err != nil {
			continue
		}
		prevRules := atkDeep(rules)
		for round := range 10 {
			snapPrev, err := validate(prevRules, 0)
			if err != nil {
				t.Fatal(err)
			}
			g.edit(&rules) // in place: the lists prev was validated from
			if diff := programDiff(snapPrev, prev); diff != "" {
				t.Fatalf("seed %d round %d: the caller's in-place edit changed a program:\n%s", seed, round, diff)
			}
			want, werr := validate(atkDeep(rules), 0)
			got, gerr := validateWith(rules, validator{prev: prev, noWhere: true})
			if atkErrString(werr) != atkErrString(gerr) {
				// where is in error messages: compare with noWhere
				want2, werr2 := validateWith(atkDeep(rules), validator{noWhere: true})
				_ = want2
				if atkErrString(werr2) != atkErrString(gerr) {
					t.Fatalf("seed %d round %d: fresh error %q, reused error %q", seed, round, atkErrString(werr2), atkErrString(gerr))
				}
			}
			if werr != nil {
				continue
			}
			if diff := programDiff(want, got); diff != "" {
				t.Fatalf("seed %d round %d: reusing differs (-fresh +reused):\n%s", seed, round, diff)
			}
			if e := freshErr(prev, got); e != "" {
				t.Fatalf("seed %d round %d: %s", seed, round, e)
			}
			prev, prevRules = got, atkDeep(rules)
		}
	}
}

// TestUpdateICMPEdits: the caller edits, in place, the ICMP
// match of a rule of the Rules the program was loaded from, then of the
// Rules it passed to Update, and updates each time: the program must
// follow (it keeps no ICMPMatch of the caller's).
func TestUpdateICMPEdits(t *testing.T) {
	k := newKernel(t)
	var rs []Rule
	for i := range 100 {
		rs = append(rs, Rule{ID: uint64(i + 1), Action: ActionAllow, Protocol: "icmp",
			SrcNets: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24)},
			ICMP:    &ICMPMatch{Type: uint8(i % 50)}})
	}
	rules := Rules{Tiers: []Tier{{Name: "t", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}, NoMatchRuleID: 1 << 41}
	p := k.load(t, rules, Options{ClassifierRules: 1, MergeThreshold: -1})
	pkt := func(typ, code uint8) Packet {
		return Packet{Src: mustAddr("10.1.7.1"), Dst: mustAddr("10.9.9.9"), Protocol: 1, ICMPType: typ, ICMPCode: code}
	}
	k.agree(t, p, rules, nil, pkt(7, 0))
	r := &rules.Tiers[0].Policies[0].Rules[7]
	for round, edit := range []func(){
		func() { r.ICMP.Type = 30 },
		func() { r.ICMP.Code, r.ICMP.HasCode = 4, true },
		func() { r.ICMP.Code = 5 },
		func() { r.ICMP.HasCode = false },
		func() { r.ICMP.Code = 9 }, // no HasCode: matches alike
		func() { r.ICMP.Type = 7 },
	} {
		edit()
		if err := p.Update(rules); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, pk := range []Packet{pkt(7, 0), pkt(30, 4), pkt(30, 5), pkt(30, 0), pkt(7, 9)} {
			k.agree(t, p, rules, nil, pk)
		}
	}
}

// TestUpdateProfilesPass: profile rules with pass (kept as
// deny) through Updates that change them in place.
func TestUpdateProfilesPass(t *testing.T) {
	k := newKernel(t)
	var rs []Rule
	for i := range 60 {
		a := ActionAllow
		if i%3 == 0 {
			a = ActionPass
		}
		rs = append(rs, Rule{ID: uint64(i + 1), Action: a, Protocol: "tcp",
			SrcNets: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24)}})
	}
	rules := Rules{Profiles: []Policy{{Name: "prof", Rules: rs}}, NoMatchRuleID: 1 << 41}
	p := k.load(t, rules, Options{ClassifierRules: 1, MergeThreshold: -1})
	pk := func(i int) Packet {
		return Packet{Src: netip.AddrFrom4([4]byte{10, 1, byte(i), 1}), Dst: mustAddr("10.9.9.9"), Protocol: 6, SrcPort: 1, DstPort: 2}
	}
	for round, edit := range []func(){
		func() { rs[3].Action = ActionDeny },
		func() { rs[3].Action = ActionPass },
		func() { rs[4].Action = ActionPass },
		func() { rs[4].Action = ActionAllow; rs[6].Action = ActionDeny },
	} {
		edit()
		if err := p.Update(rules); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for i := range 8 {
			k.agree(t, p, rules, nil, pk(i))
		}
	}
}

// TestValidateReuseRetention: a rule taken over keeps its match (a
// substring of the encoding string of the validation it was last
// validated in) and its lists (in that validation's arena chunks). A
// program that holds rules last validated in many different validations
// pins each of their whole strings and chunks: here round i re-validates
// (new IDs) every rule but the last i, so the final program of N rules
// pins N strings of up to N encodings each, O(N^2) bytes, where a fresh
// validation of the same Rules holds O(N).
func TestValidateReuseRetention(t *testing.T) {
	const n = 600
	var rs []Rule
	for i := range n {
		rs = append(rs, Rule{ID: uint64(i + 1), Action: ActionAllow, Protocol: "tcp",
			SrcNets:  []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)},
			DstPorts: []PortRange{{First: 80, Last: 80}}})
	}
	rules := Rules{Tiers: []Tier{{Name: "t", Policies: []Policy{{Name: "p", Rules: rs}}}}}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	build := func(reuse bool) *program {
		prev, err := validate(rules, 0)
		if err != nil {
			t.Fatal(err)
		}
		for round := 1; round < n; round++ {
			for i := range n - round {
				rs[i].ID += 1 << 32
			}
			v := validator{noWhere: true}
			if reuse {
				v.prev = prev
			}
			if prev, err = validateWith(rules, v); err != nil {
				t.Fatal(err)
			}
		}
		return prev
	}
	base := heap()
	fresh := build(false)
	freshBytes := heap() - base
	runtime.KeepAlive(fresh)
	fresh = nil
	base = heap()
	reused := build(true)
	reusedBytes := heap() - base
	runtime.KeepAlive(reused)
	if diff := programDiff(validateFresh(t, rules), reused); diff != "" {
		t.Fatalf("differs:\n%s", diff)
	}
	t.Logf("program of %d rules: fresh holds %d bytes, the reused chain %d bytes (%.0fx)", n, freshBytes, reusedBytes, float64(reusedBytes)/float64(freshBytes))
	if reusedBytes > 10*freshBytes {
		t.Errorf("a program validated against previous ones holds %d bytes, %.0fx what a fresh validation of the same Rules holds (%d)",
			reusedBytes, float64(reusedBytes)/float64(freshBytes), freshBytes)
	}
}

func validateFresh(t *testing.T, rules Rules) *program {
	t.Helper()
	p, err := validate(rules, 0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRawSlice holds rawSlice to the reflect.Copy version it
// replaced: items shorter (zero-filled) and longer (cut) than size, none,
// and size 0.
func TestRawSlice(t *testing.T) {
	old := func(items []string, size int) any {
		v := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), len(items), len(items))
		for i, it := range items {
			reflect.Copy(v.Index(i), reflect.ValueOf([]byte(it)))
		}
		return v.Interface()
	}
	for _, tc := range []struct {
		items []string
		size  int
	}{
		{nil, 4}, {[]string{}, 4}, {[]string{"abcd"}, 4}, {[]string{"ab", "abcdef", "", "wxyz"}, 4},
		{[]string{"a", "b"}, 0}, {nil, 0}, {[]string{string(make([]byte, 300)) + "z", "q"}, 301},
	} {
		got, want := rawSlice(tc.items, tc.size), old(tc.items, tc.size)
		if !reflect.DeepEqual(got, want) || reflect.TypeOf(got) != reflect.TypeOf(want) {
			t.Errorf("rawSlice(%q, %d) = %v, want %v", tc.items, tc.size, got, want)
		}
	}
}
