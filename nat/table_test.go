package nat

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// newTestMaps creates the load-balancing maps as the datapath declares
// them, small.
func newTestMaps(t *testing.T) Maps {
	t.Helper()
	testutil.RequirePrivileged(t)
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string) *ebpf.Map {
		ms := spec.Maps[name].Copy()
		ms.MaxEntries = 4096
		if name == mapMaglev {
			ms.MaxEntries = 64 // 64 KiB a table
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	return Maps{Services: mk(bpf.MapServices), Slots: mk(bpf.MapBackendSlots), Backends: mk(bpf.MapBackends),
		Ranges: mk(bpf.MapServiceRanges), Members: mk(mapMembers), Maglev: mk(mapMaglev), Affinity: mk(bpf.MapAffinity)}
}

// The object's names of the members and Maglev maps, which bpf does not
// export as constants.
const (
	mapMembers = "sl_members"
	mapMaglev  = "sl_maglev"
)

// kernelState is what the maps hold.
type kernelState struct {
	svcs     map[bpf.SvcKey]bpf.Svc
	slots    map[bpf.BackendSlotKey]uint32
	backends map[uint32]bpf.Backend
	ranges   map[bpf.SvcRangeKey]uint8
	members  map[bpf.LBMemberKey]bpf.LBMemberFlags
	maglev   map[bpf.MaglevKey]*bpf.MaglevTable
}

// readKernel reads the maps; outside the test hook, once every entry
// the Table retired is deleted.
func readKernel(t *testing.T, tb *Table) kernelState {
	t.Helper()
	if !tb.hooked {
		tb.mu.Lock()
		err := tb.settle()
		tb.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	var err error
	ks := kernelState{svcs: map[bpf.SvcKey]bpf.Svc{}, slots: map[bpf.BackendSlotKey]uint32{},
		backends: map[uint32]bpf.Backend{}, ranges: map[bpf.SvcRangeKey]uint8{},
		members: map[bpf.LBMemberKey]bpf.LBMemberFlags{}, maglev: map[bpf.MaglevKey]*bpf.MaglevTable{}}
	for k, v := range tb.svcs.All(&err) {
		ks.svcs[k] = v
	}
	for k, v := range tb.slots.All(&err) {
		ks.slots[k] = v
	}
	for k, v := range tb.backends.All(&err) {
		ks.backends[k] = v
	}
	for k, v := range tb.ranges.All(&err) {
		ks.ranges[k] = v
	}
	for k, v := range tb.members.All(&err) {
		ks.members[k] = v.Flags
	}
	for k, v := range tb.maglev.All(&err) {
		ks.maglev[k] = &v
	}
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// String prints the maps, Maglev tables by a digest, so that two states
// compare by their prints.
func (ks kernelState) String() string {
	digests := map[bpf.MaglevKey]string{}
	for k, tbl := range ks.maglev {
		digests[k] = fmt.Sprintf("%x", sha256.Sum256(fmt.Append(nil, tbl.BackendIds)))
	}
	return fmt.Sprint(ks.svcs, ks.slots, ks.backends, ks.ranges, ks.members, digests)
}

// checkWhole reports a member without its backend, and a frontend whose
// list has a hole: a slot missing, a slot whose backend is missing, or
// whose member is at a frontend with affinity (the only reader of
// members), or, at a Maglev frontend with a serving backend, a Maglev
// table missing for its list or naming a backend outside the list's
// serving slots. A packet must never meet one.
func (ks kernelState) checkWhole() error {
	for k := range ks.members {
		if _, ok := ks.backends[k.BackendID]; !ok {
			return fmt.Errorf("member %d of service %d: no such backend", k.BackendID, k.SvcID)
		}
	}
	for k, v := range ks.svcs {
		serving := map[uint32]bool{}
		for i := uint32(0); i < uint32(v.Serving)+uint32(v.Terminating); i++ {
			id, ok := ks.slots[bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + i}]
			if !ok {
				return fmt.Errorf("frontend %v: slot %d of service %d missing", netip.AddrFrom16(k.Addr), v.SlotBase+i, v.ID)
			}
			if _, ok := ks.backends[id]; !ok {
				return fmt.Errorf("frontend %v: slot %d names backend %d, which is missing", netip.AddrFrom16(k.Addr), v.SlotBase+i, id)
			}
			if _, ok := ks.members[bpf.LBMemberKey{SvcID: v.ID, BackendID: id}]; !ok && v.Flags&bpf.SvcAffinity != 0 {
				return fmt.Errorf("frontend %v: slot %d names backend %d, which is no member of service %d", netip.AddrFrom16(k.Addr), v.SlotBase+i, id, v.ID)
			}
			if i < uint32(v.Serving) {
				serving[id] = true
			}
		}
		if v.Flags&bpf.SvcMaglev == 0 || v.Serving == 0 {
			continue
		}
		tbl, ok := ks.maglev[bpf.MaglevKey{SvcID: v.ID, SlotBase: v.SlotBase}]
		if !ok {
			return fmt.Errorf("Maglev frontend %v: no table for service %d base %d", netip.AddrFrom16(k.Addr), v.ID, v.SlotBase)
		}
		for i, id := range tbl.BackendIds {
			if !serving[id] {
				return fmt.Errorf("Maglev frontend %v: table entry %d names backend %d, not a serving one of its list", netip.AddrFrom16(k.Addr), i, id)
			}
		}
	}
	return nil
}

// checkMembers reports a member of the list of a frontend with affinity
// whose flags are neither its standing in the list nor the one the target
// state gives it in the service that is to hold the list's service ID
// (ids, from the Table's plan): members change only toward the target.
func (ks kernelState) checkMembers(target map[string]Service, ids map[uint32]string) error {
	want := map[uint32]map[netip.AddrPort]bpf.LBMemberFlags{}
	for id, name := range ids {
		want[id] = map[netip.AddrPort]bpf.LBMemberFlags{}
		for _, b := range target[name].Backends {
			want[id][netip.AddrPortFrom(b.Addr, b.Port)] = testMemberFlags(b)
		}
	}
	for k, v := range ks.svcs {
		if v.Flags&bpf.SvcAffinity == 0 {
			continue
		}
		for i := uint32(0); i < uint32(v.Serving)+uint32(v.Terminating); i++ {
			id := ks.slots[bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + i}]
			b := ks.backends[id]
			ap := netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), b.Port)
			var inList bpf.LBMemberFlags
			if i < uint32(v.Serving) {
				inList |= bpf.LBMemberServing
			}
			if i < uint32(v.ServingLocal) || (i >= uint32(v.Serving) && i < uint32(v.Serving)+uint32(v.TerminatingLocal)) {
				inList |= bpf.LBMemberLocal
			}
			got := ks.members[bpf.LBMemberKey{SvcID: v.ID, BackendID: id}]
			if tw, ok := want[v.ID][ap]; got != inList && (!ok || got != tw) {
				return fmt.Errorf("frontend %v: member %v has flags %v; its list says %v, the target %v",
					netip.AddrFrom16(k.Addr).Unmap(), ap, got, inList, tw)
			}
		}
	}
	return nil
}

