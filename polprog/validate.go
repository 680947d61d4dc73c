package polprog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
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
	// proto and notProto are -1 when unset.
	proto, notProto int

	srcNets, notSrcNets, dstNets, notDstNets []netip.Prefix
	srcSets, notSrcSets, dstSets, notDstSets []uint64

	srcPorts, notSrcPorts, dstPorts, notDstPorts []PortRange
	srcNamed, notSrcNamed, dstNamed, notDstNamed []uint64

	icmp, notICMP *ICMPMatch

	// match encodes every field above but the ID and the action (see
	// appendMatch): rules with the same match the same packets. One
	// string comparison per rule is how Update finds the rules that
	// changed among 10,000. matchEnd is where the validator's encoding
	// of the rule ends, until it sets match.
	match    string
	matchEnd int

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
}

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
	p := &program{forHost: rules.ForHost, noMatchID: rules.NoMatchRuleID}
	var err error
	if p.tiers, err = v.tiers("", rules.Tiers); err != nil {
		return nil, err
	}
	for i, pol := range rules.Profiles {
		if p.profiles, err = v.policy("profile", i, pol, p.profiles); err != nil {
			return nil, err
		}
	}
	for i := range p.profiles {
		// Pass has no next tier to go to in profiles.
		if p.profiles[i].action == ActionPass {
			p.profiles[i].action = ActionDeny
		}
	}
	defer func() {
		p.ruleCount = v.count
		p.setMatches(v.encoded)
	}()
	if !rules.ForHost {
		if len(rules.PreDNATTiers) > 0 || len(rules.ApplyOnForwardTiers) > 0 {
			return nil, errors.New("pre-DNAT and apply-on-forward tiers need ForHost")
		}
		return p, nil
	}
	if p.preDNAT, err = v.tiers("pre-DNAT ", rules.PreDNATTiers); err != nil {
		return nil, err
	}
	if p.forward, err = v.tiers("apply-on-forward ", rules.ApplyOnForwardTiers); err != nil {
		return nil, err
	}
	return p, nil
}

type validator struct {
	max, count int
	// noWhere leaves rule.where empty, for a comparison that names no
	// rule (formatting 10,000 names costs more than the rest).
	noWhere bool
	// nets, ports and ids are where the validated rules' lists are
	// copied, chunks of many rules' lists each: a program shares no list
	// with the caller's Rules, which the caller may change after (and
	// Update compares with), and 10,000 rules take a few allocations,
	// not one per list.
	nets  []netip.Prefix
	ports []PortRange
	ids   []uint64
	// encoded are the validated rules' match encodings (appendMatch), in
	// the order of validation.
	encoded []byte
}

