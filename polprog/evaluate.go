package polprog

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
)

// Evaluator is the pure-Go reference for the programs Compile builds: the
// same rules give the same Decision for the same packet. Use it to explain
// a verdict or to test policy without loading anything.
type Evaluator struct {
	prog *program
}

// NewEvaluator validates rules (without a rule limit) and returns their
// evaluator.
func NewEvaluator(rules Rules) (*Evaluator, error) {
	p, err := validate(rules, math.MaxInt)
	if err != nil {
		return nil, fmt.Errorf("validate rules: %w", err)
	}
	return &Evaluator{prog: p}, nil
}

// Evaluate decides pkt under rules, with IP set membership from sets (nil
// means every set is empty). It is NewEvaluator followed by
// Evaluator.Evaluate.
func Evaluate(rules Rules, sets IPSets, pkt Packet) (Decision, error) {
	e, err := NewEvaluator(rules)
	if err != nil {
		return Decision{}, err
	}
	return e.Evaluate(sets, pkt), nil
}

// Evaluate decides pkt, with IP set membership from sets (nil means every
// set is empty).
func (e *Evaluator) Evaluate(sets IPSets, pkt Packet) Decision {
	if sets == nil {
		sets = IPSetMembers(nil)
	}
	ev := evaluation{sets: sets}
	p := e.prog
	if !p.forHost {
		return ev.stage(p.tiers, p.profiles, p.noMatchID, view(pkt, false))
	}
	if d, ok := ev.hostTiers(p.preDNAT, view(pkt, true)); ok {
		return d
	}
	if pkt.SrcIsHost || pkt.DstIsHost {
		return ev.stage(p.tiers, p.profiles, p.noMatchID, view(pkt, false))
	}
	if d, ok := ev.hostTiers(p.forward, view(pkt, false)); ok {
		return d
	}
	// Forwarded traffic that no apply-on-forward tier decided is allowed
	// by host policy.
	return ev.decide(VerdictAllow, 0)
}

// packetView is a packet as one stage sees it: the destination is before
// or after DNAT.
type packetView struct {
	src, dst         netip.Addr
	srcPort, dstPort uint16
	proto            uint8
	icmpType         uint8
	icmpCode         uint8
}

func view(p Packet, preNAT bool) packetView {
	v := packetView{src: stateAddr(p.Src), dst: stateAddr(p.Dst), srcPort: p.SrcPort, dstPort: p.DstPort,
		proto: p.Protocol, icmpType: p.ICMPType, icmpCode: p.ICMPCode}
	if preNAT {
		dst, port := p.preNAT()
		v.dst, v.dstPort = stateAddr(dst), port
	}
	return v
}

// stateAddr is a as the state holds it: 16 bytes, so no zone, IPv4-mapped
// IPv4, and :: for no address.
func stateAddr(a netip.Addr) netip.Addr {
	if !a.IsValid() {
		return netip.IPv6Unspecified()
	}
	return a.Unmap().WithZone("")
}

type evaluation struct {
	sets   IPSets
	logged bool
	hits   []uint64
}

func (ev *evaluation) hit(id uint64) {
	if id != 0 {
		ev.hits = append(ev.hits, id)
	}
}

func (ev *evaluation) decide(v Verdict, id uint64) Decision {
	ev.hit(id)
	return Decision{Verdict: v, RuleID: id, Logged: ev.logged, Hits: slices.Clone(ev.hits)}
}

// outcome of a tier.
type outcome int

const (
	outcomeAllow outcome = iota
	outcomeDeny
	outcomeNext // the tier passed or ended with pass
)

// tier runs one tier and returns its outcome and the deciding ID.
func (ev *evaluation) tier(t *tier, pkt *packetView) (outcome, uint64) {
	for i := range t.rules {
		r := &t.rules[i]
		if !ev.matches(r, pkt) {
			continue
		}
		switch r.action {
		case ActionAllow:
			return outcomeAllow, r.id
		case ActionDeny:
			return outcomeDeny, r.id
		case ActionPass:
			return outcomeNext, 0
		case ActionLog:
			ev.logged = true
			ev.hit(r.id)
		}
	}
	if t.end == EndPass {
		return outcomeNext, 0
	}
	return outcomeDeny, t.endID
}