// testMemberFlags are the member flags of b, written out for the tests.
func testMemberFlags(b Backend) bpf.LBMemberFlags {
	switch {
	case !b.Terminating && b.Local:
		return bpf.LBMemberServing | bpf.LBMemberLocal
	case !b.Terminating:
		return bpf.LBMemberServing
	case b.Local:
		return bpf.LBMemberLocal
	}
	return 0
}

// modelMaglev returns the Maglev table of s as the model builds it, by
// backend: the generator over the serving backends keyed by address and
// port, weighted (0 counting as 1); nil without a serving backend.
func modelMaglev(t *testing.T, s Service) []netip.AddrPort {
	t.Helper()
	var serving []netip.AddrPort
	var in []MaglevBackend
	for _, b := range s.Backends {
		if !b.Terminating {
			ap := netip.AddrPortFrom(b.Addr, b.Port)
			serving = append(serving, ap)
			in = append(in, MaglevBackend{Key: ap.String(), Weight: max(1, uint32(b.Weight))})
		}
	}
	if len(in) == 0 {
		return nil
	}
	idx, err := Maglev(in, DefaultMaglevSize)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]netip.AddrPort, len(idx))
	for i, j := range idx {
		out[i] = serving[j]
	}
	return out
}

// maglevOf returns the kernel's Maglev table of frontend k, by backend.
func (ks kernelState) maglevOf(k bpf.SvcKey) ([]netip.AddrPort, bool) {
	v := ks.svcs[k]
	tbl, ok := ks.maglev[bpf.MaglevKey{SvcID: v.ID, SlotBase: v.SlotBase}]
	if !ok {
		return nil, false
	}
	out := make([]netip.AddrPort, len(tbl.BackendIds))
	for i, id := range tbl.BackendIds {
		b := ks.backends[id]
		out[i] = netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), b.Port)
	}
	return out, true
}

