package nat

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
)

// maglevService is a Maglev service with weighted serving backends, local
// and remote, and a terminating one, at a ClusterIP and a NodePort.
func maglevService() Service {
	return Service{
		Frontends: []Frontend{
			{Addr: addr("10.96.0.50"), Port: 80, Protocol: ProtoTCP},
			{Addr: netip.IPv4Unspecified(), Port: 30050, Protocol: ProtoTCP, NodePort: true, External: true},
		},
		Backends: []Backend{
			{Addr: addr("10.1.2.1"), Port: 8080, Weight: 2},
			{Addr: addr("10.1.2.2"), Port: 8080, Local: true},
			{Addr: addr("10.1.2.3"), Port: 8080, Weight: 5},
			{Addr: addr("10.1.2.4"), Port: 8080, Terminating: true},
		},
		Maglev: true,
	}
}

// TestMembersAndMaglevLayout: each backend of the list of a service with
// affinity is a member with its standing, and the Maglev table is the
// model's, over the serving backends only.
func TestMembersAndMaglevLayout(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	s := maglevService()
	s.Affinity = time.Minute
	if err := tb.Upsert("mg", s); err != nil {
		t.Fatal(err)
	}
	ks := readKernel(t, tb)
	if err := ks.checkExact(t, map[string]Service{"mg": s}); err != nil {
		t.Fatal(err)
	}
	v := ks.svcs[s.Frontends[0].key()]
	want := map[bpf.LBMemberKey]bpf.LBMemberFlags{}
	for _, m := range []struct {
		ap    string
		flags bpf.LBMemberFlags
	}{
		{"10.1.2.1:8080", bpf.LBMemberServing},
		{"10.1.2.2:8080", bpf.LBMemberServing | bpf.LBMemberLocal},
		{"10.1.2.3:8080", bpf.LBMemberServing},
		{"10.1.2.4:8080", 0},
	} {
		id, ok := tb.BackendID(netip.MustParseAddrPort(m.ap))
		if !ok {
			t.Fatalf("no ID for %s", m.ap)
		}
		want[bpf.LBMemberKey{SvcID: v.ID, BackendID: id}] = m.flags
	}
	if diff := cmp.Diff(want, ks.members); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	if len(ks.maglev) != 1 {
		t.Fatalf("%d Maglev tables, want 1", len(ks.maglev))
	}
	tbl, ok := ks.maglevOf(s.Frontends[0].key())
	if !ok {
		t.Fatal("no Maglev table at the frontend's base")
	}
	shares := map[netip.AddrPort]int{}
	for _, ap := range tbl {
		shares[ap]++
	}
	if len(shares) != 3 || shares[netip.MustParseAddrPort("10.1.2.3:8080")] < 2*shares[netip.MustParseAddrPort("10.1.2.1:8080")] {
		t.Errorf("table shares %v: want the three serving backends, by weight 2:1:5", shares)
	}

	// Without a serving backend there is no table.
	s.Backends = []Backend{{Addr: addr("10.1.2.4"), Port: 8080, Terminating: true}}
	if err := tb.Upsert("mg", s); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, tb).checkExact(t, map[string]Service{"mg": s}); err != nil {
		t.Fatal(err)
	}
}

// maglevBases returns the slot bases of the Maglev tables of service id.
func (ks kernelState) maglevBases(id uint32) []uint32 {
	var out []uint32
	for k := range ks.maglev {
		if k.SvcID == id {
			out = append(out, k.SlotBase)
		}
	}
	return out
}

