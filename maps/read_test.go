package maps

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
)

// readPath is one way Range and Dump can read a map.
type readPath[K comparable, V any] struct {
	name string
	// open returns an empty map with room for maxEntries.
	open  func(t *testing.T, maxEntries uint32) *Map[K, V]
	entry func(int) (K, V)
	// batch says whether the read is expected to use BPF_MAP_LOOKUP_BATCH.
	batch bool
}

func flowPaths() []readPath[flowKey, flowValue] {
	return []readPath[flowKey, flowValue]{
		{"hash, kernel batch", newFlowHashT, flowEntry, true},
		{"hash, batch disabled", func(t *testing.T, n uint32) *Map[flowKey, flowValue] {
			m := newFlowHash(t, n)
			m.DisableBatch()
			return m
		}, flowEntry, false},
	}
}

func devPath() readPath[uint32, uint32] {
	return readPath[uint32, uint32]{"devmap hash, kernel has no batch", func(t *testing.T, n uint32) *Map[uint32, uint32] {
		return newDevMapHash(t, n)
	}, devEntry, false}
}

func newFlowHashT(t *testing.T, n uint32) *Map[flowKey, flowValue] { return newFlowHash(t, n) }

// devEntry is a devmap entry: values must name an existing device, and
// ifindex 1 is loopback.
func devEntry(i int) (uint32, uint32) { return uint32(i) + 100, 1 }

