package polprog

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// strideNets are prefixes of every interesting length, nested and
// overlapping, at chunk boundaries (x.255 -> x+1.0) and at the ends of the
// address space, with IPv6 ones (::/80 covers ::ffff:0:0/96).
var strideNets = []string{
	"0.0.0.0/0", "0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/7", "10.0.0.0/8", "11.0.0.0/8",
	"10.128.0.0/9", "10.254.0.0/15", "10.255.0.0/16", "11.0.0.0/16", "10.255.128.0/17",
	"11.0.0.0/17", "10.255.254.0/23", "10.255.255.0/24", "11.0.0.0/24", "10.255.255.128/25",
	"11.0.0.0/25", "10.255.255.254/31", "10.255.255.255/32", "11.0.0.0/32", "0.0.0.0/32",
	"0.0.0.0/8", "255.255.255.255/32", "255.255.255.0/24", "255.0.0.0/8", "254.255.255.255/32",
	"fd00::/16", "::/0", "::/80", "fd00::1/128",
}

// strideAddrs are the first and last address of each prefix and their
// neighbours outside it.
func strideAddrs(nets []string) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	add := func(a netip.Addr) {
		if a.IsValid() && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, n := range nets {
		p := mustPrefix(n)
		first := p.Addr()
		last := first
		if first.Is4() {
			b := first.As4()
			v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
			v |= uint32(uint64(1)<<(32-p.Bits()) - 1)
			last = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		}
		add(first)
		add(last)
		add(first.Prev())
		add(last.Next())
		add(first.Next())
	}
	add(netip.MustParseAddr("0.0.0.0"))
	add(netip.MustParseAddr("255.255.255.255"))
	add(netip.MustParseAddr("fd00::2"))
	add(netip.MustParseAddr("::1"))
	return out
}

// strideRule is a rule of random source and destination CIDRs from nets,
// some negated, mostly of one family.
func strideRule(r *rand.Rand, id int, nets []string) Rule {
	// A mixed rule names prefixes of either family on each side.
	mixed := r.IntN(5) == 0
	pick := func(v6 bool) netip.Prefix {
		if mixed && r.IntN(2) == 0 {
			v6 = !v6
		}
		for {
			p := mustPrefix(nets[r.IntN(len(nets))])
			if p.Addr().Is6() == v6 {
				return p
			}
		}
	}
	v6 := r.IntN(6) == 0
	rl := Rule{ID: uint64(id), Action: []Action{ActionAllow, ActionDeny}[id%2]}
	for range 1 + r.IntN(2) {
		rl.SrcNets = append(rl.SrcNets, pick(v6))
	}
	for range 1 + r.IntN(2) {
		rl.DstNets = append(rl.DstNets, pick(v6))
	}
	if r.IntN(3) == 0 {
		rl.NotSrcNets = []netip.Prefix{pick(v6)}
	}
	if r.IntN(3) == 0 {
		rl.NotDstNets = []netip.Prefix{pick(v6)}
	}
	if r.IntN(4) == 0 {
		rl.SrcNets = nil
	}
	return rl
}

// strideCheck holds the kernel to Evaluate on packets between addrs.
func strideCheck(t *testing.T, k *kernel, p *Program, rules Rules, addrs []netip.Addr, r *rand.Rand, when string) {
	t.Helper()
	for _, src := range addrs {
		for range 12 {
			dst := addrs[r.IntN(len(addrs))]
			for _, pair := range [][2]netip.Addr{{src, dst}, {dst, src}} {
				if pair[0].Is4() != pair[1].Is4() {
					continue
				}
				pkt := Packet{Src: pair[0], Dst: pair[1], Protocol: 6, SrcPort: 1, DstPort: 2}
				want, err := Evaluate(rules, nil, pkt)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					t.Fatalf("%s: %v to %v (-evaluate +kernel):\n%s", when, pair[0], pair[1], diff)
				}
			}
		}
	}
}

