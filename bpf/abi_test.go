package bpf

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestEnumStrings checks the String methods abigen generates, for value
// and flags enums, named and unknown values.
func TestEnumStrings(t *testing.T) {
	tests := []struct {
		value fmt.Stringer
		want  string
	}{
		{ReasonDroppedByPolicy, "dropped_by_policy"},
		{ReasonIPv6Passed, "ipv6_passed"},
		{Reason(42), "Reason(42)"},
		{ReasonCount, "Reason(36)"},
		{PolicyFailed, "failed"},
		{CTNATFwd, "nat_fwd"},
		{CTDirBToA, "b_to_a"},
		{HookEgress, "egress"},
		{ContDeny, "deny"},
		{IfaceWorkload | IfaceReady, "workload|ready"},
		{IfaceFlags(0), "0"},
		{IfaceDropNonIP | IfaceFlags(1<<12), "drop_non_ip|0x1000"},
		{IfaceFlags(1 << 31), "0x80000000"},
		{CTLegSYN | CTLegACK | CTLegIngressOK, "syn|ack|ingress_ok"},
		{StateFlagSrcIsHost | StateFlagLog, "src_is_host|log"},
	}
	var got, want []string
	for _, tt := range tests {
		got = append(got, tt.value.String())
		want = append(want, tt.want)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("String (-want +got):\n%s", diff)
	}
}
