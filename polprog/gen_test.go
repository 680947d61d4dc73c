package polprog

import (
	"math/rand/v2"
	"net/netip"
)

// gen makes random policies, IP sets and packets from small pools of
// addresses and ports, so that random rules and packets often meet.
type gen struct {
	r      *rand.Rand
	addrs  []netip.Addr
	addrs6 []netip.Addr
	ports  []uint16
	sets   IPSetMembers
	setIDs []uint64
	nextID uint64
}

var genProtos = []uint8{6, 17, 1, 132, 58}

func newGen(seed uint64) *gen {
	g := &gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), sets: IPSetMembers{}}
	for i := 0; i < 24; i++ {
		a := [4]byte{10, byte(g.r.IntN(2)), byte(g.r.IntN(4)), byte(g.r.IntN(256))}
		if g.r.IntN(4) == 0 {
			a = [4]byte{192, 168, byte(g.r.IntN(2)), byte(g.r.IntN(256))}
		}
		g.addrs = append(g.addrs, netip.AddrFrom4(a))
	}
	// IPv6 addresses, among them ones whose low 32 bits are an IPv4
	// pool address (a compare of the last word alone would match them),
	// ones with bytes 00 00 ff ff where IPv4-mapped addresses have them,
	// and IPv4-compatible ones (::a.b.c.d).
	for i := 0; i < 24; i++ {
		var a [16]byte
		switch g.r.IntN(6) {
		case 0:
			copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8})
			v4 := g.addrs[g.r.IntN(len(g.addrs))].As4()
			copy(a[12:], v4[:])
		case 1:
			copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8})
			a[10], a[11] = 0xff, 0xff
			v4 := g.addrs[g.r.IntN(len(g.addrs))].As4()
			copy(a[12:], v4[:])
		case 2:
			v4 := g.addrs[g.r.IntN(len(g.addrs))].As4()
			copy(a[12:], v4[:])
		default:
			copy(a[:], []byte{0xfd, 0x00, 0, byte(g.r.IntN(2)), 0, 0, 0, byte(g.r.IntN(3))})
			a[14], a[15] = byte(g.r.IntN(2)), byte(g.r.IntN(256))
		}
		g.addrs6 = append(g.addrs6, netip.AddrFrom16(a))
	}
	g.ports = []uint16{0, 22, 53, 80, 443, 8080, 65535}
	for i := 0; i < 5; i++ {
		g.ports = append(g.ports, uint16(g.r.IntN(65536)))
	}
	for i := 0; i < 6; i++ {
		id := g.r.Uint64()
		if i == 0 {
			id = 0 // set ID 0 is as valid as any
		}
		var s IPSet
		for j := g.r.IntN(4); j > 0; j-- {
			s.Nets = append(s.Nets, g.prefix())
		}
		for j := g.r.IntN(4); j > 0; j-- {
			a := g.addr()
			if g.chance(3) {
				a = g.addr6()
			}
			s.NamedPorts = append(s.NamedPorts, NamedPortMember{Addr: a, Protocol: g.proto(), Port: g.port()})
		}
		g.sets[id] = s
		g.setIDs = append(g.setIDs, id)
	}
	return g
}

func (g *gen) chance(n int) bool { return g.r.IntN(n) == 0 }
func (g *gen) addr() netip.Addr  { return g.addrs[g.r.IntN(len(g.addrs))] }
func (g *gen) port() uint16      { return g.ports[g.r.IntN(len(g.ports))] }
func (g *gen) proto() uint8      { return genProtos[g.r.IntN(len(genProtos))] }

func (g *gen) addr6() netip.Addr { return g.addrs6[g.r.IntN(len(g.addrs6))] }

// prefix returns a random CIDR, IPv6 one time in three.
func (g *gen) prefix() netip.Prefix {
	if g.chance(3) {
		bits := []int{0, 8, 16, 32, 48, 64, 80, 95, 96, 104, 112, 120, 127, 128, 128}[g.r.IntN(15)]
		return netip.PrefixFrom(g.addr6(), bits).Masked()
	}
	bits := []int{0, 8, 16, 20, 22, 23, 24, 26, 30, 31, 32, 32, 32}[g.r.IntN(13)]
	return netip.PrefixFrom(g.addr(), bits).Masked()
}

func (g *gen) prefixes() []netip.Prefix {
	out := make([]netip.Prefix, 1+g.r.IntN(3))
	for i := range out {
		out[i] = g.prefix()
	}
	return out
}