func strideRules(rs []Rule) Rules {
	return Rules{Tiers: []Tier{{Name: "t", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}, NoMatchRuleID: 1 << 41}
}

// TestAttackStrideEdges loads classified runs of random rules over
// strideNets (every prefix length class, chunk boundaries, /0, the ends of
// the address space, negated CIDRs, IPv6 ones including ::/0) and holds
// the kernel to Evaluate at every prefix's edges.
func TestAttackStrideEdges(t *testing.T) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(41, 41))
	addrs := strideAddrs(strideNets)
	for round := range 6 {
		var rs []Rule
		for i := range 20 + r.IntN(60) {
			rs = append(rs, strideRule(r, i+1, strideNets))
		}
		rules := strideRules(rs)
		c := classifiedOnly(t, rules)
		p := k.loadCompiled(t, c)
		strideCheck(t, k, p, rules, addrs, r, fmt.Sprintf("round %d", round))
	}
}

// TestAttackStrideUpdates changes CIDRs of a classified run through Update
// many times, back and forth between edge prefixes (making, dropping and
// moving chunks), and after each update holds the kernel to Evaluate.
func TestAttackStrideUpdates(t *testing.T) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(42, 42))
	addrs := strideAddrs(strideNets)
	var rs []Rule
	for i := range 120 {
		rs = append(rs, strideRule(r, i+1, strideNets))
	}
	rules := strideRules(rs)
	opts := Options{ClassifierRules: 1, MergeThreshold: -1}
	p := k.load(t, rules, opts)
	strideCheck(t, k, p, rules, addrs, r, "loaded")
	first := rules
	reloads := 0
	for u := range 15 {
		next := cloneRules(rules)
		if u%5 == 4 {
			next = cloneRules(first) // back to the start
		}
		for range 1 + r.IntN(4) {
			i := r.IntN(len(rs))
			nr := strideRule(r, i+1, strideNets)
			rl := &next.Tiers[0].Policies[0].Rules[i]
			rl.SrcNets, rl.NotSrcNets, rl.DstNets, rl.NotDstNets = nr.SrcNets, nr.NotSrcNets, nr.DstNets, nr.NotDstNets
		}
		switch err := p.Update(next); {
		case errors.Is(err, ErrNeedsReload):
			p = k.load(t, next, opts)
			reloads++
		case err != nil:
			t.Fatalf("update %d: %v", u, err)
		}
		rules = next
		strideCheck(t, k, p, rules, addrs, r, fmt.Sprintf("after update %d", u))
	}
	t.Logf("%d of 15 updates reloaded", reloads)
}

// TestAttackStrideLimit loads a source dimension at exactly maxStrideChunks
// chunks (a stride table) and one chunk past it (the trie), and holds the
// kernel to Evaluate on addresses at every /24's edges.
func TestAttackStrideLimit(t *testing.T) {
	k := newKernel(t)
	// n /32s in as many /24s of 10/8: chunk 0, 10's chunk, ceil(n/256)
	// chunks of /16s and n of /24s.
	for _, n := range []int{2038, 2039} {
		var rs []Rule
		var prefix []prefixRow
		for i := range n {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 255}), 32)
			prefix = append(prefix, prefixRow{p: p, row: 1})
			rs = append(rs, Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2],
				SrcNets: []netip.Prefix{p}, DstNets: []netip.Prefix{mustPrefix(strideNets[i%26])}})
		}
		chunks := buildStride(prefix, false)
		switch {
		case n == 2038 && len(chunks) != maxStrideChunks:
			t.Fatalf("%d /32s: %d chunks, want %d", n, len(chunks), maxStrideChunks)
		case n == 2039 && chunks != nil:
			t.Fatalf("%d /32s: %d chunks, want no table", n, len(chunks))
		}
		rules := strideRules(rs)
		c := classifiedOnly(t, rules)
		l := c.classes[0].layout
		for di, kind := range l.dims {
			if kind == dimSrcAddr && (l.v4Cap[di] != 0) != (n == 2038) {
				t.Fatalf("%d /32s: source table capacity %d", n, l.v4Cap[di])
			}
		}
		p := k.loadCompiled(t, c)
		r := rand.New(rand.NewPCG(43, uint64(n)))
		dsts := strideAddrs(strideNets[:26])
		for range 1500 {
			i := r.IntN(n + 40)
			src := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), []byte{255, 254, 0}[r.IntN(3)]})
			if r.IntN(10) == 0 {
				src = src.Next()
			}
			pkt := Packet{Src: src, Dst: dsts[r.IntN(len(dsts))], Protocol: 6, SrcPort: 1, DstPort: 2}
			want, err := Evaluate(rules, nil, pkt)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
				t.Fatalf("%d /32s: %v to %v (-evaluate +kernel):\n%s", n, pkt.Src, pkt.Dst, diff)
			}
		}
	}
}

