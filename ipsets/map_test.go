package ipsets

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

func newTestMap(t *testing.T, entries uint32) *Map {
	t.Helper()
	return newMapOf(t, newTestMaps(t, entries))
}

// newTestMaps creates the three maps of a Map, as the datapath declares
// them, with room for entries members.
func newTestMaps(t *testing.T, entries uint32) Maps {
	t.Helper()
	testutil.RequirePrivileged(t)
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string, n uint32) *ebpf.Map {
		ms := spec.Maps[name].Copy()
		if n != 0 {
			ms.MaxEntries = n
		}
		em, err := ebpf.NewMap(ms)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { em.Close() })
		return em
	}
	return Maps{Sets: mk(bpf.MapIPSets, entries), Members: mk(bpf.MapIPSetMembers, 2*entries),
		Gen: mk(bpf.MapIPSetGen, 0)}
}

func newMapOf(t *testing.T, ms Maps) *Map {
	t.Helper()
	m, err := NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// randomSets draws sets of both families from small pools, among them
// IPv6 members that cover IPv4-mapped space and addresses that share an
// IPv4 member's low 32 bits.
type randomSets struct {
	r      *rand.Rand
	v4, v6 []netip.Addr
}

func newRandomSets(seed uint64) *randomSets {
	g := &randomSets{r: rand.New(rand.NewPCG(seed, 7))}
	for i := 0; i < 16; i++ {
		a4 := netip.AddrFrom4([4]byte{10, 0, byte(g.r.IntN(3)), byte(g.r.IntN(256))})
		g.v4 = append(g.v4, a4)
		b := a4.As4()
		var a [16]byte
		switch i % 3 {
		case 0:
			copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8})
			copy(a[12:], b[:])
		case 1:
			copy(a[12:], b[:]) // ::a.b.c.d
		default:
			a[0], a[15] = 0xfd, byte(g.r.IntN(256))
		}
		g.v6 = append(g.v6, netip.AddrFrom16(a))
	}
	return g
}

func (g *randomSets) addr() netip.Addr {
	if g.r.IntN(2) == 0 {
		return g.v4[g.r.IntN(len(g.v4))]
	}
	return g.v6[g.r.IntN(len(g.v6))]
}

func (g *randomSets) prefix() netip.Prefix {
	a := g.addr()
	if a.Is4() {
		return netip.PrefixFrom(a, []int{0, 8, 16, 23, 24, 31, 32}[g.r.IntN(7)]).Masked()
	}
	return netip.PrefixFrom(a, []int{0, 1, 8, 64, 95, 96, 120, 128}[g.r.IntN(8)]).Masked()
}

func (g *randomSets) sets() Members {
	out := Members{}
	for id := uint64(0); id < 6; id++ {
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

// TestDifferential holds the kernel trie's lookups, the ones programs
// make, to Members on random sets of both families and random addresses,
// across Syncs that change the sets.
func TestDifferential(t *testing.T) {
	m := newTestMap(t, 4096)
	g := newRandomSets(1)
	checked, hits := 0, 0
	for round := 0; round < 40; round++ {
		sets := g.sets()
		if _, err := m.Sync(sets); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 500; i++ {
			id := uint64(g.r.IntN(7))
			addr := g.addr()
			proto, port := uint8(0), uint16(0)
			want := sets.ContainsAddr(id, addr)
			if g.r.IntN(2) == 0 {
				proto, port = []uint8{6, 17}[g.r.IntN(2)], uint16(g.r.IntN(3))
				want = sets.ContainsNamedPort(id, addr, proto, port)
			}
			got, err := m.Contains(id, addr, proto, port)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("round %d: set %d %+v, lookup of %s proto %d port %d: kernel %v, Members %v",
					round, id, sets[id], addr, proto, port, got, want)
			}
			checked++
			if got {
				hits++
			}
		}
	}
	if hits < checked/10 || hits > checked*9/10 {
		t.Errorf("%d of %d lookups hit: the pools do not exercise both answers", hits, checked)
	}
}

// TestSyncRead checks that Read returns what Sync wrote and that a second
// Sync writes only the difference.
func TestSyncRead(t *testing.T) {
	m := newTestMap(t, 256)
	sets := Members{
		1: {Nets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::/0")}},
		2: {NamedPorts: []NamedPort{{Addr: netip.MustParseAddr("fd00::1"), Protocol: 6, Port: 443}}},
	}
	if _, err := m.Sync(sets); err != nil {
		t.Fatal(err)
	}
	got, err := m.Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got {
		slices.SortFunc(s.Nets, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	}
	opts := cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })
	if diff := cmp.Diff(sets, got, opts, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Read after Sync (-want +got):\n%s", diff)
	}
	sets[1] = Set{Nets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	stats, err := m.Sync(sets)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Deleted != 1 || stats.Added+stats.Changed != 0 {
		t.Errorf("second Sync %+v, want one delete and no write", stats)
	}
	if err := m.Remove(1, Member{Net: netip.MustParsePrefix("10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(1, Member{Net: netip.MustParsePrefix("10.0.0.0/8")}); err != nil {
		t.Errorf("Remove of an absent member: %v", err)
	}
	if ok, _ := m.Contains(1, netip.MustParseAddr("10.1.1.1"), 0, 0); ok {
		t.Error("10.1.1.1 still in set 1 after Remove")
	}
	if err := m.Add(1, Member{Net: netip.MustParsePrefix("::ffff:1.2.3.0/120")}); err == nil {
		t.Error("Add of an IPv4-mapped prefix succeeded")
	}
}

func TestNewMapRejects(t *testing.T) {
	good := newTestMaps(t, 4)
	for _, spec := range []ebpf.MapSpec{
		{Type: ebpf.Hash, KeySize: uint32(keySize), ValueSize: 4, MaxEntries: 4},
		{Type: ebpf.LPMTrie, KeySize: 32, ValueSize: 4, MaxEntries: 4, Flags: 1},
		{Type: ebpf.LPMTrie, KeySize: uint32(keySize), ValueSize: 8, MaxEntries: 4, Flags: 1},
	} {
		m, err := ebpf.NewMap(&spec)
		if err != nil {
			t.Fatal(err)
		}
		for _, ms := range []Maps{{m, good.Members, good.Gen}, {good.Sets, m, good.Gen}, {good.Sets, good.Members, m}} {
			if _, err := NewMap(ms); err == nil {
				t.Errorf("NewMap accepted a %s with key/value %d/%d", spec.Type, spec.KeySize, spec.ValueSize)
			}
		}
		m.Close()
	}
	for _, ms := range []Maps{{}, {Sets: good.Sets}, {Sets: good.Sets, Members: good.Members}} {
		if _, err := NewMap(ms); err == nil {
			t.Errorf("NewMap(%+v) succeeded", ms)
		}
	}
}
