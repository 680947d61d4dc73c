package polprog

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// cidrPool are overlapping prefixes of both families, /0 to /32 and /128,
// and one next to the IPv4-mapped block.
var cidrPool = []netip.Prefix{
	mustPrefix("0.0.0.0/0"), mustPrefix("10.0.0.0/8"), mustPrefix("10.1.0.0/16"), mustPrefix("10.1.2.0/24"),
	mustPrefix("10.1.2.3/32"), mustPrefix("10.1.2.4/31"), mustPrefix("10.128.0.0/9"), mustPrefix("192.168.0.0/16"),
	mustPrefix("255.255.255.255/32"), mustPrefix("0.0.0.0/32"),
	mustPrefix("::/0"), mustPrefix("2001:db8::/32"), mustPrefix("2001:db8:1::/48"), mustPrefix("2001:db8:1::1/128"),
	mustPrefix("::fffe:0:0/95"), mustPrefix("::/128"), mustPrefix("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
	mustPrefix("::a00:0/104"),
}

// edgeAddrs are the first and last addresses of each prefix and those just
// outside.
func edgeAddrs(ps []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, p := range ps {
		first := p.Masked().Addr()
		b := first.AsSlice()
		for i := p.Bits(); i < len(b)*8; i++ {
			b[i/8] |= 0x80 >> (i % 8)
		}
		last, _ := netip.AddrFromSlice(b)
		out = append(out, first, last)
		if a := first.Prev(); a.IsValid() {
			out = append(out, a)
		}
		if a := last.Next(); a.IsValid() {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

func (g *gen) poolNets() []netip.Prefix {
	var out []netip.Prefix
	for n := 1 + g.r.IntN(2); n > 0; n-- {
		out = append(out, cidrPool[g.r.IntN(len(cidrPool))])
	}
	return out
}

// cidrRules is one tier of n classified rules (protocols and ports
// differ, so no run merges) with positive CIDRs from cidrPool.
func (g *gen) cidrRules(n int) Rules {
	var rs []Rule
	for i := range n {
		r := Rule{ID: uint64(1000 + i), Action: []Action{ActionAllow, ActionDeny, ActionLog, ActionPass}[g.r.IntN(4)]}
		if g.chance(2) {
			r.Protocol = []string{"tcp", "udp"}[g.r.IntN(2)]
			r.DstPorts = []PortRange{{First: uint16(g.r.IntN(3)), Last: uint16(2 + g.r.IntN(2))}}
		}
		if g.chance(3) {
			r.SrcNamedPorts = []uint64{g.setIDs[g.r.IntN(len(g.setIDs))]}
			r.SrcPorts = []PortRange{Port(uint16(g.r.IntN(3)))}
		}
		r.SrcNets = g.poolNets()
		if g.chance(2) {
			r.DstNets = g.poolNets()
		}
		if g.chance(3) {
			r.NotSrcNets = g.poolNets()
		}
		if g.chance(3) {
			r.NotDstNets = g.poolNets()
		}
		rs = append(rs, r)
	}
	return Rules{NoMatchRuleID: 7, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 8,
		Policies: []Policy{{Name: "p", Rules: rs}}}}}
}

// cidrPackets are packets between every pair of edge addresses of one
// family, drawn at random.
func (g *gen) cidrPackets(n int) []Packet {
	addrs := edgeAddrs(cidrPool)
	var out []Packet
	for len(out) < n {
		src, dst := addrs[g.r.IntN(len(addrs))], addrs[g.r.IntN(len(addrs))]
		if src.Is4() != dst.Is4() && !g.chance(10) {
			continue
		}
		out = append(out, Packet{Src: src, Dst: dst, Protocol: []uint8{6, 17}[g.r.IntN(2)],
			SrcPort: uint16(g.r.IntN(3)), DstPort: uint16(g.r.IntN(4))})
	}
	return out
}

// TestAttackCIDRUpdateChain applies many CIDR updates in a row to a
// classified tier: CIDRs moved between families, to /0, /32 and /128,
// onto prefixes other rules name, off the last rule naming a prefix, with
// ID and action changes mixed in, and now and then a rule losing or
// gaining its positive list (a compile). After each, every packet is run
// twice (the second from the cache) against Evaluate.
func TestAttackCIDRUpdateChain(t *testing.T) {
	k := newKernel(t)
	fast, applied, steps := 0, 0, 0
	for seed := uint64(0); seed < 6; seed++ {
		g := attackClsGen(seed + 5500)
		rules := g.cidrRules(40)
		k.setIPSets(t, g.sets)
		c, err := Compile(rules, Options{ClassifierRules: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(c.classes) == 0 {
			t.Fatal("no classified run")
		}
		slots, free := k.allocSlots(t, len(c.Parts))
		p, err := c.Load(k.maps, slots)
		if err != nil {
			free()
			t.Fatal(err)
		}
		pkts := g.cidrPackets(150)
		for step := range 40 {
			steps++
			next := cloneRules(rules)
			all := allRules(&next)
			for n := 1 + g.r.IntN(3); n > 0; n-- {
				r := all[g.r.IntN(len(all))]
				switch g.r.IntN(8) {
				case 0:
					r.DstNets = g.poolNets()
				case 1:
					r.NotSrcNets = g.poolNets()
				case 2:
					r.NotDstNets = nil
				case 3:
					r.ID, r.Action = g.id(), []Action{ActionAllow, ActionDeny, ActionLog, ActionPass}[g.r.IntN(4)]
				case 4:
					if g.chance(4) {
						r.DstNets = nil
					}
				default:
					r.SrcNets = g.poolNets()
				}
			}
			np, err := validateWith(next, validator{noWhere: true})
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
				applied++
			case !errors.Is(uerr, ErrNeedsReload):
				t.Fatalf("seed %d step %d: %v", seed, step, uerr)
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
						p.Close()
						free()
						t.Fatalf("seed %d step %d (update err %v), run %d, packet %+v: %s", seed, step, uerr, run, pkt, msg)
					}
				}
			}
		}
		p.Close()
		free()
	}
	t.Logf("%d steps: %d applied, %d by the address-row path", steps, applied, fast)
	if fast < steps/3 {
		t.Errorf("only %d of %d updates took the address-row path", fast, steps)
	}
}

// TestAttackCIDRUpdateFresh gives rules brand-new prefixes update after
// update, so that the prefixes no rule names pile up in the tries until
// the address-row path runs out of room and Update compiles: the packets
// of every prefix ever named, and of the new ones, must follow Evaluate
// throughout.
func TestAttackCIDRUpdateFresh(t *testing.T) {
	k := newKernel(t)
	g := attackClsGen(6600)
	rules := g.cidrRules(30)
	k.setIPSets(t, g.sets)
	p := k.load(t, rules, Options{ClassifierRules: 1})
	var named []netip.Prefix
	fast, reload := 0, 0
	for step := range 150 {
		next := cloneRules(rules)
		all := allRules(&next)
		r := all[g.r.IntN(len(all))]
		var n netip.Prefix
		if g.chance(3) {
			n = netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0x20, 1: 0x01, 2: 0x0d, 3: 0xb8, 4: byte(step), 15: byte(g.r.IntN(256))}),
				[]int{48, 64, 128}[g.r.IntN(3)]).Masked()
		} else {
			n = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(step), byte(g.r.IntN(256)), byte(g.r.IntN(256))}),
				[]int{16, 24, 32}[g.r.IntN(3)]).Masked()
		}
		named = append(named, n)
		if g.chance(2) {
			r.SrcNets = []netip.Prefix{n}
		} else {
			r.SrcNets = append(slices.Clone(r.SrcNets), n)
		}
		np, err := validateWith(next, validator{noWhere: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, ok := p.class.patchRows(np); ok {
			fast++
		}
		switch err := p.Update(next); {
		case err == nil:
			rules = next
		case errors.Is(err, ErrNeedsReload):
			// A reload: what the caller would do.
			reload++
			p.Close()
			p = k.load(t, next, Options{ClassifierRules: 1})
			rules = next
		default:
			t.Fatalf("step %d: %v", step, err)
		}
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		addrs := edgeAddrs(named[max(0, len(named)-20):])
		for i := range 40 {
			pkt := Packet{Src: addrs[g.r.IntN(len(addrs))], Protocol: []uint8{6, 17}[i%2], SrcPort: uint16(i % 3), DstPort: uint16(i % 4)}
			pkt.Dst = mustAddr("10.1.2.3")
			if pkt.Src.Is6() {
				pkt.Dst = mustAddr("2001:db8:1::1")
			}
			want := ev.Evaluate(g.sets, pkt)
			for run := range 2 {
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					t.Fatalf("step %d, run %d, packet %+v (-evaluate +kernel):\n%s", step, run, pkt, diff)
				}
			}
		}
	}
	t.Logf("%d updates by the address-row path, %d reloads", fast, reload)
}

