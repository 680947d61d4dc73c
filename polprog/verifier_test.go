package polprog

import (
	"errors"
	"fmt"
	"testing"

	ebpfasm "github.com/cilium/ebpf/asm"
)

// verifierLimit is the kernel's limit on instructions processed while
// verifying one program (BPF_COMPLEXITY_LIMIT_INSNS).
const verifierLimit = 1_000_000

// maxVerifiedPerInstruction bounds the instructions the verifier may
// process per instruction of a part in TestLoadRandomLayouts.
const maxVerifiedPerInstruction = 5

// verifierLayouts are the layouts that TestLoadRandomLayouts loads: plain
// is linear (no merging, no fall-through, no classifier), merged adds LPM
// lookups of runs, classified classifies every run, default is Options{}.
var verifierLayouts = []struct {
	name string
	opts Options
}{
	{"plain", Options{FallThroughRules: -1, MergeThreshold: -1, ClassifierRules: -1}},
	{"fallthrough", Options{FallThroughRules: 1, MergeThreshold: -1, ClassifierRules: -1}},
	{"merged", Options{FallThroughRules: -1, ClassifierRules: -1}},
	{"classified", Options{ClassifierRules: 1}},
	{"default", Options{}},
}

// TestLoadRandomLayouts loads BenchmarkPolicy's random policies of 1,000
// and 10,000 rules (every field and negation, IP sets, named ports) in
// every layout at both hooks, and checks that the verifier processed at
// most half its limit for any part: the margin that keeps policies like
// these from reaching it. Before the emitter's fixes (whole-slot IP set
// keys, family and /32 tests on copies) the plain layout's parts took the
// verifier past 1,000,000 instructions at 146 rules; the count grew with
// the square of the rules in a part, and now grows linearly.
func TestLoadRandomLayouts(t *testing.T) {
	for _, hook := range []Hook{HookTC, HookXDP} {
		k := newHookKernel(t, hook)
		for _, n := range []int{1000, 10000} {
			rules := benchPolicy(n, benchShapes[len(benchShapes)-1])
			for _, l := range verifierLayouts {
				t.Run(fmt.Sprintf("%s/rules=%d/%s", hook, n, l.name), func(t *testing.T) {
					opts := l.opts
					opts.Hook = hook
					c, err := Compile(rules, opts)
					if err != nil {
						t.Fatalf("compile: %v", err)
					}
					p := k.loadCompiled(t, c)
					worst, worstRatio := 0, 0.0
					for i, prog := range p.Programs() {
						info, err := prog.Info()
						if err != nil {
							t.Fatal(err)
						}
						v, ok := info.VerifiedInstructions()
						if !ok {
							t.Skip("the kernel reports no verified instruction count")
						}
						if int(v) > verifierLimit/2 {
							t.Errorf("part %d (%d instructions, %d rules): verifier processed %d, more than half its limit", i, len(c.Parts[i].Instructions), c.Parts[i].Rules, v)
						}
						worst = max(worst, int(v))
						worstRatio = max(worstRatio, float64(v)/float64(len(c.Parts[i].Instructions)))
					}
					t.Logf("%d parts; verifier processed at most %d instructions for a part, %.2f per instruction", len(c.Parts), worst, worstRatio)
					// Pruning at the rules' joins keeps the count linear
					// in a part's length (1.6 per instruction, 3.1 for a
					// small classified part); paths that never join again
					// multiply it.
					if worstRatio > maxVerifiedPerInstruction {
						t.Errorf("verifier processed %.2f instructions per instruction of a part, more than %d", worstRatio, maxVerifiedPerInstruction)
					}
					for name, pkt := range benchPackets {
						want, err := Evaluate(rules, nil, pkt)
						if err != nil {
							t.Fatal(err)
						}
						if d := k.run(t, p, pkt); d.Verdict != want.Verdict || d.RuleID != want.RuleID {
							t.Errorf("%s: decision %+v, want %+v", name, d, want)
						}
					}
				})
			}
		}
	}
}

// TestTooLarge checks that a policy that cannot fit gets ErrTooLarge:
// from Compile when it needs more than MaxParts parts, and from Load when
// the kernel refuses a part as too large to verify.
func TestTooLarge(t *testing.T) {
	rules := benchPolicy(1000, benchShapes[len(benchShapes)-1])
	_, err := Compile(rules, Options{MaxParts: 2, SplitJumps: 100, MergeThreshold: -1, ClassifierRules: -1})
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("compile into 2 parts of 100 jumps: %v, want ErrTooLarge", err)
	}

	k := newKernel(t)
	insns := make(ebpfasm.Instructions, 0, verifierLimit+2)
	for range verifierLimit + 1 {
		insns = append(insns, ebpfasm.Mov.Imm(ebpfasm.R0, 0))
	}
	insns = append(insns, ebpfasm.Return())
	slots, free := k.allocSlots(t, 1)
	defer free()
	c := &Compiled{Parts: []Part{{Instructions: insns}}}
	p, err := c.Load(k.maps, slots)
	if err == nil {
		p.Close()
	}
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("load of %d instructions: %.300v, want ErrTooLarge", len(insns), err)
	}
}