func (g *gen) portRanges() []PortRange {
	out := make([]PortRange, 1+g.r.IntN(3))
	for i := range out {
		p := g.port()
		switch g.r.IntN(3) {
		case 0:
			out[i] = Port(p)
		case 1:
			out[i] = PortRange{First: p, Last: p + uint16(min(int(65535-p), g.r.IntN(2000)))}
		default:
			out[i] = PortRange{First: p - uint16(min(int(p), g.r.IntN(2000))), Last: p}
		}
	}
	return out
}

func (g *gen) setList() []uint64 {
	out := make([]uint64, 1+g.r.IntN(2))
	for i := range out {
		out[i] = g.setIDs[g.r.IntN(len(g.setIDs))]
	}
	return out
}

func (g *gen) id() uint64 {
	if g.chance(20) {
		return 0
	}
	g.nextID++
	return g.nextID<<20 | uint64(g.r.IntN(1<<20))
}

func (g *gen) action() Action {
	return []Action{ActionAllow, ActionAllow, ActionDeny, ActionDeny, ActionPass, ActionLog}[g.r.IntN(6)]
}

// rule returns a random rule: each field with probability 1/f.
func (g *gen) rule() Rule {
	const f = 7
	r := Rule{ID: g.id(), Action: g.action()}
	if g.chance(3) {
		r.Protocol = protoName(g.proto())
	}
	if g.chance(f * 2) {
		r.NotProtocol = protoName(g.proto())
	}
	icmp := r.Protocol == "icmp" || r.Protocol == "icmpv6"
	if icmp && g.chance(2) {
		r.ICMP = g.icmp()
	}
	if icmp && g.chance(3) {
		r.NotICMP = g.icmp()
	}
	for _, p := range []*[]netip.Prefix{&r.SrcNets, &r.NotSrcNets, &r.DstNets, &r.NotDstNets} {
		if g.chance(f - 3) {
			*p = g.prefixes()
		}
	}
	for _, s := range []*[]uint64{&r.SrcIPSets, &r.NotSrcIPSets, &r.DstIPSets, &r.NotDstIPSets,
		&r.SrcNamedPorts, &r.NotSrcNamedPorts, &r.DstNamedPorts, &r.NotDstNamedPorts} {
		if g.chance(f + 2) {
			*s = g.setList()
		}
	}
	for _, p := range []*[]PortRange{&r.SrcPorts, &r.NotSrcPorts, &r.DstPorts, &r.NotDstPorts} {
		if g.chance(f - 2) {
			*p = g.portRanges()
		}
	}
	return r
}

func (g *gen) icmp() *ICMPMatch {
	m := &ICMPMatch{Type: uint8(g.r.IntN(4)), Code: uint8(g.r.IntN(2)), HasCode: g.chance(2)}
	return m
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	}
	return []string{"17", "udp", "132", "sctp"}[int(p)%4]
}

// mergeableRun returns n rules that differ only in IDs, actions and one
// list field, so that the compiler merges them into one lookup.
func (g *gen) mergeableRun(n int) []Rule {
	base := g.rule()
	base.SrcNets, base.DstNets, base.SrcPorts, base.DstPorts = nil, nil, nil, nil
	base.SrcNamedPorts, base.DstNamedPorts = nil, nil
	field := g.r.IntN(4)
	out := make([]Rule, n)
	for i := range out {
		r := base
		r.ID = g.id()
		r.Action = []Action{ActionAllow, ActionDeny, ActionPass}[g.r.IntN(3)]
		switch field {
		case 0:
			r.SrcNets = g.prefixes()
		case 1:
			r.DstNets = g.prefixes()
		case 2:
			r.SrcPorts = g.portRanges()
		default:
			r.DstPorts = g.portRanges()
		}
		out[i] = r
	}
	return out
}

// tiers returns n random tiers of policies of fewer than maxRules rules,
// each tier ending with pass with probability passIn4/4.
func (g *gen) tiers(n, passIn4, maxRules int) []Tier {
	out := make([]Tier, n)
	for i := range out {
		t := Tier{Name: "t", EndAction: EndDeny, EndRuleID: g.id()}
		if g.r.IntN(4) < passIn4 {
			t.EndAction = EndPass
		}
		for p := 1 + g.r.IntN(3); p > 0; p-- {
			var rules []Rule
			for k := g.r.IntN(maxRules); k > 0; k-- {
				if g.chance(6) {
					rules = append(rules, g.mergeableRun(2+g.r.IntN(30))...)
				} else {
					rules = append(rules, g.rule())
				}
			}
			t.Policies = append(t.Policies, Policy{Name: "p", Rules: rules})
		}
		out[i] = t
	}
	return out
}

