package polprog

import (
	"fmt"
	"net/netip"
)

// Action is what a rule does when it matches.
type Action uint8

// Rule actions. The zero value is invalid so that a forgotten action is an
// error rather than a silent allow.
const (
	// ActionAllow ends evaluation with an allow verdict (in a host
	// endpoint's pre-DNAT tiers too).
	ActionAllow Action = iota + 1
	// ActionDeny ends evaluation with a deny verdict.
	ActionDeny
	// ActionPass skips to the end of the current tier, where evaluation
	// continues with the next tier (or the profiles). In profiles, where
	// there is no next tier, pass denies.
	ActionPass
	// ActionLog marks the packet for logging (StateFlagLog), counts the
	// rule's hit and continues with the next rule.
	ActionLog
)

// String returns the action's lower-case name.
func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "allow"
	case ActionDeny:
		return "deny"
	case ActionPass:
		return "pass"
	case ActionLog:
		return "log"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// EndAction is what a tier does with a packet that none of its rules
// decided.
type EndAction uint8

// Tier end actions. The zero value denies, as Calico's tiers do by default.
const (
	// EndDeny denies the packet with the tier's EndRuleID.
	EndDeny EndAction = iota
	// EndPass continues with the next tier (or the profiles).
	EndPass
)

// String returns the end action's lower-case name.
func (e EndAction) String() string {
	switch e {
	case EndDeny:
		return "deny"
	case EndPass:
		return "pass"
	}
	return fmt.Sprintf("end-action(%d)", uint8(e))
}

// Rules is everything that applies to one endpoint in one direction.
//
// For a workload endpoint, Tiers are evaluated in order, then Profiles; a
// packet that no rule and no tier end decided is denied with NoMatchRuleID.
//
// For a host endpoint (ForHost), as in Calico's BPF policy programs,
// PreDNATTiers come first and match the destination as it was before DNAT.
// An allow or a deny there (a rule's, or a tier end's deny with its
// EndRuleID) ends host policy with that verdict; when every pre-DNAT tier
// passes (or there are none) the second stage follows:
//   - when the state flags say the source or the destination is the host,
//     Tiers then Profiles, and a packet nothing decided is denied with
//     NoMatchRuleID;
//   - otherwise (forwarded traffic) ApplyOnForwardTiers, and a packet they
//     did not decide (there are none, or every one passed) is allowed with
//     RuleID 0, no hit counted.
type Rules struct {
	// Tiers are the workload endpoint's tiers, or a host endpoint's
	// normal tiers (traffic from or to the host itself).
	Tiers []Tier
	// Profiles are evaluated after the tiers, when every tier passed.
	Profiles []Policy
	// ForHost selects host-endpoint semantics.
	ForHost bool
	// PreDNATTiers are a host endpoint's pre-DNAT tiers.
	PreDNATTiers []Tier
	// ApplyOnForwardTiers are a host endpoint's tiers for forwarded
	// traffic (neither source nor destination is the host).
	ApplyOnForwardTiers []Tier
	// NoMatchRuleID is reported when nothing matched and the packet is
	// denied by default. 0 means no ID (and no hit is counted).
	NoMatchRuleID uint64
}

// Tier is an ordered list of policies with an action for packets that none
// of their rules decided.
type Tier struct {
	// Name identifies the tier in listings and errors.
	Name string
	// Policies are evaluated in order.
	Policies []Policy
	// EndAction applies when no rule of the tier decided.
	EndAction EndAction
	// EndRuleID is reported when EndAction denies. 0 means no ID.
	EndRuleID uint64
}

// Policy is an ordered list of rules.
type Policy struct {
	// Name and Namespace identify the policy in listings and errors.
	Name      string
	Namespace string
	// Rules are evaluated in order.
	Rules []Rule
}

// PortRange is an inclusive range of ports; a single port has First ==
// Last.
type PortRange struct {
	// First and Last are the lowest and highest port of the range.
	First, Last uint16
}

// Port returns the range holding only p.
func Port(p uint16) PortRange { return PortRange{First: p, Last: p} }

