package ipsets

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// Attack tests of the membership map (issue 8): a write that fails
// halfway leaves the old contents whole in both maps.

// newSmallMembershipMaps creates a Map whose membership map holds only
// members entries in all, far fewer than its members map.
func newSmallMembershipMaps(t *testing.T, members uint32) *Map {
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
	return newMapOf(t, Maps{Sets: mk(bpf.MapIPSets, 64), Members: mk(bpf.MapIPSetMembers, members),
		Gen: mk(bpf.MapIPSetGen, 0)})
}

// TestAttackIPSetAddFullKeepsOld adds a member when the membership map
// has no room for the new generation: Add fails, and the inline lookup
// (sl_ipsets) and the classified one (sl_ipsetm) must still agree on the
// old contents, the new member in neither.
func TestAttackIPSetAddFullKeepsOld(t *testing.T) {
	m := newSmallMembershipMaps(t, 2)
	const id = 7
	if _, err := m.Sync(Members{id: {Nets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	err := m.Add(id, Member{Net: netip.MustParsePrefix("10.9.0.0/16")})
	if err == nil {
		t.Fatal("Add into a full membership map succeeded")
	}
	for _, a := range []string{"10.0.0.1", "10.9.1.1", "10.1.1.1"} {
		addr := netip.MustParseAddr(a)
		inline, err := m.Contains(id, addr, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		classified, err := m.Lookup(id, addr, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := a == "10.0.0.1"
		if inline != want || classified != want {
			t.Errorf("%s after a failed Add: inline %v, classified %v, want both %v", a, inline, classified, want)
		}
	}
}

// TestAttackIPSetSyncFullKeepsOld is TestAttackIPSetAddFullKeepsOld for
// Sync: the members map is written (syncer) before the memberships, so
// a membership map without room must not leave the members map new and
// the memberships old.
func TestAttackIPSetSyncFullKeepsOld(t *testing.T) {
	m := newSmallMembershipMaps(t, 2)
	const id = 7
	if _, err := m.Sync(Members{id: {Nets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	_, err := m.Sync(Members{id: {Nets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"),
		netip.MustParsePrefix("10.9.0.0/16")}}})
	if err == nil {
		t.Fatal("Sync into a full membership map succeeded")
	}
	addr := netip.MustParseAddr("10.9.1.1")
	inline, err := m.Contains(id, addr, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	classified, err := m.Lookup(id, addr, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if inline || classified {
		t.Errorf("%s after a failed Sync: inline %v, classified %v, want both false", addr, inline, classified)
	}
}

// BenchmarkAttackIPSetSync100k syncs 100,000 /32 members into 10 sets
// (a fresh Map each time: both maps written from empty).
func BenchmarkAttackIPSetSync100k(b *testing.B) {
	testutil.RequirePrivileged(b)
	spec, err := bpf.LoadSpec()
	if err != nil {
		b.Fatal(err)
	}
	const n = 100000
	sets := Members{}
	for i := range n {
		id := uint64(i % 10)
		s := sets[id]
		s.Nets = append(s.Nets, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32))
		sets[id] = s
	}
	for b.Loop() {
		b.StopTimer()
		mk := func(name string, n uint32) *ebpf.Map {
			ms := spec.Maps[name].Copy()
			ms.MaxEntries = n
			em, err := ebpf.NewMap(ms)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { em.Close() })
			return em
		}
		m, err := NewMap(Maps{Sets: mk(bpf.MapIPSets, n), Members: mk(bpf.MapIPSetMembers, 2*n), Gen: mk(bpf.MapIPSetGen, 1)})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := m.Sync(sets); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		// The kernel's own account of each map (fdinfo memlock, which
		// LPM tries report as their used memory).
		for name, em := range map[string]*ebpf.Map{"sets": m.typed.EBPF(), "memberships": m.members.EBPF()} {
			fi, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", em.FD()))
			if err != nil {
				b.Fatal(err)
			}
			for _, l := range strings.Split(string(fi), "\n") {
				if v, ok := strings.CutPrefix(l, "memlock:"); ok {
					bytes, _ := strconv.Atoi(strings.TrimSpace(v))
					b.ReportMetric(float64(bytes)/n, name+"-B/member")
				}
			}
		}
		b.StartTimer()
	}
}
