package polprog

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// IDs used by the table: a rule that matches reports ruleA (or ruleB...),
// the tier end tierEnd, nothing at all noMatch.
const (
	ruleA   = 1
	ruleB   = 2
	ruleC   = 3
	tierEnd = 900
	noMatch = 999
)

// basePacket is TCP 10.0.1.5:40000 -> 10.0.2.7:80, DNATed from
// 192.168.0.10:8080.
var basePacket = Packet{
	Src: mustAddr("10.0.1.5"), Dst: mustAddr("10.0.2.7"), PreNATDst: mustAddr("192.168.0.10"),
	SrcPort: 40000, DstPort: 80, PreNATDstPort: 8080, Protocol: 6,
}

var icmpPacket = Packet{Src: mustAddr("10.0.1.5"), Dst: mustAddr("10.0.2.7"), Protocol: 1, ICMPType: 8, ICMPCode: 0}

// v6Packet is TCP [2001:db8::a00:105]:40000 -> [fd00::2:7]:80: its source's
// last 32 bits are basePacket's source, 10.0.1.5, so a compare of the
// last word alone would match IPv4 CIDRs and sets.
var v6Packet = Packet{Src: mustAddr("2001:db8::a00:105"), Dst: mustAddr("fd00::2:7"),
	SrcPort: 40000, DstPort: 80, Protocol: 6}

// v6MarkedPacket's source has 00 00 ff ff where IPv4-mapped addresses do,
// under a non-zero upper half.
var v6MarkedPacket = Packet{Src: mustAddr("2001:db8::ffff:a00:105"), Dst: mustAddr("fd00::2:7"),
	SrcPort: 40000, DstPort: 80, Protocol: 6}

var icmp6Packet = Packet{Src: mustAddr("fd00::1:5"), Dst: mustAddr("fd00::2:7"), Protocol: 58, ICMPType: 128, ICMPCode: 0}

// tableSets: set 10 holds 10.0.1.0/24, set 11 holds 10.0.2.7/32, set 12
// holds 172.16.0.0/12, set 20 holds the named port (10.0.2.7, tcp, 80), set
// 21 the named port (10.0.1.5, tcp, 40000), set 22 (10.0.2.7, udp, 80).
var tableSets = IPSetMembers{
	10: {Nets: []netip.Prefix{mustPrefix("10.0.1.0/24")}},
	11: {Nets: []netip.Prefix{mustPrefix("10.0.2.7/32")}},
	12: {Nets: []netip.Prefix{mustPrefix("172.16.0.0/12")}},
	20: {NamedPorts: []NamedPortMember{{Addr: mustAddr("10.0.2.7"), Protocol: 6, Port: 80}}},
	// IPv6 members that contain IPv4-mapped addresses, and the IPv4
	// /0: none of them may match the other family.
	13: {Nets: []netip.Prefix{mustPrefix("::/0")}},
	14: {Nets: []netip.Prefix{mustPrefix("::ffff:0:0/95"), mustPrefix("::/8")}},
	15: {Nets: []netip.Prefix{mustPrefix("0.0.0.0/0")}},
	16: {Nets: []netip.Prefix{mustPrefix("2001:db8::/32")}},
	23: {NamedPorts: []NamedPortMember{{Addr: mustAddr("fd00::2:7"), Protocol: 6, Port: 80}}},
	21: {NamedPorts: []NamedPortMember{{Addr: mustAddr("10.0.1.5"), Protocol: 6, Port: 40000}}},
	22: {NamedPorts: []NamedPortMember{{Addr: mustAddr("10.0.2.7"), Protocol: 17, Port: 80}}},
}

// oneRule is a workload policy of one tier holding r as ruleA.
func oneRule(r Rule) Rules {
	r.ID = ruleA
	if r.Action == 0 {
		r.Action = ActionAllow
	}
	return Rules{Tiers: []Tier{{Name: "t", EndRuleID: tierEnd, Policies: []Policy{{Name: "p", Rules: []Rule{r}}}}},
		NoMatchRuleID: noMatch}
}

type tableCase struct {
	name  string
	rules Rules
	pkt   Packet
	want  Decision
}

