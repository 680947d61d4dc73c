package conntrack

import (
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// TestLayout holds the Go types to the C structs in the datapath's BTF,
// and the package's sizes to the map the datapath declares.
func TestLayout(t *testing.T) {
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		cType   string
		goValue any
	}{
		{bpf.TypeCTKey, Key{}},
		{bpf.TypeCTValue, Value{}},
		{bpf.TypeCTLeg, Leg{}},
	}
	for _, tt := range tests {
		if err := maps.CheckLayout(spec.Types, tt.cType, tt.goValue); err != nil {
			t.Error(err)
		}
	}
	tables, ok := spec.Maps[bpf.MapConntrackTables]
	if !ok || tables.InnerMap == nil {
		t.Fatalf("datapath has no map %s of tables", bpf.MapConntrackTables)
	}
	mapSpec := tables.InnerMap
	if int(mapSpec.KeySize) != keySize || int(mapSpec.ValueSize) != valueSize {
		t.Errorf("map %s key/value size %d/%d, package uses %d/%d",
			bpf.MapConntrackTables, mapSpec.KeySize, mapSpec.ValueSize, keySize, valueSize)
	}
}