// TestAttackCIDRReplaceAll replaces every CIDR of a classified run in one
// update, then again: the code is the same, so each Update must apply.
// The trie holds every generation; the idle one's stale prefixes must go
// before its new ones come, or the new ones find no room (ENOSPC) and the
// Program needs a reload for good.
func TestAttackCIDRReplaceAll(t *testing.T) {
	k := newKernel(t)
	const n = 64
	mk := func(b int) Rules {
		var rs []Rule
		for i := range n {
			rs = append(rs, Rule{ID: uint64(1 + i), Action: ActionAllow, SrcNets: []netip.Prefix{
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(b), byte(i), 1}), 32)}})
		}
		return Rules{NoMatchRuleID: 999, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 998,
			Policies: []Policy{{Name: "p", Rules: rs}}}}}
	}
	p := k.load(t, mk(0), Options{ClassifierRules: 1, MergeThreshold: -1})
	for b := 1; b <= 4; b++ {
		rules := mk(b)
		if err := p.Update(rules); err != nil {
			t.Fatalf("update %d: %v", b, err)
		}
		for bb := range b + 2 {
			for i := range n {
				pkt := Packet{Src: netip.AddrFrom4([4]byte{10, byte(bb), byte(i), 1}), Dst: mustAddr("10.9.9.9"), Protocol: 6, DstPort: 80}
				want, err := Evaluate(rules, nil, pkt)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					t.Fatalf("after update %d, packet from %v (-evaluate +kernel):\n%s", b, pkt.Src, diff)
				}
			}
		}
	}
}

