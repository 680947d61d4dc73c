package routes

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// TestLayout holds Key and Value to the C structs in the datapath's BTF,
// and the package's sizes and assumptions to the map the datapath
// declares.
func TestLayout(t *testing.T) {
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		cType   string
		goValue any
	}{
		{bpf.TypeRouteKey, Key{}},
		{bpf.TypeRoute, Value{}},
	} {
		if err := maps.CheckLayout(spec.Types, tt.cType, tt.goValue); err != nil {
			t.Error(err)
		}
	}
	mapSpec, ok := spec.Maps[bpf.MapRoutes]
	if !ok {
		t.Fatalf("datapath has no map %s", bpf.MapRoutes)
	}
	if int(mapSpec.KeySize) != keySize || int(mapSpec.ValueSize) != valueSize {
		t.Errorf("map %s key/value size %d/%d, package uses %d/%d",
			bpf.MapRoutes, mapSpec.KeySize, mapSpec.ValueSize, keySize, valueSize)
	}
	if mapSpec.Type != ebpf.LPMTrie {
		t.Errorf("map %s type %s, package needs an LPM trie", bpf.MapRoutes, mapSpec.Type)
	}
	// The trie's prefix length counts the bits after the 4-byte
	// prefixlen field.
	if got := (keySize - 4) * 8; got != maxPrefixLen {
		t.Errorf("key holds %d address bits, package assumes %d", got, maxPrefixLen)
	}
}
