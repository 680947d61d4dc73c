package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// hitValue is a per-CPU value whose 12 bytes the kernel pads to 16 per CPU,
// so reads go through cilium/ebpf's unpadding; uint64 values need none.
type hitValue struct {
	Packets uint64
	Rule    uint32
}

func possibleCPUs(tb testing.TB) int {
	tb.Helper()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		tb.Fatal(err)
	}
	return cpus
}

// newPerCPU creates an unpinned per-CPU map of type typ.
func newPerCPU[V any](tb testing.TB, typ ebpf.MapType, maxEntries uint32) *PerCPUMap[uint32, V] {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	var v V
	raw, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "sl_test_percpu",
		Type:       typ,
		KeySize:    4,
		ValueSize:  uint32(binary.Size(v)),
		MaxEntries: maxEntries,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { raw.Close() })
	m, err := NewPerCPU[uint32, V](raw)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// hitValues are entry i's values: distinct for every CPU, so that a value
// read into the wrong CPU's slot or the wrong entry shows.
func hitValues(i, cpus int) []hitValue {
	values := make([]hitValue, cpus)
	for cpu := range values {
		values[cpu] = hitValue{Packets: uint64(i)<<16 | uint64(cpu), Rule: uint32(i)}
	}
	return values
}

func counterValues(i, cpus int) []uint64 {
	values := make([]uint64, cpus)
	for cpu := range values {
		values[cpu] = uint64(i)*1000 + uint64(cpu)
	}
	return values
}

// perCPUPath is one way PerCPUMap's reads can go.
type perCPUPath[V any] struct {
	name  string
	typ   ebpf.MapType
	batch bool
	// values makes entry i's values for cpus CPUs.
	values func(i, cpus int) []V
}

func perCPUPaths() ([]perCPUPath[hitValue], []perCPUPath[uint64]) {
	return []perCPUPath[hitValue]{
			{"per-CPU hash, 12-byte values, kernel batch", ebpf.PerCPUHash, true, hitValues},
			{"per-CPU hash, 12-byte values, batch disabled", ebpf.PerCPUHash, false, hitValues},
			{"per-CPU array, 12-byte values, kernel batch", ebpf.PerCPUArray, true, hitValues},
		}, []perCPUPath[uint64]{
			{"per-CPU hash, 8-byte values, kernel batch", ebpf.PerCPUHash, true, counterValues},
			{"per-CPU array, 8-byte values, batch disabled", ebpf.PerCPUArray, false, counterValues},
		}
}