var (
	allowA  = Decision{Verdict: VerdictAllow, RuleID: ruleA}
	endDeny = Decision{Verdict: VerdictDeny, RuleID: tierEnd}
)

func fieldCases() []tableCase {
	icmpCode := func(t, c uint8) *ICMPMatch { return &ICMPMatch{Type: t, Code: c, HasCode: true} }
	type fc struct {
		name  string
		rule  Rule
		pkt   Packet
		match bool
	}
	list := []fc{
		{"protocol name", Rule{Protocol: "tcp"}, basePacket, true},
		{"protocol number", Rule{Protocol: "6"}, basePacket, true},
		{"protocol other", Rule{Protocol: "udp"}, basePacket, false},
		{"not protocol same", Rule{NotProtocol: "tcp"}, basePacket, false},
		{"not protocol other", Rule{NotProtocol: "17"}, basePacket, true},
		{"src net", Rule{SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/16")}}, basePacket, true},
		{"src net miss", Rule{SrcNets: []netip.Prefix{mustPrefix("10.1.0.0/16")}}, basePacket, false},
		{"src nets ORed", Rule{SrcNets: []netip.Prefix{mustPrefix("10.1.0.0/16"), mustPrefix("10.0.1.5/32")}}, basePacket, true},
		{"src net /0", Rule{SrcNets: []netip.Prefix{mustPrefix("0.0.0.0/0")}}, basePacket, true},
		{"not src net hit", Rule{NotSrcNets: []netip.Prefix{mustPrefix("10.9.0.0/16"), mustPrefix("10.0.1.0/24")}}, basePacket, false},
		{"not src net miss", Rule{NotSrcNets: []netip.Prefix{mustPrefix("10.9.0.0/16")}}, basePacket, true},
		{"dst net", Rule{DstNets: []netip.Prefix{mustPrefix("10.0.2.7/32")}}, basePacket, true},
		{"dst net is post-DNAT", Rule{DstNets: []netip.Prefix{mustPrefix("192.168.0.0/24")}}, basePacket, false},
		{"not dst net hit", Rule{NotDstNets: []netip.Prefix{mustPrefix("10.0.2.0/24")}}, basePacket, false},
		{"not dst net miss", Rule{NotDstNets: []netip.Prefix{mustPrefix("10.0.3.0/24")}}, basePacket, true},
		{"src ip set", Rule{SrcIPSets: []uint64{10}}, basePacket, true},
		{"src ip sets all", Rule{SrcIPSets: []uint64{10, 12}}, basePacket, false},
		{"src ip set unknown", Rule{SrcIPSets: []uint64{77}}, basePacket, false},
		{"not src ip set hit", Rule{NotSrcIPSets: []uint64{12, 10}}, basePacket, false},
		{"not src ip set miss", Rule{NotSrcIPSets: []uint64{12}}, basePacket, true},
		{"dst ip set", Rule{DstIPSets: []uint64{11}}, basePacket, true},
		{"dst ip set miss", Rule{DstIPSets: []uint64{10}}, basePacket, false},
		{"not dst ip set hit", Rule{NotDstIPSets: []uint64{11}}, basePacket, false},
		{"not dst ip set miss", Rule{NotDstIPSets: []uint64{10}}, basePacket, true},
		{"named port set is not an address", Rule{DstIPSets: []uint64{20}}, basePacket, false},
		{"src port range", Rule{SrcPorts: []PortRange{{32768, 60999}}}, basePacket, true},
		{"src port miss", Rule{SrcPorts: []PortRange{{1, 1023}}}, basePacket, false},
		{"not src port hit", Rule{NotSrcPorts: []PortRange{{40000, 40000}}}, basePacket, false},
		{"not src port miss", Rule{NotSrcPorts: []PortRange{{1, 39999}, {40001, 65535}}}, basePacket, true},
		{"dst port", Rule{DstPorts: []PortRange{Port(443), Port(80)}}, basePacket, true},
		{"dst port miss", Rule{DstPorts: []PortRange{Port(8080)}}, basePacket, false},
		{"not dst port hit", Rule{NotDstPorts: []PortRange{{0, 100}}}, basePacket, false},
		{"not dst port miss", Rule{NotDstPorts: []PortRange{{81, 65535}}}, basePacket, true},
		{"dst named port", Rule{DstNamedPorts: []uint64{20}}, basePacket, true},
		{"dst named port other proto", Rule{DstNamedPorts: []uint64{22}}, basePacket, false},
		{"dst named port ORed with range", Rule{DstPorts: []PortRange{Port(1)}, DstNamedPorts: []uint64{22, 20}}, basePacket, true},
		{"dst named port via CIDR member", Rule{DstNamedPorts: []uint64{11}}, basePacket, true},
		{"not dst named port hit", Rule{NotDstNamedPorts: []uint64{20}}, basePacket, false},
		{"not dst named port miss", Rule{NotDstNamedPorts: []uint64{22}}, basePacket, true},
		{"src named port", Rule{SrcNamedPorts: []uint64{21}}, basePacket, true},
		{"src named port miss", Rule{SrcNamedPorts: []uint64{20}}, basePacket, false},
		{"not src named port hit", Rule{NotSrcNamedPorts: []uint64{21}}, basePacket, false},
		{"not src named port miss", Rule{NotSrcNamedPorts: []uint64{20}}, basePacket, true},
		{"icmp type", Rule{Protocol: "icmp", ICMP: &ICMPMatch{Type: 8}}, icmpPacket, true},
		{"icmp type miss", Rule{Protocol: "icmp", ICMP: &ICMPMatch{Type: 0}}, icmpPacket, false},
		{"icmp type and code", Rule{Protocol: "icmp", ICMP: icmpCode(8, 0)}, icmpPacket, true},
		{"icmp code miss", Rule{Protocol: "icmp", ICMP: icmpCode(8, 1)}, icmpPacket, false},
		{"not icmp type hit", Rule{Protocol: "icmp", NotICMP: &ICMPMatch{Type: 8}}, icmpPacket, false},
		{"not icmp type miss", Rule{Protocol: "icmp", NotICMP: &ICMPMatch{Type: 3}}, icmpPacket, true},
		{"not icmp type and code hit", Rule{Protocol: "icmp", NotICMP: icmpCode(8, 0)}, icmpPacket, false},
		{"not icmp code differs", Rule{Protocol: "icmp", NotICMP: icmpCode(8, 1)}, icmpPacket, true},
		{"not icmp type differs", Rule{Protocol: "icmp", NotICMP: icmpCode(3, 0)}, icmpPacket, true},
		{"v4 net, v6 source with the same low bits", Rule{SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}}, v6Packet, false},
		{"v4 host, v6 source with the same low bits", Rule{SrcNets: []netip.Prefix{mustPrefix("10.0.1.5/32")}}, v6Packet, false},
		{"v4 net, v6 source with mapped-like bytes", Rule{SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}}, v6MarkedPacket, false},
		{"v4 /0, v6 source", Rule{SrcNets: []netip.Prefix{mustPrefix("0.0.0.0/0")}}, v6Packet, false},
		{"v4 nets ORed, v6 source", Rule{SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("0.0.0.0/0")}}, v6Packet, false},
		{"not v4 net, v6 source", Rule{NotSrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8")}}, v6Packet, true},
		{"not v4 /0, v6 source", Rule{NotSrcNets: []netip.Prefix{mustPrefix("0.0.0.0/0")}}, v6Packet, true},
		{"v6 net", Rule{SrcNets: []netip.Prefix{mustPrefix("2001:db8::/32")}}, v6Packet, true},
		{"v6 host", Rule{SrcNets: []netip.Prefix{mustPrefix("2001:db8::a00:105/128")}}, v6Packet, true},
		{"v6 net miss in the last word", Rule{SrcNets: []netip.Prefix{mustPrefix("2001:db8::a00:106/127")}}, v6Packet, false},
		{"v6 /0, v4 source", Rule{SrcNets: []netip.Prefix{mustPrefix("::/0")}}, basePacket, false},
		{"v6 /0, v6 source", Rule{SrcNets: []netip.Prefix{mustPrefix("::/0")}}, v6Packet, true},
		{"v6 ::/8, v4 source", Rule{SrcNets: []netip.Prefix{mustPrefix("::/8")}}, basePacket, false},
		{"v6 ::ffff:0:0/95, v4 source", Rule{SrcNets: []netip.Prefix{mustPrefix("::ffff:0:0/95")}}, basePacket, false},
		{"not v6 /0, v4 source", Rule{NotSrcNets: []netip.Prefix{mustPrefix("::/0")}}, basePacket, true},
		{"not v6 /0, v6 source", Rule{NotSrcNets: []netip.Prefix{mustPrefix("::/0")}}, v6Packet, false},
		{"mixed nets, v4 source", Rule{SrcNets: []netip.Prefix{mustPrefix("::/0"), mustPrefix("10.0.1.0/24")}}, basePacket, true},
		{"mixed nets, v6 source", Rule{SrcNets: []netip.Prefix{mustPrefix("10.0.1.0/24"), mustPrefix("2001:db8::/32")}}, v6Packet, true},
		{"mixed nets miss, v6 source", Rule{SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("fd00::/8")}}, v6Packet, false},
		{"not mixed nets, v6 source", Rule{NotSrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("2001:db8::/32")}}, v6Packet, false},
		{"v6 dst net", Rule{DstNets: []netip.Prefix{mustPrefix("fd00::/16")}}, v6Packet, true},
		{"ip set ::/0, v4 source", Rule{SrcIPSets: []uint64{13}}, basePacket, false},
		{"ip set ::/0, v6 source", Rule{SrcIPSets: []uint64{13}}, v6Packet, true},
		{"ip set ::ffff:0:0/95 and ::/8, v4 source", Rule{SrcIPSets: []uint64{14}}, basePacket, false},
		{"ip set 0.0.0.0/0, v6 source", Rule{SrcIPSets: []uint64{15}}, v6Packet, false},
		{"ip set 10.0.1.0/24, v6 source with its low bits", Rule{SrcIPSets: []uint64{10}}, v6Packet, false},
		{"ip set v6 net", Rule{SrcIPSets: []uint64{16}}, v6Packet, true},
		{"not ip set ::/0, v4 source", Rule{NotSrcIPSets: []uint64{13}}, basePacket, true},
		{"v6 named port", Rule{DstNamedPorts: []uint64{23}}, v6Packet, true},
		{"v4 named port, v6 packet", Rule{DstNamedPorts: []uint64{20}}, v6Packet, false},
		{"named port via ::/0, v4 packet", Rule{DstNamedPorts: []uint64{13}}, basePacket, false},
		{"icmpv6 type", Rule{Protocol: "icmpv6", ICMP: &ICMPMatch{Type: 128}}, icmp6Packet, true},
		{"icmpv6 type and code", Rule{Protocol: "icmpv6", ICMP: icmpCode(128, 0)}, icmp6Packet, true},
		{"icmpv6 type miss", Rule{Protocol: "icmpv6", ICMP: &ICMPMatch{Type: 129}}, icmp6Packet, false},
		{"icmp rule, icmpv6 packet", Rule{Protocol: "icmp", ICMP: &ICMPMatch{Type: 128}}, icmp6Packet, false},
		{"not icmpv6 type hit", Rule{Protocol: "icmpv6", NotICMP: &ICMPMatch{Type: 128}}, icmp6Packet, false},
		{"fields ANDed", Rule{Protocol: "tcp", SrcIPSets: []uint64{10}, DstPorts: []PortRange{Port(81)}}, basePacket, false},
	}
	var out []tableCase
	for _, c := range list {
		want := endDeny
		if c.match {
			want = allowA
		}
		out = append(out, tableCase{name: "field/" + c.name, rules: oneRule(c.rule), pkt: c.pkt, want: want})
	}
	return out
}