// fill stores entries 0..n-1 and returns them.
func fill[K comparable, V any](t *testing.T, m *Map[K, V], entry func(int) (K, V), n int) map[K]V {
	t.Helper()
	want := make(map[K]V, n)
	for i := range n {
		k, v := entry(i)
		want[k] = v
		if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

// rangeMap reads m with Range into a Go map, failing t on error or on a
// key seen twice.
func rangeMap[K comparable, V any](t *testing.T, m *Map[K, V]) map[K]V {
	t.Helper()
	got := make(map[K]V)
	err := m.Range(func(k K, v V) bool {
		if _, dup := got[k]; dup {
			t.Errorf("Range yielded %v twice", k)
		}
		got[k] = v
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// chunkSizes reads m with the shared reader and returns the size of every
// chunk it handed on.
func chunkSizes[K, V any](t *testing.T, m *Map[K, V], chunk int) []int {
	t.Helper()
	keys, values := make([]K, maxChunk), make([]V, maxChunk)
	var sizes []int
	err := m.read(chunk, func(n int) ([]K, []V) { return keys[:n], values[:n] }, func(k []K, _ []V) bool {
		sizes = append(sizes, len(k))
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return sizes
}

// readCounts are entry counts around the chunk size readChunkForTests.
const readChunkForTests = 16

var readCounts = []int{0, 1, readChunkForTests - 1, readChunkForTests, readChunkForTests + 1,
	2 * readChunkForTests, 5*readChunkForTests + 3}

func TestRangeChunkBoundaries(t *testing.T) {
	for _, path := range flowPaths() {
		checkChunkBoundaries(t, path)
	}
	checkChunkBoundaries(t, devPath())
}

// checkChunkBoundaries reads maps holding readCounts entries with a chunk
// of readChunkForTests: Range and Dump must both see every entry once,
// the iteration's chunks must be full but for the last, and the batch
// lookup's must never exceed the chunk (it returns whole hash buckets, so
// it may return fewer).
func checkChunkBoundaries[K comparable, V any](t *testing.T, path readPath[K, V]) {
	for _, n := range readCounts {
		t.Run(fmt.Sprintf("%s/%d entries", path.name, n), func(t *testing.T) {
			m := path.open(t, uint32(max(n, 1)))
			m.readChunk = readChunkForTests
			want := fill(t, m, path.entry, n)
			if diff := diffEntries(want, rangeMap(t, m)); diff != "" {
				t.Errorf("Range (-want +got):\n%s", diff)
			}
			if diff := diffEntries(want, dumpMap(t, m)); diff != "" {
				t.Errorf("Dump (-want +got):\n%s", diff)
			}
			sizes := chunkSizes(t, m, readChunkForTests)
			total := 0
			for i, size := range sizes {
				total += size
				switch {
				case size > readChunkForTests:
					t.Errorf("chunk %d holds %d entries, more than %d", i, size, readChunkForTests)
				case !path.batch && i < len(sizes)-1 && size != readChunkForTests:
					t.Errorf("iteration chunk %d of %d holds %d entries, want %d", i, len(sizes), size, readChunkForTests)
				}
			}
			if total != n {
				t.Errorf("chunks %v hold %d entries, want %d", sizes, total, n)
			}
			if got := m.BatchSupport().Lookup; got != path.batch {
				t.Errorf("batch lookup still tried: %v, want %v", got, path.batch)
			}
		})
	}
}

func TestRangeStopsEarly(t *testing.T) {
	for _, path := range flowPaths() {
		checkStopsEarly(t, path)
	}
	checkStopsEarly(t, devPath())
}

// checkStopsEarly stops Range after a number of entries on either side of
// a chunk boundary; fn must not be called again.
func checkStopsEarly[K comparable, V any](t *testing.T, path readPath[K, V]) {
	const n = 4 * readChunkForTests
	m := path.open(t, n)
	m.readChunk = readChunkForTests
	fill(t, m, path.entry, n)
	for _, stopAfter := range []int{1, readChunkForTests - 1, readChunkForTests, readChunkForTests + 1, n} {
		seen := 0
		err := m.Range(func(K, V) bool {
			seen++
			return seen < stopAfter
		})
		if err != nil || seen != stopAfter {
			t.Errorf("%s: Range stopping after %d saw %d entries (error %v)", path.name, stopAfter, seen, err)
		}
	}
}

// TestRangeDeletesAsItGoes deletes every entry from inside Range: the
// batch cursor, a hash bucket, survives the deletes, so every entry is
// seen once and the map ends empty.
func TestRangeDeletesAsItGoes(t *testing.T) {
	const n = 1000
	m := newFlowHash(t, n)
	m.readChunk = readChunkForTests
	want := fill(t, m, flowEntry, n)
	got := make(map[flowKey]flowValue)
	err := m.Range(func(k flowKey, v flowValue) bool {
		if _, dup := got[k]; dup {
			t.Errorf("Range yielded %v twice", k)
		}
		got[k] = v
		if err := m.Delete(k); err != nil {
			t.Error(err)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := diffEntries(want, got); diff != "" {
		t.Errorf("Range while deleting (-want +got):\n%s", diff)
	}
	if left := dumpMap(t, m); len(left) != 0 {
		t.Errorf("%d entries left after deleting all", len(left))
	}
}

// TestRangeGrowsBufferOnENOSPC starts Range with a one-entry buffer: the
// first hash bucket holding two entries makes the kernel answer ENOSPC,
// and the reader must grow the buffer, keep the batch lookup and still
// yield every entry once.
func TestRangeGrowsBufferOnENOSPC(t *testing.T) {
	const n = 256
	m := newFlowHash(t, n)
	m.readChunk = 1
	want := fill(t, m, flowEntry, n)
	if diff := diffEntries(want, rangeMap(t, m)); diff != "" {
		t.Errorf("Range (-want +got):\n%s", diff)
	}
	if !m.BatchSupport().Lookup {
		t.Error("Range fell back to iteration instead of growing its buffer")
	}
	// 256 keys in 256 buckets: some bucket holds two, so some chunk
	// must have been read with a grown buffer.
	if sizes := chunkSizes(t, m, 1); len(sizes) == 0 || slices.Max(sizes) < 2 {
		t.Errorf("every chunk held one entry (%d chunks): ENOSPC never provoked", len(sizes))
	}
}

// TestReadChunkSizes holds Range to its 256 KiB buffer and Dump to its
// 8192-entry chunk, both capped by the map's capacity.
func TestReadChunkSizes(t *testing.T) {
	// A flowKey and a flowValue take 8 + 16 bytes.
	const rangeEntries = rangeBufferBytes / (8 + 16)
	tests := []struct {
		maxEntries uint32
		want       []int // Range's chunk, Dump's chunk
	}{
		{1, []int{1, 1}},
		{100, []int{100, 100}},
		{9000, []int{9000, dumpChunk}},
		{1 << 20, []int{rangeEntries, dumpChunk}},
	}
	for _, tt := range tests {
		m := newFlowHash(t, tt.maxEntries)
		if diff := cmp.Diff(tt.want, []int{m.rangeChunk(), m.dumpChunk()}); diff != "" {
			t.Errorf("max entries %d: Range and Dump chunks (-want +got):\n%s", tt.maxEntries, diff)
		}
	}
}

func TestLookupAndDelete(t *testing.T) {
	hash := newFlowHash(t, 16)
	key, value := flowEntry(3)
	if err := hash.Update(key, value, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	got, err := hash.LookupAndDelete(key)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(value, got, ignoreLayoutMarkers); diff != "" {
		t.Errorf("LookupAndDelete (-want +got):\n%s", diff)
	}
	if _, err := hash.Lookup(key); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Lookup after LookupAndDelete: %v, want ErrKeyNotExist", err)
	}
	if _, err := hash.LookupAndDelete(key); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("LookupAndDelete of a missing key: %v, want ErrKeyNotExist", err)
	}

	// Devmaps have no lookup-and-delete: the error says so, for the
	// caller's fallback.
	devs := newDevMapHash(t, 4)
	devKey, devValue := devEntry(0)
	if err := devs.Update(devKey, devValue, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if _, err := devs.LookupAndDelete(devKey); !errors.Is(err, ebpf.ErrNotSupported) {
		t.Errorf("LookupAndDelete on a devmap: %v, want ErrNotSupported", err)
	}
	if _, err := devs.Lookup(devKey); err != nil {
		t.Errorf("the refused LookupAndDelete removed the entry: %v", err)
	}
}
