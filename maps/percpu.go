package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sync/atomic"

	"github.com/cilium/ebpf"
)

// PerCPUMap is a typed view of a per-CPU map (per-CPU hash and array, LRU
// per-CPU hash): V is one CPU's value, and every entry holds one V per
// possible CPU, in CPU order. cilium/ebpf pads each CPU's value to 8 bytes
// for the kernel; V need not be.
//
// Whole-map reads (Range, All, Dump) go through the chunked reader Map
// uses: BPF_MAP_LOOKUP_BATCH, or BPF_MAP_GET_NEXT_KEY iteration where the
// kernel has no batch lookup for the map. Errors are formed as Map's are.
// A PerCPUMap is safe for concurrent use as far as the kernel map is.
type PerCPUMap[K, V any] struct {
	m *ebpf.Map
	// cpus is the number of possible CPUs: the values of one entry.
	cpus int

	noBatchLookup atomic.Bool

	// readChunk, when positive, overrides the number of entries one
	// batch lookup asks for (tests).
	readChunk int
}

// NewPerCPU returns a typed view of the per-CPU map m. It fails when K or
// V do not encode to the map's key or value size, and for maps with one
// value per entry (use New).
func NewPerCPU[K, V any](m *ebpf.Map) (*PerCPUMap[K, V], error) {
	if m == nil {
		return nil, errors.New("new per-CPU map: nil map")
	}
	if !isPerCPU(m.Type()) {
		return nil, fmt.Errorf("new per-CPU map: %s is not a per-CPU map, use New", m.Type())
	}
	if err := checkSizes[K, V](m); err != nil {
		return nil, fmt.Errorf("new per-CPU map: %w", err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("new per-CPU map: %w", err)
	}
	return &PerCPUMap[K, V]{m: m, cpus: cpus}, nil
}

// EBPF returns the underlying map.
func (m *PerCPUMap[K, V]) EBPF() *ebpf.Map { return m.m }

// Lookup returns the values of every possible CPU stored under key. A
// missing key yields an error wrapping ebpf.ErrKeyNotExist.
func (m *PerCPUMap[K, V]) Lookup(key K) ([]V, error) {
	values := make([]V, m.cpus)
	if err := m.m.Lookup(&key, values); err != nil {
		return nil, fmt.Errorf("map %s: %w", m.m, err)
	}
	return values, nil
}

// Update stores values, one per possible CPU in CPU order, under key.
// CPUs past the end of a shorter slice get zero values; more values than
// possible CPUs is an error.
func (m *PerCPUMap[K, V]) Update(key K, values []V, flags ebpf.MapUpdateFlags) error {
	if len(values) > m.cpus {
		return fmt.Errorf("map %s: update: %d values for %d possible CPUs", m.m, len(values), m.cpus)
	}
	if err := m.m.Update(&key, values, flags); err != nil {
		return fmt.Errorf("map %s: %w", m.m, err)
	}
	return nil
}

// Delete removes key. A missing key yields an error wrapping
// ebpf.ErrKeyNotExist; per-CPU arrays refuse deletes.
func (m *PerCPUMap[K, V]) Delete(key K) error {
	if err := m.m.Delete(&key); err != nil {
		return fmt.Errorf("map %s: %w", m.m, err)
	}
	return nil
}

// Range calls fn for every entry of the map until fn returns false, with
// the entry's values of every possible CPU; each slice is fn's to keep.
// It reads as Map.Range does, in chunks of as many entries (all CPUs'
// values) as fit in 256 KiB, with BPF_MAP_LOOKUP_BATCH where the kernel
// has it for the map and BPF_MAP_GET_NEXT_KEY iteration otherwise, and
// with the same guarantees: on the batch path fn may delete entries, on
// the iteration path it must not.
//
// Range returns nil when every entry was read or fn stopped it, and the
// read's error otherwise; entries read before an error have been passed
// to fn.
func (m *PerCPUMap[K, V]) Range(fn func(K, []V) bool) error {
	var keys []K
	var values []V
	reuse := func(chunk int) ([]K, []V) {
		if len(keys) < chunk {
			keys, values = make([]K, chunk), make([]V, chunk*m.cpus)
		}
		return keys[:chunk], values[:chunk*m.cpus]
	}
	return readTyped(m.m, &m.noBatchLookup, m.cpus, m.rangeChunk(), reuse, func(keys []K, values []V) bool {
		for i := range keys {
			if !fn(keys[i], slices.Clone(values[i*m.cpus:(i+1)*m.cpus])) {
				return false
			}
		}
		return true
	})
}

// All iterates over the map for range-over-func, reading it as Range
// does. When the iteration stops early because of an error, All stores
// the error in *errOut; a nil errOut discards it, for callers that treat
// a partial read like a complete one. A complete iteration, or one the
// caller breaks off, leaves *errOut untouched.
//
//	var err error
//	for key, values := range m.All(&err) { ... }
//	if err != nil { ... }
func (m *PerCPUMap[K, V]) All(errOut *error) iter.Seq2[K, []V] {
	return func(yield func(K, []V) bool) {
		reportErr(errOut, m.Range(yield))
	}
}

// Dump returns every entry of the map: keys[i] holds values[i], one value
// per possible CPU. It reads as Range does, in chunks of 8192 entries
// written straight into one array of values that the returned slices
// share (each capped at its own entry), so it allocates little beyond
// its result.
func (m *PerCPUMap[K, V]) Dump() ([]K, [][]V, error) {
	var keys []K
	var flat []V
	spare := func(chunk int) ([]K, []V) {
		keys, flat = slices.Grow(keys, chunk), slices.Grow(flat, chunk*m.cpus)
		return keys[len(keys) : len(keys)+chunk], flat[len(flat) : len(flat)+chunk*m.cpus]
	}
	err := readTyped(m.m, &m.noBatchLookup, m.cpus, capChunk(m.m, dumpChunk, m.readChunk), spare,
		func(chunkKeys []K, chunkValues []V) bool {
			keys = keys[:len(keys)+len(chunkKeys)]
			flat = flat[:len(flat)+len(chunkValues)]
			return true
		})
	values := make([][]V, len(keys))
	for i := range values {
		values[i] = flat[i*m.cpus : (i+1)*m.cpus : (i+1)*m.cpus]
	}
	return keys, values, err
}

// rangeChunk is the number of entries Range reads at a time. The kernel
// side of an entry is its key and every CPU's value padded to 8 bytes.
func (m *PerCPUMap[K, V]) rangeChunk() int {
	var k K
	var v V
	return chunkFor(m.m, binary.Size(k)+m.cpus*align8(binary.Size(v)), m.readChunk)
}

// align8 rounds n up to a multiple of 8, as the kernel lays out per-CPU
// values.
func align8(n int) int { return (n + 7) &^ 7 }