// openPath creates a map for path holding entries 0..n-1 and returns it
// with its contents. Arrays get a capacity of exactly n, so that they hold
// no other index.
func openPath[V any](t *testing.T, path perCPUPath[V], n int) (*PerCPUMap[uint32, V], map[uint32][]V) {
	t.Helper()
	m := newPerCPU[V](t, path.typ, uint32(max(n, 1)))
	if !path.batch {
		m.noBatchLookup.Store(true)
	}
	want := make(map[uint32][]V, n)
	for i := range n {
		want[uint32(i)] = path.values(i, m.cpus)
		if err := m.Update(uint32(i), want[uint32(i)], ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	return m, want
}

// perCPURange reads m with Range into a Go map, failing t on an error or
// a key seen twice.
func perCPURange[V any](t *testing.T, m *PerCPUMap[uint32, V]) map[uint32][]V {
	t.Helper()
	got := make(map[uint32][]V)
	err := m.Range(func(k uint32, v []V) bool {
		if _, dup := got[k]; dup {
			t.Errorf("Range yielded %d twice", k)
		}
		got[k] = v
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func perCPUDump[V any](t *testing.T, m *PerCPUMap[uint32, V]) map[uint32][]V {
	t.Helper()
	keys, values, err := m.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(values) {
		t.Fatalf("Dump returned %d keys and %d values", len(keys), len(values))
	}
	got := make(map[uint32][]V, len(keys))
	for i, k := range keys {
		if _, dup := got[k]; dup {
			t.Errorf("Dump returned %d twice", k)
		}
		if cap(values[i]) != len(values[i]) {
			t.Errorf("Dump's values of %d have spare capacity %d: an append would overwrite the next entry", k, cap(values[i])-len(values[i]))
		}
		got[k] = values[i]
	}
	return got
}

func perCPUAll[V any](t *testing.T, m *PerCPUMap[uint32, V]) map[uint32][]V {
	t.Helper()
	var err error
	got := make(map[uint32][]V)
	for k, v := range m.All(&err) {
		got[k] = v
	}
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// perCPUChunkSizes reads m with the shared reader and returns the size of
// every chunk it handed on.
func perCPUChunkSizes[V any](t *testing.T, m *PerCPUMap[uint32, V], chunk int) []int {
	t.Helper()
	keys, values := make([]uint32, maxChunk), make([]V, maxChunk*m.cpus)
	var sizes []int
	err := readTyped(m.m, &m.noBatchLookup, m.cpus, chunk,
		func(n int) ([]uint32, []V) { return keys[:n], values[:n*m.cpus] },
		func(k []uint32, v []V) bool {
			if len(v) != len(k)*m.cpus {
				t.Errorf("chunk of %d keys has %d values, want %d", len(k), len(v), len(k)*m.cpus)
			}
			sizes = append(sizes, len(k))
			return true
		})
	if err != nil {
		t.Fatal(err)
	}
	return sizes
}

func TestPerCPUReadChunkBoundaries(t *testing.T) {
	hits, counters := perCPUPaths()
	for _, path := range hits {
		checkPerCPUChunkBoundaries(t, path)
	}
	for _, path := range counters {
		checkPerCPUChunkBoundaries(t, path)
	}
}

// checkPerCPUChunkBoundaries is checkChunkBoundaries for PerCPUMap: Range,
// All and Dump see every entry once with every CPU's value, iteration
// chunks are full but for the last, batch chunks never exceed the chunk.
func checkPerCPUChunkBoundaries[V any](t *testing.T, path perCPUPath[V]) {
	for _, n := range readCounts {
		if n == 0 && path.typ == ebpf.PerCPUArray {
			continue // an array always holds its capacity, at least 1
		}
		t.Run(fmt.Sprintf("%s/%d entries", path.name, n), func(t *testing.T) {
			m, want := openPath(t, path, n)
			m.readChunk = readChunkForTests
			for name, got := range map[string]map[uint32][]V{
				"Range": perCPURange(t, m), "All": perCPUAll(t, m), "Dump": perCPUDump(t, m),
			} {
				if diff := diffEntries(want, got); diff != "" {
					t.Errorf("%s (-want +got):\n%s", name, diff)
				}
			}
			sizes := perCPUChunkSizes(t, m, readChunkForTests)
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
			if got := !m.noBatchLookup.Load(); got != path.batch {
				t.Errorf("batch lookup still tried: %v, want %v", got, path.batch)
			}
		})
	}
}

func TestPerCPURangeStopsEarly(t *testing.T) {
	hits, _ := perCPUPaths()
	for _, path := range hits {
		const n = 4 * readChunkForTests
		m, _ := openPath(t, path, n)
		m.readChunk = readChunkForTests
		for _, stopAfter := range []int{1, readChunkForTests - 1, readChunkForTests, readChunkForTests + 1, n} {
			seen := 0
			err := m.Range(func(uint32, []hitValue) bool {
				seen++
				return seen < stopAfter
			})
			if err != nil || seen != stopAfter {
				t.Errorf("%s: Range stopping after %d saw %d entries (error %v)", path.name, stopAfter, seen, err)
			}
		}
		seen := 0
		for range m.All(nil) {
			seen++
			if seen == readChunkForTests+1 {
				break
			}
		}
		if seen != readChunkForTests+1 {
			t.Errorf("%s: All broken off after %d saw %d", path.name, readChunkForTests+1, seen)
		}
	}
}

// TestPerCPURangeValuesAreOwned keeps every slice Range yields across
// chunks: each must still hold its own entry's values after the reader
// has reused its buffer for later chunks, and appending to one must not
// reach another.
func TestPerCPURangeValuesAreOwned(t *testing.T) {
	hits, _ := perCPUPaths()
	m, want := openPath(t, hits[0], 5*readChunkForTests)
	m.readChunk = readChunkForTests
	got := perCPURange(t, m)
	for _, v := range got {
		_ = append(v, hitValue{Packets: 1 << 60})
	}
	if diff := diffEntries(want, got); diff != "" {
		t.Errorf("values kept from Range (-want +got):\n%s", diff)
	}
	dumped := perCPUDump(t, m)
	for _, v := range dumped {
		_ = append(v, hitValue{Packets: 1 << 60})
	}
	if diff := diffEntries(want, dumped); diff != "" {
		t.Errorf("values kept from Dump (-want +got):\n%s", diff)
	}
}

// TestPerCPURangeGrowsBufferOnENOSPC reads a per-CPU hash with a one-entry
// buffer: some bucket holds two entries, the kernel answers ENOSPC, and
// the reader must grow the buffer and keep the batch lookup.
func TestPerCPURangeGrowsBufferOnENOSPC(t *testing.T) {
	const n = 256
	hits, _ := perCPUPaths()
	m, want := openPath(t, hits[0], n)
	m.readChunk = 1
	if diff := diffEntries(want, perCPURange(t, m)); diff != "" {
		t.Errorf("Range (-want +got):\n%s", diff)
	}
	if m.noBatchLookup.Load() {
		t.Error("Range fell back to iteration instead of growing its buffer")
	}
	if sizes := perCPUChunkSizes(t, m, 1); len(sizes) == 0 || slices.Max(sizes) < 2 {
		t.Errorf("every chunk held one entry (%d chunks): ENOSPC never provoked", len(sizes))
	}
}

// TestPerCPUReadChunkSizes holds Range to 256 KiB of kernel-side entries
// (key, then every CPU's value padded to 8 bytes) and Dump to 8192
// entries, both capped by the map's capacity.
func TestPerCPUReadChunkSizes(t *testing.T) {
	cpus := possibleCPUs(t)
	rangeEntries := rangeBufferBytes / (4 + cpus*16) // hitValue: 12 bytes, padded to 16
	tests := []struct {
		maxEntries uint32
		want       []int // Range's chunk, Dump's chunk
	}{
		{1, []int{1, 1}},
		{uint32(rangeEntries - 1), []int{rangeEntries - 1, min(rangeEntries-1, dumpChunk)}},
		{1 << 16, []int{rangeEntries, dumpChunk}},
	}
	for _, tt := range tests {
		m := newPerCPU[hitValue](t, ebpf.PerCPUHash, tt.maxEntries)
		got := []int{m.rangeChunk(), capChunk(m.m, dumpChunk, m.readChunk)}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("max entries %d: Range and Dump chunks (-want +got):\n%s", tt.maxEntries, diff)
		}
	}
}

func TestPerCPUUpdateValueCount(t *testing.T) {
	m := newPerCPU[uint64](t, ebpf.PerCPUHash, 4)
	// Fewer values than CPUs: the rest are zero.
	if err := m.Update(1, []uint64{7}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	want := make([]uint64, m.cpus)
	want[0] = 7
	got, err := m.Lookup(1)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Lookup after a short Update (-want +got):\n%s", diff)
	}
	if err := m.Update(2, make([]uint64, m.cpus+1), ebpf.UpdateAny); err == nil {
		t.Error("Update with more values than CPUs succeeded")
	}
}

// TestAllErrorContract holds Map.All and PerCPUMap.All to one contract:
// a failed read stores its error in *errOut, a nil errOut discards it
// without a panic, and a complete or broken-off iteration leaves *errOut
// as it was.
func TestAllErrorContract(t *testing.T) {
	testutil.RequirePrivileged(t)
	sentinel := errors.New("left alone")
	type iteration struct {
		// run iterates, breaking off after stopAfter entries if positive,
		// and returns how many it saw.
		run func(errOut *error, stopAfter int) int
		// entries is how many the map holds.
		entries int
	}
	iterate := func(seq func(yield func(uint32, struct{}) bool), stopAfter int) int {
		seen := 0
		for range seq {
			seen++
			if seen == stopAfter {
				break
			}
		}
		return seen
	}
	mapIteration := func(t *testing.T, closed bool) iteration {
		m := newFlowHash(t, 8)
		fill(t, m, flowEntry, 5)
		if closed {
			m.EBPF().Close()
		}
		return iteration{func(errOut *error, stopAfter int) int {
			return iterate(func(yield func(uint32, struct{}) bool) {
				for range m.All(errOut) {
					if !yield(0, struct{}{}) {
						return
					}
				}
			}, stopAfter)
		}, 5}
	}
	perCPUIteration := func(t *testing.T, closed bool) iteration {
		m := newPerCPU[uint64](t, ebpf.PerCPUHash, 8)
		for i := range 5 {
			if err := m.Update(uint32(i), counterValues(i, m.cpus), ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
		}
		if closed {
			m.EBPF().Close()
		}
		return iteration{func(errOut *error, stopAfter int) int {
			return iterate(func(yield func(uint32, struct{}) bool) {
				for range m.All(errOut) {
					if !yield(0, struct{}{}) {
						return
					}
				}
			}, stopAfter)
		}, 5}
	}
	for _, kind := range []struct {
		name string
		open func(t *testing.T, closed bool) iteration
	}{{"Map", mapIteration}, {"PerCPUMap", perCPUIteration}} {
		t.Run(kind.name, func(t *testing.T) {
			it := kind.open(t, false)
			err := sentinel
			if seen := it.run(&err, 0); seen != it.entries || err != sentinel {
				t.Errorf("complete iteration: saw %d of %d, errOut %v, want it left alone", seen, it.entries, err)
			}
			if seen := it.run(&err, 2); seen != 2 || err != sentinel {
				t.Errorf("broken-off iteration: saw %d, errOut %v, want it left alone", seen, err)
			}
			if seen := it.run(nil, 0); seen != it.entries {
				t.Errorf("complete iteration with nil errOut saw %d of %d", seen, it.entries)
			}

			failing := kind.open(t, true)
			err = nil
			if seen := failing.run(&err, 0); seen != 0 || err == nil {
				t.Errorf("iteration of a closed map: saw %d, errOut %v, want 0 and an error", seen, err)
			}
			if seen := failing.run(nil, 0); seen != 0 {
				t.Errorf("iteration of a closed map with nil errOut saw %d", seen)
			}
		})
	}
}
