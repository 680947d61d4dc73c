package nat

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// More attack tests of retire.go (attack3_retire_test.go has the guard).

// TestAttackRetireTwoNamedIDs: a previous process left one backend under
// two IDs, each named by a slot of a service no frontend holds. The
// first Sync of nothing must leave the maps empty: once no slot names
// either ID, neither stays.
func TestAttackRetireTwoNamedIDs(t *testing.T) {
	m := newTestMaps(t)
	seed, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	v := backendOf(addr("10.8.0.1"), 8080)
	for i, id := range []uint32{5, 7} {
		if err := seed.backends.Update(id, v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		if err := seed.slots.Update(bpf.BackendSlotKey{SvcID: 50 + uint32(i), Slot: 0}, id, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Sync(nil); err != nil {
		t.Fatal(err)
	}
	if err := tb.Sync(nil); err != nil {
		t.Fatal(err)
	}
	if ks := readKernel(t, tb); len(ks.slots)+len(ks.backends) != 0 {
		t.Errorf("after Syncs of nothing the maps hold slots %v and backends %v", ks.slots, ks.backends)
	}
}

// TestAttackRetireFullFrontendsMap: an Upsert that adds a frontend to a
// service and changes its list fails when the frontends map is full,
// after some of the service's frontends moved to the new list. The
// service's frontends stay live through the failure, the next Upsert
// (once there is room) and the Sync after it, no write breaks either
// rule, and the maps then hold exactly the service.
func TestAttackRetireFullFrontendsMap(t *testing.T) {
	m := newTestMaps(t)
	g := newRetireGuard(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	g.attach(tb)
	two := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2")
	two.Frontends = append(two.Frontends, Frontend{Addr: addr("10.96.0.2"), Port: 80, Protocol: ProtoTCP})
	if err := tb.Sync(map[string]Service{"a": two}); err != nil {
		t.Fatal(err)
	}
	g.live = map[bpf.SvcKey]bool{two.Frontends[0].key(): true, two.Frontends[1].key(): true}
	var junk []bpf.SvcKey
	for i := range int(m.Services.MaxEntries()) - len(two.Frontends) {
		k := bpf.SvcKey{Addr: netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}).As16(), Port: 1, Proto: uint8(ProtoTCP)}
		if err := tb.svcs.Update(k, bpf.Svc{ID: 1 << 20}, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		junk = append(junk, k)
	}
	three := oneFrontendService("10.96.0.1", 80, "10.1.0.3", "10.1.0.4")
	three.Frontends = append(append(three.Frontends, two.Frontends[1]), Frontend{Addr: addr("10.96.0.3"), Port: 80, Protocol: ProtoTCP})
	base := readKernel(t, tb).svcs[two.Frontends[0].key()].SlotBase
	if err := tb.Upsert("a", three); err == nil {
		t.Fatal("an Upsert of a new frontend into a full frontends map succeeded")
	}
	if ks := readKernel(t, tb); ks.svcs[two.Frontends[0].key()].SlotBase == base {
		t.Fatal("the failed Upsert moved no frontend: the test tests nothing")
	}
	for _, k := range junk {
		if err := tb.svcs.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
	three.Backends = append(three.Backends, Backend{Addr: addr("10.1.0.5"), Port: 8080})
	if err := tb.Upsert("a", three); err != nil {
		t.Fatal(err)
	}
	want := map[string]Service{"a": three}
	if err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	g.report("full frontends map")
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Error(err)
	}
}

// TestAttackRetireRandomRestarts: the random services of
// TestMakeBeforeBreak (shared backends, Maglev, affinity, ranges),
// changed by Syncs, Upserts, Deletes and Applies back to back, mostly
// without a settle in between, and a restart every few steps whose first
// operation is at times an Upsert before its first Sync. No write may
// break either rule or leave a hole, and after each Sync and a settle
// the maps hold exactly the services.
func TestAttackRetireRandomRestarts(t *testing.T) {
	m := newTestMaps(t)
	g := newRetireGuard(t)
	r := rand.New(rand.NewPCG(77, 3))
	var tb *Table
	desired := map[string]Service{}
	for step := range 90 {
		next := randomServices(r)
		var err error
		if step%9 == 0 {
			if tb, err = NewTable(m); err != nil {
				t.Fatal(err)
			}
			g.attach(tb)
			if s, ok := next["svc-1"]; ok && r.IntN(2) == 0 {
				if _, held := desired["svc-1"]; held || len(desired) == 0 {
					if err := tb.Upsert("svc-1", s); err != nil {
						t.Fatalf("step %d: Upsert before the first Sync: %v", step, err)
					}
				}
			}
			err = tb.Sync(next)
			desired = next
		} else {
			switch r.IntN(3) {
			case 0:
				err = tb.Sync(next)
				desired = next
			case 1:
				if s, ok := next["svc-1"]; ok {
					err = tb.Upsert("svc-1", s)
					desired["svc-1"] = s
				} else {
					err = tb.Delete("svc-1")
					delete(desired, "svc-1")
				}
			default:
				var deletes []string
				for name := range desired {
					if _, ok := next[name]; !ok {
						deletes = append(deletes, name)
					}
				}
				err = tb.Apply(next, deletes)
				desired = next
			}
		}
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		g.report(fmt.Sprintf("step %d", step))
		if step%4 == 3 {
			if err := readKernel(t, tb).checkExact(t, desired); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		}
	}
	if g.deletes == 0 {
		t.Error("no slot or backend was deleted")
	}
}

// TestAttackRetireAliasOnLiveList: a previous process left a service
// whose list names one ID of a backend, and a stray slot naming another
// ID of the same backend. The new Table's Syncs change the service's
// list off the backend and back, checked on every write: the frontend
// stays live, neither rule breaks, and each Sync leaves exactly the
// service.
func TestAttackRetireAliasOnLiveList(t *testing.T) {
	m := newTestMaps(t)
	seed, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	v := oneFrontendService("10.96.0.1", 80, "10.1.0.1")
	if err := seed.Upsert("x", v); err != nil {
		t.Fatal(err)
	}
	id, _ := seed.BackendID(netip.MustParseAddrPort("10.1.0.1:8080"))
	if err := seed.backends.Update(id+10, backendOf(addr("10.1.0.1"), 8080), ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if err := seed.slots.Update(bpf.BackendSlotKey{SvcID: 61, Slot: 0}, id+10, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	g := newRetireGuard(t)
	g.attach(tb)
	g.live = map[bpf.SvcKey]bool{v.Frontends[0].key(): true}
	for i, s := range []Service{
		oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2"),
		oneFrontendService("10.96.0.1", 80, "10.1.0.2"),
		oneFrontendService("10.96.0.1", 80, "10.1.0.1"),
	} {
		want := map[string]Service{"a": s}
		if err := tb.Sync(want); err != nil {
			t.Fatal(err)
		}
		g.report(fmt.Sprintf("Sync %d", i))
		if err := readKernel(t, tb).checkExact(t, want); err != nil {
			t.Fatalf("Sync %d: %v", i, err)
		}
	}
}

// TestAttackRetireBackToBackSmallMaps: back-to-back Applies, each of
// which gives every service a new list and deals the frontends among the
// services anew, over slots and backends maps with room for two
// generations of lists but not three, checked on every write: the
// settling that makes room breaks neither rule and leaves no hole, and
// every Apply succeeds.
func TestAttackRetireBackToBackSmallMaps(t *testing.T) {
	testutil.RequirePrivileged(t)
	m := newTestMaps(t)
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	for _, mm := range []struct {
		name string
		into **ebpf.Map
	}{{bpf.MapBackendSlots, &m.Slots}, {bpf.MapBackends, &m.Backends}} {
		ms := spec.Maps[mm.name].Copy()
		ms.MaxEntries = 64
		small, err := ebpf.NewMap(ms)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { small.Close() })
		*mm.into = small
	}
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	g := newRetireGuard(t)
	g.attach(tb)
	const services, perService = 3, 10 // 30 slots and backends a generation; the maps hold 64
	gen := func(n int) map[string]Service {
		out := map[string]Service{}
		for i := range services {
			// Frontend j is service (j+n)%services's: each
			// generation moves every frontend to another service.
			s := Service{}
			for j := range services {
				if (j+n)%services == i {
					s.Frontends = append(s.Frontends, Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, 0, byte(1 + j)}), Port: 80, Protocol: ProtoTCP})
				}
			}
			for j := range perService {
				s.Backends = append(s.Backends, Backend{Addr: netip.AddrFrom4([4]byte{10, byte(n), byte(i), byte(j)}), Port: 8080})
			}
			out[fmt.Sprintf("svc-%d", i)] = s
		}
		return out
	}
	for n := range 6 {
		if err := tb.Apply(gen(n), nil); err != nil {
			t.Fatalf("Apply of generation %d, right after the previous one: %v", n, err)
		}
		if n == 0 {
			g.live = map[bpf.SvcKey]bool{}
			for _, s := range gen(0) {
				g.live[s.Frontends[0].key()] = true
			}
		}
		g.report(fmt.Sprintf("generation %d", n))
	}
	if err := readKernel(t, tb).checkExact(t, gen(5)); err != nil {
		t.Fatal(err)
	}
}
