package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/cilium/ebpf"
)

// Map is a typed view of an *ebpf.Map whose keys and values have fixed
// sizes: K and V are encoded as cilium/ebpf does (encoding/binary layout,
// native endianness) and must be exactly the map's key and value size.
//
// Batch operations try the kernel's batch commands first. When the kernel
// answers that a command is not supported for this map (devmaps have
// none; kernels before 5.6 have none at all), Map remembers that and uses
// per-element syscalls for that command from then on.
//
// Errors name the map once, in front of cilium/ebpf's message, which
// names the operation: "map Hash(sl_ct)#7: lookup: key does not exist".
// They wrap cilium/ebpf's errors, so errors.Is(err, ebpf.ErrKeyNotExist)
// and the like work.
//
// A Map is safe for concurrent use as far as the kernel map is.
type Map[K, V any] struct {
	m *ebpf.Map

	noBatchLookup atomic.Bool
	noBatchUpdate atomic.Bool
	noBatchDelete atomic.Bool

	// readChunk, when positive, overrides the number of entries one
	// batch lookup asks for (tests).
	readChunk int
}

// BatchSupport says which batch commands a Map still tries.
type BatchSupport struct {
	// Lookup, Update and Delete are true while the batch command of that
	// name has not failed as unsupported on this map.
	Lookup, Update, Delete bool
}

// New returns a typed view of m. It fails when K or V do not encode to the
// map's key or value size, and for per-CPU maps (use PerCPUMap).
func New[K, V any](m *ebpf.Map) (*Map[K, V], error) {
	if m == nil {
		return nil, errors.New("new typed map: nil map")
	}
	if isPerCPU(m.Type()) {
		return nil, fmt.Errorf("new typed map: %s holds a value per CPU, use NewPerCPU", m.Type())
	}
	if err := checkSizes[K, V](m); err != nil {
		return nil, fmt.Errorf("new typed map: %w", err)
	}
	return &Map[K, V]{m: m}, nil
}

func checkSizes[K, V any](m *ebpf.Map) error {
	var k K
	var v V
	if size := binary.Size(k); size != int(m.KeySize()) {
		return fmt.Errorf("key type %T encodes to %d bytes, map key size is %d", k, size, m.KeySize())
	}
	if size := binary.Size(v); size != int(m.ValueSize()) {
		return fmt.Errorf("value type %T encodes to %d bytes, map value size is %d", v, size, m.ValueSize())
	}
	return nil
}

func isPerCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}

// isArray reports whether every index below the capacity of a map of type
// t exists, so that entries can be neither added nor deleted.
func isArray(t ebpf.MapType) bool {
	return t == ebpf.Array || t == ebpf.PerCPUArray
}

// EBPF returns the underlying map, for attaching to programs or pinning.
func (m *Map[K, V]) EBPF() *ebpf.Map { return m.m }

// Lookup returns the value stored under key. A missing key yields an error
// wrapping ebpf.ErrKeyNotExist.
func (m *Map[K, V]) Lookup(key K) (V, error) {
	var value V
	if err := m.m.Lookup(&key, &value); err != nil {
		return value, fmt.Errorf("map %s: %w", m.m, err)
	}
	return value, nil
}

// LookupAndDelete removes key and returns the value it held, in one
// BPF_MAP_LOOKUP_AND_DELETE_ELEM, so that no update lands between the
// read and the delete. A missing key yields an error wrapping
// ebpf.ErrKeyNotExist. Hash and LRU hash maps have the command since Linux
// 5.14; where the kernel answers that it is not supported for this map
// the error wraps ebpf.ErrNotSupported, and callers can fall back to
// Lookup and Delete. (Kernels before 4.20, which lack the command
// altogether, answer EINVAL instead.)
func (m *Map[K, V]) LookupAndDelete(key K) (V, error) {
	var value V
	if err := m.m.LookupAndDelete(&key, &value); err != nil {
		return value, fmt.Errorf("map %s: %w", m.m, err)
	}
	return value, nil
}

// Update stores value under key; flags are ebpf.UpdateAny, UpdateNoExist
// or UpdateExist.
func (m *Map[K, V]) Update(key K, value V, flags ebpf.MapUpdateFlags) error {
	if err := m.m.Update(&key, &value, flags); err != nil {
		return fmt.Errorf("map %s: %w", m.m, err)
	}
	return nil
}

// Delete removes key. A missing key yields an error wrapping
// ebpf.ErrKeyNotExist.
func (m *Map[K, V]) Delete(key K) error {
	if err := m.m.Delete(&key); err != nil {
		return fmt.Errorf("map %s: %w", m.m, err)
	}
	return nil
}

// BatchSupport reports which batch commands the Map will still try; a
// command drops out when the kernel has refused it for this map, or after
// DisableBatch.
func (m *Map[K, V]) BatchSupport() BatchSupport {
	return BatchSupport{
		Lookup: !m.noBatchLookup.Load(),
		Update: !m.noBatchUpdate.Load(),
		Delete: !m.noBatchDelete.Load(),
	}
}

// DisableBatch makes every batch method use per-element syscalls, as if
// the kernel had no batch commands.
func (m *Map[K, V]) DisableBatch() {
	m.noBatchLookup.Store(true)
	m.noBatchUpdate.Store(true)
	m.noBatchDelete.Store(true)
}

// BatchUpdate stores values[i] under keys[i] for every i and returns how
// many it stored. It uses one BPF_MAP_UPDATE_BATCH where the kernel has
// it and per-element updates otherwise; flags other than ebpf.UpdateAny
// and ebpf.UpdateLock always go per element, as the batch command does
// not take them.
func (m *Map[K, V]) BatchUpdate(keys []K, values []V, flags ebpf.MapUpdateFlags) (int, error) {
	if len(keys) != len(values) {
		return 0, fmt.Errorf("map %s: batch update: %d keys but %d values", m.m, len(keys), len(values))
	}
	if len(keys) == 0 {
		return 0, nil
	}
	// The kernel's batch update takes no per-element flags but BPF_F_LOCK:
	// NoExist and Exist are per element only.
	if !m.noBatchUpdate.Load() && flags&^ebpf.UpdateLock == 0 {
		n, err := m.m.BatchUpdate(keys, values, &ebpf.BatchOptions{ElemFlags: uint64(flags)})
		if !errors.Is(err, ebpf.ErrNotSupported) {
			if err != nil {
				return n, fmt.Errorf("map %s: %w", m.m, err)
			}
			return n, nil
		}
		m.noBatchUpdate.Store(true)
	}
	for i := range keys {
		if err := m.m.Update(&keys[i], &values[i], flags); err != nil {
			return i, fmt.Errorf("map %s: %w", m.m, err)
		}
	}
	return len(keys), nil
}

// BatchDelete removes every key and returns how many it removed. A missing
// key stops it with an error wrapping ebpf.ErrKeyNotExist, as the kernel's
// batch command does.
func (m *Map[K, V]) BatchDelete(keys []K) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	if !m.noBatchDelete.Load() {
		n, err := m.m.BatchDelete(keys, nil)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			if err != nil {
				return n, fmt.Errorf("map %s: %w", m.m, err)
			}
			return n, nil
		}
		m.noBatchDelete.Store(true)
	}
	for i := range keys {
		if err := m.m.Delete(&keys[i]); err != nil {
			return i, fmt.Errorf("map %s: %w", m.m, err)
		}
	}
	return len(keys), nil
}
