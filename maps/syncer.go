package maps

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// SyncStats reports what one Syncer.Apply did.
type SyncStats struct {
	// Added entries were missing from the kernel map.
	Added int
	// Changed entries had another value in the kernel map.
	Changed int
	// Deleted entries were in the kernel map but not desired.
	Deleted int
	// Unchanged entries already held the desired value.
	Unchanged int
}

// Syncer makes a kernel map hold exactly a desired set of entries while
// touching only the entries that differ, so the datapath never sees a
// desired entry go missing and a large, mostly unchanged map costs one
// read rather than a full rewrite.
//
// The kernel map is the record of what is programmed: Apply reads it every
// time instead of trusting a cache, so entries changed behind the Syncer's
// back (another process, a restart) are repaired. A Syncer is not safe for
// concurrent use; it keeps its read buffers between calls.
type Syncer[K, V comparable] struct {
	m *Map[K, V]

	// Buffers kept between calls: the dump, then the write list.
	keys          []K
	values        []V
	changedKeys   []K
	changedValues []V
	current       map[K]V
}

// NewSyncer returns a Syncer that programs m.
func NewSyncer[K, V comparable](m *Map[K, V]) *Syncer[K, V] {
	return &Syncer[K, V]{m: m}
}

// Apply makes the kernel map hold exactly desired. It reads the map (batch
// lookup, or iteration where the kernel lacks it), deletes the entries
// not desired, then writes the entries missing or different (batch
// commands, or per element). Deleting first keeps a full map from
// refusing the new entries.
//
// On error the map holds a mix of the old and desired entries; the stats
// count what was done up to the failure, and a later Apply completes the
// work.
func (s *Syncer[K, V]) Apply(desired map[K]V) (SyncStats, error) {
	var stats SyncStats
	var err error
	s.keys, s.values, err = s.m.dumpInto(s.keys[:0], s.values[:0])
	if err != nil {
		return stats, fmt.Errorf("sync: read kernel map: %w", err)
	}
	if s.current == nil {
		s.current = make(map[K]V, len(s.keys))
	}
	clear(s.current)
	for i, key := range s.keys {
		s.current[key] = s.values[i]
	}

	// Reuse the read buffers for the work lists: the dump is in
	// s.current now.
	deletes := s.keys[:0]
	for key := range s.current {
		if _, ok := desired[key]; !ok {
			deletes = append(deletes, key)
		}
	}
	n, err := s.m.BatchDelete(deletes)
	stats.Deleted = n
	if err != nil {
		return stats, fmt.Errorf("sync: %w", err)
	}

	// Adds go first in the write list and changes after them, so a
	// partial write is attributed exactly.
	updateKeys := deletes[:0]
	updateValues := s.values[:0]
	s.changedKeys, s.changedValues = s.changedKeys[:0], s.changedValues[:0]
	for key, want := range desired {
		have, ok := s.current[key]
		switch {
		case !ok:
			updateKeys = append(updateKeys, key)
			updateValues = append(updateValues, want)
		case have != want:
			s.changedKeys = append(s.changedKeys, key)
			s.changedValues = append(s.changedValues, want)
		default:
			stats.Unchanged++
		}
	}
	added := len(updateKeys)
	updateKeys = append(updateKeys, s.changedKeys...)
	updateValues = append(updateValues, s.changedValues...)
	n, err = s.m.BatchUpdate(updateKeys, updateValues, ebpf.UpdateAny)
	stats.Added = min(n, added)
	stats.Changed = n - stats.Added
	s.keys, s.values = updateKeys, updateValues
	if err != nil {
		return stats, fmt.Errorf("sync: %w", err)
	}
	return stats, nil
}
