package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// ResizeConntrack replaces the conntrack table with one of the given
// capacity while traffic flows, keeping every entry that fits:
//
//  1. the current table goes into the draining slot of sl_ct_tables, then
//     a new empty table into the live slot: from then on the programs
//     write only the new table, and a lookup that misses it reads the
//     draining table and moves the entry it finds;
//  2. every remaining entry is copied into the new table, except those a
//     packet already moved (their copy is newer);
//  3. the draining slot is emptied, and the old table freed.
//
// Each update of sl_ct_tables returns only once no program still uses
// what it replaced, so no packet of a tracked flow misses both tables,
// and none is sent back to policy by the resize. Shrinking below the
// number of entries evicts the least recently used ones (the table is an
// LRU hash).
//
// Every program that writes the table must be this Datapath's: while
// taking over from another process, call it only after Settle (which
// resizes to Options.ConntrackEntries itself), since the other process's
// programs would go on writing the old table after it is drained.
//
// With Options.PinDir the new table is pinned in the old one's place
// before step 1 and the old one repinned aside; a crash before step 3
// completes leaves both pinned, and the next Open resumes the drain.
func (d *Datapath) ResizeConntrack(entries uint32) error {
	if err := d.opened(); err != nil {
		return fmt.Errorf("resize conntrack: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.resizeConntrack(entries); err != nil {
		return fmt.Errorf("resize conntrack to %d entries: %w", entries, err)
	}
	return nil
}

func (d *Datapath) resizeConntrack(entries uint32) error {
	if err := d.check(); err != nil {
		return err
	}
	if entries == 0 {
		return errors.New("a table needs at least one entry")
	}
	if err := d.finishDrain(); err != nil {
		return err
	}
	if d.state.ct.MaxEntries() == entries {
		return nil
	}
	live, draining, err := d.newConntrackTable(entries)
	if err != nil {
		return err
	}
	if err := d.objs.SlCtTables.Put(uint32(bpf.CTTableDraining), draining); err != nil {
		live.Close()
		draining.Close()
		return fmt.Errorf("install draining table: %w", err)
	}
	if err := d.objs.SlCtTables.Put(uint32(bpf.CTTableLive), live); err != nil {
		live.Close()
		draining.Close()
		return fmt.Errorf("install new table: %w", err)
	}
	d.state.ct.Close()
	d.state.ct, d.state.draining = live, draining
	return d.finishDrain()
}

// newConntrackTable creates a table of the given capacity, pinned in the
// registry in place of the live one, which it returns as the table to
// drain.
func (d *Datapath) newConntrackTable(entries uint32) (live, draining *ebpf.Map, err error) {
	if d.state.pinDir == "" {
		spec := d.state.ctSpec.Copy()
		spec.MaxEntries = entries
		live, err = ebpf.NewMap(spec)
		if err != nil {
			return nil, nil, fmt.Errorf("create table: %w", err)
		}
		draining, err = d.state.ct.Clone()
		if err != nil {
			live.Close()
			return nil, nil, err
		}
		return live, draining, nil
	}
	p := d.state.ctParams
	p.MaxEntries = entries
	live, report, err := maps.OpenOrCreate(p, maps.WithLiveResize())
	if err != nil {
		return nil, nil, err
	}
	d.state.ctParams = p
	if report.Draining == nil {
		live.Close()
		return nil, nil, errors.New("registry did not hand back the table to drain")
	}
	return live, report.Draining, nil
}

// finishDrain empties the draining table, if any, into the live one and
// removes it.
func (d *Datapath) finishDrain() error {
	if d.state.draining == nil {
		return nil
	}
	if _, err := maps.Drain(d.state.draining, d.state.ct); err != nil {
		return fmt.Errorf("drain old table: %w", err)
	}
	if err := d.objs.SlCtTables.Delete(uint32(bpf.CTTableDraining)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove drained table: %w", err)
	}
	if d.state.pinDir != "" {
		if err := maps.FinishDrain(d.state.ctParams); err != nil {
			return err
		}
	}
	err := d.state.draining.Close()
	d.state.draining = nil
	return err
}

// Settle completes a takeover: call it once every interface's hooks run
// this Open's programs (after re-attaching them, or updating the pinned
// links). It removes the records earlier generations left in the
// interface entries, and the entries of interfaces this generation did
// not configure (their packets then drop as bpf.ReasonDroppedNoIface);
// records this generation as the one whose programs run, so that a later
// process taking over never evicts it; removes the pins that kept earlier
// generations' policies installed, and the flows of the interfaces whose
// entries went (see RemoveInterface); finishes a conntrack drain an
// interrupted resize left; and resizes the conntrack table to
// Options.ConntrackEntries if Open found it at another size. Call it on a
// first start too: it is how the next process knows whose programs run.
func (d *Datapath) Settle() error {
	if err := d.opened(); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.settle(); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	return nil
}

func (d *Datapath) settle() error {
	if err := d.check(); err != nil {
		return err
	}
	unlock, err := d.state.lock()
	if err != nil {
		return err
	}
	defer unlock()
	meta, err := d.readMeta()
	if err != nil {
		return err
	}
	if d.generation < meta.SettledGeneration {
		return fmt.Errorf("generation %d was taken over by generation %d, which settled", d.generation, meta.SettledGeneration)
	}
	removed, err := d.clearOlderRecords()
	if err != nil {
		return err
	}
	if err := d.clearOlderXDPRecords(); err != nil {
		return err
	}
	meta.SettledGeneration = d.generation
	if err := d.meta.Update(0, meta, ebpf.UpdateAny); err != nil {
		return err
	}
	// A packet that started in an older generation's program, or read an
	// entry just deleted, may still be running: wait it out before its
	// policies go and before the deleted interfaces' flows go.
	if err := d.quiesce(); err != nil {
		return err
	}
	if err := d.forgetFlows(removed); err != nil {
		return err
	}
	if err := d.unpinGenerations(func(gen uint32) bool { return gen < d.generation }); err != nil {
		return err
	}
	return d.resizeConntrack(d.opts.ConntrackEntries)
}

// withoutOlderRecords returns the entries of m, an interface map, that
// hold records of generations before this one, with those records
// cleared.
func (d *Datapath) withoutOlderRecords(m *maps.Map[uint32, bpf.Iface]) (map[uint32]bpf.Iface, error) {
	var err error
	updates := map[uint32]bpf.Iface{}
	for idx, entry := range m.All(&err) {
		changed := false
		for j, r := range entry.Records {
			if r.Generation != 0 && r.Generation < d.generation {
				entry.Records[j] = bpf.IfaceRecord{}
				changed = true
			}
		}
		if changed {
			updates[idx] = entry
		}
	}
	return updates, err
}

// clearOlderRecords removes the records of generations before this one;
// an entry left with no record at all, an interface this generation did
// not configure, goes, and clearOlderRecords returns those interfaces.
// Records of a newer generation, a process already taking over from this
// one, stay.
func (d *Datapath) clearOlderRecords() (map[uint32]bool, error) {
	updates, err := d.withoutOlderRecords(d.ifaceMap)
	if err != nil {
		return nil, fmt.Errorf("read interfaces: %w", err)
	}
	removed := map[uint32]bool{}
	for ifindex, entry := range updates {
		if entry.Records[0].Generation == 0 && entry.Records[1].Generation == 0 {
			err = d.ifaceMap.Delete(ifindex)
			d.counterSlots.release(entry.CounterSlot)
			removed[ifindex] = true
		} else {
			err = d.ifaceMap.Update(ifindex, entry, ebpf.UpdateExist)
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, err
		}
	}
	return removed, nil
}
