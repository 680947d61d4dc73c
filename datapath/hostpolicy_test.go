package datapath

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// atkHostGen makes random host-endpoint policies, routes and packets from
// small pools of addresses and ports, so that rules, routes and packets
// often meet.
type atkHostGen struct {
	r      *rand.Rand
	addrs  []netip.Addr
	ports  []uint16
	nextID uint64
	// big makes policies of several times the rules.
	big bool
}

func atkNewHostGen(seed uint64) *atkHostGen {
	g := &atkHostGen{r: rand.New(rand.NewPCG(seed, seed^0x5eed)), ports: []uint16{0, 22, 53, 80, 443, 6443, 65535}}
	for range 20 {
		a := [4]byte{10, 30, byte(g.r.IntN(3)), byte(1 + g.r.IntN(8))}
		if g.chance(4) {
			a = [4]byte{192, 168, 7, byte(g.r.IntN(256))}
		}
		g.addrs = append(g.addrs, netip.AddrFrom4(a))
	}
	for range 4 {
		g.ports = append(g.ports, uint16(1024+g.r.IntN(64512)))
	}
	return g
}

func (g *atkHostGen) chance(n int) bool { return g.r.IntN(n) == 0 }
func (g *atkHostGen) addr() netip.Addr  { return g.addrs[g.r.IntN(len(g.addrs))] }
func (g *atkHostGen) port() uint16      { return g.ports[g.r.IntN(len(g.ports))] }

func (g *atkHostGen) prefix() netip.Prefix {
	bits := []int{0, 8, 16, 23, 24, 24, 30, 32, 32, 32}[g.r.IntN(10)]
	return netip.PrefixFrom(g.addr(), bits).Masked()
}

func (g *atkHostGen) prefixes() []netip.Prefix {
	out := make([]netip.Prefix, 1+g.r.IntN(3))
	for i := range out {
		out[i] = g.prefix()
	}
	return out
}

func (g *atkHostGen) portRanges() []polprog.PortRange {
	out := make([]polprog.PortRange, 1+g.r.IntN(2))
	for i := range out {
		p := g.port()
		out[i] = polprog.Port(p)
		if g.chance(3) {
			out[i].Last = p + uint16(min(int(65535-p), g.r.IntN(3000)))
		}
	}
	return out
}

// id returns a fresh rule ID, or sometimes 0 (no ID, no hit counted).
func (g *atkHostGen) id() uint64 {
	if g.chance(15) {
		return 0
	}
	g.nextID++
	return g.nextID
}

func (g *atkHostGen) rule() polprog.Rule {
	actions := []polprog.Action{polprog.ActionAllow, polprog.ActionAllow, polprog.ActionDeny, polprog.ActionDeny, polprog.ActionPass, polprog.ActionLog}
	r := polprog.Rule{ID: g.id(), Action: actions[g.r.IntN(len(actions))]}
	if g.chance(2) {
		r.Protocol = []string{"tcp", "udp", "icmp", "47"}[g.r.IntN(4)]
	}
	if g.chance(10) {
		r.NotProtocol = []string{"tcp", "udp", "icmp"}[g.r.IntN(3)]
	}
	if r.Protocol == "icmp" && g.chance(2) {
		r.ICMP = &polprog.ICMPMatch{Type: []uint8{0, 3, 8, 11}[g.r.IntN(4)], Code: uint8(g.r.IntN(2)), HasCode: g.chance(2)}
	}
	if r.Protocol == "icmp" && g.chance(4) {
		r.NotICMP = &polprog.ICMPMatch{Type: []uint8{0, 3, 8}[g.r.IntN(3)]}
	}
	for _, p := range []*[]netip.Prefix{&r.SrcNets, &r.NotSrcNets, &r.DstNets, &r.NotDstNets} {
		if g.chance(4) {
			*p = g.prefixes()
		}
	}
	for _, p := range []*[]polprog.PortRange{&r.SrcPorts, &r.NotSrcPorts, &r.DstPorts, &r.NotDstPorts} {
		if g.chance(5) {
			*p = g.portRanges()
		}
	}
	return r
}

func (g *atkHostGen) tiers(max int, name string) []polprog.Tier {
	var tiers []polprog.Tier
	for i := range g.r.IntN(max + 1) {
		t := polprog.Tier{Name: fmt.Sprintf("%s%d", name, i), EndAction: polprog.EndDeny, EndRuleID: g.id()}
		if g.chance(2) {
			t.EndAction, t.EndRuleID = polprog.EndPass, 0
		}
		for j := range 1 + g.r.IntN(2) {
			pol := polprog.Policy{Name: fmt.Sprintf("p%d", j)}
			n := g.r.IntN(5)
			if g.big {
				n = g.r.IntN(25)
			}
			for range n {
				pol.Rules = append(pol.Rules, g.rule())
			}
			t.Policies = append(t.Policies, pol)
		}
		tiers = append(tiers, t)
	}
	return tiers
}