func mkTier(name string, end EndAction, rules ...Rule) Tier {
	return Tier{Name: name, EndAction: end, EndRuleID: tierEnd, Policies: []Policy{{Name: name + "-pol", Rules: rules}}}
}

func structureCases() []tableCase {
	tcp := Rule{Protocol: "tcp"}
	with := func(r Rule, id uint64, a Action) Rule { r.ID, r.Action = id, a; return r }
	denyTCP, allowTCP, passTCP, logTCP := with(tcp, ruleA, ActionDeny), with(tcp, ruleB, ActionAllow), with(tcp, ruleA, ActionPass), with(tcp, ruleC, ActionLog)
	allowAll := Rule{ID: ruleB, Action: ActionAllow}
	return []tableCase{
		{"action/deny", Rules{Tiers: []Tier{mkTier("a", EndDeny, denyTCP, allowAll)}}, basePacket,
			Decision{Verdict: VerdictDeny, RuleID: ruleA}},
		{"action/pass to next tier", Rules{Tiers: []Tier{mkTier("a", EndDeny, passTCP, with(tcp, ruleC, ActionDeny)), mkTier("b", EndDeny, allowAll)}},
			basePacket, Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"action/log continues", Rules{Tiers: []Tier{mkTier("a", EndDeny, logTCP, allowTCP)}}, basePacket,
			Decision{Verdict: VerdictAllow, RuleID: ruleB, Logged: true}},
		{"action/first match wins", Rules{Tiers: []Tier{mkTier("a", EndDeny, allowTCP, denyTCP)}}, basePacket,
			Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"tier/end deny", Rules{Tiers: []Tier{mkTier("a", EndDeny, with(Rule{Protocol: "udp"}, ruleA, ActionAllow)), mkTier("b", EndDeny, allowAll)}},
			basePacket, endDeny},
		{"tier/end pass", Rules{Tiers: []Tier{mkTier("a", EndPass, with(Rule{Protocol: "udp"}, ruleA, ActionAllow)), mkTier("b", EndDeny, allowAll)}},
			basePacket, Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"tier/empty tier denies", Rules{Tiers: []Tier{{Name: "empty", EndRuleID: tierEnd}}}, basePacket, endDeny},
		{"profiles/after passing tiers", Rules{Tiers: []Tier{mkTier("a", EndPass)}, Profiles: []Policy{{Name: "prof", Rules: []Rule{allowAll}}}},
			basePacket, Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"profiles/pass denies", Rules{Profiles: []Policy{{Rules: []Rule{passTCP, allowAll}}}}, basePacket,
			Decision{Verdict: VerdictDeny, RuleID: ruleA}},
		{"profiles/no match", Rules{Profiles: []Policy{{Rules: []Rule{with(Rule{Protocol: "udp"}, ruleA, ActionAllow)}}}, NoMatchRuleID: noMatch},
			basePacket, Decision{Verdict: VerdictDeny, RuleID: noMatch}},
		{"no rules at all", Rules{NoMatchRuleID: noMatch}, basePacket, Decision{Verdict: VerdictDeny, RuleID: noMatch}},
	}
}

