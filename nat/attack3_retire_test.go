package nat

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
)

// Attack tests from the review of the retirement of preallocated slots
// and backends (retire.go). Each one states the property it holds the
// Table to; a failure is a finding.

// retireGuard checks, on every kernel write of the Tables it is attached
// to (over the same maps, one after another: a restart), the two rules of
// the preallocated maps: no slot or backend is written over an existing
// key, and none is deleted before a grace period has passed that began
// after the last write after which a frontend reached it. It also checks
// after every write that no frontend's list has a hole. It records what
// it finds instead of stopping, so that a test can go on to its leaks.
type retireGuard struct {
	t          *testing.T
	writes     int
	reached    map[any]int
	graceFrom  map[*graceRun]int
	violations []string
	deletes    int
	// live are frontends that must lead to a backend after every write.
	live map[bpf.SvcKey]bool
}

func newRetireGuard(t *testing.T) *retireGuard {
	return &retireGuard{t: t, reached: map[any]int{}, graceFrom: map[*graceRun]int{}}
}

func (g *retireGuard) note(format string, args ...any) {
	if len(g.violations) < 20 {
		g.violations = append(g.violations, fmt.Sprintf(format, args...))
	}
}

// attach hooks g into tb.
func (g *retireGuard) attach(tb *Table) {
	tb.graceHook = func(r *graceRun) { g.graceFrom[r] = g.writes }
	tb.beforeWrite = func(m any, del bool, key any) {
		var exists error
		switch m {
		case any(tb.slots):
			_, exists = tb.slots.Lookup(key.(bpf.BackendSlotKey))
		case any(tb.backends):
			_, exists = tb.backends.Lookup(key.(uint32))
		default:
			return
		}
		last, ever := g.reached[key]
		switch {
		case del && ever && !g.gracePassedSince(last):
			g.note("%v deleted after write %d reached it, with no grace period begun since passed", key, last)
		case del:
			g.deletes++
		case !del && exists == nil:
			g.note("%v replaced in place in a preallocated map", key)
		}
	}
	tb.afterWrite = func() {
		g.writes++
		ks := readKernel(g.t, tb)
		g.noteReached(ks)
		if err := ks.checkWhole(); err != nil {
			g.note("after write %d: %v", g.writes, err)
		}
		for k := range g.live {
			if got, ok := ks.backendsOf(k); !ok || len(got) == 0 {
				g.note("after write %d: live frontend %v missing or empty", g.writes, netip.AddrFrom16(k.Addr).Unmap())
			}
		}
	}
}

func (g *retireGuard) gracePassedSince(w int) bool {
	for r, from := range g.graceFrom {
		select {
		case <-r.done:
			if from > w {
				return true
			}
		default:
		}
	}
	return false
}

func (g *retireGuard) noteReached(ks kernelState) {
	for _, v := range ks.svcs {
		for i := uint32(0); i < uint32(v.Serving)+uint32(v.Terminating); i++ {
			sk := bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + i}
			g.reached[sk] = g.writes
			if id, ok := ks.slots[sk]; ok {
				g.reached[id] = g.writes
			}
		}
		if tbl, ok := ks.maglev[bpf.MaglevKey{SvcID: v.ID, SlotBase: v.SlotBase}]; ok {
			for _, id := range tbl.BackendIds {
				g.reached[id] = g.writes
			}
		}
	}
	for k := range ks.members {
		g.reached[k.BackendID] = g.writes
	}
}

// report fails t with what g found.
func (g *retireGuard) report(what string) {
	g.t.Helper()
	for _, v := range g.violations {
		g.t.Errorf("%s: %s", what, v)
	}
	g.violations = nil
}

