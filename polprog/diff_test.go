package polprog

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// diffOptions varies the compiler across seeds: defaults, eager merging,
// eager merging with tiny parts, no merging with the fall-through layout,
// and the classifier on runs of a few rules (with tiny parts now and then).
func diffOptions(seed uint64, g *gen) Options {
	switch seed % 5 {
	case 4:
		o := Options{ClassifierRules: 1 + g.r.IntN(4)}
		if g.chance(3) {
			o.SplitJumps = 8 + g.r.IntN(40)
		}
		return o
	case 1:
		return Options{MergeThreshold: 3}
	case 2:
		// Small parts, though not so small that a policy of rules with
		// IPv6 CIDRs (five jumps each) needs more than MaxParts;
		// TestKernelTable puts every rule in its own part.
		return Options{MergeThreshold: 3, SplitJumps: 20 + g.r.IntN(40), MaxParts: MaxParts}
	case 3:
		return Options{MergeThreshold: -1, FallThroughRules: 1}
	}
	return Options{}
}

// diffStats counts what a differential run covered.
type diffStats struct {
	cases, parts, lookupMaps, splitPolicies int
	// classified counts classified runs, rules the rules compiled.
	classified, rules int
	verdicts          map[Verdict]int
	logged            int
	// host counts host endpoint cases by the path that decided them.
	host map[hostPath]int
	// families counts cases by the packet's address families ("v4",
	// "v6", "mixed") and verdict.
	families map[string]int
}

// hostPath is where a host endpoint's policy decided a packet.
type hostPath string

const (
	pathPreDNAT        hostPath = "pre-DNAT"
	pathNormal         hostPath = "normal"
	pathForward        hostPath = "forward"
	pathForwardDefault hostPath = "forward-default"
)

// hostPathOf classifies pkt under a host endpoint's rules with the
// evaluator's pieces.
func hostPathOf(ev *Evaluator, sets IPSets, pkt Packet) hostPath {
	e := evaluation{sets: sets}
	if _, ok := e.hostTiers(ev.prog.preDNAT, view(pkt, true)); ok {
		return pathPreDNAT
	}
	if pkt.SrcIsHost || pkt.DstIsHost {
		return pathNormal
	}
	if _, ok := e.hostTiers(ev.prog.forward, view(pkt, false)); ok {
		return pathForward
	}
	return pathForwardDefault
}

func newDiffStats() diffStats {
	return diffStats{verdicts: map[Verdict]int{}, host: map[hostPath]int{}, families: map[string]int{}}
}

// differential compiles the random policy of seed, then runs packets
// through the kernel and the evaluator and compares their decisions.
func differential(t testing.TB, k *kernel, seed uint64, packets int, st *diffStats) {
	g := newGen(seed)
	rules := g.rules()
	opts := diffOptions(seed, g)
	differentialRules(t, k, g, seed, rules, opts, packets, st)
}

// differentialLarge is differential on a policy of at least 10,000 random
// rules (see gen.largeRules) compiled with options from the seed.
func differentialLarge(t testing.TB, k *kernel, seed uint64, packets int, st *diffStats) {
	g := newGen(seed)
	rules := g.largeRules(10000, seed%2 == 1)
	opts := Options{}
	switch seed % 3 {
	case 1:
		opts.ClassifierRules = 1 + g.r.IntN(300)
	case 2:
		opts.SplitJumps = 1500 + g.r.IntN(2000)
	}
	differentialRules(t, k, g, seed, rules, opts, packets, st)
}

func differentialRules(t testing.TB, k *kernel, g *gen, seed uint64, rules Rules, opts Options, packets int, st *diffStats) {
	ev, err := NewEvaluator(rules)
	if err != nil {
		t.Fatalf("seed %d: evaluator: %v", seed, err)
	}
	c, err := Compile(rules, opts)
	if err != nil {
		t.Fatalf("seed %d: compile: %v", seed, err)
	}
	k.setIPSets(t, g.sets)
	slots, free := k.allocSlots(t, len(c.Parts))
	defer free()
	p, err := c.Load(k.maps, slots)
	if err != nil {
		t.Fatalf("seed %d: load: %v", seed, err)
	}
	defer p.Close()
	st.rules += ev.prog.ruleCount
	st.parts += len(c.Parts)
	st.classified += classifiedRuns(c)
	st.lookupMaps += len(c.LookupMaps)
	if len(c.Parts) > 1 {
		st.splitPolicies++
	}
	for i := 0; i < packets; i++ {
		pkt := g.packet()
		want := ev.Evaluate(g.sets, pkt)
		got := k.run(t, p, pkt)
		if diff := cmp.Diff(want, got, decisionCmp); diff != "" {
			t.Fatalf("seed %d (options %+v), packet %d %+v: kernel differs from Evaluate (-evaluate +kernel):\n%s",
				seed, opts, i, pkt, diff)
		}
		// Again: a classified run's outcome is now cached.
		if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
			t.Fatalf("seed %d (options %+v), packet %d %+v, second run: kernel differs from Evaluate (-evaluate +kernel):\n%s",
				seed, opts, i, pkt, diff)
		}
		st.cases++
		st.verdicts[got.Verdict]++
		st.families[packetFamilies(pkt)+"/"+got.Verdict.String()]++
		if got.Logged {
			st.logged++
		}
		if rules.ForHost {
			st.host[hostPathOf(ev, g.sets, pkt)]++
		}
	}
}

