package polprog

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
)

// TestXDPDifferential holds HookXDP policies, loaded as XDP programs into
// a jump map whose continuations are XDP programs, to Evaluate on random
// policies and packets of both families, as TestDifferential does for TC.
func TestXDPDifferential(t *testing.T) {
	k := newHookKernel(t, HookXDP)
	policies, packets := 20, 400
	if testing.Short() {
		policies = 5
	}
	st := newDiffStats()
	for seed := uint64(0); seed < uint64(policies); seed++ {
		g := newGen(seed)
		opts := diffOptions(seed, g)
		opts.Hook = HookXDP
		differentialRules(t, k, g, seed, g.rules(), opts, packets, &st)
	}
	t.Logf("%d cases over %d policies: %d parts, verdicts %v", st.cases, policies, st.parts, st.verdicts)
	if st.verdicts[VerdictAllow] < st.cases/20 || st.verdicts[VerdictDeny] < st.cases/20 || st.splitPolicies == 0 {
		t.Errorf("random cases missed a path: %+v", st)
	}
}

// TestXDPFailure: an XDP policy that reaches neither continuation returns
// XDP_DROP where a TC one returns TC_ACT_SHOT, and a policy of one hook
// does not load into the other's jump map.
func TestXDPFailure(t *testing.T) {
	tc, xdp := newKernel(t), newHookKernel(t, HookXDP)
	const emptyCont = 5
	for _, c := range []struct {
		k    *kernel
		want uint32
	}{{tc, tcActShot}, {xdp, xdpDrop}} {
		t.Run(c.k.hook.String(), func(t *testing.T) {
			p := c.k.loadCompiled(t, compileTwoParts(t, Options{Hook: c.k.hook, AllowSlot: emptyCont, DenySlot: emptyCont + 1}))
			ret, out := c.k.runProg(t, p.Programs()[0], stateOf(basePacket))
			if diff := cmp.Diff([]uint32{c.want, uint32(bpf.PolicyFailed)}, []uint32{ret, uint32(out.PolicyRC)}); diff != "" {
				t.Errorf("return code and policy_rc (-want +got):\n%s", diff)
			}
			if got := p.Programs()[0].Type(); got != c.k.hook.programType() {
				t.Errorf("program type %s, want %s", got, c.k.hook.programType())
			}
		})
	}
	// The TC kernel's prog arrays hold SchedCLS programs (the stubs):
	// the kernel refuses XDP programs that tail call into them.
	c := compileTwoParts(t, Options{Hook: HookXDP})
	slots, free := tc.allocSlots(t, len(c.Parts))
	defer free()
	if p, err := c.Load(tc.maps, slots); err == nil {
		p.Close()
		t.Fatal("an XDP policy loaded into a TC jump map")
	}
}

// TestHookOption: an unknown hook is an error from Compile.
func TestHookOption(t *testing.T) {
	if _, err := Compile(twoPartRules, Options{Hook: Hook(7)}); err == nil {
		t.Fatal("Compile took hook 7")
	}
	if HookXDP.programType() != ebpf.XDP || HookTC.programType() != ebpf.SchedCLS {
		t.Fatal("program types")
	}
}
