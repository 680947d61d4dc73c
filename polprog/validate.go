package polprog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
)

// DefaultMaxRules is the rule limit when Options.MaxRules is 0.
const DefaultMaxRules = 50000

// ErrTooManyRules is wrapped by the error for a policy past the rule limit.
var ErrTooManyRules = errors.New("too many rules")

// protocolNumbers maps the protocol names a rule may use to their numbers.
var protocolNumbers = map[string]uint8{
	"icmp":    1,
	"tcp":     6,
	"udp":     17,
	"icmpv6":  58,
	"sctp":    132,
	"udplite": 136,
}

// ParseProtocol turns a protocol name or decimal number into its number.
func ParseProtocol(s string) (uint8, error) {
	if n, ok := protocolNumbers[strings.ToLower(s)]; ok {
		return n, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("unknown protocol %q", s)
	}
	return uint8(n), nil
}

// rule is a validated Rule: protocols parsed, prefixes masked and unmapped.
type rule struct {
	id     uint64
	action Action
	// proto and notProto are -1 when unset; protoName and notProtoName
	// are the Rule's strings they were parsed from.
	proto, notProto         int
	protoName, notProtoName string

	srcNets, notSrcNets, dstNets, notDstNets []netip.Prefix
	srcSets, notSrcSets, dstSets, notDstSets []uint64

	srcPorts, notSrcPorts, dstPorts, notDstPorts []PortRange
	srcNamed, notSrcNamed, dstNamed, notDstNamed []uint64

	// icmp and notICMP are copies, the caller's may change.
	icmp, notICMP *ICMPMatch

	// match encodes every field above but the ID and the action (see
	// appendMatch): rules with the same match the same packets. One
	// string comparison per rule is how Update finds the rules that
	// changed among 10,000. matchEnd is where the validator's encoding
	// of the rule ends, until it sets match; -1 for a rule that keeps
	// the match of the program it was taken over from.
	match    string
	matchEnd int
	// round is the validation (validator.round) that made its lists and
	// match.
	round uint32

	// where names the rule in listings: tier/namespace/policy#index.
	where string
}

// tier is a validated Tier.
type tier struct {
	name  string
	rules []rule
	end   EndAction
	endID uint64
}

// program is a validated Rules.
type program struct {
	forHost   bool
	tiers     []tier
	profiles  []rule
	preDNAT   []tier
	forward   []tier
	noMatchID uint64
	ruleCount int
	// takenOver counts the rules copied from the program validated
	// before (validator.prev) rather than validated again; fresh are the
	// others' indexes in eachRule's order, ascending (every rule's when
	// there was no program before). A rule taken over has the ID,
	// action and match of the rule at its place in that program, so
	// Update looks only at the fresh ones for what changed.
	takenOver int
	fresh     []int
	// serial tells validations apart (validations counts them); against
	// is the serial of validator.prev, 0 without one: fresh means
	// something only beside that program.
	serial, against uint64
	// round is the validator's round that made it.
	round uint32
}

// validations counts validations, for program.serial.
var validations atomic.Uint64

// validate checks rules and turns them into a program. maxRules <= 0 means
// DefaultMaxRules.
func validate(rules Rules, maxRules int) (*program, error) {
	return validateWith(rules, validator{max: maxRules})
}