// backendsOf returns the backends frontend k leads to, in slot order.
func (ks kernelState) backendsOf(k bpf.SvcKey) ([]netip.AddrPort, bool) {
	v, ok := ks.svcs[k]
	if !ok {
		return nil, false
	}
	var out []netip.AddrPort
	for i := uint32(0); i < uint32(v.Serving)+uint32(v.Terminating); i++ {
		b := ks.backends[ks.slots[bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + i}]]
		out = append(out, netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), b.Port))
	}
	return out, true
}

// checkExact compares the maps with services: every frontend and its
// list, the members of the services with affinity, and nothing more.
func (ks kernelState) checkExact(t *testing.T, services map[string]Service) error {
	t.Helper()
	slots, ranges, tables, members := 0, 0, 0, 0
	for name, s := range services {
		for _, f := range s.Frontends {
			got, ok := ks.backendsOf(f.key())
			if !ok {
				return fmt.Errorf("service %q: frontend %v:%d missing", name, f.Addr, f.Port)
			}
			var want []netip.AddrPort
			for _, b := range s.ordered() {
				want = append(want, netip.AddrPortFrom(b.Addr, b.Port))
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("service %q frontend %v:%d: backends %v, want %v", name, f.Addr, f.Port, got, want)
			}
			v := ks.svcs[f.key()]
			if want := s.value(f, v.ID, v.SlotBase); v != want {
				return fmt.Errorf("service %q frontend %v:%d: value %+v, want %+v", name, f.Addr, f.Port, v, want)
			}
			for i, b := range s.ordered() {
				id := ks.slots[bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + uint32(i)}]
				got, ok := ks.members[bpf.LBMemberKey{SvcID: v.ID, BackendID: id}]
				if s.Affinity == 0 && ok {
					return fmt.Errorf("service %q without affinity: member %v:%d", name, b.Addr, b.Port)
				}
				if want := testMemberFlags(b); s.Affinity > 0 && (!ok || got != want) {
					return fmt.Errorf("service %q: member %v:%d has flags %v (held: %v), want %v", name, b.Addr, b.Port, got, ok, want)
				}
			}
			wantTable := modelMaglev(t, s)
			if !s.Maglev {
				wantTable = nil
			}
			if got, _ := ks.maglevOf(f.key()); !slices.Equal(got, wantTable) {
				return fmt.Errorf("service %q frontend %v:%d: the kernel's Maglev table (%d entries) is not the model's (%d)",
					name, f.Addr, f.Port, len(got), len(wantTable))
			}
		}
		slots += len(s.Backends)
		if s.Affinity > 0 {
			members += len(s.Backends)
		}
		ranges += len(s.SourceRanges)
		if s.Maglev && modelMaglev(t, s) != nil {
			tables++
		}
	}
	frontends := 0
	for _, s := range services {
		frontends += len(s.Frontends)
	}
	if len(ks.svcs) != frontends || len(ks.slots) != slots || len(ks.ranges) != ranges || len(ks.members) != members || len(ks.maglev) != tables {
		return fmt.Errorf("maps hold %d frontends, %d slots, %d ranges, %d members, %d Maglev tables; services need %d, %d, %d, %d, %d",
			len(ks.svcs), len(ks.slots), len(ks.ranges), len(ks.members), len(ks.maglev), frontends, slots, ranges, members, tables)
	}
	refs := map[uint32]bool{}
	for _, id := range ks.slots {
		refs[id] = true
	}
	if len(refs) != len(ks.backends) {
		return fmt.Errorf("maps hold %d backends, slots name %d", len(ks.backends), len(refs))
	}
	return nil
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func webService() Service {
	return Service{
		Frontends: []Frontend{
			{Addr: addr("10.96.0.10"), Port: 80, Protocol: ProtoTCP},
			{Addr: netip.IPv4Unspecified(), Port: 30080, Protocol: ProtoTCP, NodePort: true, External: true},
		},
		Backends: []Backend{
			{Addr: addr("10.1.0.5"), Port: 8080},
			{Addr: addr("10.1.0.4"), Port: 8080, Local: true},
			{Addr: addr("10.1.0.6"), Port: 8080, Terminating: true},
		},
		ExternalLocal: true,
		Affinity:      3 * time.Hour,
		SourceRanges:  []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")},
	}
}