// TestAttackStrideOverflow loads a small stride table, then updates its
// CIDRs to ones that need far more chunks than its 16 spare ones (and
// back): each update either reloads or leaves the kernel agreeing with
// Evaluate.
func TestAttackStrideOverflow(t *testing.T) {
	k := newKernel(t)
	var rs []Rule
	for i := range 64 {
		rs = append(rs, Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2],
			SrcNets: []netip.Prefix{mustPrefix(strideNets[i%5])}, DstNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}})
	}
	rules := strideRules(rs)
	opts := Options{ClassifierRules: 1, MergeThreshold: -1}
	p := k.load(t, rules, opts)
	first := rules
	for u, spread := range []int{1, 8, 15, 16, 17, 24, 40, 0, 63, 0} {
		next := cloneRules(first)
		for i := range spread {
			rl := &next.Tiers[0].Policies[0].Rules[i]
			rl.SrcNets = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(20 + i), byte(i), 255, 255}), 32)}
			rl.DstNets = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(100 + i), 0, byte(i), 0}), 31)}
		}
		reload := false
		switch err := p.Update(next); {
		case errors.Is(err, ErrNeedsReload):
			p, reload = k.load(t, next, opts), true
		case err != nil:
			t.Fatalf("update %d: %v", u, err)
		}
		t.Logf("update %d: %d spread, reload %v", u, spread, reload)
		rules = next
		for i := range max(spread, 1) + 2 {
			for _, src := range []netip.Addr{
				netip.AddrFrom4([4]byte{byte(20 + i), byte(i), 255, 255}), netip.AddrFrom4([4]byte{byte(20 + i), byte(i), 255, 254}),
				netip.AddrFrom4([4]byte{byte(20 + i), byte(i + 1), 0, 0}), mustAddr("0.0.0.0"), mustAddr("128.0.0.1"),
			} {
				for _, dst := range []netip.Addr{netip.AddrFrom4([4]byte{byte(100 + i), 0, byte(i), 1}),
					netip.AddrFrom4([4]byte{byte(100 + i), 0, byte(i), 2}), mustAddr("10.1.2.3")} {
					pkt := Packet{Src: src, Dst: dst, Protocol: 6, SrcPort: 1, DstPort: 2}
					want, err := Evaluate(rules, nil, pkt)
					if err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
						t.Fatalf("update %d (%d spread, reload %v): %v to %v (-evaluate +kernel):\n%s", u, spread, reload, src, dst, diff)
					}
				}
			}
		}
	}
}

