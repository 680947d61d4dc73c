package polprog

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestStrideTable holds each family's stride table to the longest match
// among a dimension's prefixes of that family (what the address trie
// returns), on random prefix sets of every length (nested, overlapping,
// ending on and between byte boundaries, short IPv6 ones covering
// ::ffff:0:0/96, the other family's mixed in) and addresses drawn near
// them, and checks the size bound.
func TestStrideTable(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		r := rand.New(rand.NewPCG(8, 8))
		size := map[bool]int{false: 4, true: 16}[v6]
		fromSlice := func(b []byte) netip.Addr { a, _ := netip.AddrFromSlice(b); return a }
		for round := range 200 {
			var pool [][]byte
			for range 1 + r.IntN(6) {
				a := make([]byte, size)
				for i := range a {
					a[i] = byte(r.IntN(3))
				}
				a[size-1] = byte(r.IntN(256))
				if v6 {
					a[0], a[1] = 0xfd, byte(r.IntN(3))
				}
				pool = append(pool, a)
			}
			addr := func() []byte {
				a := slices.Clone(pool[r.IntN(len(pool))])
				if r.IntN(3) == 0 {
					a[r.IntN(size)] ^= byte(1 << r.IntN(8))
				}
				return a
			}
			seen := map[netip.Prefix]bool{}
			var prefix []prefixRow
			for range r.IntN(40) {
				p := netip.PrefixFrom(fromSlice(addr()), r.IntN(8*size+1)).Masked()
				switch r.IntN(10) {
				case 0, 1:
					// The other family.
					p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, byte(r.IntN(2))}), r.IntN(129)).Masked()
					if v6 {
						p = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(3))}), r.IntN(33)).Masked()
					}
				case 2:
					if v6 {
						p = netip.PrefixFrom(netip.IPv6Unspecified(), r.IntN(20))
					}
				}
				if !seen[p] {
					seen[p] = true
					prefix = append(prefix, prefixRow{p: p, row: uint32(1 + r.IntN(1000))})
				}
			}
			chunks := buildStride(prefix, v6)
			if chunks == nil {
				t.Fatalf("v6 %v, round %d: %d prefixes: no table", v6, round, len(prefix))
			}
			for range 500 {
				a := addr()
				if r.IntN(8) == 0 {
					for i := range a {
						a[i] = byte(r.IntN(256))
					}
				}
				want, best := uint32(0), -1
				for _, pr := range prefix {
					if pr.p.Addr().Is6() == v6 && pr.p.Contains(fromSlice(a)) && pr.p.Bits() > best {
						want, best = pr.row, pr.p.Bits()
					}
				}
				if got := strideRow(chunks, a); got != want {
					t.Fatalf("round %d: %v: row %d, want %d (prefixes %v)", round, fromSlice(a), got, want, prefix)
				}
			}
		}
	}
	// One /32 in each of maxStrideChunks /24s needs a chunk for each /24 and
	// the /16s and /8s above them: more than the bound.
	var many []prefixRow
	for i := range maxStrideChunks {
		many = append(many, prefixRow{p: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32), row: 1})
	}
	if buildStride(many, false) != nil {
		t.Errorf("%d /32s in as many /24s: a table, want none (more than %d chunks)", len(many), maxStrideChunks)
	}
}

// TestClassifierV4Fallback loads a classified run whose source dimension
// needs more stride chunks than maxStrideChunks (one /32 in each of 2,100
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
		k.agree(t, p, rules, nil, pkt)
	}
}

// TestUpdateStrideTables changes the source and destination CIDRs of
// rules of a classified run through Update (its map-only path), in each
// family, to prefixes under first bytes no rule had (new chunks, and the
// destination table's chunks offset by the source table's), to longer
// and shorter ones and back, and after each update holds the kernel to
// Evaluate on packets from and to addresses in and around every prefix.
// An update that needs more rows than the layout has is loaded afresh;
// most must not.
func TestUpdateStrideTables(t *testing.T) {
	for _, tc := range []struct {
		family string
		// nets: four source CIDRs, two destination ones, then others
		// updates move to; the last one of the other family.
		nets []string
	}{
		{"v4", []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16", "192.168.5.0/24",
			"172.16.0.0/12", "172.20.7.0/26", "11.0.0.0/8", "11.11.11.11/32", "0.0.0.0/0", "fd00::/16"}},
		{"v6", []string{"fd00::/16", "fd00:1::/32", "fd00:1:2::/48", "fd00:1:2::3/128", "2001:db8::/32", "2001:db8:5::/48",
			"fc00::/7", "fd20:7::/58", "fe80::/10", "fe80::11/128", "::/0", "10.0.0.0/8"}},
	} {
		t.Run(tc.family, func(t *testing.T) { testUpdateStrideTables(t, tc.family == "v6", tc.nets) })
	}
}

