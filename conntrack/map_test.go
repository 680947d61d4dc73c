package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/maps"
)

// newTestMap creates a private conntrack table from the datapath's map
// spec, with room for maxEntries.
func newTestMap(t *testing.T, maxEntries uint32) *Map {
	t.Helper()
	testutil.RequirePrivileged(t)
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	mapSpec := spec.Maps[bpf.MapConntrackTables].InnerMap.Copy()
	mapSpec.MaxEntries = maxEntries
	kernelMap, err := ebpf.NewMap(mapSpec)
	if err != nil {
		t.Fatalf("create conntrack table: %v", err)
	}
	t.Cleanup(func() { kernelMap.Close() })
	m, err := NewMap(kernelMap)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func put(t *testing.T, m *Map, k Key, v Value) {
	t.Helper()
	if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
}

// fullValue sets every field to a distinct non-zero value.
func fullValue(t *testing.T) Value {
	v := Value{Created: 0x0102030405060708, LastSeen: 0x1112131415161718, Type: bpf.CTType(NATReverse), Flags: 0x21222324}
	v.SetLegs(
		Leg{Bytes: 0x3132333435363738, Packets: 0x41424344, Flags: legFlagsField(LegSYN | LegACK), Ifindex: 7},
		Leg{Bytes: 99, Packets: 98, Flags: legFlagsField(LegFIN | LegRST), Ifindex: 8},
	)
	v.SetPeer(mustKey(t, ProtoTCP, "10.0.0.1:1234", "10.96.0.1:80"))
	if err := v.SetOrig(ap("10.96.0.1:80")); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMapRoundTrip(t *testing.T) {
	m := newTestMap(t, 64)
	k := mustKey(t, ProtoTCP, "10.0.5.5:8080", "10.0.0.1:1234")
	v := fullValue(t)
	put(t, m, k, v)

	got, err := m.Lookup(k)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v, got); diff != "" {
		t.Errorf("value round trip (-put +got):\n%s", diff)
	}
	entries, err := m.Entries()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Entry{{k, v}}, entries); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}

	if err := m.Update(k, v, ebpf.UpdateNoExist); !errors.Is(err, ebpf.ErrKeyExist) {
		t.Errorf("Update(NoExist) of an existing key = %v, want ErrKeyExist", err)
	}
	if err := m.Delete(k); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lookup(k); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Lookup after Delete = %v, want ErrKeyNotExist", err)
	}
	if err := m.Delete(k); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("second Delete = %v, want ErrKeyNotExist", err)
	}
}

func TestNewMapRejects(t *testing.T) {
	testutil.RequirePrivileged(t)
	tests := []struct {
		name string
		spec *ebpf.MapSpec
	}{
		{"array", &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(valueSize), MaxEntries: 1}},
		{"short key", &ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 12, ValueSize: uint32(valueSize), MaxEntries: 1}},
		{"long value", &ebpf.MapSpec{Type: ebpf.Hash, KeySize: uint32(keySize), ValueSize: 128, MaxEntries: 1}},
	}
	for _, tt := range tests {
		kernelMap, err := ebpf.NewMap(tt.spec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NewMap(kernelMap); err == nil {
			t.Errorf("%s: NewMap accepted it", tt.name)
		}
		kernelMap.Close()
	}
	if _, err := NewMap(nil); err == nil {
		t.Error("NewMap(nil) succeeded")
	}
}

// fillMap stores n Normal UDP flows with distinct keys.
func fillMap(t *testing.T, m *Map, n int, lastSeen uint64) []Key {
	t.Helper()
	keys := make([]Key, n)
	for i := range n {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 5000)
		keys[i] = mustKey(t, ProtoUDP, src.String(), "10.2.0.1:53")
		put(t, m, keys[i], Value{Created: lastSeen, LastSeen: lastSeen})
	}
	return keys
}

