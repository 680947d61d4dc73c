package nat

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
)

// TestApply: Apply changes only the services it names, as a Sync of the
// resulting state would; a frontend moves from a deleted service to an
// upserted one in one plan, with every write make-before-break; an
// unchanged upsert writes nothing; bad input changes nothing.
func TestApply(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]Service{
		"a": oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2"),
		"b": oneFrontendService("10.96.0.2", 80, "10.1.0.3"),
		"c": oneFrontendService("10.96.0.3", 80, "10.1.0.4", "10.1.0.1"),
	}
	if err := tb.Sync(all); err != nil {
		t.Fatal(err)
	}
	ids := func() map[string]uint32 {
		out := map[string]uint32{}
		for name, p := range tb.services {
			out[name] = p.id
		}
		return out
	}
	before := ids()

	// b goes; a takes b's frontend and a new backend; c is not named.
	a := all["a"]
	a.Frontends = append(slices.Clone(a.Frontends), all["b"].Frontends[0])
	a.Backends = append(slices.Clone(a.Backends), Backend{Addr: addr("10.1.0.9"), Port: 8080})
	moved := all["b"].Frontends[0].key()
	tb.afterWrite = func() {
		ks := readKernel(t, tb)
		if err := ks.checkWhole(); err != nil {
			t.Fatalf("mid-Apply: %v", err)
		}
		if got, ok := ks.backendsOf(moved); !ok || len(got) == 0 {
			t.Fatalf("mid-Apply: the moving frontend went missing or empty (%v)", got)
		}
	}
	if err := tb.Apply(map[string]Service{"a": a}, []string{"b", "never-there"}); err != nil {
		t.Fatal(err)
	}
	tb.afterWrite = nil
	want := map[string]Service{"a": a, "c": all["c"]}
	if err := readKernel(t, tb).checkExact(t, want); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, tb.Services(), cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("Services (-want +got):\n%s", diff)
	}
	if got := ids(); got["a"] != before["a"] || got["c"] != before["c"] {
		t.Errorf("service IDs %v, then %v: a kept service changed its ID", before, got)
	}

	// Unchanged upserts and deletions of what is gone write nothing.
	writes := 0
	tb.afterWrite = func() { writes++ }
	if err := tb.Apply(map[string]Service{"a": a, "c": all["c"]}, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	tb.afterWrite = nil
	if writes != 0 {
		t.Errorf("an Apply of unchanged services wrote %d times", writes)
	}

	// Refused, and nothing changes: a frontend c keeps, a name both
	// upserted and deleted, an invalid service.
	ks := readKernel(t, tb)
	steal := oneFrontendService("10.96.0.3", 80, "10.1.0.7")
	for name, tc := range map[string]struct {
		upserts map[string]Service
		deletes []string
		invalid bool
	}{
		"frontend kept by another": {map[string]Service{"d": steal}, nil, true},
		"upserted and deleted":     {map[string]Service{"a": a}, []string{"a"}, false},
		"invalid":                  {map[string]Service{"d": {}}, nil, true},
	} {
		err := tb.Apply(tc.upserts, tc.deletes)
		if err == nil || errors.Is(err, ErrInvalidService) != tc.invalid {
			t.Errorf("%s: %v (ErrInvalidService: %v)", name, err, tc.invalid)
		}
		if got := readKernel(t, tb); fmt.Sprint(got) != fmt.Sprint(ks) {
			t.Errorf("%s: a refused Apply changed the maps", name)
		}
	}
	// The steal is allowed when c is deleted in the same Apply.
	if err := tb.Apply(map[string]Service{"d": steal}, []string{"c"}); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, tb).checkExact(t, map[string]Service{"a": a, "d": steal}); err != nil {
		t.Fatal(err)
	}
	var null *Table
	if err := null.Apply(nil, nil); err == nil {
		t.Error("Apply on a nil Table succeeded")
	}
}

