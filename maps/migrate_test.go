package maps

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// rawEntries reads m with the untyped reader into key → values (one per
// CPU), all hex, failing t on an error or a key read twice.
func rawEntries(t *testing.T, m *ebpf.Map, chunk int, noBatch bool) map[string][]string {
	t.Helper()
	r, err := newRawReader(m)
	if err != nil {
		t.Fatal(err)
	}
	if chunk > 0 {
		r.chunk = chunk
	}
	r.noBatch.Store(noBatch)
	got := make(map[string][]string)
	err = r.read(func(c rawChunk, n int) bool {
		for i := range n {
			key := hex.EncodeToString(c.key(i))
			if _, dup := got[key]; dup {
				t.Errorf("key %s read twice", key)
			}
			for cpu := range c.perEntry {
				got[key] = append(got[key], hex.EncodeToString(c.value(i, cpu)))
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// hexOf is v as cilium/ebpf marshals it.
func hexOf(tb testing.TB, v any) string {
	tb.Helper()
	b, err := binary.Append(nil, binary.NativeEndian, v)
	if err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestRawReaderMatchesTyped reads maps of every shape with the untyped
// reader that migrations and Drain use, on its batch and iteration paths,
// and compares with what the typed views write.
func TestRawReaderMatchesTyped(t *testing.T) {
	const n = 100
	cpus := possibleCPUs(t)
	flows := func(t *testing.T) (*ebpf.Map, map[string][]string) {
		m := newFlowHash(t, n)
		want := make(map[string][]string)
		for k, v := range fill(t, m, flowEntry, n) {
			want[hexOf(t, k)] = []string{hexOf(t, v)}
		}
		return m.EBPF(), want
	}
	perCPUHits := func(typ ebpf.MapType) func(t *testing.T) (*ebpf.Map, map[string][]string) {
		return func(t *testing.T) (*ebpf.Map, map[string][]string) {
			m := newPerCPU[hitValue](t, typ, n)
			want := make(map[string][]string)
			for i := range n {
				values := hitValues(i, cpus)
				if err := m.Update(uint32(i), values, ebpf.UpdateAny); err != nil {
					t.Fatal(err)
				}
				for _, v := range values {
					want[hexOf(t, uint32(i))] = append(want[hexOf(t, uint32(i))], hexOf(t, v))
				}
			}
			return m.EBPF(), want
		}
	}
	devs := func(t *testing.T) (*ebpf.Map, map[string][]string) {
		m := newDevMapHash(t, n)
		want := make(map[string][]string)
		for k, v := range fill(t, m, devEntry, n) {
			want[hexOf(t, k)] = []string{hexOf(t, v)}
		}
		return m.EBPF(), want
	}
	tests := []struct {
		name    string
		open    func(t *testing.T) (*ebpf.Map, map[string][]string)
		noBatch bool
	}{
		{"hash, batch", flows, false},
		{"hash, iteration", flows, true},
		{"per-CPU hash, batch", perCPUHits(ebpf.PerCPUHash), false},
		{"per-CPU hash, iteration", perCPUHits(ebpf.PerCPUHash), true},
		{"per-CPU array, batch", perCPUHits(ebpf.PerCPUArray), false},
		{"per-CPU array, iteration", perCPUHits(ebpf.PerCPUArray), true},
		{"devmap hash, kernel has no batch", devs, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, want := tt.open(t)
			if diff := cmp.Diff(want, rawEntries(t, m, 7, tt.noBatch)); diff != "" {
				t.Errorf("raw read (-want +got):\n%s", diff)
			}
		})
	}
}

func hitParams(dir string, typ ebpf.MapType, maxEntries uint32) Params {
	return Params{Name: "sl_hits", Type: typ, KeySize: 4, ValueSize: uint32(binary.Size(hitValue{})),
		MaxEntries: maxEntries, Version: 1, PinDir: dir}
}

// putHits stores entry i's hit values under keys 0..n-1 of m, as many
// values as m holds an entry.
func putHits(t *testing.T, m *ebpf.Map, n, cpus int) {
	t.Helper()
	for i := range n {
		key := uint32(i)
		values := hitValues(i, cpus)
		var err error
		if isPerCPU(m.Type()) {
			err = m.Update(&key, values, ebpf.UpdateAny)
		} else {
			err = m.Update(&key, &values[0], ebpf.UpdateAny)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestOpenOrCreateMigratesPerCPUAndArrays resizes per-CPU hashes and
// arrays, and plain arrays: every CPU's value moves, a grown array has
// zeros at the new indices, and a shrunk one drops the indices past its
// capacity and counts them.
func TestOpenOrCreateMigratesPerCPUAndArrays(t *testing.T) {
	cpus := possibleCPUs(t)
	tests := []struct {
		name     string
		typ      ebpf.MapType
		from, to uint32
		entries  int // written before the resize; arrays hold from anyway
		want     OpenReport
	}{
		{"per-CPU hash grows", ebpf.PerCPUHash, 1000, 4000, 1000, OpenReport{Copied: 1000}},
		{"per-CPU hash shrinks to fit", ebpf.PerCPUHash, 4000, 1500, 1000, OpenReport{Copied: 1000}},
		{"per-CPU array grows", ebpf.PerCPUArray, 64, 256, 64, OpenReport{Copied: 64}},
		{"per-CPU array shrinks", ebpf.PerCPUArray, 256, 64, 256, OpenReport{Copied: 64, Dropped: 192}},
		{"per-CPU array shrinks, high indices unused", ebpf.PerCPUArray, 256, 64, 10, OpenReport{Copied: 64, Dropped: 192}},
		{"array grows", ebpf.Array, 64, 256, 64, OpenReport{Copied: 64}},
		{"array shrinks", ebpf.Array, 256, 64, 256, OpenReport{Copied: 64, Dropped: 192}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testutil.TempBPFFS(t)
			old, _, err := OpenOrCreate(hitParams(dir, tt.typ, tt.from))
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			putHits(t, old, tt.entries, cpus)
			before := rawEntries(t, old, 0, false)

			resized, report, err := OpenOrCreate(hitParams(dir, tt.typ, tt.to))
			if err != nil {
				t.Fatal(err)
			}
			defer resized.Close()
			tt.want.Action, tt.want.FromVersion = Migrated, 1
			if diff := cmp.Diff(tt.want, report); diff != "" {
				t.Errorf("report (-want +got):\n%s", diff)
			}
			want := before
			if isArray(tt.typ) {
				want = make(map[string][]string)
				zero := hexOf(t, hitValue{})
				for i := range tt.to {
					key := hexOf(t, i)
					if i < tt.from {
						want[key] = before[key]
						continue
					}
					for range len(before[hexOf(t, uint32(0))]) {
						want[key] = append(want[key], zero)
					}
				}
			}
			if diff := cmp.Diff(want, rawEntries(t, resized, 0, false)); diff != "" {
				t.Errorf("entries after the resize (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"sl_hits_v1"}, pinNames(t, dir)); diff != "" {
				t.Errorf("pins (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOpenOrCreateUpgradesPerCPUValues runs a per-CPU hash through a step
// that changes the key and value sizes and drops zero values: each CPU's
// value goes through the step, a CPU whose value alone is dropped gets a
// zero, and an entry is dropped when every CPU's value is.
func TestOpenOrCreateUpgradesPerCPUValues(t *testing.T) {
	cpus := possibleCPUs(t)
	dir := testutil.TempBPFFS(t)
	v1 := Params{Name: "sl_pc", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 4, MaxEntries: 64, Version: 1, PinDir: dir}
	v2 := v1
	v2.KeySize, v2.ValueSize, v2.Version = 8, 8, 2
	// v1 → v2: the key widens to 64 bits and doubles, a value becomes
	// value+100 in 64 bits, and zero values are dropped.
	step := func(key, value []byte) ([]byte, []byte, bool, error) {
		count := binary.NativeEndian.Uint32(value)
		if count == 0 {
			return nil, nil, false, nil
		}
		newKey := binary.NativeEndian.AppendUint64(nil, 2*uint64(binary.NativeEndian.Uint32(key)))
		return newKey, binary.NativeEndian.AppendUint64(nil, uint64(count)+100), true, nil
	}

	raw, _, err := OpenOrCreate(v1)
	if err != nil {
		t.Fatal(err)
	}
	old, err := NewPerCPU[uint32, uint32](raw)
	if err != nil {
		t.Fatal(err)
	}
	allSet, firstZero, allZero := make([]uint32, cpus), make([]uint32, cpus), make([]uint32, cpus)
	wantAllSet, wantFirstZero := make([]uint64, cpus), make([]uint64, cpus)
	for cpu := range cpus {
		allSet[cpu] = uint32(cpu + 1)
		wantAllSet[cpu] = uint64(cpu + 101)
		if cpu > 0 {
			firstZero[cpu] = uint32(cpu + 1)
			wantFirstZero[cpu] = uint64(cpu + 101)
		}
	}
	entries := map[uint32][]uint32{1: allSet, 2: firstZero, 3: allZero}
	for k, v := range entries {
		if err := old.Update(k, v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()

	upgraded, report, err := OpenOrCreate(v2, WithUpgrade(1, step))
	if err != nil {
		t.Fatal(err)
	}
	defer upgraded.Close()
	want := OpenReport{Action: Migrated, FromVersion: 1, Copied: 2, Dropped: 1}
	if cpus == 1 {
		// With one CPU, the entry whose first CPU is zero is all zero.
		want.Copied, want.Dropped = 1, 2
	}
	if diff := cmp.Diff(want, report); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	m, err := NewPerCPU[uint64, uint64](upgraded)
	if err != nil {
		t.Fatal(err)
	}
	keys, values, err := m.Dump()
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[uint64][]uint64)
	for i, k := range keys {
		got[k] = values[i]
	}
	wantEntries := map[uint64][]uint64{2: wantAllSet, 4: wantFirstZero}
	if cpus == 1 {
		delete(wantEntries, 4)
	}
	if diff := cmp.Diff(wantEntries, got); diff != "" {
		t.Errorf("upgraded entries (-want +got):\n%s", diff)
	}
}

// TestOpenOrCreateRefusesSplitPerCPUKeys upgrades with a step whose new
// key depends on the CPU's value: the CPUs of one entry disagree, and the
// migration fails rather than guess.
func TestOpenOrCreateRefusesSplitPerCPUKeys(t *testing.T) {
	if possibleCPUs(t) < 2 {
		t.Skip("needs two possible CPUs")
	}
	dir := testutil.TempBPFFS(t)
	v1 := Params{Name: "sl_pc", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 4, MaxEntries: 8, Version: 1, PinDir: dir}
	raw, _, err := OpenOrCreate(v1)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	m, err := NewPerCPU[uint32, uint32](raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(1, []uint32{1, 2}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	v2 := v1
	v2.Version = 2
	valueAsKey := func(_, value []byte) ([]byte, []byte, bool, error) { return value, value, true, nil }
	_, _, err = OpenOrCreate(v2, WithUpgrade(1, valueAsKey))
	if err == nil || !strings.Contains(err.Error(), "different keys") {
		t.Errorf("OpenOrCreate = %v, want an error about different keys", err)
	}
}

// TestOpenOrCreateRefusesPerCPUToShared changes a hash into a per-CPU
// hash of the same sizes: no CPU can be chosen for the old values, so the
// open is refused and the pin stays.
func TestOpenOrCreateRefusesPerCPUToShared(t *testing.T) {
	dir := testutil.TempBPFFS(t)
	openFlows(t, flowParams(dir, 1, 16))
	p := flowParams(dir, 1, 16)
	p.Type = ebpf.PerCPUHash
	if _, _, err := OpenOrCreate(p); err == nil {
		t.Error("OpenOrCreate turned a hash into a per-CPU hash")
	}
	if diff := cmp.Diff([]string{"sl_flows_v1"}, pinNames(t, dir)); diff != "" {
		t.Errorf("pins (-want +got):\n%s", diff)
	}
}

// TestOpenOrCreateRecoversInterruptedPerCPUMigration interrupts the
// resize of a per-CPU array, then opens again: the _old pin is copied
// from afresh.
func TestOpenOrCreateRecoversInterruptedPerCPUMigration(t *testing.T) {
	cpus := possibleCPUs(t)
	dir := testutil.TempBPFFS(t)
	old, _, err := OpenOrCreate(hitParams(dir, ebpf.PerCPUArray, 64))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	putHits(t, old, 64, cpus)
	want := rawEntries(t, old, 0, false)
	bigger := hitParams(dir, ebpf.PerCPUArray, 100)
	if _, _, err := OpenOrCreate(bigger, withFailAfter(10)); !errors.Is(err, errInjected) {
		t.Fatalf("interrupted OpenOrCreate: %v, want the injected failure", err)
	}
	if diff := cmp.Diff([]string{"sl_hits_v1_old"}, pinNames(t, dir)); diff != "" {
		t.Fatalf("pins after interruption (-want +got):\n%s", diff)
	}
	m, report, err := OpenOrCreate(bigger)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if diff := cmp.Diff(OpenReport{Action: Migrated, FromVersion: 1, Copied: 64, Recovered: true}, report); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	got := rawEntries(t, m, 0, false)
	for key := range got {
		if _, ok := want[key]; !ok {
			delete(got, key) // indices 64..99, zero
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
}

// flowBTF describes flowKey and flowValue in BTF.
func flowBTF() (key, value btf.Type) {
	u8 := &btf.Int{Name: "__u8", Size: 1}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	u64 := &btf.Int{Name: "__u64", Size: 8}
	key = &btf.Struct{Name: "sl_test_flow_key", Size: 8, Members: []btf.Member{
		{Name: "addr", Type: u32, Offset: 0},
		{Name: "port", Type: u16, Offset: 32},
		{Name: "proto", Type: u8, Offset: 48},
		{Name: "pad", Type: u8, Offset: 56},
	}}
	value = &btf.Struct{Name: "sl_test_flow_value", Size: 16, Members: []btf.Member{
		{Name: "packets", Type: u64, Offset: 0},
		{Name: "backend", Type: u32, Offset: 64},
		{Name: "flags", Type: u32, Offset: 96},
	}}
	return key, value
}

// btfTypeNames returns the names of m's BTF key and value types as the
// kernel holds them, or nil when m has no BTF.
func btfTypeNames(t *testing.T, m *ebpf.Map, names ...string) []string {
	t.Helper()
	h, err := m.Handle()
	if errors.Is(err, ebpf.ErrNotSupported) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, name := range names {
		if _, err := spec.AnyTypeByName(name); err == nil {
			found = append(found, name)
		}
	}
	return found
}

// TestOpenOrCreateCarriesBTF creates, migrates and live-resizes a map
// described by a MapSpec with BTF: every map OpenOrCreate creates carries
// the key and value types, and a pinned map is reused whatever its BTF.
func TestOpenOrCreateCarriesBTF(t *testing.T) {
	dir := testutil.TempBPFFS(t)
	keyType, valueType := flowBTF()
	spec := &ebpf.MapSpec{Name: "sl_btf", Type: ebpf.Hash, KeySize: 8, ValueSize: 16, MaxEntries: 32,
		Key: keyType, Value: valueType}
	p := ParamsFromSpec(spec, 1, dir)
	if p.Key != keyType || p.Value != valueType {
		t.Fatalf("ParamsFromSpec dropped the BTF: key %v, value %v", p.Key, p.Value)
	}
	names := []string{"sl_test_flow_key", "sl_test_flow_value"}

	created, report := openFlows(t, p)
	if report.Action != Created {
		t.Fatalf("first open: %v, want created", report.Action)
	}
	if diff := cmp.Diff(names, btfTypeNames(t, created.EBPF(), names...)); diff != "" {
		t.Errorf("created map's BTF (-want +got):\n%s", diff)
	}
	want := fillFlows(t, created, 20)

	withoutBTF := p
	withoutBTF.Key, withoutBTF.Value = nil, nil
	if _, report := openFlows(t, withoutBTF); report.Action != Reused {
		t.Errorf("open without BTF: %v, want reused", report.Action)
	}

	bigger := p
	bigger.MaxEntries = 64
	migrated, report := openFlows(t, bigger)
	if report.Action != Migrated {
		t.Fatalf("open with a larger capacity: %v, want migrated", report.Action)
	}
	if diff := cmp.Diff(names, btfTypeNames(t, migrated.EBPF(), names...)); diff != "" {
		t.Errorf("migrated map's BTF (-want +got):\n%s", diff)
	}
	if diff := diffEntries(want, dumpMap(t, migrated)); diff != "" {
		t.Errorf("migrated entries (-want +got):\n%s", diff)
	}

	biggest := p
	biggest.MaxEntries = 128
	resized, report := openFlows(t, biggest, WithLiveResize())
	if report.Action != Resized || report.Draining == nil {
		t.Fatalf("live resize: %+v, want resized with a draining map", report)
	}
	defer report.Draining.Close()
	if diff := cmp.Diff(names, btfTypeNames(t, resized.EBPF(), names...)); diff != "" {
		t.Errorf("live-resized map's BTF (-want +got):\n%s", diff)
	}
}

// TestOpenOrCreateDatapathCounters pins the datapath's per-CPU counter
// maps from their specs, BTF included (the PERCPU_ARRAY of verdict
// counters and the PERCPU_HASH of rule hits), and resizes them across a
// "restart": every CPU's counters survive.
func TestOpenOrCreateDatapathCounters(t *testing.T) {
	testutil.RequirePrivileged(t)
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	cpus := possibleCPUs(t)
	for _, name := range []string{bpf.MapCounters, bpf.MapRuleHits} {
		t.Run(name, func(t *testing.T) {
			ms := spec.Maps[name]
			if ms == nil {
				t.Fatalf("no map %s in the datapath spec", name)
			}
			dir := testutil.TempBPFFS(t)
			p := ParamsFromSpec(ms, 1, dir)
			p.MaxEntries = 32
			m, _, err := OpenOrCreate(p)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if _, err := m.Handle(); err != nil {
				t.Errorf("pinned %s carries no BTF: %v", name, err)
			}
			for i := range 16 {
				key := make([]byte, p.KeySize)
				key[0] = byte(i)
				values := make([][]byte, cpus)
				for cpu := range values {
					values[cpu] = make([]byte, p.ValueSize)
					values[cpu][0], values[cpu][p.ValueSize-1] = byte(i), byte(cpu+1)
				}
				if err := m.Update(key, values, ebpf.UpdateAny); err != nil {
					t.Fatal(err)
				}
			}
			want := rawEntries(t, m, 0, false)

			p.MaxEntries = 64
			resized, report, err := OpenOrCreate(p)
			if err != nil {
				t.Fatal(err)
			}
			defer resized.Close()
			if report.Action != Migrated || report.Dropped != 0 {
				t.Errorf("report %+v, want migrated with nothing dropped", report)
			}
			got := rawEntries(t, resized, 0, false)
			for key := range got {
				if _, ok := want[key]; !ok && isArray(ms.Type) {
					delete(got, key) // the array's new indices
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("counters after the resize (-want +got):\n%s", diff)
			}
		})
	}
}
