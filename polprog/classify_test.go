package polprog

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	ebpfasm "github.com/cilium/ebpf/asm"
	"github.com/google/go-cmp/cmp"
)

// encoded is what of insns reaches the kernel, one string per instruction.
func encoded(insns ebpfasm.Instructions) []string {
	out := make([]string, len(insns))
	for i, ins := range insns {
		out[i] = fmt.Sprint(ins.OpCode, ins.Dst, ins.Src, ins.Offset, ins.Constant, ins.Reference())
	}
	return out
}

// classifiedOnly compiles with every run classified and fails unless a
// classifier was built.
func classifiedOnly(t *testing.T, rules Rules) *Compiled {
	t.Helper()
	c, err := Compile(rules, Options{ClassifierRules: 1})
	if err != nil {
		t.Fatal(err)
	}
	if classifiedRuns(c) == 0 {
		t.Fatal("no classified run")
	}
	return c
}

// TestClassifierLogAlternatives checks that a log rule whose ports OR a
// range with a named-port set, and which a packet matches both ways, logs
// and counts once, and that the search goes on to the next rule.
func TestClassifierLogAlternatives(t *testing.T) {
	k := newKernel(t)
	const set, logID, allowID = 77, 1001, 1002
	src := mustAddr("10.0.0.1")
	sets := IPSetMembers{set: {NamedPorts: []NamedPortMember{{Addr: src, Protocol: 6, Port: 80}}}}
	k.setIPSets(t, sets)
	var rs []Rule
	// Fill the first word up to its last bit, so that the log rule's two
	// positions would straddle a word boundary without padding.
	for i := 0; i < 63; i++ {
		rs = append(rs, Rule{ID: uint64(i + 1), Action: ActionDeny, SrcNets: []netip.Prefix{mustPrefix("192.168.9.9/32")}})
	}
	rs = append(rs,
		Rule{ID: logID, Action: ActionLog, SrcPorts: []PortRange{Port(80)}, SrcNamedPorts: []uint64{set}},
		Rule{ID: allowID, Action: ActionAllow, Protocol: "tcp"})
	rules := Rules{Tiers: []Tier{{Name: "t", Policies: []Policy{{Rules: rs}}}}}
	p := k.loadCompiled(t, classifiedOnly(t, rules))
	pkt := Packet{Src: src, Dst: mustAddr("10.0.0.2"), SrcPort: 80, DstPort: 443, Protocol: 6}
	want, err := Evaluate(rules, sets, pkt)
	if err != nil {
		t.Fatal(err)
	}
	if !want.Logged || want.RuleID != allowID {
		t.Fatalf("evaluate: %+v", want)
	}
	before := k.hits(t, logID)
	if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
		t.Fatalf("(-evaluate +kernel):\n%s", diff)
	}
	if got := k.hits(t, logID) - before; got != 1 {
		t.Errorf("log rule counted %d times, want once", got)
	}
}

// TestClassifierSeesIPSetChanges changes an IP set after load: the
// classified program looks membership up in the shared trie, so the
// verdict follows.
func TestClassifierSeesIPSetChanges(t *testing.T) {
	k := newKernel(t)
	const set = 5
	rules := Rules{NoMatchRuleID: 9, Tiers: []Tier{{Name: "t", Policies: []Policy{{Rules: []Rule{
		{ID: 1, Action: ActionAllow, SrcIPSets: []uint64{set}},
		{ID: 2, Action: ActionDeny, NotDstIPSets: []uint64{set}},
	}}}}}}
	p := k.loadCompiled(t, classifiedOnly(t, rules))
	pkt := Packet{Src: mustAddr("10.1.2.3"), Dst: mustAddr("10.9.9.9"), Protocol: 17, SrcPort: 1, DstPort: 2}
	for _, sets := range []IPSetMembers{
		{},
		{set: {Nets: []netip.Prefix{mustPrefix("10.1.0.0/16")}}},
		{set: {Nets: []netip.Prefix{mustPrefix("10.9.9.9/32")}}},
	} {
		k.setIPSets(t, sets)
		want, err := Evaluate(rules, sets, pkt)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
			t.Errorf("sets %v (-evaluate +kernel):\n%s", sets, diff)
		}
	}
}

