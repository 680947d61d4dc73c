package polprog

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
)

// Attack tests on the family-aware compiler (review of e375136): every
// CIDR, IP set and named-port check is a log rule with its own ID, so one
// run shows, through the per-rule hit counters, which of hundreds of
// checks the kernel took to match; Evaluate's Hits must list exactly
// those, in any order, and the verdict, rule ID and log flag must agree.

// attackV4 are IPv4 addresses at the edges of the sign of their
// host-order value and of every prefix length.
var attackV4 = []string{
	"0.0.0.0", "0.0.0.1", "1.2.3.4", "10.0.1.5", "127.255.255.255", "128.0.0.0", "128.0.0.1",
	"191.255.255.255", "192.168.1.1", "200.1.2.3", "255.255.255.254", "255.255.255.255",
}

// attackV6 are IPv6 addresses that an IPv4 test (or an IPv4-mapped one)
// could mistake: all-zero, IPv4-compatible, 00 00 ff ff at bytes 8-11
// under a non-zero upper half, ::fffe:..., the all-ones address, and
// addresses whose low 32 bits are attackV4 addresses.
var attackV6 = []string{
	"::", "::1", "::a00:105", "::8000:0", "::ffff:ffff", "::fffe:ffff:ffff", "::1:ffff:a00:105",
	"0:0:0:1::", "0:0:0:1:0:ffff:a00:105", "2001:db8::ffff:a00:105", "2001:db8::a00:105",
	"8000::", "8000::ffff:8000:0", "fd00::2:7", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	"ffff:ffff:ffff:ffff:0:ffff:ffff:ffff", "::ffff:0:0:0", "0:0:ffff:ffff::",
}

func attackAddrs() (v4, v6 []netip.Addr) {
	for _, s := range attackV4 {
		v4 = append(v4, mustAddr(s))
	}
	for _, s := range attackV6 {
		v6 = append(v6, mustAddr(s))
	}
	return v4, v6
}

// attackPrefixes returns every prefix length of every attack address,
// masked, without duplicates or the IPv4-mapped prefixes validation
// refuses.
func attackPrefixes(v4, v6 []netip.Addr) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		p = p.Masked()
		if seen[p] || p.Addr().Is4In6() {
			return
		}
		seen[p] = true
		out = append(out, p)
	}
	for _, a := range v4 {
		for bits := 0; bits <= 32; bits++ {
			add(netip.PrefixFrom(a, bits))
		}
	}
	for _, a := range v6 {
		for bits := 0; bits <= 128; bits++ {
			add(netip.PrefixFrom(a, bits))
		}
	}
	add(mustPrefix("::ffff:0:0/95"))
	add(mustPrefix("::ffff:0:0/94"))
	return out
}

// clearHits empties sl_rule_hits.
func (k *kernel) clearHits(tb testing.TB) {
	tb.Helper()
	var keys []uint64
	var key uint64
	vals := make([]uint64, k.ncpu)
	it := k.maps.RuleHits.Iterate()
	for it.Next(&key, &vals) {
		keys = append(keys, key)
	}
	if err := it.Err(); err != nil {
		tb.Fatalf("iterate hits: %v", err)
	}
	for _, key := range keys {
		if err := k.maps.RuleHits.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			tb.Fatalf("delete hits: %v", err)
		}
	}
}

// hitIDs returns the IDs with a non-zero counter, sorted.
func (k *kernel) hitIDs(tb testing.TB) []uint64 {
	tb.Helper()
	var out []uint64
	var key uint64
	vals := make([]uint64, k.ncpu)
	it := k.maps.RuleHits.Iterate()
	for it.Next(&key, &vals) {
		var sum uint64
		for _, v := range vals {
			sum += v
		}
		if sum > 1 {
			tb.Fatalf("rule %d counted %d times in one run", key, sum)
		}
		if sum != 0 {
			out = append(out, key)
		}
	}
	if err := it.Err(); err != nil {
		tb.Fatalf("iterate hits: %v", err)
	}
	slices.Sort(out)
	return out
}