// TestAttackStrideUpdateAtomic switches a classified run's CIDRs between
// two policies through Update's CIDR path while every CPU runs it: under
// A rule 1 allows the packet by a /32 source and destination (chunks at
// every level) and rule 2 names other /8s; under B rule 1 names those /8s
// and rule 2 allows the packet by /8s (no chunks). A packet that reads
// one dimension's table of one generation and the other's of the other
// matches neither and is denied by rule 3.
func TestAttackStrideUpdateAtomic(t *testing.T) {
	k := newKernel(t)
	src, dst := mustAddr("10.255.255.255"), mustAddr("11.0.0.0")
	pkt := Packet{Src: src, Dst: dst, Protocol: 6, SrcPort: 5555, DstPort: 80}
	mk := func(a bool) Rules {
		near := []netip.Prefix{mustPrefix("10.255.255.255/32"), mustPrefix("11.0.0.0/32")}
		far := []netip.Prefix{mustPrefix("12.0.0.0/8"), mustPrefix("13.0.0.0/8")}
		wide := []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("11.0.0.0/8")}
		r1, r2 := near, far
		if !a {
			r1, r2 = far, wide
		}
		rs := []Rule{
			{ID: 1, Action: ActionAllow, SrcNets: r1[:1], DstNets: r1[1:]},
			{ID: 2, Action: ActionAllow, SrcNets: r2[:1], DstNets: r2[1:]},
		}
		r := rand.New(rand.NewPCG(44, 44))
		for i := range 40 {
			rl := strideRule(r, 10+i, strideNets)
			rl.Action = ActionDeny
			rl.SrcNets = []netip.Prefix{mustPrefix("99.0.0.0/8")} // never the packet
			rs = append(rs, rl)
		}
		rs = append(rs, Rule{ID: 3, Action: ActionDeny})
		return strideRules(rs)
	}
	a, b := mk(true), mk(false)
	for _, rules := range []Rules{a, b} {
		if d, _ := Evaluate(rules, nil, pkt); d.Verdict != VerdictAllow {
			t.Fatalf("decides %+v", d)
		}
	}
	c := classifiedOnly(t, a)
	if len(c.Parts) != 1 {
		t.Fatalf("%d parts, want 1", len(c.Parts))
	}
	p := k.loadCompiled(t, c)
	for _, rules := range []Rules{b, a} {
		if err := p.Update(rules); err != nil {
			t.Fatalf("update: %v", err)
		}
		if d := k.run(t, p, pkt); d.Verdict != VerdictAllow {
			t.Fatalf("kernel decides %+v", d)
		}
	}
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
	for range max(2, k.ncpu) {
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
	changes := 300
	for u := range changes {
		rules := b
		if u%2 == 1 {
			rules = a
		}
		if err := p.Update(rules); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("update %d: %v", u, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d runs during %d CIDR updates, %d not allowed", runs.Load(), changes, mixed.Load())
	if mixed.Load() != 0 {
		t.Errorf("%d of %d runs saw a mix of generations", mixed.Load(), runs.Load())
	}
}

// TestAttackStrideHost loads host endpoint policies whose pre-DNAT, normal
// and apply-on-forward tiers are classified runs of edge prefixes (each
// run its own stride tables; the pre-DNAT ones index the destination
// before DNAT), and holds the kernel to Evaluate on packets whose
// destination before DNAT differs, from and to the host or not; then
// updates the CIDRs of all of them and checks again.
func TestAttackStrideHost(t *testing.T) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(45, 45))
	addrs := strideAddrs(strideNets)
	var v4 []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			v4 = append(v4, a)
		}
	}
	tier := func(name string, id int, end EndAction) Tier {
		var rs []Rule
		for i := range 15 + r.IntN(20) {
			rl := strideRule(r, id+i, strideNets)
			if r.IntN(4) == 0 {
				rl.Action = ActionPass
			}
			rs = append(rs, rl)
		}
		return Tier{Name: name, EndAction: end, EndRuleID: uint64(id + 999), Policies: []Policy{{Name: name, Rules: rs}}}
	}
	mk := func() Rules {
		return Rules{ForHost: true, NoMatchRuleID: 1 << 41,
			PreDNATTiers:        []Tier{tier("pre", 1000, EndPass)},
			Tiers:               []Tier{tier("a", 2000, EndPass), tier("b", 3000, EndDeny)},
			ApplyOnForwardTiers: []Tier{tier("fwd", 4000, EndPass)}}
	}
	check := func(p *Program, rules Rules, when string) {
		t.Helper()
		for range 3000 {
			pkt := Packet{Src: v4[r.IntN(len(v4))], Dst: v4[r.IntN(len(v4))], Protocol: 6, SrcPort: 1, DstPort: 2,
				SrcIsHost: r.IntN(3) == 0, DstIsHost: r.IntN(3) == 0}
			if r.IntN(2) == 0 {
				pkt.PreNATDst, pkt.PreNATDstPort = v4[r.IntN(len(v4))], 3
			}
			want, err := Evaluate(rules, nil, pkt)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
				t.Fatalf("%s: %+v (-evaluate +kernel):\n%s", when, pkt, diff)
			}
		}
	}
	rules := mk()
	opts := Options{ClassifierRules: 1, MergeThreshold: -1}
	p := k.load(t, rules, opts)
	check(p, rules, "loaded")
	for u := range 6 {
		next := cloneRules(rules)
		for _, ts := range [][]Tier{next.PreDNATTiers, next.Tiers, next.ApplyOnForwardTiers} {
			for ti := range ts {
				rs := ts[ti].Policies[0].Rules
				i := r.IntN(len(rs))
				nr := strideRule(r, 1, strideNets)
				rs[i].SrcNets, rs[i].NotSrcNets, rs[i].DstNets, rs[i].NotDstNets = nr.SrcNets, nr.NotSrcNets, nr.DstNets, nr.NotDstNets
			}
		}
		switch err := p.Update(next); {
		case errors.Is(err, ErrNeedsReload):
			p = k.load(t, next, opts)
		case err != nil:
			t.Fatalf("update %d: %v", u, err)
		}
		rules = next
		check(p, rules, fmt.Sprintf("after update %d", u))
	}
}

