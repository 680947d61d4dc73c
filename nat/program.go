package nat

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	sluicemaps "github.com/sluicenet/sluice/maps"
)

// A plan is the kernel writes of one Upsert, Delete or Sync, applied
// phase by phase so that every service's change is make-before-break
// (see Table): new backends, new slots, new ranges, frontends; then the
// deletions of frontends, slots, ranges and, last, the backends no list
// holds any more.
type plan struct {
	backendKeys  []uint32
	backendVals  []bpf.Backend
	slotKeys     []bpf.BackendSlotKey
	slotVals     []uint32
	rangeKeys    []bpf.SvcRangeKey
	frontendKeys []bpf.SvcKey
	frontendVals []bpf.Svc

	delFrontends []bpf.SvcKey
	delSlots     []bpf.BackendSlotKey
	delRanges    []bpf.SvcRangeKey
	// released are backends a list let go of; those no list holds when
	// the plan is applied are deleted.
	released []netip.AddrPort
}

// upsert plans name as s.
func (t *Table) upsert(name string, s Service, pl *plan) error {
	if _, err := s.validate(); err != nil {
		return err
	}
	old := t.services[name]
	if old != nil && equalServices(old.svc, s) {
		return nil
	}
	s = cloneService(s)
	for _, f := range s.Frontends {
		if owner, ok := t.frontends[f.key()]; ok && owner != name {
			return fmt.Errorf("%w: frontend %v port %d belongs to service %q", ErrInvalidService, f.Addr, f.Port, owner)
		}
	}
	if old == nil {
		var err error
		if old, err = t.adopt(s); err != nil {
			return err
		}
	}
	id, oldBase, oldSlots := uint32(0), slotBases[1], 0
	if old != nil {
		id, oldBase, oldSlots = old.id, old.base, old.slots
	} else {
		id = t.newServiceID()
	}
	ordered := s.ordered()
	base := oldBase
	sameList := old != nil && old.slots == len(old.ordered) && slices.Equal(old.ordered, ordered)
	if !sameList {
		base = otherBase(oldBase)
	}
	p := &programmed{svc: s, ordered: ordered, id: id, base: base, slots: len(ordered),
		values: map[bpf.SvcKey]bpf.Svc{}, ranges: map[bpf.SvcRangeKey]bool{}}
	if !sameList {
		for i, b := range ordered {
			pl.slotKeys = append(pl.slotKeys, bpf.BackendSlotKey{SvcID: id, Slot: base + uint32(i)})
			pl.slotVals = append(pl.slotVals, t.acquireBackend(b, pl))
		}
	}
	for _, r := range s.SourceRanges {
		k := rangeKey(id, r)
		p.ranges[k] = true
		if old == nil || !old.ranges[k] {
			pl.rangeKeys = append(pl.rangeKeys, k)
		}
	}
	for _, f := range s.Frontends {
		k := f.key()
		v := s.value(f, id, base)
		p.values[k] = v
		t.frontends[k] = name
		if old != nil {
			if ov, ok := old.values[k]; ok && ov == v {
				continue
			}
		}
		pl.frontendKeys = append(pl.frontendKeys, k)
		pl.frontendVals = append(pl.frontendVals, v)
	}
	t.services[name] = p
	t.svcIDs[id] = name
	if old == nil {
		return nil
	}
	for k := range old.values {
		if _, ok := p.values[k]; !ok {
			pl.delFrontends = append(pl.delFrontends, k)
			delete(t.frontends, k)
		}
	}
	if !sameList {
		pl.deleteSlots(id, oldBase, oldSlots)
		t.releaseBackends(old.ordered, pl)
	}
	for k := range old.ranges {
		if !p.ranges[k] {
			pl.delRanges = append(pl.delRanges, k)
		}
	}
	return nil
}

// delete plans the removal of service name.
func (t *Table) delete(name string, pl *plan) {
	p, ok := t.services[name]
	if !ok {
		return
	}
	for k := range p.values {
		pl.delFrontends = append(pl.delFrontends, k)
		delete(t.frontends, k)
	}
	pl.deleteSlots(p.id, p.base, p.slots)
	for k := range p.ranges {
		pl.delRanges = append(pl.delRanges, k)
	}
	t.releaseBackends(p.ordered, pl)
	delete(t.services, name)
	delete(t.svcIDs, p.id)
}

func (pl *plan) deleteSlots(id, base uint32, count int) {
	for i := range count {
		pl.delSlots = append(pl.delSlots, bpf.BackendSlotKey{SvcID: id, Slot: base + uint32(i)})
	}
}

