package bpf

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestReasonNames: every reason below ReasonCount has a name of its own
// (counters, metrics and the CLI label packets with it), an accepting
// one below ReasonFirstDrop and a dropping or rejecting one from it.
func TestReasonNames(t *testing.T) {
	seen := map[string]Reason{}
	for r := Reason(0); r < ReasonCount; r++ {
		name := r.String()
		if strings.HasPrefix(name, "Reason(") {
			t.Errorf("reason %d has no name", int(r))
			continue
		}
		if other, ok := seen[name]; ok {
			t.Errorf("reasons %d and %d are both %q", int(other), int(r), name)
		}
		seen[name] = r
		drop := strings.HasPrefix(name, "dropped_") || strings.HasPrefix(name, "rejected_")
		if drop != (r >= ReasonFirstDrop) {
			t.Errorf("reason %d, %q, is on the wrong side of ReasonFirstDrop (%d)", int(r), name, int(ReasonFirstDrop))
		}
	}
}

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
		{ReasonCount, fmt.Sprintf("Reason(%d)", int(ReasonCount))},
		{ReasonDroppedFIBTTL, "dropped_fib_ttl"},
		{ReasonDroppedFIBMTU, "dropped_fib_mtu"},
		{ReasonDroppedFIBNoRoute, "dropped_fib_no_route"},
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