// validateWith is validate with v's settings.
func validateWith(rules Rules, v validator) (*program, error) {
	if v.max <= 0 {
		v.max = DefaultMaxRules
	}
	p := &program{forHost: rules.ForHost, noMatchID: rules.NoMatchRuleID, serial: validations.Add(1)}
	prev := v.prev
	if prev == nil {
		prev = &program{}
	} else {
		v.round, p.against = prev.round+1, prev.serial
	}
	var err error
	if p.tiers, err = v.tiers("", rules.Tiers, prev.tiers); err != nil {
		return nil, err
	}
	for i, pol := range rules.Profiles {
		if p.profiles, err = v.policy("profile", i, pol, p.profiles, prev.profiles); err != nil {
			return nil, err
		}
	}
	profilesEnd := v.count
	for i := range p.profiles {
		// Pass has no next tier to go to in profiles.
		if p.profiles[i].action == ActionPass {
			p.profiles[i].action = ActionDeny
		}
	}
	defer func() {
		p.ruleCount, p.takenOver, p.round = v.count, v.takenOver, v.round
		p.setMatches(v.encoded)
		p.fresh = p.freshOrder(v.fresh, profilesEnd)
	}()
	if !rules.ForHost {
		if len(rules.PreDNATTiers) > 0 || len(rules.ApplyOnForwardTiers) > 0 {
			return nil, errors.New("pre-DNAT and apply-on-forward tiers need ForHost")
		}
		return p, nil
	}
	if p.preDNAT, err = v.tiers("pre-DNAT ", rules.PreDNATTiers, prev.preDNAT); err != nil {
		return nil, err
	}
	if p.forward, err = v.tiers("apply-on-forward ", rules.ApplyOnForwardTiers, prev.forward); err != nil {
		return nil, err
	}
	return p, nil
}

type validator struct {
	max, count int
	// noWhere names rules by their tier alone, for a comparison that
	// names no rule (formatting 10,000 names costs more than the rest).
	noWhere bool
	// prev, when set, is a program validated before: a Rule equal to
	// the rule at its place in prev (unchanged) is copied from there
	// rather than checked and encoded again (what Update does to 10,000
	// rules of which one changed).
	prev      *program
	takenOver int
	// round counts validations along a chain of programs: prev's plus
	// one.
	round uint32
	// nets, ports and ids are where the validated rules' lists are
	// copied, chunks of many rules' lists each: a program shares no list
	// with the caller's Rules, which the caller may change after (and
	// Update compares with), and 10,000 rules take a few allocations,
	// not one per list.
	nets  []netip.Prefix
	ports []PortRange
	ids   []uint64
	icmps []ICMPMatch
	// encoded are the validated rules' match encodings (appendMatch), in
	// the order of validation.
	encoded []byte
	// fresh are the indexes, in the order of validation, of the rules
	// validated rather than taken over.
	fresh []int
}

// freshOrder returns fresh, indexes in the order of validation (tiers,
// profiles, pre-DNAT tiers, apply-on-forward tiers; profilesEnd the count
// of the first two), as indexes in eachRule's order (pre-DNAT tiers,
// tiers, apply-on-forward tiers, profiles), ascending.
func (p *program) freshOrder(fresh []int, profilesEnd int) []int {
	count := func(ts []tier) int {
		n := 0
		for i := range ts {
			n += len(ts[i].rules)
		}
		return n
	}
	nTiers, nPreDNAT, nForward := count(p.tiers), count(p.preDNAT), count(p.forward)
	out := make([]int, 0, len(fresh))
	for _, c := range fresh {
		switch {
		case c < nTiers:
			out = append(out, nPreDNAT+c)
		case c < profilesEnd:
			out = append(out, nPreDNAT+nTiers+nForward+c-nTiers)
		case c < profilesEnd+nPreDNAT:
			out = append(out, c-profilesEnd)
		default:
			out = append(out, nTiers+c-profilesEnd)
		}
	}
	slices.Sort(out)
	return out
}

// setMatches sets every rule's match from the validator's encodings,
// appended in the order of validation to one buffer, which becomes one
// string of which each rule's is a substring.
func (p *program) setMatches(encoded []byte) {
	all := string(encoded)
	set := func(rs []rule, start int) int {
		for i := range rs {
			if rs[i].matchEnd >= 0 {
				rs[i].match, start = all[start:rs[i].matchEnd], rs[i].matchEnd
			}
		}
		return start
	}
	tiers := func(ts []tier, start int) int {
		for i := range ts {
			start = set(ts[i].rules, start)
		}
		return start
	}
	tiers(p.forward, tiers(p.preDNAT, set(p.profiles, tiers(p.tiers, 0))))
}