func TestUpsertLayout(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Upsert("web", webService()); err != nil {
		t.Fatal(err)
	}
	ks := readKernel(t, tb)
	if err := ks.checkExact(t, map[string]Service{"web": webService()}); err != nil {
		t.Fatal(err)
	}
	cluster := ks.svcs[webService().Frontends[0].key()]
	node := ks.svcs[webService().Frontends[1].key()]
	want := bpf.Svc{ID: cluster.ID, SlotBase: cluster.SlotBase, ServingLocal: 1, Serving: 2, Terminating: 1,
		Flags: bpf.SvcAffinity, AffinityTimeout: 3 * 3600}
	if cluster != want {
		t.Errorf("ClusterIP value %+v, want %+v", cluster, want)
	}
	want.Flags |= bpf.SvcNodePort | bpf.SvcLocalOnly | bpf.SvcSourceRanges
	if node != want {
		t.Errorf("NodePort value %+v, want %+v", node, want)
	}
	got, _ := ks.backendsOf(webService().Frontends[0].key())
	if fmt.Sprint(got) != "[10.1.0.4:8080 10.1.0.5:8080 10.1.0.6:8080]" {
		t.Errorf("slot order %v, want local serving, remote serving, terminating", got)
	}
	if _, ok := ks.ranges[rangeKey(cluster.ID, netip.MustParsePrefix("192.168.0.0/16"))]; !ok {
		t.Errorf("source range missing: %v", ks.ranges)
	}
}

// randomServices draws services over small pools, so that services share
// backends and change in every way between draws.
func randomServices(r *rand.Rand) map[string]Service {
	out := map[string]Service{}
	for i := range 6 {
		if r.IntN(4) == 0 {
			continue
		}
		v6 := i%3 == 2
		fe := func(j int) netip.Addr {
			if v6 {
				return netip.AddrFrom16([16]byte{0xfd, 0, 15: byte(10*i + j)})
			}
			return netip.AddrFrom4([4]byte{10, 96, byte(i), byte(j)})
		}
		be := func(j int) netip.Addr {
			if v6 {
				return netip.AddrFrom16([16]byte{0xfd, 1, 15: byte(j)})
			}
			return netip.AddrFrom4([4]byte{10, 1, 0, byte(j)})
		}
		s := Service{Frontends: []Frontend{{Addr: fe(0), Port: 80, Protocol: ProtoTCP}}}
		if r.IntN(2) == 0 {
			s.Frontends = append(s.Frontends, Frontend{Addr: fe(1 + r.IntN(2)), Port: 443, Protocol: ProtoUDP, External: true})
		}
		for j := r.IntN(6); j > 0; j-- {
			b := Backend{Addr: be(r.IntN(8)), Port: uint16(8080 + r.IntN(2)), Local: r.IntN(2) == 0, Terminating: r.IntN(4) == 0}
			dup := false
			for _, o := range s.Backends {
				dup = dup || (o.Addr == b.Addr && o.Port == b.Port)
			}
			if !dup {
				s.Backends = append(s.Backends, b)
			}
		}
		if r.IntN(3) == 0 {
			s.SourceRanges = []netip.Prefix{netip.PrefixFrom(be(0), 8+r.IntN(3)).Masked()}
		}
		s.ExternalLocal, s.Maglev = r.IntN(2) == 0, r.IntN(3) == 0
		for j := range s.Backends {
			if s.Maglev {
				s.Backends[j].Weight = uint16(r.IntN(3))
			}
		}
		if r.IntN(3) == 0 {
			s.Affinity = time.Duration(1+r.IntN(2)) * time.Second
		}
		out[fmt.Sprintf("svc-%d", i)] = s
	}
	return out
}