func TestMapIteration(t *testing.T) {
	m := newTestMap(t, 1024)
	want := fillMap(t, m, 300, 1)

	readKeys := func() []Key {
		t.Helper()
		var keys []Key
		var err error
		for k := range m.All(&err) {
			keys = append(keys, k)
		}
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}
	sortKeys := cmp.Transformer("sort", func(in []Key) []Key {
		out := append([]Key(nil), in...)
		slices.SortFunc(out, Key.Compare)
		return out
	})

	entryKeys := func() []Key {
		t.Helper()
		entries, err := m.Entries()
		if err != nil {
			t.Fatal(err)
		}
		keys := make([]Key, len(entries))
		for i, e := range entries {
			keys[i] = e.Key
		}
		if !slices.IsSortedFunc(keys, Key.Compare) {
			t.Error("Entries not sorted")
		}
		return keys
	}

	batched, batchedEntries := readKeys(), entryKeys()
	// The paths of kernels before 5.6, without BPF_MAP_LOOKUP_BATCH.
	setBatchLookup(t, m, false)
	iterated, iteratedEntries := readKeys(), entryKeys()
	for name, got := range map[string][]Key{
		"batch": batched, "iterate": iterated,
		"batch entries": batchedEntries, "iterate entries": iteratedEntries,
	} {
		if diff := cmp.Diff(want, got, sortKeys); diff != "" {
			t.Errorf("%s read (-want +got):\n%s", name, diff)
		}
	}

	n, err := m.Count()
	if err != nil || n != len(want) {
		t.Errorf("Count() = %d, %v; want %d", n, err, len(want))
	}

	for _, batch := range []bool{true, false} {
		setBatchLookup(t, m, batch)
		seen := 0
		err := m.Range(func(Key, Value) bool {
			seen++
			return seen < 5
		})
		if err != nil || seen != 5 {
			t.Errorf("batch %v: Range stopped after %d entries (%v), want 5", batch, seen, err)
		}
	}
}

// setBatchLookup makes m read with BPF_MAP_LOOKUP_BATCH again (a fresh
// typed view, which has not met a refusal) or never (DisableBatch).
func setBatchLookup(t *testing.T, m *Map, batch bool) {
	t.Helper()
	if !batch {
		m.cur.t.DisableBatch()
		return
	}
	typed, err := maps.New[Key, Value](m.EBPF())
	if err != nil {
		t.Fatal(err)
	}
	m.cur.t = typed
}

func TestMapDump(t *testing.T) {
	m := newTestMap(t, 64)
	svc := mustKey(t, ProtoTCP, "10.0.0.1:40000", "10.96.0.1:80")
	backend := mustKey(t, ProtoTCP, "10.0.0.1:40000", "10.0.7.7:8080")
	rev := Value{Created: 1e9, LastSeen: 3e9, Type: bpf.CTType(NATReverse)}
	rev.SetLegs(Leg{Packets: 2, Bytes: 120, Flags: legFlagsField(LegSYN | LegACK), Ifindex: 4},
		Leg{Packets: 1, Bytes: 60, Flags: legFlagsField(LegSYN | LegACK)})
	rev.SetPeer(svc)
	if err := rev.SetOrig(svc.B()); err != nil {
		t.Fatal(err)
	}
	fwd := Value{Created: 1e9, LastSeen: 1e9, Type: bpf.CTType(NATForward)}
	fwd.SetPeer(backend)
	// Inserted out of order; Dump sorts.
	put(t, m, mustKey(t, ProtoUDP, "10.0.0.2:53", "10.0.0.1:5353"), Value{Created: 0, LastSeen: 25e8})
	put(t, m, svc, fwd)
	put(t, m, backend, rev)
	put(t, m, mustKey(t, ProtoICMP, "10.0.0.9:7", "10.0.0.3:7"), Value{})

	var out strings.Builder
	if err := m.Dump(&out); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"icmp 10.0.0.3:7 <-> 10.0.0.9:7  normal age=0s a->b[pkts=0 bytes=0 seen=0] b->a[pkts=0 bytes=0 seen=0]",
		"tcp 10.0.0.1:40000 <-> 10.0.7.7:8080  nat_rev age=2s a->b[pkts=2 bytes=120 seen=syn|ack if=4] b->a[pkts=1 bytes=60 seen=syn|ack] orig=10.96.0.1:80 peer=(tcp 10.0.0.1:40000 <-> 10.96.0.1:80)",
		"tcp 10.0.0.1:40000 <-> 10.96.0.1:80  nat_fwd age=0s a->b[pkts=0 bytes=0 seen=0] b->a[pkts=0 bytes=0 seen=0] peer=(tcp 10.0.0.1:40000 <-> 10.0.7.7:8080)",
		"udp 10.0.0.1:5353 <-> 10.0.0.2:53  normal age=2.5s a->b[pkts=0 bytes=0 seen=0] b->a[pkts=0 bytes=0 seen=0]",
	}, "\n") + "\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("Dump (-want +got):\n%s", diff)
	}
	if err := m.Dump(failingWriter{}); err == nil {
		t.Error("Dump to a failing writer succeeded")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, fmt.Errorf("disk full") }