// hostCases are the semantics of host endpoints (see Rules), as Calico's
// BPF policy programs have them.
func hostCases() []tableCase {
	tcp, udp := Rule{Protocol: "tcp"}, Rule{Protocol: "udp"}
	with := func(r Rule, id uint64, a Action) Rule { r.ID, r.Action = id, a; return r }
	allowAll, denyAll := Rule{ID: ruleB, Action: ActionAllow}, Rule{ID: ruleB, Action: ActionDeny}
	hostPkt, fromHostPkt, fwdPkt := basePacket, basePacket, basePacket
	hostPkt.DstIsHost = true
	fromHostPkt.SrcIsHost = true
	host := func(r Rules) Rules { r.ForHost, r.NoMatchRuleID = true, noMatch; return r }
	normalAllows := []Tier{mkTier("n", EndDeny, allowAll)}
	normalDenies := []Tier{mkTier("n", EndDeny, denyAll)}
	fwdDenies := []Tier{mkTier("f", EndDeny, denyAll)}
	return []tableCase{
		// Pre-DNAT tiers.
		{"host/pre-DNAT deny", host(Rules{PreDNATTiers: []Tier{mkTier("pre", EndPass, with(tcp, ruleA, ActionDeny))}, Tiers: normalAllows}),
			hostPkt, Decision{Verdict: VerdictDeny, RuleID: ruleA}},
		{"host/pre-DNAT matches pre-DNAT destination", host(Rules{
			PreDNATTiers: []Tier{mkTier("pre", EndPass, with(Rule{DstNets: []netip.Prefix{mustPrefix("192.168.0.10/32")}, DstPorts: []PortRange{Port(8080)}}, ruleA, ActionDeny))},
			Tiers:        normalAllows}),
			hostPkt, Decision{Verdict: VerdictDeny, RuleID: ruleA}},
		{"host/pre-DNAT allow allows", host(Rules{PreDNATTiers: []Tier{mkTier("pre", EndDeny, with(tcp, ruleC, ActionAllow))}, Tiers: normalDenies}),
			hostPkt, Decision{Verdict: VerdictAllow, RuleID: ruleC}},
		{"host/pre-DNAT allow skips apply-on-forward", host(Rules{PreDNATTiers: []Tier{mkTier("pre", EndDeny, with(tcp, ruleC, ActionAllow))},
			ApplyOnForwardTiers: fwdDenies}),
			fwdPkt, Decision{Verdict: VerdictAllow, RuleID: ruleC}},
		{"host/pre-DNAT log then allow", host(Rules{PreDNATTiers: []Tier{mkTier("pre", EndDeny, with(tcp, ruleA, ActionLog), with(tcp, ruleC, ActionAllow))},
			Tiers: normalDenies}),
			hostPkt, Decision{Verdict: VerdictAllow, RuleID: ruleC, Logged: true}},
		{"host/pre-DNAT end deny", host(Rules{PreDNATTiers: []Tier{mkTier("pre", EndDeny, with(udp, ruleC, ActionAllow))}, Tiers: normalAllows}),
			hostPkt, endDeny},
		{"host/pre-DNAT end pass continues", host(Rules{PreDNATTiers: []Tier{mkTier("pre", EndPass, with(udp, ruleC, ActionAllow))}, Tiers: normalAllows}),
			hostPkt, Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"host/pre-DNAT pass rule continues", host(Rules{PreDNATTiers: []Tier{mkTier("pre", EndDeny, with(tcp, ruleA, ActionPass), with(tcp, ruleC, ActionDeny))},
			Tiers: normalAllows}),
			hostPkt, Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"host/pre-DNAT passes into apply-on-forward", host(Rules{PreDNATTiers: []Tier{mkTier("pre", EndPass)}, ApplyOnForwardTiers: fwdDenies}),
			fwdPkt, Decision{Verdict: VerdictDeny, RuleID: ruleB}},
		// Normal host stage: traffic from or to the host.
		{"host/normal tiers for traffic to the host", host(Rules{Tiers: normalAllows, ApplyOnForwardTiers: fwdDenies}),
			hostPkt, Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"host/normal tiers for traffic from the host", host(Rules{Tiers: normalDenies, ApplyOnForwardTiers: []Tier{mkTier("f", EndDeny, allowAll)}}),
			fromHostPkt, Decision{Verdict: VerdictDeny, RuleID: ruleB}},
		{"host/profiles after normal tiers", host(Rules{Tiers: []Tier{mkTier("n", EndPass)}, Profiles: []Policy{{Rules: []Rule{allowAll}}}}),
			hostPkt, Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"host/normal stage no match denies", host(Rules{Tiers: []Tier{mkTier("n", EndPass)}, ApplyOnForwardTiers: []Tier{mkTier("f", EndDeny, allowAll)}}),
			hostPkt, Decision{Verdict: VerdictDeny, RuleID: noMatch}},
		{"host/no tiers at all denies host traffic", host(Rules{}), hostPkt, Decision{Verdict: VerdictDeny, RuleID: noMatch}},
		// Forwarded traffic: apply-on-forward tiers.
		{"host/forward deny rule", host(Rules{Tiers: normalAllows, ApplyOnForwardTiers: []Tier{mkTier("f", EndDeny, with(tcp, ruleA, ActionDeny))}}),
			fwdPkt, Decision{Verdict: VerdictDeny, RuleID: ruleA}},
		{"host/forward allow rule", host(Rules{Tiers: normalDenies, ApplyOnForwardTiers: []Tier{mkTier("f", EndDeny, allowAll)}}),
			fwdPkt, Decision{Verdict: VerdictAllow, RuleID: ruleB}},
		{"host/forward end deny", host(Rules{ApplyOnForwardTiers: []Tier{mkTier("f", EndDeny, with(udp, ruleA, ActionAllow))}}),
			fwdPkt, endDeny},
		{"host/forward with no tiers allows", host(Rules{Tiers: normalDenies, Profiles: []Policy{{Rules: []Rule{denyAll}}}}),
			fwdPkt, Decision{Verdict: VerdictAllow}},
		{"host/forward with nothing at all allows", host(Rules{}), fwdPkt, Decision{Verdict: VerdictAllow}},
		{"host/forward tiers all passing allow", host(Rules{Tiers: normalDenies,
			ApplyOnForwardTiers: []Tier{mkTier("f1", EndPass, with(udp, ruleA, ActionDeny)), mkTier("f2", EndPass)}}),
			fwdPkt, Decision{Verdict: VerdictAllow}},
		{"host/forward pass rule then allow", host(Rules{
			ApplyOnForwardTiers: []Tier{mkTier("f", EndDeny, with(tcp, ruleA, ActionPass))}}),
			fwdPkt, Decision{Verdict: VerdictAllow}},
		{"host/forward log then default allow", host(Rules{
			ApplyOnForwardTiers: []Tier{mkTier("f", EndPass, with(tcp, ruleC, ActionLog))}}),
			fwdPkt, Decision{Verdict: VerdictAllow, Logged: true}},
	}
}