// packetFamilies names the families of pkt's addresses.
func packetFamilies(pkt Packet) string {
	switch {
	case pkt.Src.Is4() && pkt.Dst.Is4():
		return "v4"
	case pkt.Src.Is6() && pkt.Dst.Is6():
		return "v6"
	}
	return "mixed"
}

// TestDifferential holds compiled programs to Evaluate on random policies
// (tiers, profiles, host stages, every field, IP sets with named ports,
// merged runs, small parts, CIDRs and IP set members of both families)
// and random packets of both families: 100,000 cases, 10,000 with -short.
func TestDifferential(t *testing.T) {
	k := newKernel(t)
	policies, packets := 125, 800
	if testing.Short() {
		policies = 13
	}
	st := newDiffStats()
	for seed := uint64(0); seed < uint64(policies); seed++ {
		differential(t, k, seed, packets, &st)
	}
	t.Logf("%d cases over %d policies: %d parts, %d split policies, %d lookup maps, %d classified runs, verdicts %v, %d logged, host paths %v, families %v",
		st.cases, policies, st.parts, st.splitPolicies, st.lookupMaps, st.classified, st.verdicts, st.logged, st.host, st.families)
	for _, f := range []string{"v4", "v6"} {
		for _, v := range []Verdict{VerdictAllow, VerdictDeny} {
			if n := st.families[f+"/"+v.String()]; n < st.cases/50 {
				t.Errorf("only %d of %d cases were %s packets with verdict %s", n, st.cases, f, v)
			}
		}
	}
	// The run must have exercised what it claims to.
	if st.splitPolicies == 0 || st.lookupMaps == 0 || st.logged == 0 || st.classified == 0 ||
		st.verdicts[VerdictAllow] < st.cases/20 || st.verdicts[VerdictDeny] < st.cases/20 {
		t.Errorf("random cases missed a path: %+v", st)
	}
	for _, path := range []hostPath{pathPreDNAT, pathNormal, pathForward, pathForwardDefault} {
		if st.host[path] < st.cases/200 {
			t.Errorf("host path %s decided only %d of %d cases", path, st.host[path], st.cases)
		}
	}
}

// TestDifferentialLarge holds the compiled programs to Evaluate on random
// policies of at least 10,000 rules (classified runs, tiers with pass,
// profiles, host endpoints, every field and negation): six policies of
// 1,500 packets, two with -short.
func TestDifferentialLarge(t *testing.T) {
	k := newKernel(t)
	policies, packets := 6, 1500
	if testing.Short() {
		policies = 2
	}
	st := newDiffStats()
	for seed := uint64(0); seed < uint64(policies); seed++ {
		differentialLarge(t, k, seed, packets, &st)
	}
	t.Logf("%d cases over %d policies of %d rules in all: %d parts, %d classified runs, verdicts %v, %d logged, host paths %v",
		st.cases, policies, st.rules, st.parts, st.classified, st.verdicts, st.logged, st.host)
	if st.rules < 10000*policies || st.classified < policies || st.logged == 0 ||
		st.verdicts[VerdictAllow] < st.cases/20 || st.verdicts[VerdictDeny] < st.cases/20 {
		t.Errorf("large random cases missed a path: %+v", st)
	}
}

// FuzzCompileEvaluate compiles the random policy that the fuzzer's seed
// selects and compares the kernel with Evaluate on packets from it. A
// ninth byte with its low bit set selects a policy of 10,000 rules or
// more (see TestDifferentialLarge).
func FuzzCompileEvaluate(f *testing.F) {
	for _, s := range []uint64{1, 2, 3, 1 << 40} {
		f.Add(binary.LittleEndian.AppendUint64(nil, s))
	}
	f.Add(append(binary.LittleEndian.AppendUint64(nil, 7), 1))
	k := newKernel(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var seed [8]byte
		copy(seed[:], data)
		st := newDiffStats()
		if len(data) > 8 && data[8]&1 == 1 {
			differentialLarge(t, k, binary.LittleEndian.Uint64(seed[:]), 50, &st)
			return
		}
		differential(t, k, binary.LittleEndian.Uint64(seed[:]), 50, &st)
	})
}

// TestEvaluatorDeterministic checks that Evaluate does not depend on state
// left by earlier calls.
func TestEvaluatorDeterministic(t *testing.T) {
	g := newGen(42)
	ev, err := NewEvaluator(g.rules())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		pkt := g.packet()
		a, b := ev.Evaluate(g.sets, pkt), ev.Evaluate(g.sets, pkt)
		if diff := cmp.Diff(a, b); diff != "" {
			t.Fatalf("%s", fmt.Sprint(diff))
		}
	}
}

// classifiedRuns counts the classified runs of c (each has one rows map).
func classifiedRuns(c *Compiled) int {
	n := 0
	for _, lm := range c.LookupMaps {
		if strings.HasSuffix(lm.Name, "_rows") {
			n++
		}
	}
	return n
}