// TestAttackStrideFallbackUpdate updates a run between a source dimension
// past the chunk limit (the trie alone), exactly at it and a small one, by
// CIDR changes of its rules, back and forth: each update reloads or leaves
// the kernel agreeing with Evaluate.
func TestAttackStrideFallbackUpdate(t *testing.T) {
	k := newKernel(t)
	mk := func(n int, shift byte) Rules {
		var rs []Rule
		for i := range 2039 {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 255}), 32)
			if i >= n {
				p = netip.PrefixFrom(netip.AddrFrom4([4]byte{10 + shift, byte(i >> 8), 0, 0}), 16)
			}
			rs = append(rs, Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2],
				SrcNets: []netip.Prefix{p}, DstNets: []netip.Prefix{mustPrefix(strideNets[i%26])}})
		}
		return strideRules(rs)
	}
	opts := Options{ClassifierRules: 1, MergeThreshold: -1}
	rules := mk(2039, 0)
	p := k.load(t, rules, opts)
	r := rand.New(rand.NewPCG(46, 46))
	dsts := strideAddrs(strideNets[:26])
	for u, n := range []int{10, 2039, 2038, 10, 2038, 2039} {
		next := mk(n, byte(u%2))
		reload := false
		switch err := p.Update(next); {
		case errors.Is(err, ErrNeedsReload):
			p, reload = k.load(t, next, opts), true
		case err != nil:
			t.Fatalf("update %d: %v", u, err)
		}
		rules = next
		for range 600 {
			i := r.IntN(2060)
			src := netip.AddrFrom4([4]byte{byte(10 + r.IntN(2)), byte(i >> 8), byte(i), []byte{255, 254, 0}[r.IntN(3)]})
			pkt := Packet{Src: src, Dst: dsts[r.IntN(len(dsts))], Protocol: 6, SrcPort: 1, DstPort: 2}
			want, err := Evaluate(rules, nil, pkt)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
				t.Fatalf("update %d (%d /32s, reload %v): %v to %v (-evaluate +kernel):\n%s", u, n, reload, pkt.Src, pkt.Dst, diff)
			}
		}
	}
}