// ICMPMatch matches an ICMP type and optionally its code.
type ICMPMatch struct {
	// Type is the ICMP (or ICMPv6) type to match.
	Type uint8
	// Code is compared only when HasCode is set.
	Code    uint8
	HasCode bool
}

// Rule is one match-and-action entry of a policy. Its fields are ANDed; the
// entries of a list field are ORed; an empty field matches everything. A
// Not field matches when none of its entries does.
type Rule struct {
	// ID is reported (State.RuleID, Evaluate) and counted
	// (sl_rule_hits) when the rule decides or logs. 0 means no ID.
	ID     uint64
	Action Action

	// Protocol and NotProtocol are an IP protocol name ("tcp", "udp",
	// "icmp", "icmpv6", "sctp", "udplite") or a decimal number 0-255;
	// empty matches any protocol.
	Protocol    string
	NotProtocol string

	// Address matches. Destination matches use the destination after
	// DNAT, except in a host endpoint's pre-DNAT tiers.
	SrcNets    []netip.Prefix
	NotSrcNets []netip.Prefix
	DstNets    []netip.Prefix
	NotDstNets []netip.Prefix

	// IP set matches by 64-bit set ID. Every set of SrcIPSets (DstIPSets)
	// must contain the address; none of NotSrcIPSets (NotDstIPSets) may.
	SrcIPSets    []uint64
	NotSrcIPSets []uint64
	DstIPSets    []uint64
	NotDstIPSets []uint64

	// Port matches. A port matches SrcPorts when a range holds it or one
	// of the SrcNamedPorts sets holds (address, protocol, port), the
	// same for the Not and Dst variants.
	SrcPorts         []PortRange
	SrcNamedPorts    []uint64
	NotSrcPorts      []PortRange
	NotSrcNamedPorts []uint64
	DstPorts         []PortRange
	DstNamedPorts    []uint64
	NotDstPorts      []PortRange
	NotDstNamedPorts []uint64

	// ICMP and NotICMP need Protocol "icmp" or "icmpv6".
	ICMP    *ICMPMatch
	NotICMP *ICMPMatch
}

// Verdict is the outcome of policy for a packet.
type Verdict uint8

// Verdicts.
const (
	VerdictDeny Verdict = iota
	VerdictAllow
)

// String returns "allow" or "deny".
func (v Verdict) String() string {
	if v == VerdictAllow {
		return "allow"
	}
	return "deny"
}

// Packet is what policy sees of a packet: the fields the datapath writes
// into struct sl_state.
type Packet struct {
	// Src and Dst are the addresses, Dst after DNAT.
	Src, Dst netip.Addr
	// PreNATDst is the destination before DNAT; the zero Addr means
	// there was no DNAT (Dst and DstPort apply).
	PreNATDst netip.Addr
	// SrcPort and DstPort are the L4 ports (DstPort after DNAT), 0 for
	// protocols without ports.
	SrcPort, DstPort uint16
	// PreNATDstPort is the destination port before DNAT.
	PreNATDstPort uint16
	// Protocol is the IP protocol number.
	Protocol uint8
	// ICMPType and ICMPCode are the ICMP or ICMPv6 type and code.
	ICMPType, ICMPCode uint8
	// SrcIsHost and DstIsHost are the datapath's host flags (host
	// endpoint semantics).
	SrcIsHost, DstIsHost bool
}

// preNAT returns the pre-DNAT destination and port.
func (p Packet) preNAT() (netip.Addr, uint16) {
	if !p.PreNATDst.IsValid() {
		return p.Dst, p.DstPort
	}
	return p.PreNATDst, p.PreNATDstPort
}

// Decision is the full answer of policy for a packet.
type Decision struct {
	// Verdict is allow or deny.
	Verdict Verdict
	// RuleID is the ID of the rule (or tier end, or NoMatchRuleID) that
	// decided; 0 for a host endpoint's forwarded packet that no
	// apply-on-forward tier decided.
	RuleID uint64
	// Logged is set when a log rule matched on the way.
	Logged bool
	// Hits lists, in order, the IDs whose hit counters the program
	// bumps: log rules and the decider. IDs of 0 are left out.
	Hits []uint64
}