// rules is a random host-endpoint policy; preDNAT adds pre-DNAT tiers,
// which only the endpoint's ingress may have.
func (g *atkHostGen) rules(preDNAT bool) polprog.Rules {
	r := polprog.Rules{ForHost: true, Tiers: g.tiers(3, "normal"), ApplyOnForwardTiers: g.tiers(2, "forward")}
	if preDNAT {
		r.PreDNATTiers = g.tiers(2, "prednat")
	}
	if g.chance(2) {
		var prof polprog.Policy
		for range 1 + g.r.IntN(3) {
			prof.Rules = append(prof.Rules, g.rule())
		}
		r.Profiles = []polprog.Policy{prof}
	}
	r.NoMatchRuleID = g.id()
	return r
}

// routes returns random routes over the pool: the node's own addresses
// and networks, with remote and workload routes inside them that the
// longest match must prefer, and a covering default now and then.
func (g *atkHostGen) routes() []routes.Route {
	seen := map[netip.Prefix]bool{}
	var out []routes.Route
	add := func(r routes.Route) {
		r.Prefix = r.Prefix.Masked()
		if !seen[r.Prefix] {
			seen[r.Prefix] = true
			out = append(out, r)
		}
	}
	hop := netip.MustParseAddr("192.168.99.1")
	for range 2 + g.r.IntN(6) {
		bits := []int{32, 32, 32, 24, 16, 30}[g.r.IntN(6)]
		p := netip.PrefixFrom(g.addr(), bits)
		switch g.r.IntN(6) {
		case 0, 1, 2:
			add(routes.Route{Prefix: p, Flags: routes.FlagLocalHost})
		case 3:
			add(routes.Route{Prefix: p, Flags: routes.FlagLocalWorkload, Ifindex: uint32(2 + g.r.IntN(40))})
		case 4:
			add(routes.Route{Prefix: p, Flags: routes.FlagRemoteWorkload, NextHop: hop})
		default:
			add(routes.Route{Prefix: p, Flags: routes.FlagRemoteHost | routes.FlagTunneled, NextHop: hop})
		}
	}
	if g.chance(5) {
		add(routes.Route{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Flags: routes.FlagLocalHost})
	}
	return out
}

// atkHostPkt is a random packet as the generator chose it.
type atkHostPkt struct {
	proto              uint8
	src, dst           netip.Addr
	sport, dport       uint16
	icmpType, icmpCode uint8
	tcpFlags           testpkt.TCPFlags
}

func (g *atkHostGen) packet() atkHostPkt {
	p := atkHostPkt{src: g.addr(), dst: g.addr()}
	if g.chance(10) {
		p.src = netip.AddrFrom4([4]byte{10, 30, byte(g.r.IntN(4)), byte(g.r.IntN(256))})
	}
	switch g.r.IntN(8) {
	case 0, 1, 2:
		p.proto = testpkt.ProtoTCP
		p.tcpFlags = []testpkt.TCPFlags{testpkt.SYN, testpkt.SYN, testpkt.ACK, testpkt.SYN | testpkt.ACK, testpkt.FIN | testpkt.ACK, testpkt.RST, 0}[g.r.IntN(7)]
	case 3, 4:
		p.proto = testpkt.ProtoUDP
	case 5, 6:
		p.proto = testpkt.ProtoICMPv4
		p.icmpType = []uint8{0, 8, 8, 3, 3, 11, 5, 13, uint8(g.r.IntN(256))}[g.r.IntN(9)]
		p.icmpCode = uint8(g.r.IntN(3))
	default:
		p.proto = []uint8{47, 50, 4}[g.r.IntN(3)]
	}
	if p.proto == testpkt.ProtoTCP || p.proto == testpkt.ProtoUDP {
		p.sport, p.dport = g.port(), g.port()
	}
	if p.proto == testpkt.ProtoICMPv4 && (p.icmpType == 0 || p.icmpType == 8) {
		// The echo identifier: the datapath's conntrack port, never
		// policy's.
		p.sport = uint16(g.r.IntN(65536))
	}
	return p
}