// TestAttackStrideRowReuse changes the CIDRs of a small classified run
// through Update many times, each to prefixes it never had, so that the
// rows added pass the layout's room and move into rows no prefix refers
// to any more, while the same packets are run after each update (their
// outcomes cached under the rows of earlier generations).
func TestAttackStrideRowReuse(t *testing.T) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(47, 47))
	var rs []Rule
	for i := range 8 {
		rs = append(rs, Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2],
			SrcNets: []netip.Prefix{mustPrefix(strideNets[i])}, DstNets: []netip.Prefix{mustPrefix(strideNets[8+i])}})
	}
	rules := strideRules(rs)
	opts := Options{ClassifierRules: 1, MergeThreshold: -1}
	p := k.load(t, rules, opts)
	addrs := strideAddrs(strideNets)
	var v4 []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			v4 = append(v4, a)
		}
	}
	v4nets := strideNets[:26]
	reloads := 0
	for u := range 60 {
		next := cloneRules(rules)
		for range 1 + r.IntN(3) {
			rl := &next.Tiers[0].Policies[0].Rules[r.IntN(len(rs))]
			rl.SrcNets = []netip.Prefix{mustPrefix(v4nets[r.IntN(len(v4nets))])}
			rl.DstNets = []netip.Prefix{mustPrefix(v4nets[r.IntN(len(v4nets))])}
			if r.IntN(3) == 0 {
				rl.NotSrcNets = []netip.Prefix{mustPrefix(v4nets[r.IntN(len(v4nets))])}
			} else {
				rl.NotSrcNets = nil
			}
		}
		switch err := p.Update(next); {
		case errors.Is(err, ErrNeedsReload):
			p = k.load(t, next, opts)
			reloads++
		case err != nil:
			t.Fatalf("update %d: %v", u, err)
		}
		rules = next
		for _, src := range v4 {
			for _, dst := range v4[:20] {
				pkt := Packet{Src: src, Dst: dst, Protocol: 6, SrcPort: 1, DstPort: 2}
				want, err := Evaluate(rules, nil, pkt)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					t.Fatalf("after update %d: %v to %v (-evaluate +kernel):\n%s", u, src, dst, diff)
				}
			}
		}
	}
	t.Logf("%d of 60 updates reloaded", reloads)
}

// TestAttackStrideWithSets loads a classified run whose rules name IP sets
// of edge prefixes as well as CIDRs on the same side, and holds the kernel
// to Evaluate at the prefixes' edges, with IPv6 addresses that are nearly
// IPv4-mapped among them.
func TestAttackStrideWithSets(t *testing.T) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(48, 48))
	sets := IPSetMembers{}
	for id := uint64(1); id <= 4; id++ {
		var nets []netip.Prefix
		for range 1 + r.IntN(4) {
			nets = append(nets, mustPrefix(strideNets[r.IntN(len(strideNets))]))
		}
		sets[id] = IPSet{Nets: nets}
	}
	k.setIPSets(t, sets)
	t.Cleanup(func() { k.setIPSets(t, IPSetMembers{}) })
	var rs []Rule
	for i := range 60 {
		rl := strideRule(r, i+1, strideNets)
		switch r.IntN(4) {
		case 0:
			rl.SrcIPSets = []uint64{uint64(1 + r.IntN(4))}
		case 1:
			rl.NotDstIPSets = []uint64{uint64(1 + r.IntN(4))}
		case 2:
			rl.DstIPSets = []uint64{uint64(1 + r.IntN(4))}
		}
		rs = append(rs, rl)
	}
	rules := strideRules(rs)
	c := classifiedOnly(t, rules)
	p := k.loadCompiled(t, c)
	addrs := append(strideAddrs(strideNets), mustAddr("::fffe:a00:1"), mustAddr("0:0:0:1:0:ffff:a00:1"),
		mustAddr("::ffff:ffff:a00:1"), mustAddr("::a00:1"), mustAddr("::"))
	for _, src := range addrs {
		for _, dst := range addrs {
			if src.Is4() != dst.Is4() {
				continue
			}
			pkt := Packet{Src: src, Dst: dst, Protocol: 6, SrcPort: 1, DstPort: 2}
			k.agree(t, p, rules, sets, pkt)
		}
	}
}

