package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
)

// Members and Maglev tables follow a service's list. A member names a
// backend of the list and says whether it is serving and local, so that the
// datapath can tell whether a client's affinity still fits the group a new
// flow would be given; a Maglev table, keyed by the list's slot base, maps
// a flow's hash to one of the list's serving backends. Both are written in
// the phase of the new list's slots, before any frontend flips to it, and
// what only the old list used is deleted after the old slots.

// memberFlags is the sl_members value of backend b.
func memberFlags(b Backend) bpf.LBMemberFlags {
	var f bpf.LBMemberFlags
	if !b.Terminating {
		f |= bpf.LBMemberServing
	}
	if b.Local {
		f |= bpf.LBMemberLocal
	}
	return f
}

// sameSlots reports whether lists a and b put the same backends in the
// same slots with the same standing; weights live in Maglev tables, not
// in slots.
func sameSlots(a, b []Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Addr != b[i].Addr || a[i].Port != b[i].Port || a[i].Local != b[i].Local || a[i].Terminating != b[i].Terminating {
			return false
		}
	}
	return true
}

// planMembers plans p's members: those of its list that the maps lack or
// hold with other flags are written with the list, and those of old that
// p's list no longer holds are deleted after the flip. Only the datapath's
// affinity check reads members, so a service without affinity has none:
// a third of the entries of a typical service it need not write. One that
// gains affinity gets them with its list, before its frontends carry the
// flag; one that loses it keeps them until its frontends no longer do.
func (t *Table) planMembers(old, p *programmed, pl *plan) {
	p.members = nil
	if p.svc.Affinity > 0 {
		p.members = make(map[uint32]bpf.LBMemberFlags, len(p.ordered))
		ids := p.lists[0].ids
		for i, b := range p.ordered {
			f := memberFlags(b)
			p.members[ids[i]] = f
			if old != nil {
				if of, ok := old.members[ids[i]]; ok && of == f {
					continue
				}
			}
			pl.memberKeys = append(pl.memberKeys, bpf.LBMemberKey{SvcID: p.id, BackendID: ids[i]})
			pl.memberVals = append(pl.memberVals, bpf.LBMember{Flags: f})
		}
	}
	if old == nil {
		return
	}
	for bid := range old.members {
		if _, ok := p.members[bid]; !ok {
			pl.delMembers = append(pl.delMembers, bpf.LBMemberKey{SvcID: p.id, BackendID: bid})
		}
	}
}

// maglevBackends returns the input of a Maglev service's table: its
// serving backends in list order (the first ones of ordered), keyed by
// address and port, weighted (0 counts as 1).
func maglevBackends(ordered []Backend) []MaglevBackend {
	var out []MaglevBackend
	for _, b := range ordered {
		if b.Terminating {
			break
		}
		out = append(out, MaglevBackend{Key: netip.AddrPortFrom(b.Addr, b.Port).String(), Weight: uint32(max(b.Weight, 1))})
	}
	return out
}

// maglevPrint identifies the table of list ids with backends ordered: the
// serving backends' IDs and weights, which are all the table depends on
// (a backend keeps its ID while a list holds it). It is "" without a
// serving backend.
func maglevPrint(ordered []Backend, ids []uint32) string {
	var sb strings.Builder
	for i, b := range ordered {
		if b.Terminating {
			break
		}
		sb.WriteString(strconv.FormatUint(uint64(ids[i]), 10))
		sb.WriteByte('/')
		sb.WriteString(strconv.FormatUint(uint64(max(b.Weight, 1)), 10))
		sb.WriteByte(' ')
	}
	return sb.String()
}

// maglevTable builds the sl_maglev value of list ids with backends
// ordered, which has a serving backend.
func maglevTable(ordered []Backend, ids []uint32) (bpf.MaglevTable, error) {
	var tbl bpf.MaglevTable
	idx, err := Maglev(maglevBackends(ordered), maglevSize)
	if err != nil {
		return tbl, fmt.Errorf("%w: %w", ErrInvalidService, err)
	}
	for i, j := range idx {
		tbl.BackendIds[i] = ids[j]
	}
	return tbl, nil
}