// putAffinity records, as the datapath does, that client goes to the
// backend at ap of the service at frontend fe.
func putAffinity(t *testing.T, m Maps, tb *Table, fe Frontend, client string, ap string) bpf.AffinityKey {
	t.Helper()
	v, err := tb.svcs.Lookup(fe.key())
	if err != nil {
		t.Fatal(err)
	}
	bid, ok := tb.BackendID(netip.MustParseAddrPort(ap))
	if !ok {
		t.Fatalf("no backend %s", ap)
	}
	k := bpf.AffinityKey{SvcID: v.ID, Client: netip.MustParseAddr(client).As16()}
	if err := m.Affinity.Put(k, bpf.Affinity{BackendID: bid, LastUsedNs: 1}); err != nil {
		t.Fatal(err)
	}
	return k
}

// affinityKeys returns the keys the kernel's affinity map holds.
func affinityKeys(t *testing.T, tb *Table) []bpf.AffinityKey {
	t.Helper()
	var err error
	var out []bpf.AffinityKey
	for k := range tb.affinity.All(&err) {
		out = append(out, k)
	}
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(out, func(a, b bpf.AffinityKey) int { return int(a.SvcID) - int(b.SvcID) })
	return out
}

// TestAffinitySweptWithService: a deleted service's client affinities
// leave the kernel's map with it (by Delete, Sync and Apply), after its
// frontends, while the other services' stay, also when it had given up
// its affinity before; a service that later gets
// the ID (a new process hands out the IDs after the highest it finds)
// starts without clients; and after a process died between a deletion
// and its sweep, the ID its affinities hold is not handed out until the
// first Sync sweeps them.
func TestAffinitySweptWithService(t *testing.T) {
	m := newTestMaps(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(fe string) Service {
		s := oneFrontendService(fe, 80, "10.1.0.1", "10.1.0.2")
		s.Affinity = time.Hour
		return s
	}
	all := map[string]Service{"a": mk("10.96.0.1"), "b": mk("10.96.0.2"), "c": mk("10.96.0.3"), "d": mk("10.96.0.4")}
	if err := tb.Sync(all); err != nil {
		t.Fatal(err)
	}
	keys := map[string]bpf.AffinityKey{}
	for name, s := range all {
		keys[name] = putAffinity(t, m, tb, s.Frontends[0], "10.2.0.1", "10.1.0.2:8080")
	}
	// The sweep comes after the frontend is gone.
	frontendGone := false
	tb.afterWrite = func() {
		ks := readKernel(t, tb)
		_, live := ks.svcs[all["d"].Frontends[0].key()]
		held := slices.Contains(affinityKeys(t, tb), keys["d"])
		if !live && !frontendGone {
			frontendGone = true
			if !held {
				t.Error("d's affinity went before its frontend")
			}
		}
	}
	if err := tb.Delete("d"); err != nil {
		t.Fatal(err)
	}
	delete(all, "d")
	tb.afterWrite = nil
	if !frontendGone {
		t.Error("d's frontend never went")
	}
	if diff := cmp.Diff([]bpf.AffinityKey{keys["a"], keys["b"], keys["c"]}, affinityKeys(t, tb)); diff != "" {
		t.Errorf("after Delete: affinity keys (-want +got):\n%s", diff)
	}
	// c loses its affinity before it goes: the clients the datapath
	// recorded before still go with it.
	cOff := all["c"]
	cOff.Affinity = 0
	if err := tb.Upsert("c", cOff); err != nil {
		t.Fatal(err)
	}
	delete(all, "c")
	if err := tb.Sync(all); err != nil {
		t.Fatal(err)
	}
	if err := tb.Apply(nil, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]bpf.AffinityKey{keys["a"]}, affinityKeys(t, tb)); diff != "" {
		t.Errorf("after Sync and Apply: affinity keys (-want +got):\n%s", diff)
	}

	// A new process hands out b's, c's and d's IDs again: the service
	// that gets b's starts without clients. (readKernel deletes what tb
	// retired, which would hold the IDs.)
	readKernel(t, tb)
	again, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	e := mk("10.96.0.5")
	if err := again.Upsert("e", e); err != nil {
		t.Fatal(err)
	}
	v, err := again.svcs.Lookup(e.Frontends[0].key())
	if err != nil {
		t.Fatal(err)
	}
	if v.ID != keys["b"].SvcID {
		t.Fatalf("the new service has ID %d; the test wants the deleted b's, %d", v.ID, keys["b"].SvcID)
	}
	flow := Flow{Client: netip.MustParseAddrPort("10.2.0.1:1000"), Dest: netip.AddrPortFrom(e.Frontends[0].Addr, 80), Protocol: ProtoTCP}
	if got, err := again.Explain(flow, time.Second); err != nil || got.Reason == ReasonAffinity {
		t.Errorf("a client of the ID's previous service: %v, %v; want no affinity", got.Reason, err)
	}
	for _, k := range affinityKeys(t, again) {
		if k.SvcID == v.ID {
			t.Errorf("the kernel holds an affinity of ID %d, which the new service has", v.ID)
		}
	}

	// A process that died between deleting a's frontend and its sweep:
	// a's affinity is all that is left of it, and its ID stays reserved.
	if err := again.Sync(map[string]Service{"e": e}); err != nil {
		t.Fatal(err)
	}
	stray := bpf.AffinityKey{SvcID: 77, Client: keys["a"].Client}
	if err := m.Affinity.Put(stray, bpf.Affinity{BackendID: 1, LastUsedNs: 1}); err != nil {
		t.Fatal(err)
	}
	third, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	third.nextSvcID = 77 // as if 76 had been the highest ID in use
	if err := third.Upsert("f", mk("10.96.0.6")); err != nil {
		t.Fatal(err)
	}
	if v, err := third.svcs.Lookup(mk("10.96.0.6").Frontends[0].key()); err != nil || v.ID == stray.SvcID {
		t.Errorf("a new service took ID %d, which a stray affinity holds (%v)", v.ID, err)
	}
	if err := third.Sync(map[string]Service{"e": e}); err != nil {
		t.Fatal(err)
	}
	if got := affinityKeys(t, third); len(got) != 0 {
		t.Errorf("after the first Sync: affinities %v left", got)
	}
}

