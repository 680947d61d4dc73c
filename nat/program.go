package nat

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
)

// A plan is the kernel writes of one Upsert, Delete or Sync, applied
// phase by phase so that every service's change is make-before-break
// (see Table): first what no frontend uses (a previous process's leftovers,
// which frees room), then new backends, the members, slots and Maglev
// tables of the new lists, new ranges, frontends; then the deletions of
// frontends, slots, ranges, members, Maglev tables and, last, the backends
// no slot names any more.
type plan struct {
	preSlots    []bpf.BackendSlotKey
	preRanges   []bpf.SvcRangeKey
	preMembers  []bpf.LBMemberKey
	preMaglev   []bpf.MaglevKey
	preBackends []uint32

	entries
	frontendKeys []bpf.SvcKey
	frontendVals []bpf.Svc

	delFrontends []bpf.SvcKey
	delSlots     []bpf.BackendSlotKey
	delRanges    []bpf.SvcRangeKey
	delMembers   []bpf.LBMemberKey
	delMaglev    []bpf.MaglevKey
	// released are backends a deleted slot named; those no slot names
	// when the plan is applied are deleted.
	released []bpf.Backend
	// releasedAliases are second IDs of backends (Table.aliases) no slot
	// names any more, retired with the backends.
	releasedAliases []uint32
	// sweepAffinity: the plan deletes a service that has or had
	// affinity, or sweeps what a previous process left, so that client
	// affinities of IDs no frontend holds are deleted last
	// (sweepAffinity).
	sweepAffinity bool
}

// entries are the new backends, members, slots, Maglev tables and ranges
// of a plan: what no frontend reaches before the plan's frontends are
// written, but ranges, which only admit clients.
type entries struct {
	backendKeys []uint32
	backendVals []bpf.Backend
	slotKeys    []bpf.BackendSlotKey
	slotVals    []uint32
	memberKeys  []bpf.LBMemberKey
	memberVals  []bpf.LBMember
	maglevKeys  []bpf.MaglevKey
	maglevVals  []bpf.MaglevTable
	rangeKeys   []bpf.SvcRangeKey
}

// len is the number of entries in e, Maglev tables counting for 64 (their
// size in KiB).
func (e *entries) len() int {
	return len(e.backendKeys) + len(e.slotKeys) + len(e.memberKeys) + 64*len(e.maglevKeys) + len(e.rangeKeys)
}

// grow makes room in e for the lists of n more backends.
func (e *entries) grow(n int) {
	e.backendKeys = slices.Grow(e.backendKeys, n)
	e.backendVals = slices.Grow(e.backendVals, n)
	e.slotKeys = slices.Grow(e.slotKeys, n)
	e.slotVals = slices.Grow(e.slotVals, n)
	e.memberKeys = slices.Grow(e.memberKeys, n)
	e.memberVals = slices.Grow(e.memberVals, n)
}

