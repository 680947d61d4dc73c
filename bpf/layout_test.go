package bpf

import (
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/sluicenet/sluice/maps"
)

// TestLayouts checks every generated mirror of a shared struct against the
// C layout in the BTF of the object that has it (abigen reads the objects
// in the same order).
func TestLayouts(t *testing.T) {
	datapath, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	sock, err := loadSock()
	if err != nil {
		t.Fatal(err)
	}
	if len(abiLayouts) == 0 {
		t.Fatal("abiLayouts is empty")
	}
	for _, l := range abiLayouts {
		types := datapath.Types
		var st *btf.Struct
		if err := types.TypeByName(l.cType, &st); err != nil {
			types = sock.Types
		}
		if err := maps.CheckLayout(types, l.cType, l.goValue); err != nil {
			t.Errorf("%s: %v", l.cType, err)
		}
	}
}

// TestSockMapTypes checks the connect-time objects' maps (balancing's and
// the socket iterator's): the service maps they share with the datapath
// have the datapath's types, and the socket storage holds SockNAT.
func TestSockMapTypes(t *testing.T) {
	datapath, err := LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	sock, err := LoadSockSpec()
	if err != nil {
		t.Fatal(err)
	}
	destroy, err := LoadSockDestroySpec()
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range destroy.Maps {
		if s, ok := sock.Maps[name]; !ok || s.Type != m.Type || s.Value.TypeName() != m.Value.TypeName() {
			t.Errorf("sockdestroy map %s is not the sock object's", name)
		}
	}
	for name, m := range sock.Maps {
		if name == MapSockNAT {
			if got := m.Value.TypeName(); got != TypeSockNAT {
				t.Errorf("%s value: %s, want %s", name, got, TypeSockNAT)
			}
			continue
		}
		d, ok := datapath.Maps[name]
		if !ok {
			t.Errorf("sock map %s is not a datapath map", name)
			continue
		}
		if m.Key.TypeName() != d.Key.TypeName() || m.Value.TypeName() != d.Value.TypeName() || m.Type != d.Type {
			t.Errorf("sock map %s: %v %s to %s, datapath's %v %s to %s", name, m.Type, m.Key.TypeName(),
				m.Value.TypeName(), d.Type, d.Key.TypeName(), d.Value.TypeName())
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
		{MapIPSetMembers, TypeIPSetMKey, TypeIPSetMValue},
		{MapIPSetGen, "__u32", "__u32"},
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
