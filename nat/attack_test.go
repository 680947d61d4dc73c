package nat

import (
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
)

// Attack tests from the review of the load-balancing Table. Each one
// states the property it holds the Table to; a failure is a finding.

func oneFrontendService(fe string, port uint16, backends ...string) Service {
	s := Service{Frontends: []Frontend{{Addr: addr(fe), Port: port, Protocol: ProtoTCP}}}
	for _, b := range backends {
		s.Backends = append(s.Backends, Backend{Addr: addr(b), Port: 8080})
	}
	return s
}

// TestAttackSyncMovesFrontendBetweenKeptServices: one Sync moves a
// frontend from service "a" to service "b", both of which stay. The maps
// must then hold the frontend, leading to b's backends.
func TestAttackSyncMovesFrontendBetweenKeptServices(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	a := oneFrontendService("10.96.0.1", 80, "10.1.0.1")
	a.Frontends = append(a.Frontends, Frontend{Addr: addr("10.96.0.2"), Port: 80, Protocol: ProtoTCP})
	b := oneFrontendService("10.96.0.3", 80, "10.1.0.2")
	if err := tb.Sync(map[string]Service{"a": a, "b": b}); err != nil {
		t.Fatal(err)
	}
	moved := a.Frontends[1]
	a2 := a
	a2.Frontends = a.Frontends[:1]
	b2 := b
	b2.Frontends = append([]Frontend{moved}, b.Frontends...)
	want := map[string]Service{"a": a2, "b": b2}
	if err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Errorf("after moving %v from a to b: %v", moved.Addr, err)
	}
}

// TestAttackSyncRename: one Sync replaces service "old" by "new" with the
// same frontends (a rename). The frontends must stay in the maps.
func TestAttackSyncRename(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1")
	if err := tb.Sync(map[string]Service{"old": s}); err != nil {
		t.Fatal(err)
	}
	live := s.Frontends[0].key()
	tb.afterWrite = func() {
		if got, ok := readKernel(t, tb).backendsOf(live); !ok || len(got) == 0 {
			t.Errorf("live frontend missing or empty mid-rename: %v", got)
			tb.afterWrite = func() {}
		}
	}
	want := map[string]Service{"new": s}
	if err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	tb.afterWrite = nil
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Errorf("after the rename: %v", err)
	}
}

// TestAttackSyncMoveOrderDependent: "z" gives a frontend to "a" in one
// Sync; "a" sorts first, so its upsert sees the frontend still owned by
// "z". A valid desired state must not be refused.
func TestAttackSyncMoveOrderDependent(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	z := oneFrontendService("10.96.0.1", 80, "10.1.0.1")
	z.Frontends = append(z.Frontends, Frontend{Addr: addr("10.96.0.2"), Port: 80, Protocol: ProtoTCP})
	a := oneFrontendService("10.96.0.3", 80, "10.1.0.2")
	if err := tb.Sync(map[string]Service{"a": a, "z": z}); err != nil {
		t.Fatal(err)
	}
	a2 := a
	a2.Frontends = append([]Frontend{z.Frontends[1]}, a.Frontends...)
	z2 := z
	z2.Frontends = z.Frontends[:1]
	want := map[string]Service{"a": a2, "z": z2}
	if err := tb.Sync(want); err != nil {
		t.Fatalf("Sync of a valid state: %v", err)
	}
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Error(err)
	}
}

// TestAttackAdoptSplitID: a previous process left one service ID under
// two frontends; after the restart two desired services claim one each.
// Sync must leave both frontends in the maps.
func TestAttackAdoptSplitID(t *testing.T) {
	m := newTestMaps(t)
	prev, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1")
	s.Frontends = append(s.Frontends, Frontend{Addr: addr("10.96.0.2"), Port: 80, Protocol: ProtoTCP})
	if err := prev.Upsert("both", s); err != nil {
		t.Fatal(err)
	}
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	one := s
	one.Frontends = s.Frontends[:1]
	two := s
	two.Frontends = s.Frontends[1:]
	want := map[string]Service{"one": one, "two": two}
	if err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Errorf("after splitting an adopted ID: %v", err)
	}
}