// attackCompare runs every packet through the loaded rules and through
// Evaluate and fails on the first packet where the verdict, rule ID, log
// flag or set of counted IDs differ. It returns the number of checks that
// matched over all packets, so callers can require both answers.
func attackCompare(t *testing.T, k *kernel, name string, rules Rules, opts Options, sets IPSetMembers, pkts []Packet) (matched int) {
	t.Helper()
	ev, err := NewEvaluator(rules)
	if err != nil {
		t.Fatalf("%s: evaluator: %v", name, err)
	}
	c, err := Compile(rules, opts)
	// The small-part layout takes the smallest SplitJumps (in steps of
	// 8) whose parts fit in MaxParts.
	for opts.SplitJumps != 0 && err != nil && opts.SplitJumps < DefaultSplitJumps {
		opts.SplitJumps += 8
		c, err = Compile(rules, opts)
	}
	if err != nil {
		t.Fatalf("%s: compile (options %+v): %v", name, opts, err)
	}
	slots, free := k.allocSlots(t, len(c.Parts))
	defer free()
	p, err := c.Load(k.maps, slots)
	if err != nil {
		t.Fatalf("%s: load (options %+v): %v", name, opts, err)
	}
	defer p.Close()
	k.setIPSets(t, sets)
	for i, pkt := range pkts {
		want := ev.Evaluate(sets, pkt)
		k.clearHits(t)
		got := k.run(t, p, pkt)
		got.Hits = k.hitIDs(t)
		wantHits := slices.Clone(want.Hits)
		slices.Sort(wantHits)
		want.Hits = wantHits
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("%s (options %+v, %d parts), packet %d %+v: kernel differs from Evaluate (-evaluate +kernel):\n%s",
				name, opts, len(c.Parts), i, pkt, diff)
		}
		matched += len(want.Hits)
	}
	t.Logf("%s: %d parts, %d lookup maps, %d packets, %d hits", name, len(c.Parts), len(c.LookupMaps), len(pkts), matched)
	return matched
}

// attackPackets pairs every attack address, as source and as destination,
// with one of the other family and one of its own, with and without a
// pre-DNAT destination of the other family.
func attackPackets(v4, v6 []netip.Addr, r *rand.Rand) []Packet {
	all := append(slices.Clone(v4), v6...)
	var out []Packet
	for _, a := range all {
		other := v6[r.IntN(len(v6))]
		same := v4[r.IntN(len(v4))]
		if a.Is6() {
			other, same = v4[r.IntN(len(v4))], v6[r.IntN(len(v6))]
		}
		out = append(out,
			Packet{Src: a, Dst: other, PreNATDst: same, SrcPort: 80, DstPort: 0, PreNATDstPort: 443, Protocol: 6},
			Packet{Src: other, Dst: a, PreNATDst: other, SrcPort: 0, DstPort: 80, PreNATDstPort: 0, Protocol: 17},
			Packet{Src: same, Dst: same, PreNATDst: a, Protocol: 58, ICMPType: 128},
			Packet{Src: a, Dst: a, Protocol: 1, ICMPType: 8, SrcIsHost: true},
		)
	}
	// IPv4-mapped addresses in the state as IPv6 packets would carry
	// them (Evaluate unmaps them).
	for _, a := range v4 {
		m := netip.AddrFrom16(a.As16())
		out = append(out, Packet{Src: m, Dst: v6[r.IntN(len(v6))], PreNATDst: m, SrcPort: 80, DstPort: 80, Protocol: 6})
	}
	return out
}

// logNetRules returns one log rule per prefix and field, IDs from base.
func logNetRules(prefixes []netip.Prefix, base uint64, field int) []Rule {
	var out []Rule
	for i, p := range prefixes {
		r := Rule{ID: base + uint64(i), Action: ActionLog}
		ps := []netip.Prefix{p}
		switch field {
		case 0:
			r.SrcNets = ps
		case 1:
			r.NotSrcNets = ps
		case 2:
			r.DstNets = ps
		default:
			r.NotDstNets = ps
		}
		out = append(out, r)
	}
	return out
}

