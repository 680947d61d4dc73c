package polprog

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// reuseRule is a valid rule with every field set, so that a change of
// any field is a change of what it matches or does.
func reuseRule(id uint64) Rule {
	return Rule{
		ID: id, Action: ActionAllow, Protocol: "icmp", NotProtocol: "",
		SrcNets: []netip.Prefix{mustPrefix("10.1.0.0/16")}, NotSrcNets: []netip.Prefix{mustPrefix("10.1.2.0/24")},
		DstNets: []netip.Prefix{mustPrefix("fd00::/64")}, NotDstNets: []netip.Prefix{mustPrefix("fd00::/96")},
		SrcIPSets: []uint64{1}, NotSrcIPSets: []uint64{2}, DstIPSets: []uint64{3}, NotDstIPSets: []uint64{4},
		SrcPorts: []PortRange{{1, 2}}, SrcNamedPorts: []uint64{5}, NotSrcPorts: []PortRange{{3, 4}}, NotSrcNamedPorts: []uint64{6},
		DstPorts: []PortRange{{5, 6}}, DstNamedPorts: []uint64{7}, NotDstPorts: []PortRange{{7, 8}}, NotDstNamedPorts: []uint64{8},
		ICMP: &ICMPMatch{Type: 8}, NotICMP: &ICMPMatch{Type: 0, Code: 1, HasCode: true},
	}
}

// reuseRules is a host policy of reuseRules in every kind of tier and in
// profiles; each call makes new lists.
func reuseRules() Rules {
	var id uint64
	pol := func(n int) Policy {
		p := Policy{Name: "p"}
		for range n {
			id++
			p.Rules = append(p.Rules, reuseRule(id))
		}
		return p
	}
	return Rules{
		ForHost:             true,
		Tiers:               []Tier{{Name: "a", Policies: []Policy{pol(3), pol(2)}}, {Name: "b", Policies: []Policy{pol(2)}}},
		Profiles:            []Policy{pol(2)},
		PreDNATTiers:        []Tier{{Name: "pre", Policies: []Policy{pol(2)}}},
		ApplyOnForwardTiers: []Tier{{Name: "fwd", Policies: []Policy{pol(2)}}},
	}
}

// reuseMutations change one field of a rule in place, as a caller editing
// the Rules it passed before would, keeping it valid.
var reuseMutations = map[string]func(r *Rule){
	"ID":               func(r *Rule) { r.ID += 100 },
	"Action":           func(r *Rule) { r.Action = ActionDeny },
	"Protocol":         func(r *Rule) { r.Protocol = "icmpv6" },
	"NotProtocol":      func(r *Rule) { r.NotProtocol = "udp" },
	"SrcNets":          func(r *Rule) { r.SrcNets[0] = mustPrefix("10.2.0.0/16") },
	"NotSrcNets":       func(r *Rule) { r.NotSrcNets[0] = mustPrefix("10.1.3.0/24") },
	"DstNets":          func(r *Rule) { r.DstNets = append(r.DstNets, mustPrefix("fd01::/64")) },
	"NotDstNets":       func(r *Rule) { r.NotDstNets[0] = mustPrefix("fd00::/95") },
	"SrcIPSets":        func(r *Rule) { r.SrcIPSets[0]++ },
	"NotSrcIPSets":     func(r *Rule) { r.NotSrcIPSets = nil },
	"DstIPSets":        func(r *Rule) { r.DstIPSets[0]++ },
	"NotDstIPSets":     func(r *Rule) { r.NotDstIPSets[0]++ },
	"SrcPorts":         func(r *Rule) { r.SrcPorts[0].Last++ },
	"SrcNamedPorts":    func(r *Rule) { r.SrcNamedPorts[0]++ },
	"NotSrcPorts":      func(r *Rule) { r.NotSrcPorts[0].First-- },
	"NotSrcNamedPorts": func(r *Rule) { r.NotSrcNamedPorts[0]++ },
	"DstPorts":         func(r *Rule) { r.DstPorts = append(r.DstPorts, PortRange{9, 9}) },
	"DstNamedPorts":    func(r *Rule) { r.DstNamedPorts[0]++ },
	"NotDstPorts":      func(r *Rule) { r.NotDstPorts[0].Last++ },
	"NotDstNamedPorts": func(r *Rule) { r.NotDstNamedPorts[0]++ },
	"ICMP":             func(r *Rule) { r.ICMP.Type++ },
	"NotICMP":          func(r *Rule) { r.NotICMP.Code++ },
}

// programDiff compares validated programs but for what only a fresh
// validation sets: rule names, encoding offsets and rounds.
func programDiff(want, got *program) string {
	return cmp.Diff(want, got, cmp.AllowUnexported(program{}, tier{}, rule{}),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmpopts.IgnoreFields(rule{}, "where", "matchEnd", "round"), cmpopts.IgnoreFields(program{}, "takenOver", "round", "fresh", "serial", "against"))
}

