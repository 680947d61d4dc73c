package maps

import (
	"encoding/binary"
	"structs"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/sluicenet/sluice/internal/testutil"
)

// flowKey and flowValue are small fixed-size entries shaped like bpf2go's
// output, HostLayout marker included.
type flowKey struct {
	_     structs.HostLayout
	Addr  uint32
	Port  uint16
	Proto uint8
	Pad   uint8
}

type flowValue struct {
	_       structs.HostLayout
	Packets uint64
	Backend uint32
	Flags   uint32
}

// ignoreLayoutMarkers lets cmp compare structs holding blank fields.
var ignoreLayoutMarkers = cmpopts.IgnoreUnexported(flowKey{}, flowValue{})

func flowEntry(i int) (flowKey, flowValue) {
	return flowKey{Addr: 0x0a000000 + uint32(i), Port: uint16(i), Proto: 6},
		flowValue{Packets: uint64(i) * 3, Backend: uint32(i % 7), Flags: 1}
}

// newFlowHash creates an unpinned hash map of flowKey to flowValue.
func newFlowHash(tb testing.TB, maxEntries uint32) *Map[flowKey, flowValue] {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	raw, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "sl_test_flows",
		Type:       ebpf.Hash,
		KeySize:    uint32(binary.Size(flowKey{})),
		ValueSize:  uint32(binary.Size(flowValue{})),
		MaxEntries: maxEntries,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { raw.Close() })
	m, err := New[flowKey, flowValue](raw)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// newDevMapHash creates a BPF_MAP_TYPE_DEVMAP_HASH, a map type without
// batch commands, with values naming the loopback device (ifindex 1).
func newDevMapHash(tb testing.TB, maxEntries uint32) *Map[uint32, uint32] {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	raw, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "sl_test_devs",
		Type:       ebpf.DevMapHash,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: maxEntries,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { raw.Close() })
	m, err := New[uint32, uint32](raw)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// dumpMap reads m into a Go map, failing tb on error or duplicate keys.
func dumpMap[K comparable, V any](tb testing.TB, m *Map[K, V]) map[K]V {
	tb.Helper()
	keys, values, err := m.Dump()
	if err != nil {
		tb.Fatal(err)
	}
	got := make(map[K]V, len(keys))
	for i, k := range keys {
		if _, dup := got[k]; dup {
			tb.Fatalf("key %v dumped twice", k)
		}
		got[k] = values[i]
	}
	return got
}

func diffEntries[K comparable, V any](want, got map[K]V) string {
	return cmp.Diff(want, got, ignoreLayoutMarkers, cmpopts.EquateEmpty())
}