// attackOptions are the compiler layouts each attack runs under.
func attackOptions() map[string]Options {
	return map[string]Options{
		"default":      {MergeThreshold: -1},
		"fall-through": {MergeThreshold: -1, FallThroughRules: 1},
		"straight":     {MergeThreshold: -1, FallThroughRules: -1},
		// Small parts: each resumes in the middle of the list, after
		// a fresh prologue (attackCompare grows SplitJumps until the
		// parts fit).
		"split": {MergeThreshold: -1, FallThroughRules: 1, SplitJumps: 20, MaxParts: MaxParts},
	}
}

// TestAttackEveryPrefixLength holds single-CIDR checks of every prefix
// length of both families, positive and negated, on sources and (post-
// and pre-DNAT) destinations, to Evaluate.
func TestAttackEveryPrefixLength(t *testing.T) {
	k := newKernel(t)
	v4, v6 := attackAddrs()
	prefixes := attackPrefixes(v4, v6)
	r := rand.New(rand.NewPCG(7, 8))
	pkts := attackPackets(v4, v6, r)
	// Chunks keep each policy below the split limit of the small-part
	// layout.
	const chunk = 180
	for field := 0; field < 4; field++ {
		for lo := 0; lo < len(prefixes); lo += chunk {
			ps := prefixes[lo:min(lo+chunk, len(prefixes))]
			logs := logNetRules(ps, 1000, field)
			final := Rule{ID: 1 << 30, Action: ActionAllow}
			work := Rules{NoMatchRuleID: 7, Tiers: []Tier{{Name: "t", Policies: []Policy{{Name: "logs", Rules: append(logs, final)}}}}}
			host := Rules{ForHost: true, NoMatchRuleID: 7,
				PreDNATTiers: []Tier{{Name: "pre", EndAction: EndPass, Policies: []Policy{{Name: "logs", Rules: logs}}}},
				Tiers:        []Tier{{Name: "t", Policies: []Policy{{Name: "final", Rules: []Rule{final}}}}},
				ApplyOnForwardTiers: []Tier{{Name: "fwd", EndAction: EndPass,
					Policies: []Policy{{Name: "logs", Rules: logNetRules(ps, 100000, field)}}}},
			}
			for name, opts := range attackOptions() {
				if attackCompare(t, k, name, work, opts, nil, pkts) == 0 {
					t.Errorf("field %d chunk %d: no check matched", field, lo)
				}
				attackCompare(t, k, name+"/host", host, opts, nil, pkts)
			}
		}
	}
}

// TestAttackMixedLists holds random lists of both families, negated and
// not, in both address fields, to Evaluate.
func TestAttackMixedLists(t *testing.T) {
	k := newKernel(t)
	v4, v6 := attackAddrs()
	prefixes := attackPrefixes(v4, v6)
	r := rand.New(rand.NewPCG(9, 10))
	pkts := attackPackets(v4, v6, r)
	list := func() []netip.Prefix {
		out := make([]netip.Prefix, 1+r.IntN(4))
		for i := range out {
			out[i] = prefixes[r.IntN(len(prefixes))]
		}
		return out
	}
	for round := 0; round < 6; round++ {
		var logs []Rule
		for i := 0; i < 150; i++ {
			rl := Rule{ID: 1000 + uint64(i), Action: ActionLog}
			for _, f := range []*[]netip.Prefix{&rl.SrcNets, &rl.NotSrcNets, &rl.DstNets, &rl.NotDstNets} {
				if r.IntN(2) == 0 {
					*f = list()
				}
			}
			logs = append(logs, rl)
		}
		rules := Rules{NoMatchRuleID: 7, Tiers: []Tier{{Name: "t", Policies: []Policy{{Name: "logs",
			Rules: append(logs, Rule{ID: 1 << 30, Action: ActionAllow})}}}}}
		for name, opts := range attackOptions() {
			attackCompare(t, k, name, rules, opts, nil, pkts)
		}
	}
}