// TestAttackUpdatePositions changes rules so that their positions move:
// ports ORed with named-port sets gained and lost (one position or two),
// log toggled on rules of two positions (padding moves), IDs and actions;
// Update compiles with the loaded layouts. Packets run twice, with
// counters, after each.
func TestAttackUpdatePositions(t *testing.T) {
	k := newKernel(t)
	applied, refused := 0, 0
	for seed := uint64(0); seed < 4; seed++ {
		g := attackClsGen(seed + 3300)
		rules := g.cidrRules(70)
		k.setIPSets(t, g.sets)
		c, err := Compile(rules, Options{ClassifierRules: 1})
		if err != nil {
			t.Fatal(err)
		}
		slots, free := k.allocSlots(t, len(c.Parts))
		p, err := c.Load(k.maps, slots)
		if err != nil {
			free()
			t.Fatal(err)
		}
		pkts := g.cidrPackets(120)
		for step := range 25 {
			next := cloneRules(rules)
			all := allRules(&next)
			for n := 1 + g.r.IntN(4); n > 0; n-- {
				r := all[g.r.IntN(len(all))]
				switch g.r.IntN(4) {
				case 0:
					if len(r.SrcNamedPorts) > 0 {
						r.SrcNamedPorts = nil
						if len(r.SrcPorts) == 0 {
							r.SrcPorts = []PortRange{Port(1)}
						}
					} else {
						r.SrcNamedPorts = []uint64{g.setIDs[g.r.IntN(len(g.setIDs))]}
					}
				case 1:
					if r.Action == ActionLog {
						r.Action = ActionDeny
					} else {
						r.Action = ActionLog
					}
				case 2:
					r.SrcPorts = nil
				default:
					r.ID = g.id()
				}
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
			ev, err := NewEvaluator(rules)
			if err != nil {
				t.Fatal(err)
			}
			ids := ruleIDs(&rules)
			for _, pkt := range pkts {
				want := ev.Evaluate(g.sets, pkt)
				for run := range 2 {
					if msg := k.checkRunHits(t, p, ids, pkt, want); msg != "" {
						p.Close()
						free()
						t.Fatalf("seed %d step %d, run %d, packet %+v: %s", seed, step, run, pkt, msg)
					}
				}
			}
		}
		p.Close()
		free()
	}
	t.Logf("%d updates applied, %d refused", applied, refused)
	if applied == 0 {
		t.Error("no update applied")
	}
}