// TestAttackStrideManyRuns loads many classified runs (one a tier, each
// with its own stride tables' map), so that the maps they add must be
// counted to place them in parts, and holds the kernel to Evaluate.
func TestAttackStrideManyRuns(t *testing.T) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(49, 49))
	var tiers []Tier
	for ti := range 30 {
		var rs []Rule
		for i := range 6 {
			rl := strideRule(r, ti*100+i+1, strideNets)
			if r.IntN(3) != 0 {
				rl.Action = ActionPass
			}
			rs = append(rs, rl)
		}
		tiers = append(tiers, Tier{Name: fmt.Sprint("t", ti), EndAction: EndPass, Policies: []Policy{{Name: "p", Rules: rs}}})
	}
	rules := Rules{Tiers: tiers, NoMatchRuleID: 1 << 41}
	c := classifiedOnly(t, rules)
	t.Logf("%d parts, %d classified runs", len(c.Parts), classifiedRuns(c))
	p := k.loadCompiled(t, c)
	strideCheck(t, k, p, rules, strideAddrs(strideNets), r, "loaded")
}

// TestAttackStrideSpareChunks loads a source table of 4 chunks (room for
// 21), then moves /32s of its rules under first bytes it had not, 3 new
// chunks each: 5 fit the room and must be applied in place, 6 do not and
// must reload; between those, moves elsewhere and back.
func TestAttackStrideSpareChunks(t *testing.T) {
	k := newKernel(t)
	var rs []Rule
	for i := range 40 {
		rs = append(rs, Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2],
			SrcNets: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32)}})
	}
	base := strideRules(rs)
	opts := Options{ClassifierRules: 1, MergeThreshold: -1}
	c, err := Compile(base, opts)
	if err != nil {
		t.Fatal(err)
	}
	l := c.classes[0].layout
	for di, kind := range l.dims {
		if kind == dimSrcAddr && l.v4Cap[di] != 21 {
			t.Fatalf("source table capacity %d, want 21", l.v4Cap[di])
		}
	}
	p := k.loadCompiled(t, c)
	rules := base
	for u, move := range []struct{ n, at int }{{5, 20}, {5, 40}, {0, 0}, {5, 20}, {6, 60}, {5, 80}, {0, 0}} {
		next := cloneRules(base)
		for j := range move.n {
			next.Tiers[0].Policies[0].Rules[j].SrcNets = []netip.Prefix{
				netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(move.at + j), 0, 0, 1}), 32)}
		}
		err := p.Update(next)
		switch {
		case errors.Is(err, ErrNeedsReload):
			if move.n <= 5 {
				t.Errorf("update %d (%d moved): %v, want it applied", u, move.n, err)
			}
			p = k.load(t, next, opts)
		case err != nil:
			t.Fatalf("update %d: %v", u, err)
		case move.n > 5:
			t.Errorf("update %d (%d moved): applied, want a reload (more chunks than the table's room)", u, move.n)
		}
		rules = next
		var srcs []netip.Addr
		for i := range 45 {
			srcs = append(srcs, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
		}
		for j := range 100 {
			srcs = append(srcs, netip.AddrFrom4([4]byte{byte(j), 0, 0, 1}), netip.AddrFrom4([4]byte{byte(j), 0, 0, 0}))
		}
		for _, src := range srcs {
			pkt := Packet{Src: src, Dst: mustAddr("1.2.3.4"), Protocol: 6, SrcPort: 1, DstPort: 2}
			want, err := Evaluate(rules, nil, pkt)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
				t.Fatalf("update %d: %v (-evaluate +kernel):\n%s", u, src, diff)
			}
		}
	}
}