// adopt returns, as programmed, the service a previous process left
// in the maps under one of s's frontends, or nil: its ID, its list as the
// slots and counts say, its frontends and its ranges. The backends of its
// list count as held by it, so that the upsert releases them as it would
// its own.
func (t *Table) adopt(s Service) (*programmed, error) {
	for _, f := range s.Frontends {
		v, ok := t.adopted[f.key()]
		if !ok || v.ID == 0 {
			continue
		}
		if _, taken := t.svcIDs[v.ID]; taken {
			continue
		}
		p := &programmed{id: v.ID, base: v.SlotBase, slots: int(v.Serving) + int(v.Terminating),
			values: map[bpf.SvcKey]bpf.Svc{}, ranges: map[bpf.SvcRangeKey]bool{}}
		for i := 0; i < p.slots; i++ {
			bid, err := t.slots.Lookup(bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + uint32(i)})
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break // a broken list: rewritten, and its slots deleted
			}
			if err != nil {
				return nil, err
			}
			ap, ok := t.backendByID[bid]
			if !ok {
				break
			}
			serving := i < int(v.Serving)
			local := i < int(v.ServingLocal) || (!serving && i < int(v.Serving)+int(v.TerminatingLocal))
			p.ordered = append(p.ordered, Backend{Addr: ap.Addr(), Port: ap.Port(), Local: local, Terminating: !serving})
			t.backendIDs[ap].refs++
		}
		for _, k := range t.adoptedByID[v.ID] {
			if av, ok := t.adopted[k]; ok {
				p.values[k] = av
				delete(t.adopted, k)
			}
		}
		delete(t.adoptedByID, v.ID)
		for _, k := range t.adoptedRanges[v.ID] {
			p.ranges[k] = true
		}
		delete(t.adoptedRanges, v.ID)
		return p, nil
	}
	return nil, nil
}

// newServiceID returns a service ID no service and no adopted frontend
// holds.
func (t *Table) newServiceID() uint32 {
	for {
		id := t.nextSvcID
		t.nextSvcID++
		if t.nextSvcID == 0 {
			t.nextSvcID = 1
		}
		_, taken := t.svcIDs[id]
		_, adopted := t.adoptedByID[id]
		if id != 0 && !taken && !adopted {
			return id
		}
	}
}

func otherBase(base uint32) uint32 {
	if base == slotBases[0] {
		return slotBases[1]
	}
	return slotBases[0]
}

// acquireBackend returns b's backend ID, planning the backend's write when
// it is new, and counts one more list holding it.
func (t *Table) acquireBackend(b Backend, pl *plan) uint32 {
	ap := netip.AddrPortFrom(b.Addr, b.Port)
	ref, ok := t.backendIDs[ap]
	if !ok {
		ref = &backendRef{id: t.newBackendID()}
		pl.backendKeys = append(pl.backendKeys, ref.id)
		pl.backendVals = append(pl.backendVals, bpf.Backend{Addr: b.Addr.As16(), Port: b.Port})
		t.backendIDs[ap] = ref
		t.backendByID[ref.id] = ap
	}
	ref.refs++
	return ref.id
}

func (t *Table) newBackendID() uint32 {
	for {
		id := t.nextBackend
		t.nextBackend++
		if t.nextBackend == 0 {
			t.nextBackend = 1
		}
		if _, used := t.backendByID[id]; id != 0 && !used {
			return id
		}
	}
}

// releaseBackends counts one list fewer holding each of bs.
func (t *Table) releaseBackends(bs []Backend, pl *plan) {
	for _, b := range bs {
		ap := netip.AddrPortFrom(b.Addr, b.Port)
		if ref, ok := t.backendIDs[ap]; ok {
			ref.refs--
			pl.released = append(pl.released, ap)
		}
	}
}