// appendMatch appends to buf an encoding of r's match fields, each list
// after its length (a varint: most are empty), so that two rules'
// encodings are equal only when their fields are.
func appendMatch(buf []byte, r *rule) []byte {
	buf = binary.LittleEndian.AppendUint16(buf, uint16(int16(r.proto)))
	buf = binary.LittleEndian.AppendUint16(buf, uint16(int16(r.notProto)))
	for _, m := range [2]*ICMPMatch{r.icmp, r.notICMP} {
		switch {
		case m == nil:
			buf = append(buf, 0)
		case m.HasCode:
			buf = append(buf, 2, m.Type, m.Code)
		default:
			buf = append(buf, 1, m.Type)
		}
	}
	for _, l := range [4][]netip.Prefix{r.srcNets, r.notSrcNets, r.dstNets, r.notDstNets} {
		buf = binary.AppendUvarint(buf, uint64(len(l)))
		for _, n := range l {
			a := n.Addr().As16()
			buf = append(append(buf, a[:]...), byte(n.Bits()), byte(n.Addr().BitLen()))
		}
	}
	for _, l := range [4][]PortRange{r.srcPorts, r.notSrcPorts, r.dstPorts, r.notDstPorts} {
		buf = binary.AppendUvarint(buf, uint64(len(l)))
		for _, pr := range l {
			buf = binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(buf, pr.First), pr.Last)
		}
	}
	for _, l := range [8][]uint64{r.srcSets, r.notSrcSets, r.dstSets, r.notDstSets,
		r.srcNamed, r.notSrcNamed, r.dstNamed, r.notDstNamed} {
		buf = binary.AppendUvarint(buf, uint64(len(l)))
		for _, id := range l {
			buf = binary.LittleEndian.AppendUint64(buf, id)
		}
	}
	return buf
}

// arenaChunk is the size from which a validator's arena allocates no
// larger chunks.
const arenaChunk = 4096

// keep returns a copy of in, in arena (a new chunk of it when in does not
// fit: the lists already kept stay where they are).
func keep[T any](arena *[]T, in []T) []T {
	if len(in) == 0 {
		return nil
	}
	if cap(*arena)-len(*arena) < len(in) {
		// Chunks double up to arenaChunk: one rule's validation
		// allocates little.
		*arena = make([]T, 0, max(len(in), min(arenaChunk, 2*cap(*arena)+8)))
	}
	start := len(*arena)
	*arena = append(*arena, in...)
	return (*arena)[start:len(*arena):len(*arena)]
}

// tiers validates in; prev are the tiers of v.prev of the same kind.
func (v *validator) tiers(kind string, in []Tier, prev []tier) ([]tier, error) {
	out := make([]tier, 0, len(in))
	for i, t := range in {
		if t.EndAction != EndDeny && t.EndAction != EndPass {
			return nil, fmt.Errorf("%stier %d (%q): invalid end action %d", kind, i, t.Name, t.EndAction)
		}
		vt := tier{name: t.Name, end: t.EndAction, endID: t.EndRuleID}
		n := 0
		for _, pol := range t.Policies {
			n += len(pol.Rules)
		}
		vt.rules = make([]rule, 0, n)
		var was []rule
		if i < len(prev) {
			was = prev[i].rules
		}
		for j, pol := range t.Policies {
			var err error
			if vt.rules, err = v.policy(kind+"tier "+t.Name, j, pol, vt.rules, was); err != nil {
				return nil, err
			}
		}
		out = append(out, vt)
	}
	return out, nil
}

// policy appends pol's validated rules to out. was are the rules of v.prev
// at out's places: a Rule unchanged from the rule at its place is taken
// from there.
func (v *validator) policy(where string, index int, pol Policy, out []rule, was []rule) ([]rule, error) {
	name := pol.Name
	if pol.Namespace != "" {
		name = pol.Namespace + "/" + pol.Name
	}
	if name == "" {
		name = strconv.Itoa(index)
	}
	// Rules are read and written in place, by pointer: a Rule and a rule
	// are some hundred bytes each, and a policy of 10,000 rules is
	// validated at every Update.
	for i := range pol.Rules {
		v.count++
		if v.count > v.max {
			return nil, fmt.Errorf("more than %d rules: %w", v.max, ErrTooManyRules)
		}
		where := where
		if !v.noWhere {
			where = fmt.Sprintf("%s/%s#%d", where, name, i)
		}
		if k := len(out); k < len(was) && unchanged(&pol.Rules[i], &was[k]) {
			out = append(out, was[k])
			v.takeOver(&out[k], where)
			continue
		}
		v.fresh = append(v.fresh, v.count-1)
		out = append(out, rule{})
		vr := &out[len(out)-1]
		if err := v.rule(&pol.Rules[i], vr); err != nil {
			return nil, fmt.Errorf("rule %s: %w", where, err)
		}
		vr.where, vr.round = where, v.round
		v.encoded = appendMatch(v.encoded, vr)
		vr.matchEnd = len(v.encoded)
	}
	return out, nil
}

