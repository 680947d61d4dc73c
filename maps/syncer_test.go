package maps

import (
	"maps"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// syncStep is one Apply of a sequence and what it must report.
type syncStep[K comparable, V any] struct {
	name    string
	desired map[K]V
	want    SyncStats
}

// runSyncSteps applies each step in turn, checking the stats and that the
// kernel map then holds exactly the desired entries. Each Apply runs
// through in, which may run it in a network namespace.
func runSyncSteps[K, V comparable](t *testing.T, m *Map[K, V], in func(func() error) error, steps []syncStep[K, V]) {
	t.Helper()
	s := NewSyncer(m)
	for _, step := range steps {
		var got SyncStats
		err := in(func() error {
			var err error
			got, err = s.Apply(step.desired)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if diff := cmp.Diff(step.want, got); diff != "" {
			t.Errorf("%s: stats (-want +got):\n%s", step.name, diff)
		}
		if diff := diffEntries(step.desired, dumpMap(t, m)); diff != "" {
			t.Errorf("%s: kernel map (-want +got):\n%s", step.name, diff)
		}
	}
}

// syncSteps builds a sequence over entries made by entry(i, generation):
// an initial fill, a mix of adds, changes and deletes, a repeat of the
// same state (idempotence), and emptying the map.
func syncSteps[K comparable, V any](entry func(i, generation int) (K, V)) []syncStep[K, V] {
	build := func(from, to, generation int, into map[K]V) map[K]V {
		for i := from; i < to; i++ {
			k, v := entry(i, generation)
			into[k] = v
		}
		return into
	}
	initial := build(0, 200, 0, map[K]V{})
	// Entries 0-19 are deleted, 20-49 change, 50-199 stay, 200-239 are new.
	mixed := build(20, 50, 1, build(50, 240, 0, map[K]V{}))
	return []syncStep[K, V]{
		{"initial fill", initial, SyncStats{Added: 200}},
		{"same state again", maps.Clone(initial), SyncStats{Unchanged: 200}},
		{"adds, changes and deletes", mixed, SyncStats{Added: 40, Changed: 30, Deleted: 20, Unchanged: 150}},
		{"idempotent repeat", maps.Clone(mixed), SyncStats{Unchanged: 220}},
		{"empty desired state", map[K]V{}, SyncStats{Deleted: 220}},
		{"empty again", map[K]V{}, SyncStats{}},
	}
}

func flowGeneration(i, generation int) (flowKey, flowValue) {
	k, v := flowEntry(i)
	v.Packets += uint64(generation) * 1000
	return k, v
}

func direct(fn func() error) error { return fn() }

func TestSyncerApply(t *testing.T) {
	t.Run("hash, kernel batch", func(t *testing.T) {
		m := newFlowHash(t, 512)
		runSyncSteps(t, m, direct, syncSteps(flowGeneration))
		if diff := cmp.Diff(BatchSupport{Lookup: true, Update: true, Delete: true}, m.BatchSupport()); diff != "" {
			t.Errorf("batch support (-want +got):\n%s", diff)
		}
	})
	t.Run("hash, batch disabled", func(t *testing.T) {
		m := newFlowHash(t, 512)
		m.DisableBatch()
		runSyncSteps(t, m, direct, syncSteps(flowGeneration))
	})
	t.Run("LPM trie (ipsets)", func(t *testing.T) {
		runSyncSteps(t, newIPSets(t, 512), direct, syncSteps(func(i, generation int) (bpf.IPSetKey, uint32) {
			k, v := ipsetEntry(i)
			return k, v + uint32(generation)
		}))
	})
	t.Run("devmap hash, kernel has no batch", func(t *testing.T) {
		// Devmap values must name a device of the caller's network
		// namespace: generation 0 points at lo, generation 1 at a veth
		// of a test namespace, and every Apply runs inside it.
		a, b := testutil.NewNetNS(t), testutil.NewNetNS(t)
		veth, _ := testutil.ConnectVeth(t, a, "sl-devmap-a", netip.MustParsePrefix("10.99.0.1/30"),
			b, "sl-devmap-b", netip.MustParsePrefix("10.99.0.2/30"))
		m := newDevMapHash(t, 512)
		runSyncSteps(t, m, a.Do, syncSteps(func(i, generation int) (uint32, uint32) {
			if generation == 0 {
				return uint32(i), 1
			}
			return uint32(i), uint32(veth.Index)
		}))
		if diff := cmp.Diff(BatchSupport{}, m.BatchSupport()); diff != "" {
			t.Errorf("batch support (-want +got):\n%s", diff)
		}
	})
}

// TestSyncerRepairsDrift changes the kernel map behind the Syncer's back:
// the next Apply must notice and undo it, because it reads the kernel map
// rather than trusting what it last wrote.
func TestSyncerRepairsDrift(t *testing.T) {
	m := newFlowHash(t, 64)
	s := NewSyncer(m)
	desired := flowEntries(t, 10)
	if _, err := s.Apply(desired); err != nil {
		t.Fatal(err)
	}
	k0, _ := flowEntry(0)
	k1, _ := flowEntry(1)
	stray, strayValue := flowEntry(50)
	if err := m.Update(k0, flowValue{Packets: 1234}, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(k1); err != nil {
		t.Fatal(err)
	}
	if err := m.Update(stray, strayValue, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	got, err := s.Apply(desired)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(SyncStats{Added: 1, Changed: 1, Deleted: 1, Unchanged: 8}, got); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if diff := diffEntries(desired, dumpMap(t, m)); diff != "" {
		t.Errorf("kernel map (-want +got):\n%s", diff)
	}
}

// TestSyncerReportsPartialWrite fills the map beyond its capacity: the
// error must come back with the stats of what was written.
func TestSyncerReportsPartialWrite(t *testing.T) {
	m := newFlowHash(t, 8)
	m.DisableBatch() // per element, so the count of written entries is exact
	got, err := NewSyncer(m).Apply(flowEntries(t, 12))
	if err == nil {
		t.Fatal("Apply of 12 entries into a map of 8 succeeded")
	}
	if diff := cmp.Diff(SyncStats{Added: 8}, got); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if n := len(dumpMap(t, m)); n != 8 {
		t.Errorf("kernel map holds %d entries, want 8", n)
	}
}

func flowEntries(t *testing.T, n int) map[flowKey]flowValue {
	t.Helper()
	out := make(map[flowKey]flowValue, n)
	for i := range n {
		k, v := flowEntry(i)
		out[k] = v
	}
	return out
}

// TestSyncerWritesBeforeDeleting: with room for old and new entries side
// by side, Apply writes every desired entry before it deletes any stale
// one, so an entry that moves to another key is never absent under both;
// a map without that room deletes first and still ends right.
func TestSyncerWritesBeforeDeleting(t *testing.T) {
	for _, tt := range []struct {
		name       string
		maxEntries uint32
		writeFirst bool
	}{{"room for both", 20, true}, {"full map", 10, false}} {
		t.Run(tt.name, func(t *testing.T) {
			m := newFlowHash(t, tt.maxEntries)
			s := NewSyncer(m)
			all := flowEntries(t, 20)
			first, second := map[flowKey]flowValue{}, map[flowKey]flowValue{}
			i := 0
			for k, v := range all {
				if i < 10 {
					first[k] = v
				} else {
					second[k] = v
				}
				i++
			}
			if _, err := s.Apply(first); err != nil {
				t.Fatal(err)
			}
			ran := false
			s.beforeDeletes = func() {
				ran = true
				keys, _, err := m.Dump()
				if err != nil {
					t.Fatal(err)
				}
				if len(keys) != 20 {
					t.Errorf("before the deletes the map holds %d entries, want the old 10 and the new 10", len(keys))
				}
			}
			stats, err := s.Apply(second)
			if err != nil {
				t.Fatal(err)
			}
			if ran != tt.writeFirst {
				t.Errorf("wrote first: %v, want %v", ran, tt.writeFirst)
			}
			if diff := cmp.Diff(SyncStats{Added: 10, Deleted: 10}, stats); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
			keys, _, err := m.Dump()
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 10 {
				t.Errorf("map holds %d entries, want 10", len(keys))
			}
		})
	}
}