// TestAttackRetireRestartOverRetiredBase: a Table changes a service's
// list (its old list is retired, not yet deleted) and is dropped. A new
// Table over the maps adopts the service on its new list, and its first
// Sync gives the service another list: it must take slot keys where no
// retired slot of the dead Table waits, not write over them, and the
// dead Table's retired backends must be gone after that Sync.
func TestAttackRetireRestartOverRetiredBase(t *testing.T) {
	m := newTestMaps(t)
	g := newRetireGuard(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	g.attach(tb)
	if err := tb.Sync(map[string]Service{"svc": oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2")}); err != nil {
		t.Fatal(err)
	}
	// The list at base 0 is retired; tb is dropped before a later
	// operation deletes it.
	if err := tb.Upsert("svc", oneFrontendService("10.96.0.1", 80, "10.1.0.3")); err != nil {
		t.Fatal(err)
	}
	again, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	g.attach(again)
	want := map[string]Service{"svc": oneFrontendService("10.96.0.1", 80, "10.1.0.4")}
	if err := again.Sync(want); err != nil {
		t.Fatal(err)
	}
	g.report("restart's first Sync")
	if err := readKernel(t, again).checkExact(t, want); err != nil {
		t.Errorf("after the restart's first Sync and a settle: %v", err)
	}
}

// TestAttackRetireFailedWriteOverStrayBase: an Upsert fails half-way
// through writing its new list (the slots map is full), and the Table
// adopts the maps again. The next Upsert of the service, once there is
// room, must not write over the slots the failed one left, and the
// first Sync must leave exactly the service.
func TestAttackRetireFailedWriteOverStrayBase(t *testing.T) {
	m := newTestMaps(t)
	g := newRetireGuard(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	g.attach(tb)
	if err := tb.Sync(map[string]Service{"svc": oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2")}); err != nil {
		t.Fatal(err)
	}
	// Fill the slots map but one entry, with slots of an ID no service
	// holds, naming no backend (the test deletes them behind the
	// Table's back): the next list of two gets one slot in.
	free := int(m.Slots.MaxEntries()) - len(readKernel(t, tb).slots) - 1
	var junk []bpf.BackendSlotKey
	for i := range free {
		k := bpf.BackendSlotKey{SvcID: 1 << 20, Slot: uint32(i)}
		if err := tb.slots.Update(k, 1<<30, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		junk = append(junk, k)
	}
	if err := tb.Upsert("svc", oneFrontendService("10.96.0.1", 80, "10.1.0.3", "10.1.0.4")); err == nil {
		t.Fatal("an Upsert into a full slots map succeeded")
	}
	for _, k := range junk {
		if err := tb.slots.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
	g.violations = nil // the junk's writes are the test's own
	want := map[string]Service{"svc": oneFrontendService("10.96.0.1", 80, "10.1.0.5", "10.1.0.6")}
	if err := tb.Upsert("svc", want["svc"]); err != nil {
		t.Fatal(err)
	}
	if err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	g.report("after a failed write")
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Errorf("after a failed write, an Upsert, a Sync and a settle: %v", err)
	}
}

// TestAttackRetireShadowedIDAfterWrap: a previous process left a
// backend under two IDs, one named by no slot (shadowed, swept by the
// first Sync), and IDs that wrapped. An Upsert before the first Sync
// must not hand out the shadowed ID: it exists in the maps, and the
// first Sync deletes it.
func TestAttackRetireShadowedIDAfterWrap(t *testing.T) {
	m := newTestMaps(t)
	seed, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	put := func(id uint32, a string) {
		if err := seed.backends.Update(id, backendOf(addr(a), 8080), ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	for id := uint32(1); id <= 4; id++ {
		put(id, fmt.Sprintf("10.9.0.%d", id))
	}
	put(5, "10.8.0.1") // shadowed: no slot names it
	put(7, "10.8.0.1")
	put(math.MaxUint32-1, "10.9.1.1")
	put(math.MaxUint32, "10.9.1.2")
	if err := seed.slots.Update(bpf.BackendSlotKey{SvcID: 50, Slot: 0}, 7, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	g := newRetireGuard(t)
	g.attach(tb)
	want := map[string]Service{"new": oneFrontendService("10.96.0.9", 80, "10.7.0.1")}
	if err := tb.Upsert("new", want["new"]); err != nil {
		t.Fatal(err)
	}
	if err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	g.report("restart over wrapped IDs")
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Errorf("after the first Sync: %v", err)
	}
}

// TestAttackRetireChurnAcrossRestarts: services whose lists change
// every call, back to back, backends removed and re-added across calls,
// frontends moving between services, with the Table dropped and made
// again over the maps every few calls (what it retired left behind). No
// write may break either rule, and after each restart's first Sync and
// a settle the maps hold exactly the services.
func TestAttackRetireChurnAcrossRestarts(t *testing.T) {
	m := newTestMaps(t)
	g := newRetireGuard(t)
	r := rand.New(rand.NewPCG(31, 7))
	fe := func(i int) Frontend {
		return Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, 0, byte(1 + i)}), Port: 80, Protocol: ProtoTCP}
	}
	random := func() map[string]Service {
		out := map[string]Service{}
		// Four frontends dealt among three services: a frontend moves
		// between services from one call to the next.
		owner := map[int][]Frontend{}
		for i := range 4 {
			o := r.IntN(3)
			owner[o] = append(owner[o], fe(i))
		}
		for o, fs := range owner {
			s := Service{Frontends: fs, Maglev: r.IntN(3) == 0}
			if r.IntN(3) == 0 {
				s.Affinity = 1e9
			}
			for _, j := range r.Perm(6)[:r.IntN(5)] {
				s.Backends = append(s.Backends, Backend{Addr: netip.AddrFrom4([4]byte{10, 1, 0, byte(1 + j)}), Port: 8080,
					Terminating: r.IntN(5) == 0})
			}
			out[fmt.Sprintf("svc-%d", o)] = s
		}
		return out
	}
	var tb *Table
	desired := map[string]Service{}
	for step := range 120 {
		if step%7 == 0 {
			var err error
			if tb, err = NewTable(m); err != nil {
				t.Fatal(err)
			}
			g.attach(tb)
			desired = random()
			if err := tb.Sync(desired); err != nil {
				t.Fatalf("step %d: restart's Sync: %v", step, err)
			}
			if err := readKernel(t, tb).checkExact(t, desired); err != nil {
				t.Fatalf("step %d: after the restart's Sync: %v", step, err)
			}
			continue
		}
		next := random()
		var err error
		switch r.IntN(3) {
		case 0:
			err = tb.Sync(next)
		case 1:
			var deletes []string
			for name := range desired {
				if _, ok := next[name]; !ok {
					deletes = append(deletes, name)
				}
			}
			err = tb.Apply(next, deletes)
		default:
			// One service at a time can steal a frontend another
			// still holds: Upsert what does not conflict.
			if err = tb.Sync(next); err == nil {
				for name, s := range next {
					s.Backends = append([]Backend(nil), s.Backends...)
					if len(s.Backends) > 0 {
						s.Backends = s.Backends[1:]
					}
					if err = tb.Upsert(name, s); err != nil {
						break
					}
					next[name] = s
				}
			}
		}
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		desired = next
		g.report(fmt.Sprintf("step %d", step))
	}
	if err := readKernel(t, tb).checkExact(t, desired); err != nil {
		t.Errorf("at the end: %v", err)
	}
	if g.deletes == 0 {
		t.Error("no slot or backend was deleted")
	}
}

// TestAttackRetireConcurrentChurn: concurrent Upserts and Deletes of
// services that share backends, with Services() read meanwhile, then a
// settle: the maps hold exactly Services(), and nothing retired is left.
func TestAttackRetireConcurrentChurn(t *testing.T) {
	m := newTestMaps(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 99))
			name := fmt.Sprintf("svc-%d", w)
			for i := range 60 {
				if r.IntN(4) == 0 {
					if err := tb.Delete(name); err != nil {
						errs <- err
						return
					}
					continue
				}
				s := oneFrontendService(fmt.Sprintf("10.96.0.%d", 1+w), 80)
				for _, j := range r.Perm(5)[:1+r.IntN(4)] {
					s.Backends = append(s.Backends, Backend{Addr: netip.AddrFrom4([4]byte{10, 1, 0, byte(1 + j)}), Port: 8080})
				}
				if err := tb.Upsert(name, s); err != nil {
					errs <- err
					return
				}
				_ = tb.Services()
				_ = i
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ks := readKernel(t, tb)
	if err := ks.checkExact(t, tb.Services()); err != nil {
		t.Fatal(err)
	}
	if len(tb.retiredIDs)+len(tb.retiredSlots) != 0 {
		t.Errorf("after a settle, %d backends and %d slots still retired", len(tb.retiredIDs), len(tb.retiredSlots))
	}
}

// TestAttackRetireBackToBackListChanges: Syncs back to back, each of
// which gives every service a new list, over maps with room for two
// lists of every service (the datapath's sizing: two lists while one
// replaces the other, BenchmarkMemory) but not three. A Sync must not
// fail for want of room that only the lists retired by the previous
// Sync, no frontend's any more, take.
func TestAttackRetireBackToBackListChanges(t *testing.T) {
	m := newTestMaps(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	const services, perService = 10, 150 // 1,500 slots a generation; the maps hold 4,096
	gen := func(g int) map[string]Service {
		out := map[string]Service{}
		for i := range services {
			s := oneFrontendService(fmt.Sprintf("10.96.0.%d", 1+i), 80)
			for j := range perService {
				s.Backends = append(s.Backends, Backend{Addr: netip.AddrFrom4([4]byte{10, byte(g), byte(i), byte(j)}), Port: 8080})
			}
			out[fmt.Sprintf("svc-%d", i)] = s
		}
		return out
	}
	for g := range 6 {
		if err := tb.Sync(gen(g)); err != nil {
			t.Fatalf("Sync of generation %d, right after the previous one: %v", g, err)
		}
	}
	if err := readKernel(t, tb).checkExact(t, gen(5)); err != nil {
		t.Fatal(err)
	}
}

// heldBackends is the number of backends the maps hold now, retired ones
// too (readKernel would delete those first).
func heldBackends(t *testing.T, tb *Table) int {
	t.Helper()
	var err error
	n := 0
	for range tb.backends.All(&err) {
		n++
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAttackRetireUnchangedUpsertReaps: an Upsert that changes nothing
// is an operation like any other: what earlier ones retired, once its
// grace period has passed, is gone after it, and does not wait for a
// later change.
func TestAttackRetireUnchangedUpsertReaps(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Upsert("a", oneFrontendService("10.96.0.1", 80, "10.1.0.1")); err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.2")
	if err := tb.Upsert("a", s); err != nil {
		t.Fatal(err)
	}
	if tb.grace == nil {
		t.Fatal("nothing retired")
	}
	<-tb.grace.done // the grace period of what the change retired
	for range 2 {
		if err := tb.Upsert("a", s); err != nil {
			t.Fatal(err)
		}
	}
	if n := heldBackends(t, tb); n != 1 {
		t.Errorf("after the grace period and two unchanged Upserts the maps hold %d backends, want 1", n)
	}
}

// TestAttackRetireTakenBackKeepsID: a backend removed from a service and
// added back by the next call, back to back, is the same entry: it keeps
// its ID, is not written again, and is deleted only once no list names
// it.
func TestAttackRetireTakenBackKeepsID(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	g := newRetireGuard(t)
	g.attach(tb)
	x := netip.MustParseAddrPort("10.1.0.1:8080")
	both := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2")
	if err := tb.Upsert("a", both); err != nil {
		t.Fatal(err)
	}
	id, _ := tb.BackendID(x)
	for range 5 {
		if err := tb.Upsert("a", oneFrontendService("10.96.0.1", 80, "10.1.0.2")); err != nil {
			t.Fatal(err)
		}
		if err := tb.Upsert("a", both); err != nil {
			t.Fatal(err)
		}
		if again, ok := tb.BackendID(x); !ok || again != id {
			t.Fatalf("backend %v taken back has ID %d (%v), want %d", x, again, ok, id)
		}
	}
	// Removed for good, on another service meanwhile, then from that one.
	if err := tb.Apply(map[string]Service{"a": oneFrontendService("10.96.0.1", 80, "10.1.0.2"),
		"b": oneFrontendService("10.96.0.2", 80, "10.1.0.1")}, nil); err != nil {
		t.Fatal(err)
	}
	if again, _ := tb.BackendID(x); again != id {
		t.Errorf("backend %v moved to another service has ID %d, want %d", x, again, id)
	}
	want := map[string]Service{"a": oneFrontendService("10.96.0.1", 80, "10.1.0.2")}
	if err := tb.Sync(want); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Error(err)
	}
	g.report("taken back")
}

// TestAttackRetireWrapSkipsRetiredIDs: once backend IDs wrap, a new
// backend never gets the ID of a retired one its grace period has not
// deleted: that key exists.
func TestAttackRetireWrapSkipsRetiredIDs(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	g := newRetireGuard(t)
	g.attach(tb)
	if err := tb.Upsert("a", oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2", "10.1.0.3")); err != nil {
		t.Fatal(err)
	}
	// 10.1.0.1 and .2 (IDs 1 and 2) retire.
	if err := tb.Upsert("a", oneFrontendService("10.96.0.1", 80, "10.1.0.3")); err != nil {
		t.Fatal(err)
	}
	tb.nextBackend = math.MaxUint32
	want := map[string]Service{"a": oneFrontendService("10.96.0.1", 80, "10.1.0.3"),
		"b": oneFrontendService("10.96.0.2", 80, "10.1.1.1", "10.1.1.2", "10.1.1.3")}
	if err := tb.Upsert("b", want["b"]); err != nil {
		t.Fatal(err)
	}
	g.report("after the wrap")
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Error(err)
	}
}