// stage runs tiers then profiles; nothing deciding denies with noMatchID.
func (ev *evaluation) stage(tiers []tier, profiles []rule, noMatchID uint64, pkt packetView) Decision {
	for i := range tiers {
		switch o, id := ev.tier(&tiers[i], &pkt); o {
		case outcomeAllow:
			return ev.decide(VerdictAllow, id)
		case outcomeDeny:
			return ev.decide(VerdictDeny, id)
		}
	}
	profileTier := tier{rules: profiles, end: EndDeny, endID: noMatchID}
	o, id := ev.tier(&profileTier, &pkt)
	if o == outcomeAllow {
		return ev.decide(VerdictAllow, id)
	}
	return ev.decide(VerdictDeny, id)
}

// hostTiers runs a host endpoint's pre-DNAT or apply-on-forward tiers. It
// returns a decision for an allow or a deny (a rule's or a tier end's), and
// false when every tier passed.
func (ev *evaluation) hostTiers(tiers []tier, pkt packetView) (Decision, bool) {
	for i := range tiers {
		switch o, id := ev.tier(&tiers[i], &pkt); o {
		case outcomeAllow:
			return ev.decide(VerdictAllow, id), true
		case outcomeDeny:
			return ev.decide(VerdictDeny, id), true
		}
	}
	return Decision{}, false
}

func (ev *evaluation) matches(r *rule, p *packetView) bool {
	if r.proto >= 0 && int(p.proto) != r.proto {
		return false
	}
	if r.notProto >= 0 && int(p.proto) == r.notProto {
		return false
	}
	if !netsMatch(r.srcNets, r.notSrcNets, p.src) || !netsMatch(r.dstNets, r.notDstNets, p.dst) {
		return false
	}
	if !ev.setsMatch(r.srcSets, r.notSrcSets, p.src) || !ev.setsMatch(r.dstSets, r.notDstSets, p.dst) {
		return false
	}
	if !ev.portsMatch(r.srcPorts, r.srcNamed, r.notSrcPorts, r.notSrcNamed, p.src, p.proto, p.srcPort) {
		return false
	}
	if !ev.portsMatch(r.dstPorts, r.dstNamed, r.notDstPorts, r.notDstNamed, p.dst, p.proto, p.dstPort) {
		return false
	}
	if r.icmp != nil && !icmpMatches(r.icmp, p) {
		return false
	}
	if r.notICMP != nil && icmpMatches(r.notICMP, p) {
		return false
	}
	return true
}

func icmpMatches(m *ICMPMatch, p *packetView) bool {
	return p.icmpType == m.Type && (!m.HasCode || p.icmpCode == m.Code)
}

func netsMatch(nets, notNets []netip.Prefix, addr netip.Addr) bool {
	if len(nets) > 0 && !anyContains(nets, addr) {
		return false
	}
	return !anyContains(notNets, addr)
}

func anyContains(nets []netip.Prefix, addr netip.Addr) bool {
	for _, n := range nets {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

func (ev *evaluation) setsMatch(sets, notSets []uint64, addr netip.Addr) bool {
	for _, id := range sets {
		if !ev.sets.ContainsAddr(id, addr) {
			return false
		}
	}
	for _, id := range notSets {
		if ev.sets.ContainsAddr(id, addr) {
			return false
		}
	}
	return true
}

func (ev *evaluation) portsMatch(ports []PortRange, named []uint64, notPorts []PortRange, notNamed []uint64,
	addr netip.Addr, proto uint8, port uint16) bool {
	if (len(ports) > 0 || len(named) > 0) && !ev.portIn(ports, named, addr, proto, port) {
		return false
	}
	return !ev.portIn(notPorts, notNamed, addr, proto, port)
}

func (ev *evaluation) portIn(ports []PortRange, named []uint64, addr netip.Addr, proto uint8, port uint16) bool {
	for _, pr := range ports {
		if port >= pr.First && port <= pr.Last {
			return true
		}
	}
	for _, id := range named {
		if ev.sets.ContainsNamedPort(id, addr, proto, port) {
			return true
		}
	}
	return false
}
