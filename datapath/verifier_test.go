package datapath

import (
	"testing"
)

// verifierBudget is the kernel's limit on the instructions the verifier
// processes for one program (BPF_COMPLEXITY_LIMIT_INSNS).
const verifierBudget = 1_000_000

// TestVerifierHeadroom loads the TC programs and checks that the verifier
// processed each in under half of its budget: the datapath must never be
// refused at load time, and a change that takes it near the limit (as
// inlining a loop into every path would) fails here first. Kernels that do
// not report the count (before 5.16) skip.
func TestVerifierHeadroom(t *testing.T) {
	h := newHarness(t)
	for _, p := range []struct {
		name string
		prog prog
	}{{"sl_tc_ingress", progIngress}, {"sl_tc_egress", progEgress}} {
		info, err := h.program(p.prog).Info()
		if err != nil {
			t.Fatal(err)
		}
		n, ok := info.VerifiedInstructions()
		if !ok {
			t.Skip("the kernel does not report verified instructions")
		}
		t.Logf("%s: %d instructions verified", p.name, n)
		if n > verifierBudget/2 {
			t.Errorf("%s: %d instructions verified, over half the budget of %d", p.name, n, verifierBudget)
		}
	}
}