func testUpdateStrideTables(t *testing.T, v6 bool, nets []string) {
	k := newKernel(t)
	r := rand.New(rand.NewPCG(6, 6))
	rule := func(i int) Rule {
		return Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2],
			SrcNets: []netip.Prefix{mustPrefix(nets[r.IntN(4)])}, DstNets: []netip.Prefix{mustPrefix(nets[4+r.IntN(2)])}}
	}
	var rs []Rule
	for i := range 300 {
		rs = append(rs, rule(i))
	}
	rules := Rules{Tiers: []Tier{{Name: "t", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}, NoMatchRuleID: 1 << 41}
	opts := Options{ClassifierRules: 1, MergeThreshold: -1}
	p := k.load(t, rules, opts)
	l := p.class.compiled.classes[0].layout
	if caps := map[bool][]uint32{false: l.v4Cap, true: l.v6Cap}[v6]; slices.Contains(caps, 0) {
		t.Fatalf("tables of %v chunks: an address dimension has none", caps)
	}
	var addrs []netip.Addr
	for _, n := range nets {
		a := mustPrefix(n).Addr()
		b := a.AsSlice()
		addrs = append(addrs, a, a.Next())
		b[len(b)-1] ^= 0x80
		c, _ := netip.AddrFromSlice(b)
		b[1] ^= 0x40
		d, _ := netip.AddrFromSlice(b)
		addrs = append(addrs, c, d)
	}
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
			p = k.load(t, next, opts)
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

// TestClassifierV6Fallback loads a classified run whose source dimension
// has too many IPv6 /128s for an IPv6 table (each needs chunks of its
// own below a shared /112) but few IPv4 prefixes, so that IPv6 sources
// look the trie up and IPv4 ones walk the table, while the destination
// dimension walks tables for both; and holds the kernel to Evaluate on
// packets of both families from and to the rules' addresses and their
// neighbours.
func TestClassifierV6Fallback(t *testing.T) {
	k := newKernel(t)
	var rs []Rule
	src6 := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0: 0xfd, 5: byte(i >> 8), 6: byte(i), 15: 1})
	}
	for i := range 2100 {
		src := netip.PrefixFrom(src6(i), 128)
		if i%3 == 0 {
			src = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i % 7), 0, 0}), 16)
		}
		rs = append(rs, Rule{ID: uint64(i + 1), Action: []Action{ActionAllow, ActionDeny}[i%2], SrcNets: []netip.Prefix{src},
			DstNets: []netip.Prefix{mustPrefix([]string{"192.168.0.0/16", "fd00:1::/32", "10.0.0.0/8", "fd00:1:2::/48"}[i%4])}})
	}
	rules := Rules{Tiers: []Tier{{Name: "t", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}, NoMatchRuleID: 1 << 41}
	c := classifiedOnly(t, rules)
	l := c.classes[0].layout
	for di, kind := range l.dims {
		switch {
		case kind == dimSrcAddr && (l.v6Cap[di] != 0 || l.v4Cap[di] == 0):
			t.Fatalf("source dimension: IPv4 table of %d chunks, IPv6 of %d; want some and none", l.v4Cap[di], l.v6Cap[di])
		case kind == dimDstAddr && (l.v4Cap[di] == 0 || l.v6Cap[di] == 0):
			t.Fatalf("destination dimension: IPv4 table of %d chunks, IPv6 of %d; want both", l.v4Cap[di], l.v6Cap[di])
		}
	}
	p := k.loadCompiled(t, c)
	r := rand.New(rand.NewPCG(7, 7))
	for range 400 {
		i := r.IntN(2200)
		a := src6(i).As16()
		a[15] = byte(r.IntN(3))
		src := netip.AddrFrom16(a)
		dst := netip.AddrFrom16([16]byte{0: 0xfd, 3: 1, 5: byte(r.IntN(3)), 15: 9})
		if r.IntN(3) == 0 {
			src = netip.AddrFrom4([4]byte{10, byte(r.IntN(9)), 0, 1})
			dst = netip.AddrFrom4([4]byte{[]byte{192, 10, 172}[r.IntN(3)], 168, 0, 1})
		}
		pkt := Packet{Src: src, Dst: dst, Protocol: 6, SrcPort: 1, DstPort: 2}
		k.agree(t, p, rules, nil, pkt)
	}
}