// TestClassifierFallbacks checks when runs stay linear: below the run
// length, with the classifier off, and past the byte bound.
func TestClassifierFallbacks(t *testing.T) {
	g := newGen(3)
	rules := g.largeRules(2000, false)
	for _, tc := range []struct {
		name       string
		opts       Options
		classified bool
	}{
		{"default", Options{}, true},
		{"off", Options{ClassifierRules: -1}, false},
		{"longer runs than any", Options{ClassifierRules: 1 << 20}, false},
		{"tiny byte bound", Options{ClassifierBytes: 64}, false},
	} {
		c, err := Compile(rules, tc.opts)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := classifiedRuns(c) > 0; got != tc.classified {
			t.Errorf("%s: classified %v, want %v", tc.name, got, tc.classified)
		}
	}
}

// TestCompileDeterministic compiles the same large policy twice and
// compares instructions and map contents.
func TestCompileDeterministic(t *testing.T) {
	rules := newGen(11).largeRules(3000, true)
	a, err := Compile(rules, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compile(rules, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Parts) != len(b.Parts) || len(a.LookupMaps) != len(b.LookupMaps) {
		t.Fatalf("%d/%d parts, %d/%d maps", len(a.Parts), len(b.Parts), len(a.LookupMaps), len(b.LookupMaps))
	}
	for i := range a.Parts {
		if diff := cmp.Diff(encoded(a.Parts[i].Instructions), encoded(b.Parts[i].Instructions)); diff != "" {
			t.Fatalf("part %d differs:\n%s", i, diff)
		}
	}
	for i := range a.LookupMaps {
		x, y := a.LookupMaps[i], b.LookupMaps[i]
		xs, ys := *x.Spec, *y.Spec
		xs.Contents, ys.Contents = nil, nil
		if x.Name != y.Name || !reflect.DeepEqual(xs, ys) || !sameSpecContents(x.Spec.Contents, y.Spec.Contents) {
			t.Fatalf("lookup map %d (%s, %s) differs", i, x.Name, y.Name)
		}
	}
	if len(a.classes) == 0 || len(a.classes) != len(b.classes) {
		t.Fatalf("%d/%d classified runs", len(a.classes), len(b.classes))
	}
	for i := range a.classes {
		x, y := a.classes[i].contents(), b.classes[i].contents()
		if len(x) != len(y) {
			t.Fatalf("run %d: %d/%d maps", i, len(x), len(y))
		}
		for name := range x {
			if !sameContents(x[name], y[name]) {
				t.Fatalf("run %d: contents of %s differ", i, name)
			}
		}
	}
}

// TestClassifierFamilies: in a classified run an IPv6 prefix that covers
// ::ffff:0:0/96 never contains an IPv4 address, and an IPv4 prefix never an
// IPv6 one, whatever the run's other prefixes; negations hold for the
// other family.
func TestClassifierFamilies(t *testing.T) {
	k := newKernel(t)
	mk := func(id uint64, a Action, r Rule) Rule { r.ID, r.Action = id, a; return r }
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range s {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	// Terminal rules with their own IDs: the deciding ID says which
	// prefix the kernel found to contain the address.
	rules := []Rule{
		mk(1, ActionAllow, Rule{SrcNets: pfx("::/0")}),
		mk(2, ActionDeny, Rule{SrcNets: pfx("::ffff:0:0/95", "::/8")}),
		mk(4, ActionAllow, Rule{SrcNets: pfx("10.0.0.0/8")}),
		mk(6, ActionDeny, Rule{SrcNets: pfx("2001:db8::/32")}),
		mk(5, ActionDeny, Rule{NotSrcNets: pfx("0.0.0.0/0")}),
		mk(3, ActionAllow, Rule{NotSrcNets: pfx("::/0")}),
		mk(7, ActionDeny, Rule{}),
	}
	// With and without an IPv4 /0 of its own in the run.
	for _, rules := range [][]Rule{rules, append(slices.Clone(rules[:4]), rules[5:]...)} {
		classifierFamilies(t, k, rules)
	}
}

func classifierFamilies(t *testing.T, k *kernel, rules []Rule) {
	rs := Rules{Tiers: []Tier{{Name: "t", EndRuleID: tierEnd, Policies: []Policy{{Name: "p", Rules: rules}}}}, NoMatchRuleID: noMatch}
	p := k.loadCompiled(t, classifiedOnly(t, rs))
	for _, src := range []string{"10.1.2.3", "192.168.0.1", "2001:db8::a01:203", "::a01:203", "fd00::1", "::ffff:0:0"} {
		pkt := Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("10.0.0.9"), Protocol: 6, SrcPort: 1, DstPort: 2}
		if netip.MustParseAddr(src).Is6() {
			pkt.Dst = netip.MustParseAddr("fd00::9")
		}
		want, err := Evaluate(rs, nil, pkt)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
			t.Errorf("source %s: kernel differs from Evaluate (-evaluate +kernel):\n%s", src, diff)
		}
	}
}