// TestMaglevRewrittenOnlyForServingChanges: a change of weights moves the
// service to a new list with a new table, written before the frontends
// flip and the old one deleted after; a change that leaves the list alone
// (affinity, source ranges, frontends) writes no table.
func TestMaglevRewrittenOnlyForServingChanges(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	s := maglevService()
	if err := tb.Upsert("mg", s); err != nil {
		t.Fatal(err)
	}
	k := s.Frontends[0].key()
	before := readKernel(t, tb)
	id := before.svcs[k].ID
	oldTable, _ := before.maglevOf(k)

	for name, change := range map[string]func(*Service){
		"affinity":      func(s *Service) { s.Affinity = time.Minute },
		"source ranges": func(s *Service) { s.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")} },
		"frontends":     func(s *Service) { s.Frontends = s.Frontends[:1] },
		"weight 0 to 1": func(s *Service) { s.Backends[1].Weight = 1 },
	} {
		c := maglevService()
		change(&c)
		if err := tb.Upsert("mg", c); err != nil {
			t.Fatal(err)
		}
		ks := readKernel(t, tb)
		if err := ks.checkExact(t, map[string]Service{"mg": c}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := ks.maglevBases(id); len(got) != 1 || got[0] != before.svcs[k].SlotBase || ks.svcs[k].SlotBase != before.svcs[k].SlotBase {
			t.Errorf("%s: the list or its table moved (tables at %v, frontend at %d)", name, got, ks.svcs[k].SlotBase)
		}
		if err := tb.Upsert("mg", s); err != nil {
			t.Fatal(err)
		}
	}

	// New weights: a new list and table. At every write the frontend's
	// base has its table, and the old table outlives the flip.
	heavier := maglevService()
	heavier.Backends[0].Weight = 7
	flipped := false
	tb.afterWrite = func() {
		ks := readKernel(t, tb)
		if err := ks.checkWhole(); err != nil {
			t.Fatal(err)
		}
		base := ks.svcs[k].SlotBase
		if base != before.svcs[k].SlotBase {
			flipped = true
		}
		bases := ks.maglevBases(id)
		if !flipped && len(bases) == 2 {
			return // the new table is written, the frontend not moved yet
		}
		if got, _ := ks.maglevOf(k); !flipped && fmt.Sprint(got) != fmt.Sprint(oldTable) {
			t.Fatal("the frontend's table changed before it flipped")
		}
	}
	if err := tb.Upsert("mg", heavier); err != nil {
		t.Fatal(err)
	}
	tb.afterWrite = nil
	if !flipped {
		t.Fatal("new weights did not move the service to a new list")
	}
	ks := readKernel(t, tb)
	if err := ks.checkExact(t, map[string]Service{"mg": heavier}); err != nil {
		t.Fatal(err)
	}
	if got, _ := ks.maglevOf(k); fmt.Sprint(got) == fmt.Sprint(oldTable) {
		t.Error("new weights left the table as it was")
	}
}

// TestMemberPhases: a backend that leaves keeps its member until no slot
// names it; one that changes its standing is updated before the frontend
// flips to the list that gives it.
func TestMemberPhases(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2", "10.1.0.3")
	s.Affinity = time.Minute
	if err := tb.Upsert("s", s); err != nil {
		t.Fatal(err)
	}
	k := s.Frontends[0].key()
	before := readKernel(t, tb)
	id := before.svcs[k].ID
	gone, _ := tb.BackendID(netip.MustParseAddrPort("10.1.0.3:8080"))
	changed, _ := tb.BackendID(netip.MustParseAddrPort("10.1.0.2:8080"))
	next := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2")
	next.Affinity = time.Minute
	next.Backends[1].Terminating = true
	// order is when each change was first seen.
	var order []string
	seen := map[string]bool{}
	note := func(what string) {
		if !seen[what] {
			seen[what] = true
			order = append(order, what)
		}
	}
	tb.afterWrite = func() {
		ks := readKernel(t, tb)
		if err := ks.checkWhole(); err != nil {
			t.Fatal(err)
		}
		if ks.svcs[k].SlotBase != before.svcs[k].SlotBase {
			note("flipped")
		}
		if ks.members[bpf.LBMemberKey{SvcID: id, BackendID: changed}] == 0 {
			note("member terminating")
		}
		if _, ok := ks.members[bpf.LBMemberKey{SvcID: id, BackendID: gone}]; !ok {
			note("member gone")
		}
	}
	if err := tb.Upsert("s", next); err != nil {
		t.Fatal(err)
	}
	tb.afterWrite = nil
	if want := []string{"member terminating", "flipped", "member gone"}; fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("order of changes %v, want %v", order, want)
	}
	if err := readKernel(t, tb).checkExact(t, map[string]Service{"s": next}); err != nil {
		t.Error(err)
	}
}

// TestRestartAdoptsMembersAndMaglev: a new Table over the maps of a
// previous one adopts its members and tables: a Sync of the same
// services writes nothing; a Sync with new weights makes a new table; and
// the members and tables of services no longer desired, or of IDs no
// frontend has, are removed.
func TestRestartAdoptsMembersAndMaglev(t *testing.T) {
	m := newTestMaps(t)
	prev, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	mg := maglevService()
	mg.Affinity = time.Minute // so that it has members
	gone := mg
	gone.Frontends = []Frontend{{Addr: addr("10.96.9.9"), Port: 9, Protocol: ProtoTCP}}
	all := map[string]Service{"mg": mg, "web": webService(), "gone": gone}
	if err := prev.Sync(all); err != nil {
		t.Fatal(err)
	}
	// Strays of an ID no frontend has, as a crashed Delete leaves them.
	bid, _ := prev.BackendID(netip.MustParseAddrPort("10.1.2.1:8080"))
	if err := m.Members.Put(bpf.LBMemberKey{SvcID: 999, BackendID: bid}, bpf.LBMember{Flags: bpf.LBMemberServing}); err != nil {
		t.Fatal(err)
	}
	if err := m.Maglev.Put(bpf.MaglevKey{SvcID: 999, SlotBase: 1 << 16}, bpf.MaglevTable{}); err != nil {
		t.Fatal(err)
	}
	delete(all, "gone")
	same, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	// The first Sync removes gone and the strays, and rewrites nothing of
	// the rest.
	before := readKernel(t, same)
	writes := 0
	same.afterWrite = func() { writes++ }
	if err := same.Sync(all); err != nil {
		t.Fatal(err)
	}
	after := readKernel(t, same)
	if err := after.checkExact(t, all); err != nil {
		t.Fatal(err)
	}
	for key, v := range before.svcs {
		if w, ok := after.svcs[key]; ok && w != v {
			t.Errorf("frontend %v rewritten: %+v, then %+v", netip.AddrFrom16(key.Addr).Unmap(), v, w)
		}
	}
	// gone: 1 frontend, 4 slots, 4 members, 1 table; the strays: 1 member,
	// 1 table. Its backends are mg's, which stay.
	if writes != 12 {
		t.Errorf("the restart's Sync wrote %d times; gone and the strays are 12 deletions", writes)
	}
	// Unchanged, again from a new Table: nothing.
	again, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	writes = 0
	again.afterWrite = func() { writes++ }
	if err := again.Sync(all); err != nil {
		t.Fatal(err)
	}
	if writes != 0 {
		t.Errorf("a restart's Sync of the same services wrote %d times", writes)
	}
	// New weights after a restart: a table the Table did not write is
	// compared, found stale and replaced by way of a new list.
	fresh, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	heavier := maglevService()
	heavier.Backends[2].Weight = 1
	all["mg"] = heavier
	fresh.afterWrite = func() {
		if err := readKernel(t, fresh).checkWhole(); err != nil {
			t.Fatal(err)
		}
	}
	if err := fresh.Sync(all); err != nil {
		t.Fatal(err)
	}
	fresh.afterWrite = nil
	final := readKernel(t, fresh)
	if err := final.checkExact(t, all); err != nil {
		t.Fatal(err)
	}
	if k := heavier.Frontends[0].key(); final.svcs[k].SlotBase == after.svcs[k].SlotBase {
		t.Error("the adopted table was rewritten in place, not by way of a new list")
	}
}

// TestRestartAfterCrashMidFlip: a previous process died after writing a
// new list's members and table and before the frontend flipped. A new
// Table that Syncs the old desired state must restore the members and
// remove the unflipped table; one that Syncs the new state reaches it.
func TestRestartAfterCrashMidFlip(t *testing.T) {
	for _, desired := range []string{"old", "new"} {
		t.Run(desired, func(t *testing.T) {
			m := newTestMaps(t)
			prev, err := NewTable(m)
			if err != nil {
				t.Fatal(err)
			}
			old := maglevService()
			if err := prev.Upsert("mg", old); err != nil {
				t.Fatal(err)
			}
			next := maglevService()
			next.Backends[0].Local = true
			next.Backends[2].Terminating = true
			prev.afterWrite = func() {}
			var pl plan
			if err := prev.upsert("mg", next, &pl, nil); err != nil {
				t.Fatal(err)
			}
			pl.frontendKeys, pl.frontendVals = nil, nil
			pl.delFrontends, pl.delSlots, pl.delRanges, pl.delMembers, pl.delMaglev, pl.released = nil, nil, nil, nil, nil, nil
			if err := prev.write(&pl); err != nil {
				t.Fatal(err)
			}
			ks := readKernel(t, prev)
			if len(ks.maglev) != 2 {
				t.Fatalf("setup: %d Maglev tables, want the old and the unflipped", len(ks.maglev))
			}
			tb, err := NewTable(m)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]Service{"mg": old}
			if desired == "new" {
				want["mg"] = next
			}
			tb.afterWrite = func() {
				if err := readKernel(t, tb).checkWhole(); err != nil {
					t.Fatal(err)
				}
			}
			if err := tb.Sync(want); err != nil {
				t.Fatal(err)
			}
			tb.afterWrite = nil
			if err := readKernel(t, tb).checkExact(t, want); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMaglevKernelMatchesModel: on random services the Maglev table the
// kernel map holds leads every flow to the backend the model chooses, and
// Explain agrees with Choose.
func TestMaglevKernelMatchesModel(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 8))
	maglevFlows := 0
	for step := 0; step < 20; step++ {
		all := randomServices(r)
		for name, s := range all {
			s.Maglev = r.IntN(4) != 0
			for i := range s.Backends {
				if s.Maglev {
					s.Backends[i].Weight = uint16(r.IntN(4))
				} else {
					s.Backends[i].Weight = 0
				}
			}
			all[name] = s
		}
		if err := tb.Sync(all); err != nil {
			t.Fatal(err)
		}
		ks := readKernel(t, tb)
		if err := ks.checkExact(t, all); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		for name, s := range all {
			for _, f := range s.Frontends {
				table, _ := ks.maglevOf(f.key())
				for range 50 {
					flow := Flow{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(r.IntN(256)), byte(r.IntN(256))}), uint16(r.Uint32())),
						Dest: netip.AddrPortFrom(f.Addr, f.Port), Protocol: f.Protocol}
					if f.Addr.Is6() {
						flow.Client = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfd, 2, 14: byte(r.IntN(256)), 15: byte(r.IntN(256))}), uint16(r.Uint32()))
					}
					got := Choose(all, flow, nil, 0)
					explained, err := tb.Explain(flow, 0)
					if err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff(got, explained, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
						t.Fatalf("Explain differs from Choose (-Choose +Explain):\n%s", diff)
					}
					if got.Service != name {
						t.Fatalf("flow to %v: service %q, want %q", flow.Dest, got.Service, name)
					}
					if got.Reason != ReasonMaglev {
						continue
					}
					maglevFlows++
					if table == nil {
						t.Fatalf("service %q: a Maglev choice but no table in the kernel", name)
					}
					if k := table[FlowHash(flow)%DefaultMaglevSize]; k != netip.AddrPortFrom(got.Backend.Addr, got.Backend.Port) {
						t.Fatalf("service %q flow %v: the kernel's table names %v, the model chose %v", name, flow.Client, k, got.Backend)
					}
				}
			}
		}
	}
	if maglevFlows < 500 {
		t.Errorf("only %d flows took Maglev", maglevFlows)
	}
}