// frame builds the packet. ICMP errors quote a packet of a flow that is
// not tracked.
func (p atkHostPkt) frame(tb testing.TB) []byte {
	src, dst := netip.AddrPortFrom(p.src, p.sport), netip.AddrPortFrom(p.dst, p.dport)
	switch p.proto {
	case testpkt.ProtoTCP:
		return testpkt.MustBytes(tb, testpkt.TCPv4(src, dst, p.tcpFlags, []byte("x")))
	case testpkt.ProtoUDP:
		return testpkt.MustBytes(tb, testpkt.UDPv4(src, dst, []byte("payload")))
	case testpkt.ProtoICMPv4:
		if p.icmpType == 0 || p.icmpType == 8 {
			echo := testpkt.ICMPv4Echo(p.src, p.dst, p.sport, 1, p.icmpType == 0)
			echo.ICMPv4.Code = p.icmpCode
			return testpkt.MustBytes(tb, echo)
		}
		inner := testpkt.MustBytes(tb, testpkt.UDPv4(netip.AddrPortFrom(p.dst, 33000), netip.AddrPortFrom(p.src, 33434), nil))
		return testpkt.MustBytes(tb, testpkt.ICMPv4Error(p.src, p.dst, p.icmpType, p.icmpCode, testpkt.Quote(inner)))
	}
	raw := testpkt.Packet{Eth: testpkt.EthFrame(testpkt.EtherTypeIPv4, nil).Eth,
		IPv4: &testpkt.IPv4{Src: p.src, Dst: p.dst, Protocol: p.proto, TTL: 64}, Payload: make([]byte, 24)}
	return testpkt.MustBytes(tb, raw)
}

// model is what policy sees of the packet: ports only for TCP and UDP.
func (p atkHostPkt) model(t *routes.Table) polprog.Packet {
	flags := routes.HostFlags(t, p.src, p.dst)
	m := polprog.Packet{Src: p.src, Dst: p.dst, Protocol: p.proto,
		SrcIsHost: flags&bpf.StateFlagSrcIsHost != 0, DstIsHost: flags&bpf.StateFlagDstIsHost != 0}
	switch p.proto {
	case testpkt.ProtoTCP, testpkt.ProtoUDP:
		m.SrcPort, m.DstPort = p.sport, p.dport
	case testpkt.ProtoICMPv4:
		m.ICMPType, m.ICMPCode = p.icmpType, p.icmpCode
	}
	return m
}

// ctKey is the entry policy's allow creates for the packet.
func (p atkHostPkt) ctKey() bpf.CTKey {
	sport, dport := p.sport, p.dport
	switch {
	case p.proto == testpkt.ProtoICMPv4 && (p.icmpType == 0 || p.icmpType == 8):
		sport, dport = conntrack.EchoPorts(p.icmpType == 8, sport)
	case p.proto != testpkt.ProtoTCP && p.proto != testpkt.ProtoUDP:
		sport, dport = 0, 0
	}
	k, _ := ctKeyOf(p.proto, netip.AddrPortFrom(p.src, sport), netip.AddrPortFrom(p.dst, dport))
	return k
}

func (p atkHostPkt) String() string {
	s := fmt.Sprintf("proto %d %s:%d -> %s:%d", p.proto, p.src, p.sport, p.dst, p.dport)
	switch p.proto {
	case testpkt.ProtoTCP:
		s += " " + p.tcpFlags.String()
	case testpkt.ProtoICMPv4:
		s += fmt.Sprintf(" icmp %d/%d", p.icmpType, p.icmpCode)
	}
	return s
}

// TestHostPolicyMatchesEvaluate is the differential test of the datapath
// on host interfaces: for many random host-endpoint policies (pre-DNAT,
// normal and apply-on-forward tiers and profiles, with pass, log and tier
// ends), each over random routes that make some addresses the node's, it
// runs random IPv4 packets at a host interface's TC ingress and egress
// hooks (lo, and a veth in a test namespace) and holds the verdict, the
// counter and the rule hits of every packet to polprog.Evaluate with
// SrcIsHost and DstIsHost from routes.HostFlags on a routes.Table of the
// same routes. The entry of every allowed packet is removed, so that every
// packet reaches policy.
func TestHostPolicyMatchesEvaluate(t *testing.T) {
	rounds := 200
	if testing.Short() {
		rounds = 30
	}
	atkHostDifferential(t, atkNewEnv(t, "atkhost"), atkNewHostGen(7), rounds, 110, 1)
}

// TestHostSplitPolicyMatchesEvaluate is TestHostPolicyMatchesEvaluate with
// policies compiled into many parts (a part ends after a few dozen
// jumps, so the stages of host policy are cut apart and resumed across
// tail calls) and with runs of rules merged into lookups.
func TestHostSplitPolicyMatchesEvaluate(t *testing.T) {
	rounds := 60
	if testing.Short() {
		rounds = 10
	}
	e := atkNewEnvWith(t, polprog.Options{SplitJumps: 40, MergeThreshold: 2, MaxParts: polprog.MaxParts}, "atkhost")
	g := atkNewHostGen(11)
	g.big = true
	atkHostDifferential(t, e, g, rounds, 110, 4)
}

