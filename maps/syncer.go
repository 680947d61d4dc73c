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

	// Buffers kept between calls: the dump, the work lists, and the set
	// of dumped keys used to find adds.
	keys, deletes, changedKeys, writeKeys []K
	values, changedValues, writeValues    []V
	present                               map[K]struct{}

	// beforeDeletes, set by tests, runs between Apply's writes and its
	// deletes when it writes first.
	beforeDeletes func()
}

// NewSyncer returns a Syncer that programs m.
func NewSyncer[K, V comparable](m *Map[K, V]) *Syncer[K, V] {
	return &Syncer[K, V]{m: m}
}

// Apply makes the kernel map hold exactly desired. It reads the map (batch
// lookup, or iteration where the kernel lacks it), writes the entries
// missing or different (batch commands, or per element), then deletes the
// entries not desired. Writing first is make-before-break: an entry that
// moves to another key (a route whose prefix changes, say) exists under
// the new key before it goes from the old, and a changed value replaces
// the old one in a single update, so the datapath never misses an entry
// that is desired before and after. Only when the map has no room for the
// new entries beside the old ones does Apply delete first.
//
// Apply expects to be the map's only writer while it runs. A concurrent
// writer can make the read miss or repeat entries; the map is then put
// right by the next Apply.
//
// On error the map holds a mix of the old and desired entries; the stats
// count what was done up to the failure, and a later Apply completes the
// work.
func (s *Syncer[K, V]) Apply(desired map[K]V) (SyncStats, error) {
	var stats SyncStats
	var err error
	s.keys, s.values, err = s.m.dumpInto(s.keys[:0], s.values[:0])
	if err != nil {
		return stats, fmt.Errorf("sync: %w", err)
	}

	// One pass over the kernel's entries finds deletes, changes and
	// unchanged entries. Adds are the desired keys the pass did not meet;
	// in the steady state there are none, which the count of met keys
	// proves without a second pass over desired.
	s.deletes, s.changedKeys, s.changedValues = s.deletes[:0], s.changedKeys[:0], s.changedValues[:0]
	for i, key := range s.keys {
		want, ok := desired[key]
		switch {
		case !ok:
			s.deletes = append(s.deletes, key)
		case want != s.values[i]:
			s.changedKeys = append(s.changedKeys, key)
			s.changedValues = append(s.changedValues, want)
		default:
			stats.Unchanged++
		}
	}
	met := len(s.keys) - len(s.deletes)

	// Adds go first in the write list and changes after them, so a
	// partial write is attributed exactly.
	s.writeKeys, s.writeValues = s.writeKeys[:0], s.writeValues[:0]
	if met < len(desired) {
		if s.present == nil {
			s.present = make(map[K]struct{}, len(s.keys))
		}
		clear(s.present)
		for _, key := range s.keys {
			s.present[key] = struct{}{}
		}
		for key, want := range desired {
			if _, ok := s.present[key]; !ok {
				s.writeKeys = append(s.writeKeys, key)
				s.writeValues = append(s.writeValues, want)
			}
		}
	}
	added := len(s.writeKeys)
	s.writeKeys = append(s.writeKeys, s.changedKeys...)
	s.writeValues = append(s.writeValues, s.changedValues...)

	deleteFirst := len(s.keys)+added > int(s.m.m.MaxEntries())
	if deleteFirst {
		if err := s.delete(&stats); err != nil {
			return stats, err
		}
	}
	n, err := s.m.BatchUpdate(s.writeKeys, s.writeValues, ebpf.UpdateAny)
	stats.Added = min(n, added)
	stats.Changed = n - stats.Added
	if err != nil {
		return stats, fmt.Errorf("sync: %w", err)
	}
	if !deleteFirst {
		if s.beforeDeletes != nil {
			s.beforeDeletes()
		}
		if err := s.delete(&stats); err != nil {
			return stats, err
		}
	}
	return stats, nil
}

// delete removes the entries Apply found undesired.
func (s *Syncer[K, V]) delete(stats *SyncStats) error {
	n, err := s.m.BatchDelete(s.deletes)
	stats.Deleted = n
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}