// TestMakeBeforeBreak drives random Syncs, Upserts and Deletes and checks
// after every single kernel write that no frontend's list has a hole, that
// a frontend live before and after an operation never went missing or
// empty in between, and after every operation that the maps hold exactly
// the services and nothing more.
func TestMakeBeforeBreak(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	desired := map[string]Service{}
	writes := 0
	// The slots and backends maps are preallocated (lb_maps.h): an entry
	// of either is deleted only once a grace period has passed that
	// began after no frontend reached it, and none is replaced in place.
	// reached holds, for each slot key and backend ID, the last write
	// after which a frontend reached it (through its list, its Maglev
	// table or, for affinity, its members), and graceFrom the write
	// count each grace period began at. A delete needs a grace period
	// that began after a later write and has passed (its done closed).
	reached := map[any]int{}
	graceFrom := map[*graceRun]int{}
	tb.graceHook = func(g *graceRun) { graceFrom[g] = writes }
	gracePassedSince := func(w int) bool {
		for g, from := range graceFrom {
			select {
			case <-g.done:
				if from > w {
					return true
				}
			default:
			}
		}
		return false
	}
	deletes := 0
	step := 0
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
		last, ever := reached[key]
		switch {
		case del && ever && !gracePassedSince(last):
			t.Fatalf("step %d: %v deleted from a preallocated map after write %d reached it, with no grace period begun since passed", step, key, last)
		case del:
			deletes++
		case !del && exists == nil:
			t.Fatalf("step %d: %v replaced in place in a preallocated map", step, key)
		}
	}
	// noteReached records what the kernel's frontends reach after write w.
	noteReached := func(ks kernelState, w int) {
		for k, v := range ks.svcs {
			for i := uint32(0); i < uint32(v.Serving)+uint32(v.Terminating); i++ {
				sk := bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + i}
				reached[sk] = w
				if id, ok := ks.slots[sk]; ok {
					reached[id] = w
				}
			}
			if tbl, ok := ks.maglev[bpf.MaglevKey{SvcID: v.ID, SlotBase: v.SlotBase}]; ok {
				for _, id := range tbl.BackendIds {
					reached[id] = w
				}
			}
			_ = k
		}
		for k := range ks.members {
			reached[k.BackendID] = w
		}
	}
	for ; step < 300; step++ {
		before := readKernel(t, tb)
		next := randomServices(r)
		op := r.IntN(4)
		// Op 3 Applies a random part of the change: upserts of some of
		// next's services, deletions of some of those it lacks.
		upserts, deletes := map[string]Service{}, []string{}
		if op == 3 {
			for _, name := range slices.Sorted(maps.Keys(next)) {
				if r.IntN(2) == 0 {
					upserts[name] = next[name]
				}
			}
			for _, name := range slices.Sorted(maps.Keys(desired)) {
				if _, ok := next[name]; !ok && r.IntN(2) == 0 {
					deletes = append(deletes, name)
				}
			}
		}
		touched := func(name string) bool {
			_, up := upserts[name]
			return op == 0 || (op == 3 && up) || (op != 3 && name == "svc-1")
		}
		// Frontends that must stay live: in the current and the next
		// state of the services the operation touches, with backends in
		// both.
		live := map[bpf.SvcKey]bool{}
		for name, s := range next {
			if !touched(name) {
				continue
			}
			old, ok := desired[name]
			if !ok || len(old.Backends) == 0 || len(s.Backends) == 0 {
				continue
			}
			for _, f := range s.Frontends {
				for _, of := range old.Frontends {
					if f.key() == of.key() {
						live[f.key()] = true
					}
				}
			}
		}
		// What the maps are to hold after the operation.
		target := maps.Clone(desired)
		switch s, ok := next["svc-1"]; {
		case op == 0:
			target = next
		case op == 1 && ok:
			target["svc-1"] = s
		case op == 1:
			delete(target, "svc-1")
		case op == 3:
			maps.Copy(target, upserts)
			for _, name := range deletes {
				delete(target, name)
			}
		}
		tb.afterWrite = func() {
			writes++
			ks := readKernel(t, tb)
			noteReached(ks, writes)
			if err := ks.checkWhole(); err != nil {
				t.Fatalf("step %d: after a write: %v", step, err)
			}
			if err := ks.checkMembers(target, tb.svcIDs); err != nil {
				t.Fatalf("step %d: after a write: %v", step, err)
			}
			for k := range live {
				if got, ok := ks.backendsOf(k); !ok || len(got) == 0 {
					t.Fatalf("step %d: live frontend %v went missing or empty (%v) mid-change", step, netip.AddrFrom16(k.Addr), got)
				}
			}
		}
		switch op {
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
		case 3:
			err = tb.Apply(upserts, deletes)
			desired = target
		default:
			// An Upsert that would take another service's frontend
			// fails and changes nothing.
			if s, ok := desired["svc-0"]; ok && len(desired) > 1 {
				stolen := next["svc-1"]
				stolen.Frontends = append(stolen.Frontends, s.Frontends[0])
				if err := tb.Upsert("svc-1", stolen); !errors.Is(err, ErrInvalidService) {
					t.Fatalf("step %d: stealing a frontend: %v, want ErrInvalidService", step, err)
				}
				if ks := readKernel(t, tb); fmt.Sprint(ks) != fmt.Sprint(before) {
					t.Fatalf("step %d: a refused Upsert changed the maps", step)
				}
			}
			err = nil
		}
		// The hook stays while readKernel deletes what the operation
		// retired, so that those deletes are checked too.
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if err := readKernel(t, tb).checkExact(t, desired); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
	if writes < 300 {
		t.Errorf("only %d kernel writes in 300 steps", writes)
	}
	if deletes == 0 {
		t.Error("no slot or backend deleted in 300 steps")
	}
}

