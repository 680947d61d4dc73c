package maps

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

func TestNewChecksTypes(t *testing.T) {
	testutil.RequirePrivileged(t)
	newRaw := func(typ ebpf.MapType, keySize, valueSize uint32) *ebpf.Map {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: typ, KeySize: keySize, ValueSize: valueSize, MaxEntries: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	hash := newRaw(ebpf.Hash, 8, 16)
	perCPU := newRaw(ebpf.PerCPUHash, 8, 8)
	tests := []struct {
		name    string
		open    func() error
		wantErr bool
	}{
		{"matching key and value", func() error { _, err := New[flowKey, flowValue](hash); return err }, false},
		{"key too small", func() error { _, err := New[uint32, flowValue](hash); return err }, true},
		{"value too large", func() error { _, err := New[flowKey, [17]byte](hash); return err }, true},
		{"value not fixed size", func() error { _, err := New[flowKey, []byte](hash); return err }, true},
		{"nil map", func() error { _, err := New[flowKey, flowValue](nil); return err }, true},
		{"per-CPU map as Map", func() error { _, err := New[uint64, uint64](perCPU); return err }, true},
		{"per-CPU map as PerCPUMap", func() error { _, err := NewPerCPU[uint64, uint64](perCPU); return err }, false},
		{"hash as PerCPUMap", func() error { _, err := NewPerCPU[flowKey, flowValue](hash); return err }, true},
	}
	for _, tt := range tests {
		if err := tt.open(); (err != nil) != tt.wantErr {
			t.Errorf("%s: error %v, want error %v", tt.name, err, tt.wantErr)
		}
	}
}

func TestMapLookupUpdateDelete(t *testing.T) {
	m := newFlowHash(t, 16)
	key, value := flowEntry(1)
	if _, err := m.Lookup(key); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("Lookup of a missing key: %v, want ErrKeyNotExist", err)
	}
	if err := m.Update(key, value, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	if err := m.Update(key, value, ebpf.UpdateNoExist); !errors.Is(err, ebpf.ErrKeyExist) {
		t.Fatalf("second UpdateNoExist: %v, want ErrKeyExist", err)
	}
	got, err := m.Lookup(key)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(value, got, ignoreLayoutMarkers); diff != "" {
		t.Errorf("Lookup (-want +got):\n%s", diff)
	}
	if err := m.Delete(key); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(key); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("second Delete: %v, want ErrKeyNotExist", err)
	}
}

func TestMapAll(t *testing.T) {
	m := newFlowHash(t, 2048)
	want := make(map[flowKey]flowValue)
	for i := range 1000 {
		k, v := flowEntry(i)
		want[k] = v
		if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	got := make(map[flowKey]flowValue)
	for k, v := range m.All(&err) {
		got[k] = v
	}
	if err != nil {
		t.Fatal(err)
	}
	if diff := diffEntries(want, got); diff != "" {
		t.Errorf("All (-want +got):\n%s", diff)
	}

	seen := 0
	for range m.All(&err) {
		seen++
		if seen == 10 {
			break
		}
	}
	if seen != 10 || err != nil {
		t.Errorf("breaking off after 10: saw %d, err %v", seen, err)
	}
}

// batchCase is one map under test for the batch operations.
type batchCase struct {
	name string
	// run stores n entries with BatchUpdate, checks them with Dump,
	// deletes every other one with BatchDelete and checks again, and
	// returns the map's batch support afterwards.
	run func(t *testing.T, n int) BatchSupport
}

func checkBatchRoundTrip[K comparable, V any](t *testing.T, m *Map[K, V], entry func(int) (K, V), n int) BatchSupport {
	t.Helper()
	want := make(map[K]V, n)
	keys := make([]K, 0, n)
	values := make([]V, 0, n)
	for i := range n {
		k, v := entry(i)
		want[k] = v
		keys = append(keys, k)
		values = append(values, v)
	}
	if written, err := m.BatchUpdate(keys, values, ebpf.UpdateAny); err != nil || written != n {
		t.Fatalf("BatchUpdate = %d, %v; want %d", written, err, n)
	}
	if diff := diffEntries(want, dumpMap(t, m)); diff != "" {
		t.Fatalf("after BatchUpdate (-want +got):\n%s", diff)
	}
	var deletes []K
	for i, k := range keys {
		if i%2 == 0 {
			deletes = append(deletes, k)
			delete(want, k)
		}
	}
	if deleted, err := m.BatchDelete(deletes); err != nil || deleted != len(deletes) {
		t.Fatalf("BatchDelete = %d, %v; want %d", deleted, err, len(deletes))
	}
	if diff := diffEntries(want, dumpMap(t, m)); diff != "" {
		t.Fatalf("after BatchDelete (-want +got):\n%s", diff)
	}
	if _, err := m.BatchDelete(deletes[:1]); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("BatchDelete of a missing key: %v, want ErrKeyNotExist", err)
	}
	if _, err := m.BatchUpdate(keys[:2], values[:1], ebpf.UpdateAny); err == nil {
		t.Error("BatchUpdate with unequal slices succeeded")
	}
	return m.BatchSupport()
}

