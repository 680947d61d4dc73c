package bpf

import (
	"testing"

	"github.com/sluicenet/sluice/maps"
)

// TestLayouts checks every generated mirror of a shared struct against the
// C layout in the object's BTF.
func TestLayouts(t *testing.T) {
	spec, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	if len(abiLayouts) == 0 {
		t.Fatal("abiLayouts is empty")
	}
	for _, l := range abiLayouts {
		if err := maps.CheckLayout(spec.Types, l.cType, l.goValue); err != nil {
			t.Errorf("%s: %v", l.cType, err)
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
		{MapRoutes, TypeRouteKey, TypeRoute},
		{MapIfaces, "__u32", TypeIface},
		{MapCounters, "__u32", TypeReasonCounts},
		{MapPending, "__u32", TypePending},
		{MapState, "__u32", TypeState},
		{MapIPSets, TypeIPSetKey, "__u32"},
	}
	tables, ok := spec.Maps[MapConntrackTables]
	if !ok || tables.InnerMap == nil {
		t.Fatalf("no map %s with an inner map", MapConntrackTables)
	}
	if got := tables.InnerMap.Key.TypeName(); got != TypeCTKey {
		t.Errorf("%s inner key: %s, want %s", MapConntrackTables, got, TypeCTKey)
	}
	if got := tables.InnerMap.Value.TypeName(); got != TypeCTValue {
		t.Errorf("%s inner value: %s, want %s", MapConntrackTables, got, TypeCTValue)
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