// attackSets returns one set per prefix (IDs from base, set 0 included)
// and named-port sets of attack addresses with port 0 and 80.
func attackSets(prefixes []netip.Prefix, v4, v6 []netip.Addr, base uint64) (IPSetMembers, []uint64) {
	sets := IPSetMembers{}
	var ids []uint64
	for i, p := range prefixes {
		id := base + uint64(i)
		if i == 0 {
			id = 0
		}
		sets[id] = IPSet{Nets: []netip.Prefix{p}}
		ids = append(ids, id)
	}
	for i, a := range append(slices.Clone(v4), v6...) {
		id := base + 1<<20 + uint64(i)
		sets[id] = IPSet{NamedPorts: []NamedPortMember{{Addr: a, Protocol: 6, Port: 80}, {Addr: a, Protocol: 17, Port: 0},
			{Addr: a, Protocol: 58, Port: 0}}}
		ids = append(ids, id)
	}
	return sets, ids
}

// TestAttackIPSets holds IP set and named-port checks of random
// combinations (so the key cache rewrites address, family, port and
// protocol in every order) to the ipsets reference.
func TestAttackIPSets(t *testing.T) {
	k := newKernel(t)
	v4, v6 := attackAddrs()
	prefixes := attackPrefixes(v4, v6)
	r := rand.New(rand.NewPCG(11, 12))
	// Every eighth prefix keeps sl_ipsets small; the lengths still span
	// both families.
	var some []netip.Prefix
	for i := 0; i < len(prefixes); i += 8 {
		some = append(some, prefixes[i])
	}
	sets, ids := attackSets(some, v4, v6, 1<<40)
	pkts := attackPackets(v4, v6, r)
	pick := func() []uint64 {
		out := make([]uint64, 1+r.IntN(2))
		for i := range out {
			out[i] = ids[r.IntN(len(ids))]
		}
		return out
	}
	total := 0
	for round := 0; round < 5; round++ {
		var logs []Rule
		for i := 0; i < 120; i++ {
			rl := Rule{ID: 1000 + uint64(i), Action: ActionLog}
			fields := []*[]uint64{&rl.SrcIPSets, &rl.NotSrcIPSets, &rl.DstIPSets, &rl.NotDstIPSets,
				&rl.SrcNamedPorts, &rl.NotSrcNamedPorts, &rl.DstNamedPorts, &rl.NotDstNamedPorts}
			for n := 1 + r.IntN(3); n > 0; n-- {
				*fields[r.IntN(len(fields))] = pick()
			}
			if r.IntN(3) == 0 {
				rl.DstPorts = []PortRange{Port(443)}
			}
			logs = append(logs, rl)
		}
		final := Rule{ID: 1 << 30, Action: ActionAllow}
		work := Rules{NoMatchRuleID: 7, Tiers: []Tier{{Name: "t", Policies: []Policy{{Name: "logs", Rules: append(logs, final)}}}}}
		host := Rules{ForHost: true, NoMatchRuleID: 7,
			PreDNATTiers: []Tier{{Name: "pre", EndAction: EndPass, Policies: []Policy{{Name: "logs", Rules: logs}}}},
			Tiers:        []Tier{{Name: "t", Policies: []Policy{{Name: "final", Rules: []Rule{final}}}}}}
		for name, opts := range attackOptions() {
			total += attackCompare(t, k, name, work, opts, sets, pkts)
			attackCompare(t, k, name+"/host", host, opts, sets, pkts)
		}
	}
	if total == 0 {
		t.Error("no set check matched")
	}
}