// atkHostDifferential runs the differential test of host policy: rounds
// policies of perRound packets each; some policy must have compiled into
// at least minParts parts.
func atkHostDifferential(t *testing.T, e *atkEnv, g *atkHostGen, rounds, perRound, minParts int) {
	total, mismatches := 0, 0
	// cover counts the deciding stage and verdict, and the host flags, of
	// the packets, to show that every path of host policy was taken.
	cover := map[string]int{}
	maxParts := 0
	for round := range rounds {
		iface := "lo"
		if round%2 == 1 {
			iface = "atkhost"
		}
		rs := g.routes()
		table, err := routes.NewTable(rs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.d.Routes().Sync(rs); err != nil {
			t.Fatal(err)
		}
		in, out := g.rules(true), g.rules(false)
		e.set(iface, Interface{Kind: Host, Ingress: in, Egress: out})
		for _, r := range []polprog.Rules{in, out} {
			c, err := polprog.Compile(r, e.d.opts.Policy)
			if err != nil {
				t.Fatal(err)
			}
			maxParts = max(maxParts, len(c.Parts))
		}
		evals := map[bpf.Hook]*polprog.Evaluator{}
		for hk, r := range map[bpf.Hook]polprog.Rules{bpf.HookIngress: in, bpf.HookEgress: out} {
			if evals[hk], err = polprog.NewEvaluator(r); err != nil {
				t.Fatal(err)
			}
		}
		idx := e.idx(iface)
		stages := map[bpf.Hook]map[uint64]string{bpf.HookIngress: atkRuleStages(in), bpf.HookEgress: atkRuleStages(out)}
		// wantHits are the model's hit totals of this round's rule IDs
		// (IDs are never reused across rounds).
		wantHits := map[uint64]uint64{}
		ids := atkRuleIDs(in, out)
		for _, id := range ids {
			wantHits[id] = 0
		}
		packets := make([]atkHostPkt, perRound)
		for i := range packets {
			packets[i] = g.packet()
		}
		runRound := func() error {
			for i, p := range packets {
				hook := bpf.Hook(g.r.IntN(2))
				want := evals[hook].Evaluate(nil, p.model(table))
				before := e.counters(iface, hook)
				ret, err := programOf(e.d, hookProg(hook)).Run(&ebpf.RunOptions{Data: p.frame(t), Context: skbCtx{Ifindex: idx, IngressIfindex: idx}})
				if err != nil {
					return fmt.Errorf("round %d packet %d: %w", round, i, err)
				}
				total++
				wantReason, wantRet := bpf.ReasonDroppedByPolicy, uint32(tcActShot)
				if hook == bpf.HookIngress && !routes.HostSourceAllowed(table, p.src) {
					// The host interface's reverse-path check drops it
					// before policy: the model decides nothing.
					want = polprog.Decision{Verdict: polprog.VerdictDeny}
					wantReason = bpf.ReasonDroppedRPF
					cover["host source dropped"]++
				} else if want.Verdict == polprog.VerdictAllow {
					wantReason, wantRet = bpf.ReasonAcceptedByPolicy, tcActOK
					e.ctDelete(p.ctKey())
				}
				for _, id := range want.Hits {
					wantHits[id]++
				}
				stage := stages[hook][want.RuleID]
				if want.RuleID == 0 {
					stage = "no ID"
				}
				m := p.model(table)
				cover[fmt.Sprintf("%s %s", stage, want.Verdict)]++
				cover[fmt.Sprintf("src host %t, dst host %t", m.SrcIsHost, m.DstIsHost)]++
				var problems []string
				if ret != wantRet {
					problems = append(problems, fmt.Sprintf("verdict %d, want %d", ret, wantRet))
				}
				if got := reasonDelta(before, e.counters(iface, hook)); !maps.Equal(got, one(wantReason)) {
					problems = append(problems, fmt.Sprintf("counters %v, want %v", got, one(wantReason)))
				}
				for _, id := range slices.Compact(slices.Sorted(slices.Values(want.Hits))) {
					if got := e.hits(id); got != wantHits[id] {
						problems = append(problems, fmt.Sprintf("rule %d hit %d times, model %d", id, got, wantHits[id]))
					}
				}
				if len(problems) > 0 {
					mismatches++
					if mismatches <= 10 {
						t.Errorf("round %d at %s %s, %s: model %s by rule %d (hits %v, src host %t, dst host %t): %v\nroutes %v\nrules %+v",
							round, iface, hook, p, want.Verdict, want.RuleID, want.Hits, p.model(table).SrcIsHost, p.model(table).DstIsHost,
							problems, rs, map[bpf.Hook]polprog.Rules{bpf.HookIngress: in, bpf.HookEgress: out}[hook])
					}
					// Resynchronise the model's totals with the kernel's.
					for _, id := range want.Hits {
						wantHits[id] = e.hits(id)
					}
				}
			}
			return nil
		}
		if iface == "lo" {
			err = runRound()
		} else {
			err = atkInNS(t, e.ns.Name, runRound)
		}
		if err != nil {
			t.Fatal(err)
		}
		// Every rule of the round was hit exactly as often as the model
		// says: no packet counted a rule the model did not name.
		for _, id := range ids {
			if got := e.hits(id); got != wantHits[id] {
				mismatches++
				if mismatches <= 10 {
					t.Errorf("round %d: rule %d hit %d times in all, model %d", round, id, got, wantHits[id])
				}
			}
		}
	}
	if mismatches > 10 {
		t.Errorf("%d mismatches in all (first 10 shown)", mismatches)
	}
	if total < 20000 && rounds >= 200 {
		t.Errorf("ran %d packets, want at least 20000", total)
	}
	t.Logf("%d packets over %d policies (up to %d parts), %d mismatches; coverage %v", total, rounds, maxParts, mismatches, cover)
	if maxParts < minParts {
		t.Errorf("policies compiled into at most %d parts, want some of at least %d", maxParts, minParts)
	}
	for _, c := range []string{"pre-DNAT allow", "pre-DNAT deny", "normal allow", "normal deny", "apply-on-forward allow",
		"apply-on-forward deny", "profile allow", "profile deny", "no ID allow", "no ID deny",
		"src host true, dst host true", "src host true, dst host false", "src host false, dst host true", "src host false, dst host false"} {
		if cover[c] < rounds/30 {
			t.Errorf("only %d packets of kind %q: the generator misses a path of host policy", cover[c], c)
		}
	}
}

// atkRuleIDs lists every non-zero rule and tier-end ID of the rules.
func atkRuleIDs(rules ...polprog.Rules) []uint64 {
	var ids []uint64
	for _, r := range rules {
		for id := range atkRuleStages(r) {
			ids = append(ids, id)
		}
	}
	return ids
}

// atkRuleStages names the stage of host policy each non-zero rule and
// tier-end ID of r belongs to.
func atkRuleStages(r polprog.Rules) map[uint64]string {
	stages := map[uint64]string{}
	add := func(id uint64, stage string) {
		if id != 0 {
			stages[id] = stage
		}
	}
	add(r.NoMatchRuleID, "normal")
	for stage, tiers := range map[string][]polprog.Tier{"pre-DNAT": r.PreDNATTiers, "normal": r.Tiers,
		"apply-on-forward": r.ApplyOnForwardTiers, "profile": {{Policies: r.Profiles}}} {
		for _, t := range tiers {
			add(t.EndRuleID, stage)
			for _, p := range t.Policies {
				for _, rule := range p.Rules {
					add(rule.ID, stage)
				}
			}
		}
	}
	return stages
}

// TestHostPreDNATOnlyOnIngress checks that SetInterface refuses pre-DNAT
// tiers in a host endpoint's Egress (they apply to traffic into the host
// only) and leaves the interface as it was.
func TestHostPreDNATOnlyOnIngress(t *testing.T) {
	e := atkNewEnv(t, "atkhost")
	e.set("atkhost", Interface{Kind: Host, Ingress: atkAllowAll(1), Egress: atkAllowAll(3)})
	before, err := e.d.InterfaceEntry(int(e.idx("atkhost")))
	if err != nil {
		t.Fatal(err)
	}
	bad := atkAllowAll(5)
	bad.PreDNATTiers = atkRules(8, polprog.Rule{ID: 7, Action: polprog.ActionDeny}).Tiers
	err = e.d.SetInterface(int(e.idx("atkhost")), Interface{Kind: Host, Ingress: atkAllowAll(1), Egress: bad})
	if err == nil {
		t.Fatal("SetInterface took pre-DNAT tiers in a host endpoint's Egress")
	}
	after, err2 := e.d.InterfaceEntry(int(e.idx("atkhost")))
	if err2 != nil {
		t.Fatal(err2)
	}
	if before != after {
		t.Errorf("failed SetInterface changed the entry: %+v, was %+v (error %v)", after, before, err)
	}
}
