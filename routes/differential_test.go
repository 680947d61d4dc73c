package routes

import (
	"errors"
	"flag"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
)

var diffSeed = flag.Uint64("routes.seed", 1, "seed of the random routes of TestLookupDifferential")

// TestLookupDifferential holds the kernel's LPM trie to Table: rounds of
// random routes (IPv4 and IPv6, nested and adjacent, /0 to /32 and /128,
// default routes) are synced into a kernel map, each round changing part
// of the last one's, and then thousands of addresses are looked up in
// both, with the reverse-path decision the datapath takes from the
// result, and prefixes held and not held are got from both.
func TestLookupDifferential(t *testing.T) {
	m := newTestMap(t, 0)
	rng := rand.New(rand.NewPCG(*diffSeed, 0x5eed))
	t.Logf("seed %d (-routes.seed)", *diffSeed)

	// Route counts per round: empty and single-route tables, then
	// growing ones.
	sizes := []int{0, 1, 2, 20, 200, 1000, 3000, 3000, 500, 4000, 50, 2000}
	const probesPerRound = 4000
	var lookups, found4, found6, rpfs, allowed, gets, held, failures int
	fail := func(format string, args ...any) {
		t.Helper()
		failures++
		t.Errorf(format, args...)
		if failures >= 10 {
			t.FailNow()
		}
	}

	g := newRouteGen(rng)
	var desired []Route
	for round, size := range sizes {
		if round%4 == 0 {
			g = newRouteGen(rng) // new bases: mostly new prefixes
		}
		desired = nextRoutes(g, desired, size)
		stats, err := m.Sync(desired)
		if err != nil {
			t.Fatalf("round %d: sync %d routes: %v", round, len(desired), err)
		}
		if got := stats.Added + stats.Changed + stats.Unchanged; got != len(desired) {
			t.Errorf("round %d: stats %+v account for %d routes, want %d", round, stats, got, len(desired))
		}
		table := mustTable(t, desired)
		if diff := cmp.Diff(table.Routes(), mustRoutes(t, m), netipEqual); diff != "" {
			t.Fatalf("round %d: map after Sync (-table +kernel):\n%s", round, diff)
		}

		for range probesPerRound {
			a := g.probe(desired)
			want, found := table.Lookup(a)
			got, err := m.Lookup(a)
			lookups++
			switch {
			case !found:
				if !errors.Is(err, ebpf.ErrKeyNotExist) {
					fail("round %d: Lookup(%s): kernel %s, %v; table has no route", round, a, got, err)
				}
			case err != nil:
				fail("round %d: Lookup(%s): kernel error %v; table has %s", round, a, err, want)
			default:
				if want.Prefix.Addr().Is4() {
					found4++
				} else {
					found6++
				}
				want.Prefix = netip.Prefix{} // the kernel does not say
				if diff := cmp.Diff(want, got, netipEqual); diff != "" {
					fail("round %d: Lookup(%s) (-table +kernel):\n%s", round, a, diff)
				}
			}
			// The datapath's check on the route's own interface and on
			// another one.
			for _, ifindex := range []uint32{want.Ifindex, 1 + rng.Uint32N(8)} {
				rpfs++
				w, k := RPFAllows(table, a, ifindex), rpfAllows(got, err == nil, ifindex)
				if w {
					allowed++
				}
				if w != k {
					fail("round %d: RPF of %s on if %d: table %v, kernel %v", round, a, ifindex, w, k)
				}
			}
		}

		// Get of held prefixes, and of random ones, mostly not held.
		for i := range min(len(desired), 300) {
			r := desired[rng.IntN(len(desired))]
			if i%2 == 1 {
				r.Prefix = g.prefix()
			}
			want, found := table.Get(r.Prefix)
			got, err := m.Get(r.Prefix)
			gets++
			switch {
			case !found:
				if !errors.Is(err, ebpf.ErrKeyNotExist) {
					fail("round %d: Get(%s): kernel %s, %v; table holds no such prefix", round, r.Prefix, got, err)
				}
			case err != nil:
				fail("round %d: Get(%s): kernel error %v; table has %s", round, r.Prefix, err, want)
			default:
				held++
				if diff := cmp.Diff(want, got, netipEqual); diff != "" {
					fail("round %d: Get(%s) (-table +kernel):\n%s", round, r.Prefix, diff)
				}
			}
		}
	}
	t.Logf("%d rounds agree: %d lookups (%d matched an IPv4 route, %d an IPv6 one), "+
		"%d reverse-path decisions (%d allowed), %d gets (%d held)",
		len(sizes), lookups, found4, found6, rpfs, allowed, gets, held)
}

// nextRoutes returns size routes: about half of prev's, some with new
// values, and new ones from g.
func nextRoutes(g *routeGen, prev []Route, size int) []Route {
	var next []Route
	seen := make(map[Key]bool)
	for _, r := range prev {
		if len(next) >= size/2 || g.rng.IntN(2) == 0 {
			continue
		}
		if g.rng.IntN(4) == 0 {
			r = g.route(r.Prefix)
		}
		seen[keyOf(r.Prefix)] = true
		next = append(next, r)
	}
	for _, r := range g.routes(size) {
		if len(next) >= size {
			break
		}
		if k := keyOf(r.Prefix); !seen[k] {
			seen[k] = true
			next = append(next, r)
		}
	}
	return next
}