// TestAttackMergedPrefixLengths merges runs of terminal rules over every
// IPv4 prefix length (networks of both signs) and sends every attack
// packet: IPv6 addresses must skip the trie, IPv4 ones find the first
// matching rule.
func TestAttackMergedPrefixLengths(t *testing.T) {
	k := newKernel(t)
	v4, v6 := attackAddrs()
	r := rand.New(rand.NewPCG(13, 14))
	pkts := attackPackets(v4, v6, r)
	for _, base := range v4 {
		var rs []Rule
		for bits := 32; bits >= 0; bits-- {
			p := netip.PrefixFrom(base, bits).Masked()
			a := []Action{ActionAllow, ActionDeny, ActionPass}[bits%3]
			rs = append(rs, Rule{ID: 100 + uint64(bits), Action: a, SrcNets: []netip.Prefix{p}})
		}
		for _, field := range []string{"src", "dst"} {
			run := slices.Clone(rs)
			if field == "dst" {
				for i := range run {
					run[i].DstNets, run[i].SrcNets = run[i].SrcNets, nil
				}
			}
			rules := Rules{NoMatchRuleID: 7, Tiers: []Tier{
				{Name: "merged", EndAction: EndPass, Policies: []Policy{{Name: "m", Rules: run}}},
				{Name: "after", Policies: []Policy{{Name: "a", Rules: []Rule{{ID: 1 << 30, Action: ActionAllow}}}}},
			}}
			for name, opts := range map[string]Options{
				"merged":    {MergeThreshold: 2},
				"merged-ft": {MergeThreshold: 2, FallThroughRules: 1},
			} {
				attackCompare(t, k, base.String()+"/"+field+"/"+name, rules, opts, nil, pkts)
			}
		}
	}
}

// TestAttackSmallSplitJumps compiles a small policy that checks every
// address (host endpoint, CIDRs on source and both destinations) with a
// SplitJumps far below the prologue's jumps, loads it and holds it to
// Evaluate: every rule then sits in its own part.
func TestAttackSmallSplitJumps(t *testing.T) {
	rules := Rules{ForHost: true,
		PreDNATTiers: []Tier{{Name: "pre", EndAction: EndPass, Policies: []Policy{{Name: "p", Rules: []Rule{
			{ID: 1, Action: ActionDeny, DstNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}}}}}}},
		Tiers: []Tier{{Name: "t", Policies: []Policy{{Name: "p", Rules: []Rule{
			{ID: 2, Action: ActionAllow, SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}},
			{ID: 3, Action: ActionAllow, DstNets: []netip.Prefix{mustPrefix("fd00::/8")}}}}}}},
	}
	k := newKernel(t)
	v4, v6 := attackAddrs()
	pkts := attackPackets(v4, v6, rand.New(rand.NewPCG(15, 16)))
	for _, sj := range []int{1, 2, 4, 8, 12, 16, 19} {
		if _, err := Compile(rules, Options{SplitJumps: sj, MaxParts: MaxParts}); err != nil {
			t.Errorf("SplitJumps %d: %v", sj, err)
			continue
		}
		attackCompare(t, k, fmt.Sprintf("SplitJumps %d", sj), rules, Options{SplitJumps: sj, MaxParts: MaxParts}, nil, pkts)
	}
}

// TestAttackZeroAndZonedAddr compares the kernel with Evaluate for a packet
// whose source is the zero netip.Addr (stateOf writes ::) or carries an
// IPv6 zone, which netip.Prefix.Contains never matches.
func TestAttackZeroAndZonedAddr(t *testing.T) {
	k := newKernel(t)
	rules := Rules{NoMatchRuleID: 7, Tiers: []Tier{{Name: "t", Policies: []Policy{{Name: "p", Rules: []Rule{
		{ID: 1, Action: ActionLog, SrcNets: []netip.Prefix{mustPrefix("::/0")}},
		{ID: 2, Action: ActionLog, NotSrcNets: []netip.Prefix{mustPrefix("fe80::/10")}},
		{ID: 3, Action: ActionAllow}}}}}}}
	for _, pkt := range []Packet{
		{Src: netip.Addr{}, Dst: mustAddr("10.0.0.1"), Protocol: 6},
		{Src: mustAddr("fe80::1%eth0"), Dst: mustAddr("fe80::2"), Protocol: 6},
	} {
		t.Run(pkt.Src.String(), func(t *testing.T) {
			attackCompare(t, k, "zero/zoned", rules, Options{}, nil, []Packet{pkt})
		})
	}
}
