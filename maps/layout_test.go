package maps

import (
	"errors"
	"strings"
	"structs"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
)

// ctValueCamel mirrors sl_ct_value with the legs named the plain CamelCase
// way and one field renamed by tag; the nested types are the generated ones.
type ctValueCamel struct {
	_        structs.HostLayout
	Created  uint64
	LastSeen uint64
	Kind     uint32 `btf:"type"`
	Flags    uint32
	AToB     bpf.CTLeg
	BToA     bpf.CTLeg
	NatPeer  bpf.CTKey
	OrigAddr [16]uint8
	OrigPort uint16
	Pad1     [3]uint16
}

// Deliberately wrong mirrors of sl_ct_key and sl_ct_value.
type (
	ctKeySwappedPorts struct {
		AddrA [16]uint8
		AddrB [16]uint8
		PortB uint16
		PortA uint16
		Proto uint8
		Pad   [3]uint8
	}
	ctKeyWideProto struct {
		AddrA [16]uint8
		AddrB [16]uint8
		PortA uint16
		PortB uint16
		Proto uint16
		Pad   [2]uint8
	}
	ctKeyMissingProto struct {
		AddrA [16]uint8
		AddrB [16]uint8
		PortA uint16
		PortB uint16
		_     uint8
		Pad   [3]uint8
	}
	ctKeyExtraField struct {
		AddrA [16]uint8
		AddrB [16]uint8
		PortA uint16
		PortB uint16
		Proto uint8
		Pad   [3]uint8
		Vlan  uint32
	}
	ctKeyBadTag struct {
		AddrA [16]uint8
		AddrB [16]uint8
		PortA uint16
		PortB uint16
		Proto uint8 `btf:"protocol"`
		Pad   [3]uint8
	}
	ctKeyPadBadTag struct {
		AddrA [16]uint8
		AddrB [16]uint8
		PortA uint16
		PortB uint16
		Proto uint8
		_     [3]uint8 `btf:"padding"`
	}
	ctLegSwapped struct {
		Bytes         uint64
		Packets       uint32
		Flags         uint32
		EgressIfindex uint32
		Ifindex       uint32
	}
	ctValueBadLeg struct {
		Created  uint64
		LastSeen uint64
		Type     uint32
		Flags    uint32
		A_toB    ctLegSwapped
		B_toA    bpf.CTLeg
		NatPeer  bpf.CTKey
		OrigAddr [16]uint8
		OrigPort uint16
		Pad1     [3]uint16
	}
)

func datapathTypes(tb testing.TB) *btf.Spec {
	tb.Helper()
	spec, err := bpf.LoadSpec()
	if err != nil {
		tb.Fatal(err)
	}
	return spec.Types
}

func TestCheckLayoutAcceptsMirrors(t *testing.T) {
	types := datapathTypes(t)
	tests := []struct {
		cType   string
		goValue any
	}{
		{bpf.TypeState, bpf.State{}},
		{bpf.TypeState, &bpf.State{}},
		{bpf.TypeIPSetKey, bpf.IPSetKey{}},
		{bpf.TypeCTKey, bpf.CTKey{}},
		{bpf.TypeCTLeg, &bpf.CTLeg{}},
		{bpf.TypeCTValue, bpf.CTValue{}},
		{bpf.TypeCTValue, ctValueCamel{}},
	}
	for _, tt := range tests {
		if err := CheckLayout(types, tt.cType, tt.goValue); err != nil {
			t.Errorf("CheckLayout(%s, %T): %v", tt.cType, tt.goValue, err)
		}
	}
}

func TestCheckLayoutCatchesWrongStructs(t *testing.T) {
	types := datapathTypes(t)
	tests := []struct {
		name       string
		cType      string
		goValue    any
		wantFields []string
	}{
		{"moved field", bpf.TypeCTKey, ctKeySwappedPorts{}, []string{"PortB", "PortA"}},
		{"wrong size", bpf.TypeCTKey, ctKeyWideProto{}, []string{"Proto", "Pad", "Pad", "Pad"}},
		{"missing field", bpf.TypeCTKey, ctKeyMissingProto{}, []string{"proto"}},
		{"extra field", bpf.TypeCTKey, ctKeyExtraField{}, []string{"", "Vlan"}},
		{"unknown tag", bpf.TypeCTKey, ctKeyBadTag{}, []string{"Proto", "proto"}},
		{"unknown tag on padding", bpf.TypeCTKey, ctKeyPadBadTag{}, []string{"_", "pad"}},
		{"wrong nested offset", bpf.TypeCTValue, ctValueBadLeg{}, []string{"A_toB.EgressIfindex", "A_toB.Ifindex"}},
		{"wrong type entirely", bpf.TypeState, bpf.IPSetKey{}, []string{
			"", "Prefixlen", "SetID", "Family", "Addr", "Port", "Proto", "Zero",
			"src_addr", "dst_addr", "pre_nat_dst_addr", "src_port", "dst_port", "pre_nat_dst_port",
			"ip_proto", "icmp_type", "icmp_code", "pad0", "flags", "policy_rc", "resume", "rule_id",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckLayout(types, tt.cType, tt.goValue)
			var layoutErr *LayoutError
			if !errors.As(err, &layoutErr) {
				t.Fatalf("CheckLayout = %v, want a *LayoutError", err)
			}
			var got []string
			for _, m := range layoutErr.Mismatches {
				got = append(got, m.Field)
				if m.Field != "" && !strings.Contains(err.Error(), m.Field) {
					t.Errorf("error %q does not name field %s", err, m.Field)
				}
			}
			if diff := cmp.Diff(tt.wantFields, got); diff != "" {
				t.Errorf("mismatched fields (-want +got):\n%s\nerror: %v", diff, err)
			}
		})
	}
}

