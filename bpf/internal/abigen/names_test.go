package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestGoName(t *testing.T) {
	tests := []struct{ c, want string }{
		{"src_addr", "SrcAddr"},
		{"pre_nat_dst_addr", "PreNATDstAddr"},
		{"ip_proto", "IPProto"},
		{"icmp_type", "ICMPType"},
		{"icmpv6_code", "ICMPv6Code"},
		{"policy_rc", "PolicyRC"},
		{"rule_id", "RuleID"},
		{"set_id", "SetID"},
		{"a_to_b", "AToB"},
		{"nat_peer", "NATPeer"},
		{"ct_key", "CTKey"},
		{"ifindex", "Ifindex"},
		{"prefixlen", "Prefixlen"},
		{"l4_off", "L4Off"},
		{"ipv4_addr", "IPv4Addr"},
		{"ipv6_passed", "IPv6Passed"},
		{"dropped_bad_ihl", "DroppedBadIHL"},
		{"drop_non_ip", "DropNonIP"},
		{"ingress_ok", "IngressOK"},
		{"syn_ack_fin_rst", "SYNACKFINRST"},
		{"vlan_mtu_ttl", "VLANMTUTTL"},
		{"rpf_lpm_cidr", "RPFLPMCIDR"},
		{"dnat_snat_udp_tcp_l3", "DNATSNATUDPTCPL3"},
		{"_leading__double_", "LeadingDouble"},
		{"addr6", "Addr6"},
		{"x", "X"},
	}
	var got, want []string
	for _, tt := range tests {
		got = append(got, tt.c+" → "+goName(tt.c))
		want = append(want, tt.c+" → "+tt.want)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("goName (-want +got):\n%s", diff)
	}
}

func TestInitialismsAreLowerCaseKeys(t *testing.T) {
	for word, spelled := range initialisms {
		if word != strings.ToLower(spelled) {
			t.Errorf("initialisms[%q] = %q: the key must be the lower-case spelling", word, spelled)
		}
	}
}

func TestUnexport(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Reason", "reason"},
		{"CTLegFlags", "ctLegFlags"},
		{"IPSetKey", "ipSetKey"},
		{"PolicyRC", "policyRC"},
		{"CT", "ct"},
		{"X", "x"},
	}
	for _, tt := range tests {
		if got := unexport(tt.in); got != tt.want {
			t.Errorf("unexport(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestIsPadding(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"pad", true},
		{"pad0", true},
		{"pad12", true},
		{"padding", false},
		{"pad_a", false},
		{"spad", false},
		{"prefixlen", false},
	}
	for _, tt := range tests {
		if got := isPadding(tt.name); got != tt.want {
			t.Errorf("isPadding(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}
