package ipsets

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
)

// memberPool are the set IDs of TestMembershipDifferential: several share
// a slot (id % MemberSlots), so that shared slots and their fallback to
// the set's own lookup are exercised.
var memberPool = []uint64{1, 2, 33, 65, 3, 1<<40 | 2, NameID("a"), NameID("b")}

// TestMembershipDifferential holds the membership map's lookups (Lookup:
// the generation in use, the longest match, the slot, the fallback of a
// shared slot) to Members on random overlapping sets of both families,
// after each of a series of live changes: whole Syncs, and single Adds and
// Removes.
func TestMembershipDifferential(t *testing.T) {
	m := newTestMap(t, 4096)
	g := newRandomSets(2)
	draw := func() Members {
		out := Members{}
		for _, id := range memberPool {
			var s Set
			for j := g.r.IntN(5); j > 0; j-- {
				s.Nets = append(s.Nets, g.prefix())
			}
			for j := g.r.IntN(4); j > 0; j-- {
				s.NamedPorts = append(s.NamedPorts, NamedPort{Addr: g.addr(), Protocol: []uint8{6, 17}[g.r.IntN(2)], Port: uint16(g.r.IntN(3))})
			}
			out[id] = s
		}
		return out
	}
	sets := Members{}
	checked, hits, shared := 0, 0, 0
	for round := 0; round < 60; round++ {
		switch round % 3 {
		case 0:
			sets = draw()
			if _, err := m.Sync(sets); err != nil {
				t.Fatal(err)
			}
		case 1:
			id := memberPool[g.r.IntN(len(memberPool))]
			mem := Member{Net: g.prefix()}
			if g.r.IntN(2) == 0 {
				mem = Member{NamedPort: NamedPort{Addr: g.addr(), Protocol: 6, Port: uint16(g.r.IntN(3))}}
			}
			if err := m.Add(id, mem); err != nil {
				t.Fatal(err)
			}
			sets = maps.Clone(sets)
			s := sets[id]
			if mem.IsNamedPort() {
				s.NamedPorts = append(slices.Clone(s.NamedPorts), mem.NamedPort)
			} else {
				s.Nets = append(slices.Clone(s.Nets), mem.Net)
			}
			sets[id] = s
		case 2:
			id := memberPool[g.r.IntN(len(memberPool))]
			s := sets[id]
			if len(s.Nets) == 0 {
				continue
			}
			p := s.Nets[g.r.IntN(len(s.Nets))]
			if err := m.Remove(id, Member{Net: p}); err != nil {
				t.Fatal(err)
			}
			sets = maps.Clone(sets)
			s.Nets = slices.DeleteFunc(slices.Clone(s.Nets), func(q netip.Prefix) bool { return q == p })
			sets[id] = s
		}
		for i := 0; i < 400; i++ {
			id := memberPool[g.r.IntN(len(memberPool))]
			addr := g.addr()
			proto, port := uint8(0), uint16(0)
			want := sets.ContainsAddr(id, addr)
			if g.r.IntN(2) == 0 {
				proto, port = []uint8{6, 17}[g.r.IntN(2)], uint16(g.r.IntN(3))
				want = sets.ContainsNamedPort(id, addr, proto, port)
			}
			got, err := m.Lookup(id, addr, proto, port)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("round %d: set %d %+v, membership lookup of %s proto %d port %d: kernel %v, Members %v",
					round, id, sets[id], addr, proto, port, got, want)
			}
			checked++
			if got {
				hits++
			}
			cur, _ := m.gen.Lookup(0)
			if v, err := m.members.Lookup(MemberLookupKey(cur, addr, proto, port)); err == nil && v.Shared != 0 {
				shared++
			}
		}
	}
	if hits < checked/10 || hits > checked*9/10 {
		t.Errorf("%d of %d lookups hit: the pools do not exercise both answers", hits, checked)
	}
	if shared < checked/20 {
		t.Errorf("%d of %d lookups found a shared slot: the fallback is not exercised", shared, checked)
	}
}

// TestSlotValue checks how sets fall into slots.
func TestSlotValue(t *testing.T) {
	v := slotValue([]uint64{1, 33, 2, 65, 4})
	if v.Member != 1<<2|1<<4 || v.Shared != 1<<1 || v.Ids[2] != 2 || v.Ids[4] != 4 || v.Ids[1] != 0 {
		t.Errorf("slotValue: %+v", v)
	}
	ask := func(id uint64) (bool, error) { return id == 33, nil }
	for _, c := range []struct {
		id   uint64
		want bool
	}{{1, false}, {33, true}, {2, true}, {34, false}, {4, true}, {5, false}} {
		if got, _ := inMemberValue(&v, c.id, ask); got != c.want {
			t.Errorf("inMemberValue(%d) = %v, want %v", c.id, got, c.want)
		}
	}
	if got, _ := inMemberValue(nil, 2, ask); got {
		t.Error("inMemberValue(nil) found a member")
	}
}