func newIPSets(t *testing.T, maxEntries uint32) *Map[bpf.IPSetKey, uint32] {
	t.Helper()
	testutil.RequirePrivileged(t)
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps[bpf.MapIPSets].Copy()
	ms.MaxEntries = maxEntries
	raw, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	m, err := New[bpf.IPSetKey, uint32](raw)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ipsetEntry(i int) (bpf.IPSetKey, uint32) {
	// An IPv4 /32 (package ipsets' NetKey, which maps cannot import).
	k := bpf.IPSetKey{Prefixlen: 64 + 32 + 96 + 32, SetID: bpf.IPSetID(uint64(i%5 + 1)), Family: bpf.FamilyIPv4}
	k.Addr[10], k.Addr[11] = 0xff, 0xff
	k.Addr[12], k.Addr[13], k.Addr[14], k.Addr[15] = 10, byte(i>>16), byte(i>>8), byte(i)
	return k, uint32(i)
}

func TestBatchOperations(t *testing.T) {
	const n = 3000
	tests := []struct {
		name string
		run  func(t *testing.T) BatchSupport
		want BatchSupport
	}{
		{"hash, kernel batch", func(t *testing.T) BatchSupport {
			return checkBatchRoundTrip(t, newFlowHash(t, n), flowEntry, n)
		}, BatchSupport{Lookup: true, Update: true, Delete: true}},
		{"hash, batch disabled", func(t *testing.T) BatchSupport {
			m := newFlowHash(t, n)
			m.DisableBatch()
			return checkBatchRoundTrip(t, m, flowEntry, n)
		}, BatchSupport{}},
		{"LPM trie (ipsets)", func(t *testing.T) BatchSupport {
			return checkBatchRoundTrip(t, newIPSets(t, n), ipsetEntry, n)
		}, BatchSupport{Lookup: true, Update: true, Delete: true}},
		{"devmap hash, kernel has no batch", func(t *testing.T) BatchSupport {
			return checkBatchRoundTrip(t, newDevMapHash(t, n), func(i int) (uint32, uint32) { return uint32(i) + 100, 1 }, n)
		}, BatchSupport{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.run(t)); diff != "" {
				t.Errorf("batch support after use (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDumpGrowsBufferOnENOSPC starts the batch lookup with a one-entry
// buffer: the first hash bucket holding two entries makes the kernel answer
// ENOSPC, and Dump must grow the buffer and still return every entry once.
func TestDumpGrowsBufferOnENOSPC(t *testing.T) {
	const n = 256
	m := newFlowHash(t, n)
	m.readChunk = 1
	want := make(map[flowKey]flowValue)
	for i := range n {
		k, v := flowEntry(i)
		want[k] = v
		if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	if diff := diffEntries(want, dumpMap(t, m)); diff != "" {
		t.Errorf("Dump (-want +got):\n%s", diff)
	}
	if !m.BatchSupport().Lookup {
		t.Error("Dump fell back to iteration instead of growing its buffer")
	}
}

func TestPerCPUMap(t *testing.T) {
	testutil.RequirePrivileged(t)
	raw, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUHash, KeySize: 8, ValueSize: 8, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	m, err := NewPerCPU[uint64, uint64](raw)
	if err != nil {
		t.Fatal(err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	want := make([]uint64, cpus)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	if err := m.Update(7, want, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	got, err := m.Lookup(7)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Lookup (-want +got):\n%s", diff)
	}
	var iterErr error
	all := make(map[uint64][]uint64)
	for k, v := range m.All(&iterErr) {
		all[k] = v
	}
	if iterErr != nil {
		t.Fatal(iterErr)
	}
	if diff := cmp.Diff(map[uint64][]uint64{7: want}, all); diff != "" {
		t.Errorf("All (-want +got):\n%s", diff)
	}
	if err := m.Delete(7); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lookup(7); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Lookup after Delete: %v", err)
	}
}