// keepRounds bounds the memory a chain of programs validated each against
// the one before holds: a rule taken over shares its lists and encoding
// with the validation that made them (their arena chunks and string, which
// hold other rules' too) for keepRounds to 2*keepRounds-1 rounds, staggered
// by its index so that each round copies about 1/keepRounds of the rules,
// and is copied into the round's own after. A program so holds the memory
// of at most 2*keepRounds validations.
const keepRounds = 8

// takeOver finishes vr, a copy of the rule at its place in v.prev, as the
// rule where names.
func (v *validator) takeOver(vr *rule, where string) {
	v.takenOver++
	vr.where, vr.matchEnd = where, -1
	if v.round-vr.round < keepRounds+uint32(v.count%keepRounds) {
		return
	}
	v.keepLists(vr)
	v.encoded = append(v.encoded, vr.match...)
	vr.matchEnd, vr.round = len(v.encoded), v.round
}

// rule validates r into vr, its lists copied to v's arenas.
func (v *validator) rule(r *Rule, vr *rule) error {
	*vr = rule{id: r.ID, action: r.Action, protoName: r.Protocol, notProtoName: r.NotProtocol,
		icmp: r.ICMP, notICMP: r.NotICMP,
		srcNets: r.SrcNets, notSrcNets: r.NotSrcNets, dstNets: r.DstNets, notDstNets: r.NotDstNets,
		srcSets: r.SrcIPSets, notSrcSets: r.NotSrcIPSets, dstSets: r.DstIPSets, notDstSets: r.NotDstIPSets,
		srcPorts: r.SrcPorts, notSrcPorts: r.NotSrcPorts, dstPorts: r.DstPorts, notDstPorts: r.NotDstPorts,
		srcNamed: r.SrcNamedPorts, notSrcNamed: r.NotSrcNamedPorts, dstNamed: r.DstNamedPorts, notDstNamed: r.NotDstNamedPorts}
	v.keepLists(vr)
	if r.Action < ActionAllow || r.Action > ActionLog {
		return fmt.Errorf("invalid action %d", r.Action)
	}
	var err error
	if vr.proto, err = optionalProtocol(r.Protocol); err != nil {
		return fmt.Errorf("protocol: %w", err)
	}
	if vr.notProto, err = optionalProtocol(r.NotProtocol); err != nil {
		return fmt.Errorf("not-protocol: %w", err)
	}
	if (r.ICMP != nil || r.NotICMP != nil) && vr.proto != 1 && vr.proto != 58 {
		return errors.New("ICMP matches need protocol icmp or icmpv6")
	}
	for _, n := range [...]struct {
		name string
		nets []netip.Prefix
	}{
		{"source nets", vr.srcNets},
		{"not-source nets", vr.notSrcNets},
		{"destination nets", vr.dstNets},
		{"not-destination nets", vr.notDstNets},
	} {
		if err := maskPrefixes(n.nets); err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
	}
	for _, p := range [...]struct {
		name  string
		ports []PortRange
	}{
		{"source ports", vr.srcPorts},
		{"not-source ports", vr.notSrcPorts},
		{"destination ports", vr.dstPorts},
		{"not-destination ports", vr.notDstPorts},
	} {
		for _, pr := range p.ports {
			if pr.First > pr.Last {
				return fmt.Errorf("%s: reversed range %d-%d", p.name, pr.First, pr.Last)
			}
		}
	}
	return nil
}