// planStray plans the removal of what the kernel maps hold that no
// programmed service accounts for: what a previous process left. It runs
// once, on the first Sync; what this Table writes it deletes itself.
func (t *Table) planStray(pl *plan) error {
	if t.swept {
		return nil
	}
	pl.delFrontends = slices.AppendSeq(pl.delFrontends, maps.Keys(t.adopted))
	clear(t.adopted)
	clear(t.adoptedByID)
	clear(t.adoptedRanges)
	wantSlots := map[bpf.BackendSlotKey]bool{}
	wantRanges := map[bpf.SvcRangeKey]bool{}
	for _, p := range t.services {
		for i := range p.slots {
			wantSlots[bpf.BackendSlotKey{SvcID: p.id, Slot: p.base + uint32(i)}] = true
		}
		maps.Copy(wantRanges, p.ranges)
	}
	for _, k := range pl.delSlots {
		wantSlots[k] = true // deleted already
	}
	for _, k := range pl.delRanges {
		wantRanges[k] = true
	}
	var iterErr error
	for k := range t.slots.All(&iterErr) {
		if !wantSlots[k] {
			pl.delSlots = append(pl.delSlots, k)
		}
	}
	for k := range t.ranges.All(&iterErr) {
		if !wantRanges[k] {
			pl.delRanges = append(pl.delRanges, k)
		}
	}
	if iterErr != nil {
		return iterErr
	}
	for ap, ref := range t.backendIDs {
		if ref.refs == 0 {
			pl.released = append(pl.released, ap)
		}
	}
	t.swept = true
	return nil
}

// apply writes pl phase by phase. After an error the Table forgets what it
// programmed and adopts the maps' contents again, so that the next Sync
// starts from what the kernel holds.
func (t *Table) apply(pl *plan) error {
	err := t.write(pl)
	if err != nil {
		if rerr := t.readKernel(); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

func (t *Table) write(pl *plan) error {
	if err := update(t, t.backends, pl.backendKeys, pl.backendVals); err != nil {
		return fmt.Errorf("write backends: %w", err)
	}
	if err := update(t, t.slots, pl.slotKeys, pl.slotVals); err != nil {
		return fmt.Errorf("write backend slots: %w", err)
	}
	ones := make([]uint8, len(pl.rangeKeys))
	for i := range ones {
		ones[i] = 1
	}
	if err := update(t, t.ranges, pl.rangeKeys, ones); err != nil {
		return fmt.Errorf("write source ranges: %w", err)
	}
	if err := update(t, t.svcs, pl.frontendKeys, pl.frontendVals); err != nil {
		return fmt.Errorf("write frontends: %w", err)
	}
	if err := remove(t, t.svcs, pl.delFrontends); err != nil {
		return fmt.Errorf("delete frontends: %w", err)
	}
	if err := remove(t, t.slots, pl.delSlots); err != nil {
		return fmt.Errorf("delete backend slots: %w", err)
	}
	if err := remove(t, t.ranges, pl.delRanges); err != nil {
		return fmt.Errorf("delete source ranges: %w", err)
	}
	var gone []uint32
	for _, ap := range pl.released {
		if ref, ok := t.backendIDs[ap]; ok && ref.refs == 0 {
			gone = append(gone, ref.id)
			delete(t.backendIDs, ap)
			delete(t.backendByID, ref.id)
		}
	}
	if err := remove(t, t.backends, gone); err != nil {
		return fmt.Errorf("delete backends: %w", err)
	}
	return nil
}

// update writes keys and values in one batch, or one by one with the
// test hook after each when it is set.
func update[K, V any](t *Table, m *sluicemaps.Map[K, V], keys []K, vals []V) error {
	if t.afterWrite == nil {
		_, err := m.BatchUpdate(keys, vals, ebpf.UpdateAny)
		return err
	}
	for i := range keys {
		if err := m.Update(keys[i], vals[i], ebpf.UpdateAny); err != nil {
			return err
		}
		t.afterWrite()
	}
	return nil
}

// remove deletes keys in batches, passing over keys that are gone, or one
// by one with the test hook after each when it is set.
func remove[K, V any](t *Table, m *sluicemaps.Map[K, V], keys []K) error {
	if t.afterWrite != nil {
		for _, k := range keys {
			err := m.Delete(k)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			t.afterWrite()
		}
		return nil
	}
	for len(keys) > 0 {
		n, err := m.BatchDelete(keys)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) || n >= len(keys) {
			return err
		}
		keys = keys[n+1:]
	}
	return nil
}

// equalServices reports whether a and b program the same entries.
func equalServices(a, b Service) bool {
	return slices.Equal(a.Frontends, b.Frontends) && slices.Equal(a.Backends, b.Backends) &&
		a.ExternalLocal == b.ExternalLocal && a.InternalLocal == b.InternalLocal && a.Affinity == b.Affinity &&
		a.Maglev == b.Maglev && slices.Equal(a.SourceRanges, b.SourceRanges)
}

func cloneService(s Service) Service {
	s.Frontends = slices.Clone(s.Frontends)
	s.Backends = slices.Clone(s.Backends)
	s.SourceRanges = slices.Clone(s.SourceRanges)
	return s
}