func tableCases() []tableCase {
	return slices.Concat(fieldCases(), structureCases(), hostCases())
}

var decisionCmp = cmpopts.IgnoreFields(Decision{}, "Hits")

// TestEvaluateHostHits checks the counters Evaluate reports on the host
// paths: a pre-DNAT allow counts only itself, a forwarded packet allowed by
// default counts nothing.
func TestEvaluateHostHits(t *testing.T) {
	fwdPkt := basePacket
	for _, tc := range []struct {
		name  string
		rules Rules
		want  Decision
	}{
		{"pre-DNAT allow", Rules{ForHost: true, PreDNATTiers: []Tier{mkTier("pre", EndDeny,
			Rule{ID: ruleA, Action: ActionLog}, Rule{ID: ruleC, Action: ActionAllow})},
			ApplyOnForwardTiers: []Tier{mkTier("f", EndDeny, Rule{ID: ruleB, Action: ActionDeny})}},
			Decision{Verdict: VerdictAllow, RuleID: ruleC, Logged: true, Hits: []uint64{ruleA, ruleC}}},
		{"forward default allow", Rules{ForHost: true, ApplyOnForwardTiers: []Tier{mkTier("f", EndPass, Rule{ID: ruleA, Action: ActionLog})},
			NoMatchRuleID: noMatch},
			Decision{Verdict: VerdictAllow, Logged: true, Hits: []uint64{ruleA}}},
		{"forward no tiers", Rules{ForHost: true, NoMatchRuleID: noMatch}, Decision{Verdict: VerdictAllow}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Evaluate(tc.rules, nil, fwdPkt)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Evaluate (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEvaluateTable holds the reference evaluator to the table (no kernel).
func TestEvaluateTable(t *testing.T) {
	for _, tc := range tableCases() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Evaluate(tc.rules, tableSets, tc.pkt)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, decisionCmp); diff != "" {
				t.Errorf("Evaluate (-want +got):\n%s", diff)
			}
		})
	}
}

// TestKernelTable runs the table through compiled programs, with and without
// splitting every rule into its own part, and checks hit counters.
func TestKernelTable(t *testing.T) {
	k := newKernel(t)
	k.setIPSets(t, tableSets)
	for _, split := range []bool{false, true} {
		for _, tc := range tableCases() {
			name := tc.name
			opts := Options{}
			if split {
				name, opts.SplitJumps = "split/"+name, 1
			}
			t.Run(name, func(t *testing.T) {
				p := k.load(t, tc.rules, opts)
				before := k.hits(t, tc.want.RuleID)
				got := k.run(t, p, tc.pkt)
				if diff := cmp.Diff(tc.want, got, decisionCmp); diff != "" {
					t.Errorf("kernel (-want +got):\n%s", diff)
				}
				want := before + 1
				if tc.want.RuleID == 0 {
					want = before // ID 0 is never counted
				}
				if after := k.hits(t, tc.want.RuleID); after != want {
					t.Errorf("hits of rule %d went from %d to %d, want %d", tc.want.RuleID, before, after, want)
				}
			})
		}
	}
}
