package bpf

import (
	"testing"

	"github.com/sluicenet/sluice/maps"
)

// TestLayouts checks every Go mirror of a shared struct against the C
// layout in the object's BTF.
func TestLayouts(t *testing.T) {
	spec, err := LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		cType   string
		goValue any
	}{
		{TypeState, State{}},
		{TypeIPSetKey, IPSetKey{}},
		{TypeCTKey, CTKey{}},
		{TypeCTLeg, CTLeg{}},
		{TypeCTValue, CTValue{}},
		{TypeIface, Iface{}},
		{TypeReasonCounts, ReasonCounts{}},
		{TypePending, Pending{}},
	}
	for _, tt := range tests {
		if err := maps.CheckLayout(spec.Types, tt.cType, tt.goValue); err != nil {
			t.Errorf("%s: %v", tt.cType, err)
		}
	}
}

// TestMapTypes checks that each map's key and value in the object are the
// C types the Go mirrors stand for.
func TestMapTypes(t *testing.T) {
	spec, err := LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		mapName, key, value string
	}{
		{MapConntrack, TypeCTKey, TypeCTValue},
		{MapIfaces, "__u32", TypeIface},
		{MapCounters, "__u32", TypeReasonCounts},
		{MapPending, "__u32", TypePending},
		{MapState, "__u32", TypeState},
		{MapIPSets, TypeIPSetKey, "__u32"},
	}
	for _, tt := range tests {
		m, ok := spec.Maps[tt.mapName]
		if !ok {
			t.Errorf("no map %s", tt.mapName)
			continue
		}
		if got := m.Key.TypeName(); got != tt.key {
			t.Errorf("%s key: %s, want %s", tt.mapName, got, tt.key)
		}
		if got := m.Value.TypeName(); got != tt.value {
			t.Errorf("%s value: %s, want %s", tt.mapName, got, tt.value)
		}
	}
}
