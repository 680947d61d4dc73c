package polprog

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestV4Table holds the IPv4 stride table to the longest match among a
// dimension's prefixes (what the address trie returns), on random prefix
// sets of every length (nested, overlapping, IPv6 ones mixed in) and
// addresses drawn near them, and checks the size bound.
func TestV4Table(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	for round := range 200 {
		var pool [][4]byte
		for range 1 + r.IntN(6) {
			pool = append(pool, [4]byte{byte(r.IntN(3)), byte(r.IntN(3)), byte(r.IntN(3)), byte(r.IntN(256))})
		}
		addr := func() [4]byte {
			a := pool[r.IntN(len(pool))]
			if r.IntN(3) == 0 {
				a[r.IntN(4)] ^= byte(1 << r.IntN(8))
			}
			return a
		}
		seen := map[netip.Prefix]bool{}
		var prefix []prefixRow
		for range r.IntN(40) {
			p := netip.PrefixFrom(netip.AddrFrom4(addr()), r.IntN(33)).Masked()
			if r.IntN(5) == 0 {
				p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, byte(r.IntN(2))}), r.IntN(129)).Masked()
			}
			if !seen[p] {
				seen[p] = true
				prefix = append(prefix, prefixRow{p: p, row: uint32(1 + r.IntN(1000))})
			}
		}
		chunks := buildV4(prefix)
		if chunks == nil {
			t.Fatalf("round %d: %d prefixes: no table", round, len(prefix))
		}
		for range 500 {
			a := addr()
			if r.IntN(8) == 0 {
				a = [4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))}
			}
			want, best := uint32(0), -1
			for _, pr := range prefix {
				if pr.p.Contains(netip.AddrFrom4(a)) && pr.p.Bits() > best {
					want, best = pr.row, pr.p.Bits()
				}
			}
			if got := v4Row(chunks, a); got != want {
				t.Fatalf("round %d: %v: row %d, want %d (prefixes %v)", round, netip.AddrFrom4(a), got, want, prefix)
			}
		}
	}
	// One /32 in each of maxV4Chunks /24s needs a chunk for each /24 and
	// the /16s and /8s above them: more than the bound.
	var many []prefixRow
	for i := range maxV4Chunks {
		many = append(many, prefixRow{p: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32), row: 1})
	}
	if buildV4(many) != nil {
		t.Errorf("%d /32s in as many /24s: a table, want none (more than %d chunks)", len(many), maxV4Chunks)
	}
}

// TestClassifierV4Fallback loads a classified run whose source dimension
// needs more stride chunks than maxV4Chunks (one /32 in each of 2,100
// /24s), so that IPv4 sources look the trie up, while its destination
// dimension has a table, and holds the kernel to Evaluate on packets from
// and to the rules' addresses, their neighbours and IPv6 ones.
func TestClassifierV4Fallback(t *testing.T) {
	k := newKernel(t)
	var rs []Rule
	for i := range 2100 {
		rs = append(rs, Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2],
			SrcNets: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32)},
			DstNets: []netip.Prefix{mustPrefix([]string{"192.168.0.0/16", "192.168.7.0/24", "10.0.0.0/8", "fd00::/16"}[i%4])}})
	}
	rules := Rules{Tiers: []Tier{{Name: "t", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}, NoMatchRuleID: 1 << 41}
	c := classifiedOnly(t, rules)
	l := c.classes[0].layout
	for di, kind := range l.dims {
		switch {
		case kind == dimSrcAddr && l.v4Cap[di] != 0:
			t.Fatalf("source dimension has a stride table of %d chunks, want none", l.v4Cap[di])
		case kind == dimDstAddr && l.v4Cap[di] == 0:
			t.Fatal("destination dimension has no stride table")
		}
	}
	p := k.loadCompiled(t, c)
	r := rand.New(rand.NewPCG(5, 5))
	for range 400 {
		i := r.IntN(2200)
		src := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(r.IntN(3))})
		dst := netip.AddrFrom4([4]byte{[]byte{192, 10, 172}[r.IntN(3)], 168, byte(r.IntN(9)), 1})
		if r.IntN(6) == 0 {
			src, dst = netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
		}
		pkt := Packet{Src: src, Dst: dst, Protocol: 6, SrcPort: 1, DstPort: 2}
		want, err := Evaluate(rules, nil, pkt)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
			t.Fatalf("%v to %v (-evaluate +kernel):\n%s", src, dst, diff)
		}
	}
}

// TestUpdateV4Tables changes the source and destination CIDRs of rules of
// a classified run through Update (its CIDR path), to prefixes under
// first bytes no rule had (new chunks, and the destination table's
// chunks offset by the source table's), to longer and shorter ones and
// back, and after each update holds the kernel to Evaluate on packets
// from and to addresses in and around every prefix. An update that needs
// more rows than the layout has is loaded afresh; most must not.
func TestUpdateV4Tables(t *testing.T) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(6, 6))
	nets := []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16", "192.168.5.0/24",
		"172.16.0.0/12", "172.20.7.0/26", "11.0.0.0/8", "11.11.11.11/32", "0.0.0.0/0", "fd00::/16"}
	rule := func(i int) Rule {
		return Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2],
			SrcNets: []netip.Prefix{mustPrefix(nets[r.IntN(4)])}, DstNets: []netip.Prefix{mustPrefix(nets[4+r.IntN(2)])}}
	}
	var rs []Rule
	for i := range 300 {
		rs = append(rs, rule(i))
	}
	rules := Rules{Tiers: []Tier{{Name: "t", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}, NoMatchRuleID: 1 << 41}
	p := k.load(t, rules, Options{ClassifierRules: 1, MergeThreshold: -1})
	addrs := func() []netip.Addr {
		var out []netip.Addr
		for _, n := range nets {
			pr := mustPrefix(n)
			a := pr.Addr()
			if a.Is6() {
				out = append(out, a.Next())
				continue
			}
			b := a.As4()
			out = append(out, a, a.Next())
			b[3] ^= 0x80
			out = append(out, netip.AddrFrom4(b))
			b[1] ^= 0x40
			out = append(out, netip.AddrFrom4(b))
		}
		return out
	}()
	check := func(when string) {
		t.Helper()
		for _, src := range addrs {
			for _, dst := range addrs {
				if src.Is4() != dst.Is4() {
					continue
				}
				pkt := Packet{Src: src, Dst: dst, Protocol: 6, SrcPort: 1, DstPort: 2}
				want, err := Evaluate(rules, nil, pkt)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					t.Fatalf("%s: %v to %v (-evaluate +kernel):\n%s", when, src, dst, diff)
				}
			}
		}
	}
	check("loaded")
	reloads := 0
	for u := range 12 {
		next := cloneRules(rules)
		for range 1 + r.IntN(3) {
			rl := &next.Tiers[0].Policies[0].Rules[r.IntN(len(rs))]
			rl.SrcNets = []netip.Prefix{mustPrefix(nets[r.IntN(len(nets)-1)])}
			rl.DstNets = []netip.Prefix{mustPrefix(nets[r.IntN(len(nets)-1)])}
		}
		switch err := p.Update(next); {
		case errors.Is(err, ErrNeedsReload):
			// More rows than the layout has room for: a new program.
			p = k.load(t, next, Options{ClassifierRules: 1, MergeThreshold: -1})
			reloads++
		case err != nil:
			t.Fatalf("update %d: %v", u, err)
		}
		rules = next
		check(fmt.Sprintf("after update %d", u))
	}
	if reloads > 6 {
		t.Errorf("%d of 12 updates needed a reload", reloads)
	}
}