// TestAttackStrideRandomEdges updates a classified run of random prefixes
// at byte boundaries (a.b.255.255 and the address after it, of every
// length) many times, and after each update holds the kernel to Evaluate
// on the first and last addresses of every prefix the rules name and
// their neighbours.
func TestAttackStrideRandomEdges(t *testing.T) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(50, 50))
	var pool []string
	for range 12 {
		a := [4]byte{byte(r.IntN(256)), byte(r.IntN(256)), 255, 255}
		if r.IntN(3) == 0 {
			a[1] = 255
		}
		for _, x := range []netip.Addr{netip.AddrFrom4(a), netip.AddrFrom4(a).Next()} {
			if !x.IsValid() {
				continue
			}
			for range 4 {
				pool = append(pool, netip.PrefixFrom(x, r.IntN(33)).Masked().String())
			}
		}
	}
	pool = append(pool, "0.0.0.0/0", "255.255.255.255/32", "0.0.0.0/32", "fd00::/16")
	var rs []Rule
	for i := range 150 {
		rs = append(rs, strideRule(r, i+1, pool))
	}
	rules := strideRules(rs)
	opts := Options{ClassifierRules: 1, MergeThreshold: -1}
	p := k.load(t, rules, opts)
	all := strideAddrs(pool)
	addrs := func() []netip.Addr { // a sample, for time
		out := make([]netip.Addr, 100)
		for i := range out {
			out[i] = all[r.IntN(len(all))]
		}
		return out
	}
	strideCheck(t, k, p, rules, addrs(), r, "loaded")
	reloads := 0
	for u := range 12 {
		next := cloneRules(rules)
		for range 1 + r.IntN(5) {
			i := r.IntN(len(rs))
			nr := strideRule(r, i+1, pool)
			rl := &next.Tiers[0].Policies[0].Rules[i]
			if (len(rl.SrcNets) == 0) != (len(nr.SrcNets) == 0) {
				nr.SrcNets = rl.SrcNets // keep the CIDR path: no side gains or loses its CIDRs
			}
			rl.SrcNets, rl.NotSrcNets, rl.DstNets, rl.NotDstNets = nr.SrcNets, nr.NotSrcNets, nr.DstNets, nr.NotDstNets
		}
		switch err := p.Update(next); {
		case errors.Is(err, ErrNeedsReload):
			p = k.load(t, next, opts)
			reloads++
		case err != nil:
			t.Fatalf("update %d: %v", u, err)
		}
		rules = next
		strideCheck(t, k, p, rules, addrs(), r, fmt.Sprintf("after update %d", u))
	}
	t.Logf("%d of 12 updates reloaded", reloads)
}

// TestAttackStrideMappedCIDR checks that an IPv4-mapped CIDR, which the
// stride table (IPv4 prefixes only) and the trie would treat differently,
// is refused by Compile on either side, positive or negated.
func TestAttackStrideMappedCIDR(t *testing.T) {
	ok := strideRules([]Rule{{ID: 1, Action: ActionAllow, SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}}})
	for i, set := range []func(*Rule, []netip.Prefix){
		func(r *Rule, n []netip.Prefix) { r.SrcNets = n },
		func(r *Rule, n []netip.Prefix) { r.NotSrcNets = n },
		func(r *Rule, n []netip.Prefix) { r.DstNets = n },
		func(r *Rule, n []netip.Prefix) { r.NotDstNets = n },
	} {
		bad := cloneRules(ok)
		set(&bad.Tiers[0].Policies[0].Rules[0], []netip.Prefix{mustPrefix("::ffff:10.0.0.0/104")})
		if _, err := Compile(bad, Options{ClassifierRules: 1}); err == nil {
			t.Errorf("side %d: an IPv4-mapped CIDR compiled", i)
		}
	}
}
