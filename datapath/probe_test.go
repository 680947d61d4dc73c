package datapath

import (
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestCheckKernel: the kernel the tests run on has every feature the
// datapath needs, so the probe must say so (a failing probe here is a bug
// in the probe, not a reason to skip).
func TestCheckKernel(t *testing.T) {
	testutil.RequirePrivileged(t)
	if err := CheckKernel(); err != nil {
		t.Fatal(err)
	}
}