// rules returns a random workload or host endpoint policy. A host
// endpoint's pre-DNAT tiers are small and mostly end with pass, since
// their allows and denies end host policy and the second stage needs
// packets too; its apply-on-forward tiers too, so that forwarded packets
// are often allowed by default.
func (g *gen) rules() Rules {
	rs := Rules{NoMatchRuleID: g.id(), Tiers: g.tiers(g.r.IntN(4), 2, 8)}
	if g.chance(2) {
		rs.Profiles = g.tiers(1, 2, 8)[0].Policies
	}
	if g.chance(3) {
		rs.ForHost = true
		rs.PreDNATTiers = g.tiers(g.r.IntN(3), 3, 4)
		rs.ApplyOnForwardTiers = g.tiers(g.r.IntN(3), 3, 6)
	}
	return rs
}

// packet returns a random packet from the pools: IPv6 one time in three,
// and one time in twenty with addresses of both families, which the
// datapath never builds but policy must still judge address by address.
func (g *gen) packet() Packet {
	pick := g.addr
	if g.chance(3) {
		pick = g.addr6
	}
	p := Packet{Src: pick(), Dst: pick(), SrcPort: g.port(), DstPort: g.port(), Protocol: g.proto(),
		SrcIsHost: g.chance(3), DstIsHost: g.chance(3)}
	if g.chance(20) {
		p.Dst = g.addr6()
	}
	if g.chance(2) {
		p.PreNATDst, p.PreNATDstPort = pick(), g.port()
	}
	if p.Protocol == 1 || p.Protocol == 58 {
		p.SrcPort, p.DstPort, p.PreNATDstPort = 0, 0, 0
		p.ICMPType, p.ICMPCode = uint8(g.r.IntN(4)), uint8(g.r.IntN(2))
	}
	if g.chance(10) {
		p.Src = netip.AddrFrom4([4]byte{byte(g.r.IntN(256)), byte(g.r.IntN(256)), byte(g.r.IntN(256)), byte(g.r.IntN(256))})
	}
	return p
}

// narrow adds to r, with probability 3/4, a constraint that few packets
// meet (a /32 source or destination, or one destination port), so that
// a large random policy decides packets deep in its rules and not only in
// its first few.
func (g *gen) narrow(r Rule) Rule {
	switch g.r.IntN(4) {
	case 0:
		r.SrcNets = []netip.Prefix{netip.PrefixFrom(g.addr(), 32)}
	case 1:
		r.DstNets = []netip.Prefix{netip.PrefixFrom(g.addr(), 32)}
	case 2:
		r.DstPorts = []PortRange{Port(g.port())}
	}
	return r
}

// largeRules returns a random policy of about n rules: tiers of narrowed
// random rules and mergeable runs (every field and negation, allow, deny,
// pass and log interleaved), tiers ending with pass or deny, profiles, and
// for a host endpoint pre-DNAT and apply-on-forward tiers of their own.
func (g *gen) largeRules(n int, forHost bool) Rules {
	tiers := func(count, rules int) []Tier {
		out := make([]Tier, count)
		for i := range out {
			t := Tier{Name: "big", EndAction: EndDeny, EndRuleID: g.id()}
			if g.chance(2) {
				t.EndAction = EndPass
			}
			for p := 0; p < 3; p++ {
				var rs []Rule
				for len(rs) < rules/3 {
					if g.chance(20) {
						rs = append(rs, g.mergeableRun(2+g.r.IntN(30))...)
						continue
					}
					rs = append(rs, g.narrow(g.rule()))
				}
				t.Policies = append(t.Policies, Policy{Name: "p", Rules: rs})
			}
			out[i] = t
		}
		return out
	}
	rs := Rules{NoMatchRuleID: g.id(), ForHost: forHost}
	if forHost {
		rs.PreDNATTiers = tiers(1, n/5)
		rs.PreDNATTiers[0].EndAction = EndPass
		rs.ApplyOnForwardTiers = tiers(2, n/5)
		rs.Tiers = tiers(2, n/5)
	} else {
		rs.Tiers = tiers(4, n/5)
	}
	rs.Profiles = tiers(1, n/5)[0].Policies
	return rs
}