// TestAttackAdoptedSharedBackend: after a restart, before any Sync, the
// agent upserts service "a" without a backend that "a" shared with "b";
// "b" is still the previous process's and still live. Its list must not
// be left naming a deleted backend.
func TestAttackAdoptedSharedBackend(t *testing.T) {
	m := newTestMaps(t)
	prev, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	a := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2")
	b := oneFrontendService("10.96.0.2", 80, "10.1.0.1")
	if err := prev.Sync(map[string]Service{"a": a, "b": b}); err != nil {
		t.Fatal(err)
	}
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	tb.afterWrite = func() {
		if err := readKernel(t, tb).checkWhole(); err != nil {
			t.Errorf("mid-upsert: %v", err)
			tb.afterWrite = func() {}
		}
	}
	a2 := oneFrontendService("10.96.0.1", 80, "10.1.0.2")
	if err := tb.Upsert("a", a2); err != nil {
		t.Fatal(err)
	}
	tb.afterWrite = nil
	if err := readKernel(t, tb).checkWhole(); err != nil {
		t.Errorf("after the upsert, adopted service b: %v", err)
	}
}

// TestAttackStrayRangesOfReusedID: a previous process crashed in a Delete
// after the frontend went and before the source ranges did. A new service
// given that ID must not inherit the stray range (it would admit clients
// its own loadBalancerSourceRanges exclude).
func TestAttackStrayRangesOfReusedID(t *testing.T) {
	m := newTestMaps(t)
	if err := m.Ranges.Put(rangeKey(1, netip.MustParsePrefix("0.0.0.0/0")), uint8(1)); err != nil {
		t.Fatal(err)
	}
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1")
	s.Frontends[0].External = true
	s.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}
	if err := tb.Upsert("lb", s); err != nil {
		t.Fatal(err)
	}
	ks := readKernel(t, tb)
	id := ks.svcs[s.Frontends[0].key()].ID
	for k := range ks.ranges {
		if k.SvcID == id && k != rangeKey(id, s.SourceRanges[0]) {
			t.Errorf("service %d has a source range it was not given: %+v", id, k)
		}
	}
}

// TestAttackAdoptSplitBases: a previous process died while flipping a
// service's frontends: one frontend is on base 0, the other on base
// 1<<16, each with a whole list. An Upsert with a new list must not
// rewrite a list a frontend uses in place: at every instant each
// frontend leads to its list before or its list after.
func TestAttackAdoptSplitBases(t *testing.T) {
	m := newTestMaps(t)
	prev, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2")
	s.Frontends = append(s.Frontends, Frontend{Addr: addr("10.96.0.2"), Port: 80, Protocol: ProtoTCP})
	if err := prev.Upsert("s", s); err != nil {
		t.Fatal(err)
	}
	mid := oneFrontendService("10.96.0.1", 80, "10.1.0.3", "10.1.0.4")
	mid.Frontends = s.Frontends
	// Write the new list and flip only the second frontend: the state
	// a crash between the two frontend updates leaves.
	prev.afterWrite = func() {}
	var pl plan
	if err := prev.upsert("s", mid, &pl, nil); err != nil {
		t.Fatal(err)
	}
	pl.frontendKeys, pl.frontendVals = pl.frontendKeys[1:], pl.frontendVals[1:]
	pl.delFrontends, pl.delSlots, pl.delRanges, pl.released = nil, nil, nil, nil
	if err := prev.write(&pl); err != nil {
		t.Fatal(err)
	}
	before := readKernel(t, prev)
	f0, f1 := s.Frontends[0].key(), s.Frontends[1].key()
	if before.svcs[f0].SlotBase == before.svcs[f1].SlotBase {
		t.Fatal("setup: frontends on one base")
	}
	was := map[bpf.SvcKey]string{}
	for _, k := range []bpf.SvcKey{f0, f1} {
		got, _ := before.backendsOf(k)
		was[k] = netipList(got)
	}

	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	next := oneFrontendService("10.96.0.1", 80, "10.1.0.5", "10.1.0.6")
	next.Frontends = s.Frontends
	var after string
	for _, b := range next.ordered() {
		after += netip.AddrPortFrom(b.Addr, b.Port).String() + " "
	}
	tb.afterWrite = func() {
		ks := readKernel(t, tb)
		for _, k := range []bpf.SvcKey{f0, f1} {
			got, _ := ks.backendsOf(k)
			if l := netipList(got); l != was[k] && l != after {
				t.Errorf("frontend %v leads to %q: neither its list before (%q) nor after (%q)",
					netip.AddrFrom16(k.Addr).Unmap(), l, was[k], after)
				tb.afterWrite = func() {}
			}
		}
	}
	if err := tb.Upsert("s", next); err != nil {
		t.Fatal(err)
	}
}

func netipList(aps []netip.AddrPort) string {
	var s string
	for _, ap := range aps {
		s += ap.String() + " "
	}
	return s
}