// setMatches sets every rule's match from the validator's encodings,
// appended in the order of validation to one buffer, which becomes one
// string of which each rule's is a substring.
func (p *program) setMatches(encoded []byte) {
	all := string(encoded)
	set := func(rs []rule, start int) int {
		for i := range rs {
			rs[i].match, start = all[start:rs[i].matchEnd], rs[i].matchEnd
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

func (v *validator) tiers(kind string, in []Tier) ([]tier, error) {
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
		for j, pol := range t.Policies {
			var err error
			if vt.rules, err = v.policy(kind+"tier "+t.Name, j, pol, vt.rules); err != nil {
				return nil, err
			}
		}
		out = append(out, vt)
	}
	return out, nil
}

// policy appends pol's validated rules to out.
func (v *validator) policy(where string, index int, pol Policy, out []rule) ([]rule, error) {
	name := pol.Name
	if pol.Namespace != "" {
		name = pol.Namespace + "/" + pol.Name
	}
	if name == "" {
		name = strconv.Itoa(index)
	}
	for i, r := range pol.Rules {
		v.count++
		if v.count > v.max {
			return nil, fmt.Errorf("more than %d rules: %w", v.max, ErrTooManyRules)
		}
		where := where
		if !v.noWhere {
			where = fmt.Sprintf("%s/%s#%d", where, name, i)
		}
		vr, err := v.rule(r)
		if err != nil {
			return nil, fmt.Errorf("rule %s: %w", where, err)
		}
		vr.where = where
		v.encoded = appendMatch(v.encoded, &vr)
		vr.matchEnd = len(v.encoded)
		out = append(out, vr)
	}
	return out, nil
}

// rule validates r, its lists copied to v's arenas.
func (v *validator) rule(r Rule) (rule, error) {
	vr := rule{id: r.ID, action: r.Action, proto: -1, notProto: -1, icmp: r.ICMP, notICMP: r.NotICMP}
	if r.Action < ActionAllow || r.Action > ActionLog {
		return rule{}, fmt.Errorf("invalid action %d", r.Action)
	}
	var err error
	if vr.proto, err = optionalProtocol(r.Protocol); err != nil {
		return rule{}, fmt.Errorf("protocol: %w", err)
	}
	if vr.notProto, err = optionalProtocol(r.NotProtocol); err != nil {
		return rule{}, fmt.Errorf("not-protocol: %w", err)
	}
	if (r.ICMP != nil || r.NotICMP != nil) && vr.proto != 1 && vr.proto != 58 {
		return rule{}, errors.New("ICMP matches need protocol icmp or icmpv6")
	}
	// Field by field, not through a table of pointers into vr, which
	// would move vr to the heap: a policy of 10,000 rules is validated at
	// every Update.
	if vr.srcNets, err = v.prefixes(r.SrcNets); err != nil {
		return rule{}, fmt.Errorf("source nets: %w", err)
	}
	if vr.notSrcNets, err = v.prefixes(r.NotSrcNets); err != nil {
		return rule{}, fmt.Errorf("not-source nets: %w", err)
	}
	if vr.dstNets, err = v.prefixes(r.DstNets); err != nil {
		return rule{}, fmt.Errorf("destination nets: %w", err)
	}
	if vr.notDstNets, err = v.prefixes(r.NotDstNets); err != nil {
		return rule{}, fmt.Errorf("not-destination nets: %w", err)
	}
	for _, p := range [...]struct {
		name string
		in   []PortRange
	}{
		{"source ports", r.SrcPorts},
		{"not-source ports", r.NotSrcPorts},
		{"destination ports", r.DstPorts},
		{"not-destination ports", r.NotDstPorts},
	} {
		for _, pr := range p.in {
			if pr.First > pr.Last {
				return rule{}, fmt.Errorf("%s: reversed range %d-%d", p.name, pr.First, pr.Last)
			}
		}
	}
	vr.srcPorts, vr.notSrcPorts = keep(&v.ports, r.SrcPorts), keep(&v.ports, r.NotSrcPorts)
	vr.dstPorts, vr.notDstPorts = keep(&v.ports, r.DstPorts), keep(&v.ports, r.NotDstPorts)
	vr.srcSets, vr.notSrcSets = keep(&v.ids, r.SrcIPSets), keep(&v.ids, r.NotSrcIPSets)
	vr.dstSets, vr.notDstSets = keep(&v.ids, r.DstIPSets), keep(&v.ids, r.NotDstIPSets)
	vr.srcNamed, vr.notSrcNamed = keep(&v.ids, r.SrcNamedPorts), keep(&v.ids, r.NotSrcNamedPorts)
	vr.dstNamed, vr.notDstNamed = keep(&v.ids, r.DstNamedPorts), keep(&v.ids, r.NotDstNamedPorts)
	return vr, nil
}

func optionalProtocol(s string) (int, error) {
	if s == "" {
		return -1, nil
	}
	n, err := ParseProtocol(s)
	return int(n), err
}

// prefixes returns in masked, in v's arena, and rejects invalid and
// IPv4-mapped prefixes (an IPv4-mapped prefix would silently never match
// an IPv4 packet; a shorter IPv6 prefix that covers ::ffff:0:0/96 is an
// IPv6 prefix).
func (v *validator) prefixes(in []netip.Prefix) ([]netip.Prefix, error) {
	out := keep(&v.nets, in)
	for i, p := range out {
		if !p.IsValid() {
			return nil, fmt.Errorf("invalid CIDR %q", p.String())
		}
		// Masked first: ::ffff:0:0/95 is an IPv6 prefix, and matches
		// IPv6 addresses only.
		out[i] = p.Masked()
		if out[i].Addr().Is4In6() {
			return nil, fmt.Errorf("IPv4-mapped CIDR %s: use the IPv4 form", p)
		}
	}
	return out, nil
}
