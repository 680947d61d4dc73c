package nat

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	sluicemaps "github.com/sluicenet/sluice/maps"
)

// apply writes pl phase by phase. After an error the Table forgets what it
// programmed and adopts the maps' contents again, so that the next Sync
// starts from what the kernel holds.
func (t *Table) apply(pl *plan) error {
	// What earlier plans retired goes once its grace period passed; a
	// failure to delete leaves the batch to a later plan.
	_ = t.reap(false)
	err := t.write(pl)
	if err != nil {
		if rerr := t.readKernel(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return err
	}
	// What the plan retired waits for a grace period.
	_ = t.reap(false)
	return nil
}

func (t *Table) write(pl *plan) error {
	// Stray slots and backends no frontend used when the plan began are
	// deleted once every program that might have found them finished:
	// the maps are preallocated (retire.go).
	if len(pl.preSlots)+len(pl.preBackends) > 0 {
		if err := t.waitGrace(); err != nil {
			return err
		}
	}
	if err := remove(t, t.slots, pl.preSlots); err != nil {
		return fmt.Errorf("delete unused backend slots: %w", err)
	}
	if err := remove(t, t.ranges, pl.preRanges); err != nil {
		return fmt.Errorf("delete unused source ranges: %w", err)
	}
	if err := remove(t, t.members, pl.preMembers); err != nil {
		return fmt.Errorf("delete unused service members: %w", err)
	}
	if err := remove(t, t.maglev, pl.preMaglev); err != nil {
		return fmt.Errorf("delete unused maglev tables: %w", err)
	}
	if err := remove(t, t.backends, pl.preBackends); err != nil {
		return fmt.Errorf("delete unused backends: %w", err)
	}
	if err := t.writeEntries(&pl.entries); err != nil {
		return err
	}
	if err := update(t, t.svcs, pl.frontendKeys, pl.frontendVals); err != nil {
		return fmt.Errorf("write frontends: %w", err)
	}
	// A frontend one service gave up and another took in this plan was
	// just written under its new service: it stays.
	written := make(map[bpf.SvcKey]bool, len(pl.frontendKeys))
	for _, k := range pl.frontendKeys {
		written[k] = true
	}
	var dropped []bpf.SvcKey
	for _, k := range pl.delFrontends {
		if !written[k] {
			dropped = append(dropped, k)
		}
	}
	if err := remove(t, t.svcs, dropped); err != nil {
		return fmt.Errorf("delete frontends: %w", err)
	}
	if err := remove(t, t.ranges, pl.delRanges); err != nil {
		return fmt.Errorf("delete source ranges: %w", err)
	}
	if err := remove(t, t.members, pl.delMembers); err != nil {
		return fmt.Errorf("delete service members: %w", err)
	}
	if err := remove(t, t.maglev, pl.delMaglev); err != nil {
		return fmt.Errorf("delete maglev tables: %w", err)
	}
	var gone []uint32
	var goneValues []bpf.Backend
	for _, k := range pl.released {
		if ref, ok := t.backendIDs[k]; ok && ref.refs == 0 {
			gone = append(gone, ref.id)
			goneValues = append(goneValues, k)
			delete(t.backendIDs, k)
			delete(t.backendByID, ref.id)
		}
	}
	for _, id := range pl.releasedAliases {
		gone = append(gone, id)
		goneValues = append(goneValues, t.backendByID[id])
		delete(t.backendByID, id)
	}
	t.retire(pl.delSlots, gone, goneValues)
	if pl.sweepAffinity {
		if err := t.sweepAffinity(); err != nil {
			return fmt.Errorf("delete client affinities: %w", err)
		}
	}
	return nil
}

// writeEntries writes e, new lists before the frontends that are to use
// them.
func (t *Table) writeEntries(e *entries) error {
	ones := make([]uint8, len(e.rangeKeys))
	for i := range ones {
		ones[i] = 1
	}
	// No frontend reaches a new list before the plan's frontends are
	// written: its slots go to the half of the slot space no frontend of
	// the service uses, its Maglev table under that half's base, and its
	// backends are new. So these writes depend on nothing but each other's
	// being done before the frontends, and all the maps are written at
	// once (steps). Members are shared by a service's two lists, so one
	// whose standing changes is updated in place, toward the new list's.
	// Ranges only admit clients.
	return t.steps(
		step{len(e.backendKeys), func() error {
			return wrap("write backends", update(t, t.backends, e.backendKeys, e.backendVals))
		}},
		step{len(e.memberKeys), func() error {
			return wrap("write service members", update(t, t.members, e.memberKeys, e.memberVals))
		}},
		step{len(e.slotKeys), func() error {
			return wrap("write backend slots", update(t, t.slots, e.slotKeys, e.slotVals))
		}},
		step{len(e.maglevKeys), func() error {
			return wrap("write maglev tables", update(t, t.maglev, e.maglevKeys, e.maglevVals))
		}},
		step{len(e.rangeKeys), func() error {
			return wrap("write source ranges", update(t, t.ranges, e.rangeKeys, ones))
		}},
	)
}

// A step is the writes of one map in a phase of a plan: n entries.
type step struct {
	n     int
	write func() error
}

// concurrentEntries is the fewest entries a step must have for steps to
// give it a goroutine of its own: below it the syscall costs less than the
// hand-off.
const concurrentEntries = 512

// steps runs the steps of one phase, whose writes do not depend on each
// other: the large ones at once, as the kernel's map updates are CPU
// bound, each map's behind its own lock. With the test hook every write
// is observed alone, so they go one after another, in order. The error is
// the first step's that failed, in order.
func (t *Table) steps(steps ...step) error {
	last := -1 // the last step with writes is this goroutine's
	for i, st := range steps {
		if st.n > 0 {
			last = i
		}
	}
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, st := range steps {
		if st.n == 0 {
			continue
		}
		if t.afterWrite == nil && st.n >= concurrentEntries && i < last {
			wg.Go(func() { errs[i] = st.write() })
			continue
		}
		if errs[i] = st.write(); errs[i] != nil {
			break
		}
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// wrap is err with context what, or nil.
func wrap(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// update writes keys and values in one batch, or one by one with the
// test hook after each when it is set.
func update[K, V any](t *Table, m *sluicemaps.Map[K, V], keys []K, vals []V) error {
	if t.afterWrite == nil {
		_, err := m.BatchUpdate(keys, vals, ebpf.UpdateAny)
		if err == nil {
			t.countHeld(m, len(keys))
		}
		return err
	}
	for i := range keys {
		if t.beforeWrite != nil {
			t.beforeWrite(m, false, keys[i])
		}
		if err := m.Update(keys[i], vals[i], ebpf.UpdateAny); err != nil {
			return err
		}
		t.countHeld(m, 1)
		t.runAfterWrite()
	}
	return nil
}

// runAfterWrite runs the test hook, marked as running.
func (t *Table) runAfterWrite() {
	t.hooked = true
	defer func() { t.hooked = false }()
	t.afterWrite()
}

// remove deletes keys in batches, passing over keys that are gone, or one
// by one with the test hook after each when it is set.
func remove[K, V any](t *Table, m *sluicemaps.Map[K, V], keys []K) error {
	if t.afterWrite != nil {
		for _, k := range keys {
			if t.beforeWrite != nil {
				t.beforeWrite(m, true, k)
			}
			err := m.Delete(k)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			t.countHeld(m, -1)
			t.runAfterWrite()
		}
		return nil
	}
	for len(keys) > 0 {
		n, err := m.BatchDelete(keys)
		if err == nil {
			t.countHeld(m, -len(keys))
			return nil
		}
		t.countHeld(m, -n)
		if !errors.Is(err, ebpf.ErrKeyNotExist) || n >= len(keys) {
			return err
		}
		keys = keys[n+1:]
	}
	return nil
}

// countHeld counts n entries more (fewer, when negative) in m, when it
// is the slots or the backends map (Table.heldSlots). Keys are never
// written over (retire.go), so that every write adds one.
func (t *Table) countHeld(m any, n int) {
	switch m {
	case any(t.slots):
		t.heldSlots.Add(int64(n))
	case any(t.backends):
		t.heldBackends.Add(int64(n))
	}
}
