package nat

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// largeServices returns n services of 1 to 8 backends drawn from a pool
// that services share, some with Maglev or source ranges, with seed r.
func largeServices(r *rand.Rand, n int, tag byte) map[string]Service {
	out := make(map[string]Service, n)
	for i := range n {
		s := Service{Frontends: []Frontend{{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: ProtoTCP}},
			Maglev: i%200 == 0}
		if i%50 == 0 {
			s.Frontends = append(s.Frontends, Frontend{Addr: netip.IPv4Unspecified(), Port: uint16(20000 + 3000*int(tag-'a') + i), Protocol: ProtoTCP, NodePort: true, External: true})
			s.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}
		}
		seen := map[int]bool{}
		for range 1 + r.IntN(8) {
			j := r.IntN(4 * n)
			if seen[j] {
				continue
			}
			seen[j] = true
			s.Backends = append(s.Backends, Backend{Addr: netip.AddrFrom4([4]byte{10, 1 + byte(j>>16), byte(j >> 8), byte(j)}), Port: 8080,
				Local: r.IntN(3) == 0, Terminating: r.IntN(5) == 0})
		}
		out[fmt.Sprintf("svc-%c-%d", tag, i)] = s
	}
	return out
}

// TestSyncLarge: Syncs of more new entries than one chunk the Table
// writes ahead (writeAheadEntries) program exactly the services, from
// empty, after changing, adding and removing many, and after a restart.
func TestSyncLarge(t *testing.T) {
	m := newBenchMaps(t, 1<<16)
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	all := largeServices(r, 3000, 'a')
	entries := 0
	for _, s := range all {
		entries += 3 * len(s.Backends) // backend (some shared), slot, member
	}
	if entries < 2*writeAheadEntries {
		t.Fatalf("%d entries: too few for chunks of %d", entries, writeAheadEntries)
	}
	if err := tb.Sync(all); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		ks := readKernel(t, tb)
		if err := ks.checkExact(t, all); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if err := ks.checkWhole(); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	check("from empty")

	// New backends for a third, a third gone, as many new, and the
	// frontend of a gone service taken by a new one.
	next := largeServices(r, 3000, 'a')
	for name, s := range next {
		switch r.IntN(3) {
		case 0:
			all[name] = s
		case 1:
			delete(all, name)
		}
	}
	for name, s := range largeServices(r, 1000, 'b') {
		s.Frontends[0].Addr = netip.AddrFrom4([4]byte{10, 97, s.Frontends[0].Addr.As4()[2], s.Frontends[0].Addr.As4()[3]})
		all[name] = s
	}
	for name := range all {
		if _, ok := next[name]; ok {
			continue
		}
		thief := all[name]
		for victim, s := range next {
			if _, kept := all[victim]; !kept && len(s.Frontends) == 1 {
				thief.Frontends = []Frontend{s.Frontends[0]}
				all[name] = thief
				break
			}
		}
		break
	}
	if err := tb.Sync(all); err != nil {
		t.Fatal(err)
	}
	check("after changes")

	if tb, err = NewTable(m); err != nil {
		t.Fatal(err)
	}
	writes := 0
	tb.afterWrite = func() { writes++ }
	if err := tb.Sync(all); err != nil {
		t.Fatal(err)
	}
	if writes != 0 {
		t.Errorf("Sync after a restart wrote %d times", writes)
	}
	tb.afterWrite = nil
	for name, s := range largeServices(r, 3000, 'c') {
		s.Frontends[0].Addr = netip.AddrFrom4([4]byte{10, 98, s.Frontends[0].Addr.As4()[2], s.Frontends[0].Addr.As4()[3]})
		s.Frontends = s.Frontends[:1]
		s.SourceRanges = nil
		all[name] = s
	}
	if err := tb.Sync(all); err != nil {
		t.Fatal(err)
	}
	check("after a restart")
}
