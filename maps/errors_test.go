package maps

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestErrorMessages holds every error to one rule: cilium/ebpf's message
// names the operation, and this package adds only what it does not say,
// once: the map ("map <map>: ") and, at a public boundary of its own, that
// boundary ("sync: ", "drain: ", "open or create map <pin>: "). Each case
// runs the same failing operation through cilium/ebpf directly to learn
// its message, so the expected text is exact without copying cilium's
// wording, and errors.Is must still find cilium's sentinel.
func TestErrorMessages(t *testing.T) {
	m := newFlowHash(t, 4)
	raw := m.EBPF()
	present, presentValue := flowEntry(1)
	missing, _ := flowEntry(2)
	if err := m.Update(present, presentValue, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	noBatch := newFlowHash(t, 4)
	noBatch.DisableBatch()
	perCPU := newPerCPU[uint64](t, ebpf.PerCPUHash, 4)
	drainFrom, drainTo := newFlowHash(t, 4), newFlowHash(t, 1)
	fill(t, drainFrom, flowEntry, 2)

	closedMap := newFlowHash(t, 4)
	closedMap.EBPF().Close()
	closedIter := newFlowHash(t, 4)
	closedIter.DisableBatch()
	closedIter.EBPF().Close()
	var cursor ebpf.MapBatchCursor
	batchKeys, batchValues := make([]flowKey, 4), make([]flowValue, 4)

	dir := testutil.TempBPFFS(t)
	lpm := Params{Name: "sl_lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 4, Version: 1, PinDir: dir}

	var value flowValue
	tests := []struct {
		name string
		// ours is the package's operation, cilium the same call made
		// on cilium/ebpf directly (nil for errors of this package's own).
		ours, cilium func() error
		// prefix is what the package puts in front of cilium's message;
		// exact replaces the comparison for messages of its own.
		prefix, exact string
		is            error
	}{
		{
			name: "Lookup", ours: func() error { _, err := m.Lookup(missing); return err },
			cilium: func() error { return raw.Lookup(&missing, &value) },
			prefix: "map " + raw.String() + ": ", is: ebpf.ErrKeyNotExist,
		},
		{
			name: "LookupAndDelete", ours: func() error { _, err := m.LookupAndDelete(missing); return err },
			cilium: func() error { return raw.LookupAndDelete(&missing, &value) },
			prefix: "map " + raw.String() + ": ", is: ebpf.ErrKeyNotExist,
		},
		{
			name: "Update", ours: func() error { return m.Update(present, presentValue, ebpf.UpdateNoExist) },
			cilium: func() error { return raw.Update(&present, &presentValue, ebpf.UpdateNoExist) },
			prefix: "map " + raw.String() + ": ", is: ebpf.ErrKeyExist,
		},
		{
			name: "Delete", ours: func() error { return m.Delete(missing) },
			cilium: func() error { return raw.Delete(&missing) },
			prefix: "map " + raw.String() + ": ", is: ebpf.ErrKeyNotExist,
		},
		{
			name: "BatchDelete", ours: func() error { _, err := m.BatchDelete([]flowKey{missing}); return err },
			cilium: func() error { _, err := raw.BatchDelete([]flowKey{missing}, nil); return err },
			prefix: "map " + raw.String() + ": ", is: ebpf.ErrKeyNotExist,
		},
		{
			name: "BatchDelete per element", ours: func() error { _, err := noBatch.BatchDelete([]flowKey{missing}); return err },
			cilium: func() error { return noBatch.EBPF().Delete(&missing) },
			prefix: "map " + noBatch.EBPF().String() + ": ", is: ebpf.ErrKeyNotExist,
		},
		{
			name: "BatchUpdate per element (UpdateNoExist)",
			ours: func() error {
				_, err := m.BatchUpdate([]flowKey{present}, []flowValue{presentValue}, ebpf.UpdateNoExist)
				return err
			},
			cilium: func() error { return raw.Update(&present, &presentValue, ebpf.UpdateNoExist) },
			prefix: "map " + raw.String() + ": ", is: ebpf.ErrKeyExist,
		},
		{
			name: "BatchUpdate with unequal slices",
			ours: func() error {
				_, err := m.BatchUpdate([]flowKey{present, missing}, []flowValue{value}, ebpf.UpdateAny)
				return err
			},
			exact: "map " + raw.String() + ": batch update: 2 keys but 1 values",
		},
		{
			name: "Dump, batch lookup", ours: func() error { _, _, err := closedMap.Dump(); return err },
			cilium: func() error {
				_, err := closedMap.EBPF().BatchLookup(&cursor, batchKeys, batchValues, nil)
				return err
			},
			prefix: "map " + closedMap.EBPF().String() + ": ",
		},
		{
			name: "Range, iteration", ours: func() error { return closedIter.Range(func(flowKey, flowValue) bool { return true }) },
			cilium: func() error {
				var k flowKey
				entries := closedIter.EBPF().Iterate()
				for entries.Next(&k, &value) {
				}
				return entries.Err()
			},
			prefix: "map " + closedIter.EBPF().String() + ": ",
		},
		{
			name: "PerCPUMap.Lookup", ours: func() error { _, err := perCPU.Lookup(9); return err },
			cilium: func() error {
				var values []uint64
				key := uint32(9)
				return perCPU.EBPF().Lookup(&key, &values)
			},
			prefix: "map " + perCPU.EBPF().String() + ": ", is: ebpf.ErrKeyNotExist,
		},
		{
			name: "PerCPUMap.Update with too many values",
			ours: func() error { return perCPU.Update(1, make([]uint64, perCPU.cpus+1), ebpf.UpdateAny) },
			exact: fmt.Sprintf("map %s: update: %d values for %d possible CPUs",
				perCPU.EBPF(), perCPU.cpus+1, perCPU.cpus),
		},
		{
			name: "Syncer.Apply", ours: func() error { _, err := NewSyncer(m).Apply(flowEntries(t, 6)); return err },
			cilium: func() error {
				k, v := flowEntry(100)
				_, err := raw.BatchUpdate([]flowKey{k}, []flowValue{v}, nil) // the map is full
				return err
			},
			prefix: "sync: map " + raw.String() + ": ",
		},
		{
			name: "Drain", ours: func() error { _, err := Drain(drainFrom.EBPF(), drainTo.EBPF()); return err },
			cilium: func() error {
				k, v := flowEntry(100)
				return drainTo.EBPF().Update(&k, &v, ebpf.UpdateNoExist) // the map is full
			},
			prefix: "drain: map " + drainTo.EBPF().String() + ": ",
		},
		{
			name: "OpenOrCreate, kernel refuses the map",
			ours: func() error { _, _, err := OpenOrCreate(lpm); return err },
			cilium: func() error {
				_, err := ebpf.NewMap(lpm.spec()) // an LPM trie needs BPF_F_NO_PREALLOC
				return err
			},
			prefix: "open or create map " + filepath.Join(dir, "sl_lpm_v1") + ": ",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ours()
			if err == nil {
				t.Fatal("operation succeeded")
			}
			t.Log(err)
			want := tt.exact
			if tt.cilium != nil {
				ciliumErr := tt.cilium()
				if ciliumErr == nil {
					t.Fatal("cilium/ebpf's operation succeeded")
				}
				want = tt.prefix + ciliumErr.Error()
			}
			if diff := cmp.Diff(want, err.Error()); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
		})
	}
}