// TestSyncUnchangedWritesNothing: a Sync of what the maps hold, by this
// Table or by a new one over the same maps (an agent's restart), writes
// nothing and keeps every ID.
func TestSyncUnchangedWritesNothing(t *testing.T) {
	m := newTestMaps(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]Service{"web": webService(), "dns": {
		Frontends: []Frontend{{Addr: addr("fd00::a"), Port: 53, Protocol: ProtoUDP}},
		Backends:  []Backend{{Addr: addr("fd01::5"), Port: 53}, {Addr: addr("fd01::6"), Port: 53, Local: true}},
	}}
	if err := tb.Sync(all); err != nil {
		t.Fatal(err)
	}
	before := readKernel(t, tb)
	for _, table := range []*Table{tb, nil} {
		if table == nil {
			if table, err = NewTable(m); err != nil {
				t.Fatal(err)
			}
		}
		writes := 0
		table.afterWrite = func() { writes++ }
		if err := table.Sync(all); err != nil {
			t.Fatal(err)
		}
		if writes != 0 {
			t.Errorf("Sync of the same services wrote %d times", writes)
		}
		if after := readKernel(t, table); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("Sync of the same services changed the maps:\n%v\n%v", before, after)
		}
		thief := Service{Frontends: []Frontend{webService().Frontends[0]}}
		if err := table.Upsert("thief", thief); !errors.Is(err, ErrInvalidService) {
			t.Errorf("Upsert of another service's frontend: %v, want ErrInvalidService", err)
		}
	}
}