// TestBackendIDsAfterWrap: new backend IDs skip those in use once the
// counter wraps around, and when the maps a Table adopts hold the
// largest ID.
func TestBackendIDsAfterWrap(t *testing.T) {
	m := newTestMaps(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Upsert("a", oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2", "10.1.0.3")); err != nil {
		t.Fatal(err)
	}
	tb.nextBackend = math.MaxUint32 - 1
	if err := tb.Upsert("b", oneFrontendService("10.96.0.2", 80, "10.1.1.1", "10.1.1.2", "10.1.1.3", "10.1.1.4")); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, tb).checkExact(t, tb.Services()); err != nil {
		t.Fatal(err)
	}
	var got []uint32
	for _, ap := range []string{"10.1.1.1:8080", "10.1.1.2:8080", "10.1.1.3:8080", "10.1.1.4:8080"} {
		id, _ := tb.BackendID(netip.MustParseAddrPort(ap))
		got = append(got, id)
	}
	if want := []uint32{math.MaxUint32 - 1, math.MaxUint32, 4, 5}; !slices.Equal(got, want) {
		t.Errorf("IDs across the wrap %v, want %v", got, want)
	}
	// A new Table over these maps: the largest ID is in use, so the
	// next ones are looked up.
	again, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	again.nextBackend = 1
	if err := again.Sync(map[string]Service{"a": tb.Services()["a"], "b": tb.Services()["b"],
		"c": oneFrontendService("10.96.0.3", 80, "10.1.2.1")}); err != nil {
		t.Fatal(err)
	}
	if id, _ := again.BackendID(netip.MustParseAddrPort("10.1.2.1:8080")); id != 6 {
		t.Errorf("a new backend after the restart has ID %d, want 6", id)
	}
}