// keepLists replaces vr's lists and ICMP matches with copies in v's
// arenas: a program shares no list with the caller's Rules, which the
// caller may change after (and Update compares with), nor with the
// program a rule was taken over from, whose arenas it would keep alive.
func (v *validator) keepLists(vr *rule) {
	for _, l := range [...]*[]netip.Prefix{&vr.srcNets, &vr.notSrcNets, &vr.dstNets, &vr.notDstNets} {
		*l = keep(&v.nets, *l)
	}
	for _, l := range [...]*[]PortRange{&vr.srcPorts, &vr.notSrcPorts, &vr.dstPorts, &vr.notDstPorts} {
		*l = keep(&v.ports, *l)
	}
	for _, l := range [...]*[]uint64{&vr.srcSets, &vr.notSrcSets, &vr.dstSets, &vr.notDstSets,
		&vr.srcNamed, &vr.notSrcNamed, &vr.dstNamed, &vr.notDstNamed} {
		*l = keep(&v.ids, *l)
	}
	vr.icmp, vr.notICMP = v.keepICMP(vr.icmp), v.keepICMP(vr.notICMP)
}

// keepICMP returns a copy of m in v's arena, or nil.
func (v *validator) keepICMP(m *ICMPMatch) *ICMPMatch {
	if m == nil {
		return nil
	}
	return &keep(&v.icmps, []ICMPMatch{*m})[0]
}

// unchanged says whether validating r would give vr (a rule validated
// before, which must have been valid) but for where: the same ID, action
// and protocol strings, the same ICMP matches, ports and IDs, and prefixes
// that mask to vr's.
func unchanged(r *Rule, vr *rule) bool {
	return r.ID == vr.id && r.Action == vr.action && r.Protocol == vr.protoName && r.NotProtocol == vr.notProtoName &&
		sameICMP(r.ICMP, vr.icmp) && sameICMP(r.NotICMP, vr.notICMP) &&
		maskTo(r.SrcNets, vr.srcNets) && maskTo(r.NotSrcNets, vr.notSrcNets) &&
		maskTo(r.DstNets, vr.dstNets) && maskTo(r.NotDstNets, vr.notDstNets) &&
		slices.Equal(r.SrcPorts, vr.srcPorts) && slices.Equal(r.NotSrcPorts, vr.notSrcPorts) &&
		slices.Equal(r.DstPorts, vr.dstPorts) && slices.Equal(r.NotDstPorts, vr.notDstPorts) &&
		slices.Equal(r.SrcIPSets, vr.srcSets) && slices.Equal(r.NotSrcIPSets, vr.notSrcSets) &&
		slices.Equal(r.DstIPSets, vr.dstSets) && slices.Equal(r.NotDstIPSets, vr.notDstSets) &&
		slices.Equal(r.SrcNamedPorts, vr.srcNamed) && slices.Equal(r.NotSrcNamedPorts, vr.notSrcNamed) &&
		slices.Equal(r.DstNamedPorts, vr.dstNamed) && slices.Equal(r.NotDstNamedPorts, vr.notDstNamed)
}

// maskTo says whether in, masked, is kept (valid prefixes: an invalid one
// masks to the zero Prefix, which no kept list holds).
func maskTo(in, kept []netip.Prefix) bool {
	if len(in) != len(kept) {
		return false
	}
	for i, p := range in {
		if p != kept[i] && p.Masked() != kept[i] {
			return false
		}
	}
	return true
}

func optionalProtocol(s string) (int, error) {
	if s == "" {
		return -1, nil
	}
	n, err := ParseProtocol(s)
	return int(n), err
}

// maskPrefixes masks nets in place and rejects invalid and IPv4-mapped
// prefixes (an IPv4-mapped prefix would silently never match an IPv4
// packet; a shorter IPv6 prefix that covers ::ffff:0:0/96 is an IPv6
// prefix).
func maskPrefixes(nets []netip.Prefix) error {
	for i, p := range nets {
		if !p.IsValid() {
			return fmt.Errorf("invalid CIDR %q", p.String())
		}
		// Masked first: ::ffff:0:0/95 is an IPv6 prefix, and matches
		// IPv6 addresses only.
		nets[i] = p.Masked()
		if nets[i].Addr().Is4In6() {
			return fmt.Errorf("IPv4-mapped CIDR %s: use the IPv4 form", p)
		}
	}
	return nil
}