// maglevKept reports whether old's one list can stay for a Maglev service
// whose backends are ordered: unless the maps hold a table for it built
// from other weights. An adopted table is compared with the one the list
// needs, and recorded as known when they agree.
func (t *Table) maglevKept(old *programmed, ordered []Backend) (bool, error) {
	l := old.lists[0]
	want := maglevPrint(ordered, l.ids)
	have, ok := old.maglev[l.base]
	switch {
	case want == "" || !ok || have == want:
		// No table is needed, or one is to be made, or it is the one.
		return true, nil
	case have != "":
		return false, nil
	}
	tbl, err := maglevTable(ordered, l.ids)
	if err != nil {
		return false, err
	}
	got, err := t.maglev.Lookup(bpf.MaglevKey{SvcID: old.id, SlotBase: l.base})
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		delete(old.maglev, l.base)
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read maglev table: %w", err)
	}
	if got != tbl {
		return false, nil
	}
	old.maglev[l.base] = want
	return true, nil
}

// planMaglev plans p's Maglev table: for a Maglev service with a serving
// backend, the table of its list, written with the list unless the maps
// hold it already; old's other tables are deleted after the flip.
func (t *Table) planMaglev(old, p *programmed, pl *plan) error {
	p.maglev = nil // most services have no table
	l := p.lists[0]
	var want string
	if p.svc.Maglev {
		want = maglevPrint(p.ordered, l.ids)
	}
	if want != "" {
		p.maglev = map[uint32]string{l.base: want}
		if old == nil || old.maglev[l.base] != want {
			tbl, err := maglevTable(p.ordered, l.ids)
			if err != nil {
				return err
			}
			pl.maglevKeys = append(pl.maglevKeys, bpf.MaglevKey{SvcID: p.id, SlotBase: l.base})
			pl.maglevVals = append(pl.maglevVals, tbl)
		}
	}
	if old == nil {
		return nil
	}
	for base := range old.maglev {
		if _, ok := p.maglev[base]; !ok {
			pl.delMaglev = append(pl.delMaglev, bpf.MaglevKey{SvcID: p.id, SlotBase: base})
		}
	}
	return nil
}

// maglevKeys returns the keys of sl_maglev, without reading its 64 KiB
// values.
func (t *Table) maglevKeys() ([]bpf.MaglevKey, error) {
	var keys []bpf.MaglevKey
	m := t.maglev.EBPF()
	var k bpf.MaglevKey
	err := m.NextKey(nil, &k)
	for err == nil {
		keys = append(keys, k)
		err = m.NextKey(k, &k)
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("list maglev tables: %w", err)
	}
	return keys, nil
}

// planStrayMembers plans the removal of the members and Maglev tables no
// programmed service accounts for, as planStray does slots: before the
// frontends for service IDs no frontend used when the Sync began (not in
// liveIDs), after them for the others.
func (t *Table) planStrayMembers(pl *plan, liveIDs map[uint32]bool) error {
	clear(t.adoptedMembers)
	clear(t.adoptedMaglev)
	wantMembers := map[bpf.LBMemberKey]bool{}
	wantMaglev := map[bpf.MaglevKey]bool{}
	for _, p := range t.services {
		for bid := range p.members {
			wantMembers[bpf.LBMemberKey{SvcID: p.id, BackendID: bid}] = true
		}
		for base := range p.maglev {
			wantMaglev[bpf.MaglevKey{SvcID: p.id, SlotBase: base}] = true
		}
	}
	for _, k := range pl.delMembers {
		wantMembers[k] = true // deleted already
	}
	for _, k := range pl.delMaglev {
		wantMaglev[k] = true
	}
	var iterErr error
	for k := range t.members.All(&iterErr) {
		switch {
		case wantMembers[k]:
		case liveIDs[k.SvcID]:
			pl.delMembers = append(pl.delMembers, k)
		default:
			pl.preMembers = append(pl.preMembers, k)
		}
	}
	if iterErr != nil {
		return iterErr
	}
	keys, err := t.maglevKeys()
	if err != nil {
		return err
	}
	for _, k := range keys {
		switch {
		case wantMaglev[k]:
		case liveIDs[k.SvcID]:
			pl.delMaglev = append(pl.delMaglev, k)
		default:
			pl.preMaglev = append(pl.preMaglev, k)
		}
	}
	return nil
}