// TestClassifierCache sends each packet three times (the later runs meet
// the outcome the first one cached, logs and hits included), then changes
// the rules deciding them through Update and sends them again: a cached
// outcome of the rules before never decides a packet after the switch.
func TestClassifierCache(t *testing.T) {
	k := newKernel(t)
	g := newGen(21)
	rules := g.largeRules(3000, false)
	k.setIPSets(t, g.sets)
	p := k.loadCompiled(t, classifiedOnly(t, rules))
	pkts := make([]Packet, 200)
	for i := range pkts {
		pkts[i] = g.packet()
	}
	check := func(when string, rules Rules) {
		t.Helper()
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		for _, pkt := range pkts {
			want := ev.Evaluate(g.sets, pkt)
			for run := range 3 {
				if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
					t.Fatalf("%s, run %d, packet %+v (-evaluate +kernel):\n%s", when, run, pkt, diff)
				}
			}
		}
	}
	check("before updates", rules)
	changed := 0
	for u := 0; u < 4; u++ {
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		next := cloneRules(rules)
		for _, pkt := range pkts[u*10 : u*10+10] {
			g.mutateRule(&next, ev.Evaluate(g.sets, pkt).RuleID)
		}
		if err := p.Update(next); err != nil {
			if errors.Is(err, ErrNeedsReload) {
				continue
			}
			t.Fatal(err)
		}
		rules = next
		changed++
		check(fmt.Sprintf("after update %d", u), rules)
	}
	if changed == 0 {
		t.Fatal("no update applied")
	}
}

// TestClassifierHalvedRuns compiles a run whose rows pass the byte bound
// while half of it fits: it is classified in halves (not left linear, and
// not a classifier built again from every next rule, which took minutes
// at 10,000 rules), and the kernel agrees with Evaluate on packets that
// hit rules of both halves.
func TestClassifierHalvedRuns(t *testing.T) {
	var shape benchShape
	for _, s := range benchShapes {
		if s.name == "cidr+port" {
			shape = s
		}
	}
	rules := benchPolicy(2000, shape)
	whole, err := Compile(rules, Options{MergeThreshold: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(whole.classes) != 1 {
		t.Fatalf("%d classified runs without a bound, want 1", len(whole.classes))
	}
	opts := Options{MergeThreshold: -1, ClassifierBytes: whole.classes[0].layout.bytes() / 2}
	c, err := Compile(rules, opts)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, cc := range c.classes {
		if b := cc.layout.bytes(); b > opts.ClassifierBytes {
			t.Errorf("a run of %d rules takes %d bytes, past the bound %d", len(cc.cl.rules), b, opts.ClassifierBytes)
		}
		n += len(cc.cl.rules)
	}
	if len(c.classes) < 2 || n != len(rules.Tiers[0].Policies[0].Rules) {
		t.Fatalf("%d classified runs of %d rules in all, want 2 or more covering all %d", len(c.classes), n, len(rules.Tiers[0].Policies[0].Rules))
	}
	k := newKernel(t)
	p := k.loadCompiled(t, c)
	g := newGen(5)
	for i, r := range rules.Tiers[0].Policies[0].Rules {
		if i%97 != 0 && i != len(rules.Tiers[0].Policies[0].Rules)-1 {
			continue
		}
		pkt := g.packetFor(&r)
		want, err := Evaluate(rules, nil, pkt)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
			t.Errorf("packet for rule %d (-evaluate +kernel):\n%s", i, diff)
		}
	}
}