func TestCheckLayoutBadInput(t *testing.T) {
	types := datapathTypes(t)
	tests := []struct {
		name    string
		types   *btf.Spec
		cType   string
		goValue any
	}{
		{"nil spec", nil, bpf.TypeState, bpf.State{}},
		{"nil value", types, bpf.TypeState, nil},
		{"not a struct", types, bpf.TypeState, uint32(0)},
		{"unknown C type", types, "sl_no_such_type", bpf.State{}},
		{"C type not composite", types, "sl_policy_rc", bpf.State{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckLayout(tt.types, tt.cType, tt.goValue)
			if err == nil {
				t.Fatal("CheckLayout succeeded, want an error")
			}
			var layoutErr *LayoutError
			if errors.As(err, &layoutErr) {
				t.Errorf("got a layout mismatch %v, want an input error", err)
			}
		})
	}
}

// syntheticTypes builds BTF with shapes the datapath does not use yet: an
// array of structs, an anonymous union and a named union.
func syntheticTypes(t *testing.T) *btf.Spec {
	t.Helper()
	u8 := &btf.Int{Name: "__u8", Size: 1}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	port := &btf.Struct{Name: "sl_test_port", Size: 4, Members: []btf.Member{
		{Name: "port", Type: u16, Offset: 0},
		{Name: "proto", Type: u8, Offset: 16},
		{Name: "pad", Type: u8, Offset: 24},
	}}
	anon := &btf.Union{Size: 4, Members: []btf.Member{
		{Name: "ifindex", Type: u32},
		{Name: "raw", Type: &btf.Array{Index: u32, Type: u8, Nelems: 4}},
	}}
	named := &btf.Union{Name: "sl_test_union", Size: 4, Members: []btf.Member{
		{Name: "word", Type: u32},
		{Name: "half", Type: u16},
	}}
	outer := &btf.Struct{Name: "sl_test_ports", Size: 20, Members: []btf.Member{
		{Name: "count", Type: u32, Offset: 0},
		{Name: "ports", Type: &btf.Array{Index: u32, Type: port, Nelems: 3}, Offset: 32},
		{Name: "", Type: anon, Offset: 128},
	}}
	b, err := btf.NewBuilder([]btf.Type{outer, named}, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := b.Spec()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

type testPort struct {
	Port  uint16
	Proto uint8
	Pad   uint8
}

type testPorts struct {
	Count   uint32
	Ports   [3]testPort
	Ifindex uint32
}

type testPortBad struct {
	Port  uint16
	Pad   uint8
	Proto uint8
}

type testPortsBad struct {
	Count   uint32
	Ports   [3]testPortBad
	Ifindex uint32
}

type testPortsShort struct {
	Count   uint32
	Ports   [2]testPort
	Ifindex [5]uint8
}

type testUnion struct {
	Word uint32
}

func TestCheckLayoutSynthetic(t *testing.T) {
	types := syntheticTypes(t)
	tests := []struct {
		name       string
		cType      string
		goValue    any
		wantFields []string
	}{
		{"array of structs and anonymous union", "sl_test_ports", testPorts{}, nil},
		{"named union, first member only", "sl_test_union", testUnion{}, nil},
		{"wrong offset inside array element", "sl_test_ports", testPortsBad{}, []string{"Ports[0].Pad", "Ports[0].Proto"}},
		{"array length", "sl_test_ports", testPortsShort{}, []string{"", "Ports", "Ports", "Ifindex", "Ifindex"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckLayout(types, tt.cType, tt.goValue)
			var got []string
			var layoutErr *LayoutError
			if errors.As(err, &layoutErr) {
				for _, m := range layoutErr.Mismatches {
					got = append(got, m.Field)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantFields, got); diff != "" {
				t.Errorf("mismatched fields (-want +got):\n%s\nerror: %v", diff, err)
			}
		})
	}
}

func TestFieldNames(t *testing.T) {
	tests := []struct {
		cName, bpf2go, camel string
	}{
		{"src_addr", "SrcAddr", "SrcAddr"},
		{"set_id", "SetId", "SetId"},
		{"a_to_b", "A_toB", "AToB"},
		{"pad0", "Pad0", "Pad0"},
		{"_private", "Private", "Private"},
		{"v4_addr", "V4Addr", "V4Addr"},
		{"ID_x", "ID_x", "IDX"},
	}
	for _, tt := range tests {
		got := []string{goFieldName(tt.cName), camelCase(tt.cName)}
		if diff := cmp.Diff([]string{tt.bpf2go, tt.camel}, got); diff != "" {
			t.Errorf("names of %q (-want +got):\n%s", tt.cName, diff)
		}
	}
}