// freshErr checks got.fresh, got validated against prev (nil: validated
// alone): ascending, every rule when prev is nil, and, when the two have
// one shape (so that eachRule's indexes are places), every rule left out
// has the ID, action and match of prev's at its index, and the count of
// those left out is takenOver. Update looks only at the fresh rules.
func freshErr(prev, got *program) string {
	if !slices.IsSorted(got.fresh) || len(slices.Compact(slices.Clone(got.fresh))) != len(got.fresh) {
		return fmt.Sprintf("fresh not strictly ascending: %v", got.fresh)
	}
	if len(got.fresh)+got.takenOver != got.ruleCount {
		return fmt.Sprintf("%d fresh and %d taken over of %d rules", len(got.fresh), got.takenOver, got.ruleCount)
	}
	if prev == nil {
		if got.takenOver != 0 {
			return fmt.Sprintf("%d rules taken over without a program before", got.takenOver)
		}
		return ""
	}
	if !sameShape(prev, got) {
		return ""
	}
	olds, news := prev.ruleList(), got.ruleList()
	for k := range news {
		if _, fresh := slices.BinarySearch(got.fresh, k); fresh {
			continue
		}
		if o, r := olds[k], news[k]; o.id != r.id || o.action != r.action || o.match != r.match {
			return fmt.Sprintf("rule %d (%s) is not fresh but differs from the one before", k, r.where)
		}
	}
	return ""
}

// TestValidateReuse holds validation against a previous program (what
// Update does) to a fresh validation: a change of any one field of any
// one rule, made in place in the Rules validated before, gives the same
// program, with that rule validated again and every other taken over.
func TestValidateReuse(t *testing.T) {
	for i := range reflect.TypeFor[Rule]().NumField() {
		if name := reflect.TypeFor[Rule]().Field(i).Name; reuseMutations[name] == nil {
			t.Errorf("Rule.%s has no mutation in reuseMutations", name)
		}
	}
	for name, mutate := range reuseMutations {
		rules := reuseRules()
		n := len(allRules(&rules))
		for k := range n {
			rules := reuseRules()
			prev, err := validate(rules, 0)
			if err != nil {
				t.Fatal(err)
			}
			mutate(allRules(&rules)[k])
			want, err := validate(rules, 0)
			if err != nil {
				t.Fatalf("%s of rule %d: %v", name, k, err)
			}
			got, err := validateWith(rules, validator{prev: prev})
			if err != nil {
				t.Fatalf("%s of rule %d: %v", name, k, err)
			}
			if diff := programDiff(want, got); diff != "" {
				t.Errorf("%s of rule %d: reusing differs from validating (-fresh +reused):\n%s", name, k, diff)
			}
			if e := freshErr(nil, want) + freshErr(prev, got); e != "" {
				t.Errorf("%s of rule %d: %s", name, k, e)
			}
			if got.takenOver != n-1 {
				t.Errorf("%s of rule %d: %d of %d rules taken over, want all but the changed one", name, k, got.takenOver, n)
			}
		}
	}
}

// TestValidateReuseEdges covers what reuse takes as unchanged and what
// it must not: prefixes that mask to those kept, rules that moved, a
// profile's pass (kept as deny) and an invalid change.
func TestValidateReuseEdges(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(r *Rules)
		reused int // of 13 rules (14 with one inserted)
	}{
		{"unmasked prefix", func(r *Rules) { r.Tiers[0].Policies[0].Rules[1].SrcNets[0] = mustPrefix("10.1.7.7/16") }, 13},
		{"rule inserted first", func(r *Rules) {
			p := &r.Tiers[0].Policies[0]
			p.Rules = append([]Rule{reuseRule(99)}, p.Rules...)
		}, 8}, // every rule of tier a is at another place; the other 8 stay
		{"profile pass", func(r *Rules) { r.Profiles[0].Rules[0].Action = ActionPass }, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules := reuseRules()
			prev, err := validate(rules, 0)
			if err != nil {
				t.Fatal(err)
			}
			tc.change(&rules)
			want, err := validate(rules, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, err := validateWith(rules, validator{prev: prev})
			if err != nil {
				t.Fatal(err)
			}
			if diff := programDiff(want, got); diff != "" {
				t.Errorf("reusing differs from validating (-fresh +reused):\n%s", diff)
			}
			if e := freshErr(prev, got); e != "" {
				t.Error(e)
			}
			if got.takenOver != tc.reused {
				t.Errorf("%d rules taken over, want %d", got.takenOver, tc.reused)
			}
		})
	}
	rules := reuseRules()
	prev, err := validate(rules, 0)
	if err != nil {
		t.Fatal(err)
	}
	rules.Tiers[1].Policies[0].Rules[0].SrcPorts[0] = PortRange{First: 9, Last: 1}
	if _, err := validateWith(rules, validator{prev: prev}); err == nil {
		t.Error("a reversed port range in a changed rule validated against a previous program")
	}
}