// TestRestartRemovesStray: a new Table's Sync removes what the previous
// process programmed and the new desired state lacks.
func TestRestartRemovesStray(t *testing.T) {
	m := newTestMaps(t)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	gone := Service{Frontends: []Frontend{{Addr: addr("10.96.9.9"), Port: 9, Protocol: ProtoTCP}},
		Backends: []Backend{{Addr: addr("10.2.0.1"), Port: 9}}, SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	if err := tb.Sync(map[string]Service{"web": webService(), "gone": gone}); err != nil {
		t.Fatal(err)
	}
	fresh, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Service{"web": webService()}
	if err := fresh.Sync(want); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, fresh).checkExact(t, want); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidServices(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	fe := Frontend{Addr: addr("10.96.0.1"), Port: 80, Protocol: ProtoTCP}
	be := Backend{Addr: addr("10.1.0.1"), Port: 80}
	for name, s := range map[string]Service{
		"no frontend":          {Backends: []Backend{be}},
		"mapped frontend":      {Frontends: []Frontend{{Addr: addr("::ffff:10.96.0.1"), Port: 80, Protocol: ProtoTCP}}},
		"mixed families":       {Frontends: []Frontend{fe, {Addr: addr("fd00::1"), Port: 80, Protocol: ProtoTCP}}},
		"backend of the other": {Frontends: []Frontend{fe}, Backends: []Backend{{Addr: addr("fd00::1"), Port: 80}}},
		"node port with addr":  {Frontends: []Frontend{{Addr: addr("10.0.0.1"), Port: 80, Protocol: ProtoTCP, NodePort: true}}},
		"unspecified, no flag": {Frontends: []Frontend{{Addr: netip.IPv4Unspecified(), Port: 80, Protocol: ProtoTCP}}},
		"protocol":             {Frontends: []Frontend{{Addr: addr("10.96.0.1"), Port: 80, Protocol: 1}}},
		"frontend twice":       {Frontends: []Frontend{fe, fe}},
		"backend twice":        {Frontends: []Frontend{fe}, Backends: []Backend{be, be}},
		"affinity not seconds": {Frontends: []Frontend{fe}, Affinity: time.Millisecond},
		"affinity negative":    {Frontends: []Frontend{fe}, Affinity: -time.Second},
		"range of the other":   {Frontends: []Frontend{fe}, SourceRanges: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}},
		"invalid range":        {Frontends: []Frontend{fe}, SourceRanges: []netip.Prefix{{}}},
		"too many backends":    {Frontends: []Frontend{fe}, Backends: make([]Backend, maxBackends+1)},
		"sctp to another port": {Frontends: []Frontend{{Addr: addr("10.96.0.1"), Port: 80, Protocol: ProtoSCTP}},
			Backends: []Backend{be, {Addr: addr("10.1.0.2"), Port: 8080}}},
		"sctp node port": {Frontends: []Frontend{fe, {Addr: netip.IPv4Unspecified(), Port: 30080, Protocol: ProtoSCTP, NodePort: true, External: true}},
			Backends: []Backend{be}},
	} {
		if err := tb.Upsert("x", s); !errors.Is(err, ErrInvalidService) {
			t.Errorf("%s: Upsert error %v, want ErrInvalidService", name, err)
		}
	}
	if ks := readKernel(t, tb); len(ks.svcs)+len(ks.slots)+len(ks.backends)+len(ks.ranges) != 0 {
		t.Errorf("refused Upserts left entries: %+v", ks)
	}
	var nilTable *Table
	if err := nilTable.Upsert("x", webService()); err == nil {
		t.Error("Upsert on a nil Table succeeded")
	}
	if err := (&Table{}).Sync(nil); err == nil {
		t.Error("Sync on a zero Table succeeded")
	}
	if _, err := NewTable(Maps{}); err == nil {
		t.Error("NewTable without maps succeeded")
	}
}
