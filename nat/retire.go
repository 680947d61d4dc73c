package nat

import (
	"fmt"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/grace"
)

// Retiring slots and backends.
//
// The slots and backends maps are preallocated hashes (lb_maps.h): a
// deleted element goes back to the map's free list and is the next
// insert's at once, so a program that found it just before the delete
// could read another entry's value. The Table therefore never deletes
// from either map when a plan stops using an entry: it retires it. An
// entry is deleted only once an RCU grace period has passed that began
// after no frontend, slot, Maglev table or member reached it any more,
// and so after every program that could hold it finished; a retired key
// is not written again until then (no entry is ever replaced in place).
// Retiring runs in two batches: retiring, whose grace period is running,
// and retired, the entries plans retired since it began, which wait for
// the next one.

// retirement is a batch of retired entries.
type retirement struct {
	slots    []bpf.BackendSlotKey
	backends []uint32
	batch    uint64 // the batch's number, once it is retiring
}

func (r *retirement) empty() bool { return len(r.slots)+len(r.backends) == 0 }

// retiredBackend is a retired backend's value and the number of the
// batch it waits in: one taken back and retired again waits in a later
// batch than the one it was first listed in.
type retiredBackend struct {
	value bpf.Backend
	batch uint64
}

// graceRun is a grace period running in the background: done is closed
// when it has passed, with err set when it could not be waited for.
type graceRun struct {
	done chan struct{}
	err  error
}

// startGrace starts a grace period in the background.
func (t *Table) startGrace() *graceRun {
	g := &graceRun{done: make(chan struct{})}
	if t.graceHook != nil {
		t.graceHook(g)
	}
	go func() {
		g.err = grace.Wait()
		close(g.done)
	}()
	return g
}

// passed reports whether g has passed, waiting for it when block.
func (g *graceRun) passed(block bool) (bool, error) {
	if block {
		<-g.done
		return true, g.err
	}
	select {
	case <-g.done:
		return true, g.err
	default:
		return false, nil
	}
}

// retire adds the entries a plan no longer uses, once its frontends and
// members moved off them, to the retired batch: backends by ID, with
// their values.
func (t *Table) retire(slots []bpf.BackendSlotKey, backends []uint32, values []bpf.Backend) {
	if len(slots)+len(backends) == 0 {
		return
	}
	if t.retiredSlots == nil {
		t.retiredSlots = map[bpf.BackendSlotKey]bool{}
		t.retiredIDs = map[uint32]retiredBackend{}
		t.retiredByValue = map[bpf.Backend]uint32{}
	}
	for _, k := range slots {
		t.retiredSlots[k] = true
	}
	for i, id := range backends {
		t.retiredIDs[id] = retiredBackend{values[i], t.nextBatch}
		t.retiredByValue[values[i]] = id
	}
	t.retired.slots = append(t.retired.slots, slots...)
	t.retired.backends = append(t.retired.backends, backends...)
}

// reap deletes the retiring batch once its grace period has passed
// (waiting for it when block), then starts the next batch's. Only an
// operation reaps, in its own goroutine: what an operation retired is
// deleted by a later one (or swept by the next process's first Sync),
// and a Table that is dropped leaves the maps alone. t.mu is held.
func (t *Table) reap(block bool) error {
	if t.grace != nil {
		passed, err := t.grace.passed(block)
		if !passed {
			return nil
		}
		if err != nil {
			err = fmt.Errorf("wait for running programs: %w", err)
		}
		t.grace = nil
		if err == nil {
			err = t.deleteRetiring()
		}
		if err != nil {
			// The batch waits for the next grace period: deleted
			// keys are passed over then.
			t.retired.slots = append(t.retired.slots, t.retiring.slots...)
			for _, id := range t.retiring.backends {
				if r, ok := t.retiredIDs[id]; ok && r.batch == t.retiring.batch {
					t.retiredIDs[id] = retiredBackend{r.value, t.nextBatch}
					t.retired.backends = append(t.retired.backends, id)
				}
			}
			t.retiring = retirement{}
			return err
		}
	}
	if t.retired.empty() {
		return nil
	}
	t.retiring, t.retired = t.retired, retirement{}
	t.retiring.batch = t.nextBatch
	t.nextBatch++
	t.grace = t.startGrace()
	return nil
}

// deleteRetiring deletes the retiring batch, whose grace period passed.
func (t *Table) deleteRetiring() error {
	if err := remove(t, t.slots, t.retiring.slots); err != nil {
		return fmt.Errorf("delete retired backend slots: %w", err)
	}
	// Backends taken back since, or retired again into a later batch,
	// stay.
	var gone []uint32
	for _, id := range t.retiring.backends {
		if r, ok := t.retiredIDs[id]; ok && r.batch == t.retiring.batch {
			gone = append(gone, id)
		}
	}
	if err := remove(t, t.backends, gone); err != nil {
		return fmt.Errorf("delete retired backends: %w", err)
	}
	for _, k := range t.retiring.slots {
		delete(t.retiredSlots, k)
	}
	for _, id := range gone {
		delete(t.retiredByValue, t.retiredIDs[id].value)
		delete(t.retiredIDs, id)
	}
	t.retiring = retirement{}
	return nil
}

// waitGrace returns once a grace period that begins now has passed.
func (t *Table) waitGrace() error {
	g := t.startGrace()
	if _, err := g.passed(true); err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	return nil
}

// settle deletes every retired entry, waiting for the grace periods it
// takes. t.mu is held.
func (t *Table) settle() error {
	for t.grace != nil || !t.retired.empty() {
		if err := t.reap(true); err != nil {
			return err
		}
	}
	return nil
}

// makeRoom settles what is retired, waiting for the grace periods it
// takes, when a plan of up to n new slots and backends might not fit in
// the maps beside it: the maps are sized for two lists of every backend
// (one replacing the other), and back-to-back changes of every list
// would otherwise find the lists the previous change retired still
// there. t.mu is held.
func (t *Table) makeRoom(n int) error {
	if t.grace == nil && t.retired.empty() {
		return nil
	}
	if t.heldSlots.Load()+int64(n) <= int64(t.slots.EBPF().MaxEntries()) &&
		t.heldBackends.Load()+int64(n) <= int64(t.backends.EBPF().MaxEntries()) {
		return nil
	}
	return t.settle()
}