// upsert plans name as s, which has been validated. owners, in a Sync,
// are the frontends' owners when it is done: a frontend another service
// holds now may come to name.
func (t *Table) upsert(name string, s Service, pl *plan, owners map[bpf.SvcKey]string) error {
	// The Table keeps s, in slices of its own, and its list in slot
	// order: one allocation holds both backend slices (full slice
	// expressions, so that neither grows into the other).
	n := len(s.Backends)
	buf := make([]Backend, 2*n)
	ordered := s.orderedTo(buf[n : n : 2*n])
	s.Backends = append(buf[:0:n], s.Backends...)
	s.Frontends = slices.Clone(s.Frontends)
	s.SourceRanges = slices.Clone(s.SourceRanges)
	for _, f := range s.Frontends {
		k := f.key()
		if owner, ok := t.frontends[k]; ok && owner != name && owners[k] != name {
			return fmt.Errorf("%w: frontend %v port %d belongs to service %q", ErrInvalidService, f.Addr, f.Port, owner)
		}
	}
	old := t.services[name]
	if old == nil {
		var err error
		if old, err = t.adopt(s); err != nil {
			return err
		}
	}
	var id uint32
	if old != nil {
		id = old.id
	} else {
		id = t.newServiceID()
	}
	sameList := old != nil && len(old.lists) == 1 && sameSlots(old.ordered, ordered) && !slices.Contains(old.lists[0].ids, 0)
	if sameList && s.Maglev {
		// A Maglev table a frontend may read is never rewritten in
		// place: new weights take a new list.
		var err error
		if sameList, err = t.maglevKept(old, ordered); err != nil {
			return err
		}
	}
	p := &programmed{svc: s, id: id, ordered: ordered, values: make([]frontendValue, 0, len(s.Frontends)),
		hadAffinity: s.Affinity > 0 || (old != nil && old.hadAffinity)}
	if len(s.SourceRanges) > 0 {
		p.ranges = make(map[bpf.SvcRangeKey]bool, len(s.SourceRanges))
	}
	if sameList {
		p.lists = old.lists
	} else {
		list := slotList{base: t.freeBase(old, id, len(ordered)), ids: make([]uint32, 0, len(ordered))}
		for i, b := range ordered {
			bid := t.acquireBackend(b, pl)
			list.ids = append(list.ids, bid)
			pl.slotKeys = append(pl.slotKeys, bpf.BackendSlotKey{SvcID: id, Slot: list.base + uint32(i)})
			pl.slotVals = append(pl.slotVals, bid)
		}
		p.lists = []slotList{list}
	}
	t.planMembers(old, p, pl)
	if err := t.planMaglev(old, p, pl); err != nil {
		return err
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
		v := s.value(f, id, p.lists[0].base)
		p.values = append(p.values, frontendValue{k, v})
		t.frontends[k] = name
		if old != nil {
			if ov, ok := old.value(k); ok && ov == v {
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
	for _, fv := range old.values {
		if _, ok := p.value(fv.key); !ok {
			t.dropFrontend(name, fv.key, pl)
		}
	}
	if !sameList {
		for _, l := range old.lists {
			t.deleteList(id, l, pl)
		}
	}
	for k := range old.ranges {
		if !p.ranges[k] {
			pl.delRanges = append(pl.delRanges, k)
		}
	}
	return nil
}

// slotBase is a service ID and the base of one of its lists: a multiple
// of 1<<16, above maxBackends.
type slotBase struct{ id, base uint32 }

// freeBase returns a slot base for a list of n backends of service id
// that no list of old uses (the other half of the slot space for a
// service with one list), where no retired slot waits (retire.go) and
// where the kernel held no slot of id when the Table last read it, until
// the first Sync swept them (kernelBases).
func (t *Table) freeBase(old *programmed, id uint32, n int) uint32 {
	for base := uint32(0); ; base += 1 << 16 {
		used := false
		if old != nil {
			for _, l := range old.lists {
				used = used || l.base == base
			}
		}
		used = used || t.kernelBases[slotBase{id, base}]
		for i := 0; i < n && !used && len(t.retiredSlots) > 0; i++ {
			used = t.retiredSlots[bpf.BackendSlotKey{SvcID: id, Slot: base + uint32(i)}]
		}
		if !used {
			return base
		}
	}
}

// dropFrontend plans the deletion of frontend k, which service name
// gives up; a service taking it over in the same plan keeps it (write).
func (t *Table) dropFrontend(name string, k bpf.SvcKey, pl *plan) {
	pl.delFrontends = append(pl.delFrontends, k)
	if t.frontends[k] == name {
		delete(t.frontends, k)
	}
}

// deleteList plans the deletion of list l of service id and lets go of
// its backends.
func (t *Table) deleteList(id uint32, l slotList, pl *plan) {
	for i, bid := range l.ids {
		pl.delSlots = append(pl.delSlots, bpf.BackendSlotKey{SvcID: id, Slot: l.base + uint32(i)})
		t.releaseBackend(bid, pl)
	}
}

// delete plans the removal of service name.
func (t *Table) delete(name string, pl *plan) {
	p, ok := t.services[name]
	if !ok {
		return
	}
	for _, fv := range p.values {
		t.dropFrontend(name, fv.key, pl)
	}
	for _, l := range p.lists {
		t.deleteList(p.id, l, pl)
	}
	for k := range p.ranges {
		pl.delRanges = append(pl.delRanges, k)
	}
	for bid := range p.members {
		pl.delMembers = append(pl.delMembers, bpf.LBMemberKey{SvcID: p.id, BackendID: bid})
	}
	for base := range p.maglev {
		pl.delMaglev = append(pl.delMaglev, bpf.MaglevKey{SvcID: p.id, SlotBase: base})
	}
	delete(t.services, name)
	delete(t.svcIDs, p.id)
	// Only a frontend with affinity records clients.
	pl.sweepAffinity = pl.sweepAffinity || p.hadAffinity
}

// adopt returns, as programmed, the service a previous process left
// in the maps under one of s's frontends, or nil: its ID, the lists its
// frontends are on, its frontends and its ranges.
func (t *Table) adopt(s Service) (*programmed, error) {
	for _, f := range s.Frontends {
		v, ok := t.adopted[f.key()]
		if !ok || v.ID == 0 {
			continue
		}
		if _, taken := t.svcIDs[v.ID]; taken {
			continue
		}
		p := &programmed{id: v.ID, ranges: map[bpf.SvcRangeKey]bool{}, hadAffinity: true,
			members: t.adoptedMembers[v.ID], maglev: map[uint32]string{}}
		if p.members == nil {
			p.members = map[uint32]bpf.LBMemberFlags{}
		}
		delete(t.adoptedMembers, v.ID)
		for _, base := range t.adoptedMaglev[v.ID] {
			p.maglev[base] = "" // content unknown: compared before it is kept
		}
		delete(t.adoptedMaglev, v.ID)
		for _, k := range t.adoptedByID[v.ID] {
			av, ok := t.adopted[k]
			if !ok {
				continue
			}
			p.values = append(p.values, frontendValue{k, av})
			delete(t.adopted, k)
			if err := t.adoptList(p, av); err != nil {
				return nil, err
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

// adoptList adds the list frontend value v is on to p, once per base. The
// first list found is p's ordered list, as far as its slots say.
func (t *Table) adoptList(p *programmed, v bpf.Svc) error {
	for _, l := range p.lists {
		if l.base == v.SlotBase {
			return nil
		}
	}
	l := slotList{base: v.SlotBase}
	var ordered []Backend
	for i := 0; i < int(v.Serving)+int(v.Terminating); i++ {
		bid, err := t.slots.Lookup(bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + uint32(i)})
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			bid = 0 // a hole: the list is rewritten
		} else if err != nil {
			return err
		}
		l.ids = append(l.ids, bid)
		b, ok := t.backendByID[bid]
		if !ok {
			continue
		}
		ap := backendAddr(b)
		serving := i < int(v.Serving)
		local := i < int(v.ServingLocal) || (!serving && i < int(v.Serving)+int(v.TerminatingLocal))
		ordered = append(ordered, Backend{Addr: ap.Addr(), Port: ap.Port(), Local: local, Terminating: !serving})
	}
	if len(p.lists) == 0 {
		p.ordered = ordered
	}
	p.lists = append(p.lists, l)
	return nil
}

// newServiceID returns a service ID no service, adopted frontend or
// leftover slot or range holds.
func (t *Table) newServiceID() uint32 {
	for {
		id := t.nextSvcID
		t.nextSvcID++
		if t.nextSvcID == 0 {
			t.nextSvcID = 1
		}
		_, taken := t.svcIDs[id]
		_, adopted := t.adoptedByID[id]
		if id != 0 && !taken && !adopted && !t.reserved[id] {
			return id
		}
	}
}

// backendOf is the sl_backends value of the backend at addr and port,
// which also keys Table.backendIDs: validated addresses are neither
// IPv4-mapped nor zoned, so the 16-byte form tells them apart.
func backendOf(addr netip.Addr, port uint16) bpf.Backend {
	return bpf.Backend{Addr: addr.As16(), Port: port}
}

// backendAddr is the address and port of sl_backends value b.
func backendAddr(b bpf.Backend) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), b.Port)
}

// acquireBackend returns b's backend ID, planning the backend's write when
// it is new, and counts one more slot naming it.
func (t *Table) acquireBackend(b Backend, pl *plan) uint32 {
	k := backendOf(b.Addr, b.Port)
	ref, ok := t.backendIDs[k]
	if id, retired := t.retiredByValue[k]; !ok && retired {
		// Retired and not deleted yet: the same entry serves again.
		delete(t.retiredByValue, k)
		delete(t.retiredIDs, id)
		ref, ok = backendRef{id: id}, true
		t.backendByID[id] = k
	}
	if !ok {
		ref = backendRef{id: t.newBackendID()}
		pl.backendKeys = append(pl.backendKeys, ref.id)
		pl.backendVals = append(pl.backendVals, k)
		t.backendByID[ref.id] = k
	}
	ref.refs++
	t.backendIDs[k] = ref
	return ref.id
}

func (t *Table) newBackendID() uint32 {
	for {
		id := t.nextBackend
		t.nextBackend++
		if t.nextBackend == 0 {
			t.nextBackend = 1
			t.backendsWrapped = true
		}
		if !t.backendsWrapped {
			return id
		}
		// A shadowed ID is in the maps until the first Sync deletes it.
		_, retired := t.retiredIDs[id]
		if _, used := t.backendByID[id]; id != 0 && !used && !retired && !slices.Contains(t.shadowed, id) {
			return id
		}
	}
}

// releaseBackend counts one slot fewer naming backend bid.
func (t *Table) releaseBackend(bid uint32, pl *plan) {
	k, ok := t.backendByID[bid]
	if !ok {
		return
	}
	ref := t.backendIDs[k]
	if ref.id != bid {
		// A second ID of the backend (readKernel), counted apart.
		if n, ok := t.aliases[bid]; ok {
			if n--; n > 0 {
				t.aliases[bid] = n
			} else {
				delete(t.aliases, bid)
				pl.releasedAliases = append(pl.releasedAliases, bid)
			}
		}
		return
	}
	ref.refs--
	t.backendIDs[k] = ref
	pl.released = append(pl.released, k)
}

// liveSlots returns the slots the kernel's frontends use now: the lists
// of the services this Table holds and of the adopted frontends.
func (t *Table) liveSlots() map[bpf.BackendSlotKey]bool {
	live := map[bpf.BackendSlotKey]bool{}
	for _, p := range t.services {
		for _, l := range p.lists {
			for i := range l.ids {
				live[bpf.BackendSlotKey{SvcID: p.id, Slot: l.base + uint32(i)}] = true
			}
		}
	}
	for _, v := range t.adopted {
		for i := uint32(0); i < uint32(v.Serving)+uint32(v.Terminating); i++ {
			live[bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + i}] = true
		}
	}
	return live
}

// planStray plans the removal of what the kernel maps hold that no
// programmed service accounts for: what a previous process left, or an
// apply that failed half-way. Entries no frontend used when the Sync began
// (live) go first, freeing room; the others after the frontends. It runs
// on the first Sync after NewTable or a failure; what this Table writes it
// deletes itself.
func (t *Table) planStray(pl *plan, live map[bpf.BackendSlotKey]bool) error {
	if t.swept {
		return nil
	}
	if t.clean {
		// Every entry is one this Table wrote and accounts for.
		t.swept = true
		return nil
	}
	liveIDs := map[uint32]bool{}
	for k := range live {
		liveIDs[k.SvcID] = true
	}
	for k := range t.adopted {
		pl.delFrontends = append(pl.delFrontends, k)
	}
	clear(t.adopted)
	clear(t.adoptedByID)
	clear(t.adoptedRanges)
	wantSlots := map[bpf.BackendSlotKey]bool{}
	wantRanges := map[bpf.SvcRangeKey]bool{}
	for _, p := range t.services {
		for _, l := range p.lists {
			for i := range l.ids {
				wantSlots[bpf.BackendSlotKey{SvcID: p.id, Slot: l.base + uint32(i)}] = true
			}
		}
		maps.Copy(wantRanges, p.ranges)
	}
	for _, k := range pl.delSlots {
		wantSlots[k] = true // deleted already
	}
	for _, k := range pl.delRanges {
		wantRanges[k] = true
	}
	liveBackends := map[uint32]bool{}
	var iterErr error
	for k, bid := range t.slots.All(&iterErr) {
		if live[k] {
			liveBackends[bid] = true
		}
		if wantSlots[k] || t.retiredSlots[k] {
			continue // planned, or retired with its backend released
		}
		if live[k] {
			pl.delSlots = append(pl.delSlots, k)
		} else {
			pl.preSlots = append(pl.preSlots, k)
		}
		t.releaseBackend(bid, pl)
	}
	for k := range t.ranges.All(&iterErr) {
		switch {
		case wantRanges[k]:
		case liveIDs[k.SvcID]:
			pl.delRanges = append(pl.delRanges, k)
		default:
			pl.preRanges = append(pl.preRanges, k)
		}
	}
	if err := t.planStrayMembers(pl, liveIDs); err != nil {
		return err
	}
	if iterErr != nil {
		return iterErr
	}
	// No slot names a shadowed ID (readKernel).
	pl.preBackends = append(pl.preBackends, t.shadowed...)
	t.shadowed = nil
	// Every slot the kernel holds is now a list's, retired, or deleted
	// by this plan.
	t.kernelBases = nil
	for k, ref := range t.backendIDs {
		if ref.refs == 0 && !liveBackends[ref.id] {
			pl.preBackends = append(pl.preBackends, ref.id)
			delete(t.backendIDs, k)
			delete(t.backendByID, ref.id)
		} else if ref.refs == 0 {
			pl.released = append(pl.released, k)
		}
	}
	clear(t.reserved)
	t.swept = true
	pl.sweepAffinity = true
	return nil
}

// equalServices reports whether a and b program the same entries. A Sync
// calls it for every service it is given, so it takes pointers and
// compares in loops of the concrete types: slices.Equal's generic
// comparison calls an equality function per element.
func equalServices(a, b *Service) bool {
	if a.ExternalLocal != b.ExternalLocal || a.InternalLocal != b.InternalLocal || a.Affinity != b.Affinity ||
		a.Maglev != b.Maglev || len(a.Frontends) != len(b.Frontends) || len(a.Backends) != len(b.Backends) ||
		len(a.SourceRanges) != len(b.SourceRanges) {
		return false
	}
	for i := range a.Frontends {
		if a.Frontends[i] != b.Frontends[i] {
			return false
		}
	}
	for i := range a.Backends {
		if a.Backends[i] != b.Backends[i] {
			return false
		}
	}
	for i := range a.SourceRanges {
		if a.SourceRanges[i] != b.SourceRanges[i] {
			return false
		}
	}
	return true
}