// TestExplainAffinity: Explain reads the client's affinity record from the
// kernel map and honours it as the model says.
func TestExplainAffinity(t *testing.T) {
	m := newTestMaps(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2", "10.1.0.3")
	s.Affinity = 10 * time.Second
	if err := tb.Upsert("a", s); err != nil {
		t.Fatal(err)
	}
	flow := Flow{Client: netip.MustParseAddrPort("10.2.0.1:1234"), Dest: netip.MustParseAddrPort("10.96.0.1:80"), Protocol: ProtoTCP}
	now := 100 * time.Second
	hashed, err := tb.Explain(flow, now)
	if err != nil {
		t.Fatal(err)
	}
	if hashed.Reason != ReasonHash {
		t.Fatalf("without a record: %v, want hash", hashed.Reason)
	}
	// A record for a backend other than the hash's.
	other := netip.MustParseAddrPort("10.1.0.1:8080")
	if netip.AddrPortFrom(hashed.Backend.Addr, hashed.Backend.Port) == other {
		other = netip.MustParseAddrPort("10.1.0.2:8080")
	}
	id, _ := tb.BackendID(other)
	svcID := readKernel(t, tb).svcs[s.Frontends[0].key()].ID
	key := bpf.AffinityKey{SvcID: svcID, Client: flow.Client.Addr().As16()}
	for _, tc := range []struct {
		name    string
		backend uint32
		age     time.Duration
		want    Reason
	}{
		{"fresh", id, 3 * time.Second, ReasonAffinity},
		{"stale", id, 10 * time.Second, ReasonHash},
		{"unknown backend", 12345, time.Second, ReasonHash},
	} {
		if err := m.Affinity.Put(key, bpf.Affinity{BackendID: tc.backend, LastUsedNs: uint64(now - tc.age)}); err != nil {
			t.Fatal(err)
		}
		got, err := tb.Explain(flow, now)
		if err != nil {
			t.Fatal(err)
		}
		wantBackend := hashed.Backend
		if tc.want == ReasonAffinity {
			wantBackend = Backend{Addr: other.Addr(), Port: other.Port()}
		}
		if got.Reason != tc.want || got.Backend != wantBackend {
			t.Errorf("%s: %v to %v, want %v to %v", tc.name, got.Reason, got.Backend.Addr, tc.want, wantBackend.Addr)
		}
	}
	if got, err := tb.Explain(Flow{Client: flow.Client, Dest: netip.MustParseAddrPort("10.96.0.2:80"), Protocol: ProtoTCP}, now); err != nil || got.Reason != ReasonNone {
		t.Errorf("a flow to no frontend: %+v, %v", got, err)
	}
	var null *Table
	if _, err := null.Explain(flow, now); err == nil {
		t.Error("Explain on a nil Table succeeded")
	}
}

// TestInvalidWeights: weights need Maglev, and a Maglev table holds at
// most its size in serving backends.
func TestInvalidWeights(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1")
	s.Backends[0].Weight = 1
	if err := tb.Upsert("w", s); err != nil {
		t.Errorf("weight 1 without Maglev: %v", err)
	}
	s.Backends[0].Weight = 2
	if err := tb.Upsert("w", s); !errors.Is(err, ErrInvalidService) {
		t.Errorf("weight 2 without Maglev: %v, want ErrInvalidService", err)
	}
	big := oneFrontendService("10.96.0.2", 80)
	big.Maglev = true
	for i := range DefaultMaglevSize + 1 {
		big.Backends = append(big.Backends, Backend{Addr: netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)}), Port: 80})
	}
	if err := tb.Upsert("big", big); !errors.Is(err, ErrInvalidService) {
		t.Errorf("%d serving backends with Maglev: %v, want ErrInvalidService", len(big.Backends), err)
	}
}
