package nat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// memlock is the kernel's account of a map's memory (fdinfo's memlock,
// which for maps that are not preallocated counts the entries they hold).
func memlock(tb testing.TB, m *ebpf.Map) int {
	tb.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "memlock:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatal("no memlock in fdinfo")
	return 0
}

// BenchmarkMemory reports the kernel memory a service and a backend take
// in the load-balancing maps: 10,000 ClusterIP services programmed with
// one backend each and then with five, from the maps' memlock before and
// after (bytes/service counts a service's frontend and its list's
// bookkeeping, bytes/backend what a backend adds beyond the preallocated
// maps: these services have no affinity, which adds a membership per
// backend), and what the preallocated slots and backends maps take per
// backend of capacity.
func BenchmarkMemory(b *testing.B) {
	const n = 10000
	use := func(perService int) int {
		maps := newBenchMaps(b, 1<<17)
		all := map[string]Service{}
		for name, s := range benchServices(n) {
			s.Backends = s.Backends[:perService]
			all[name] = s
		}
		ms := []*ebpf.Map{maps.Services, maps.Slots, maps.Backends, maps.Ranges, maps.Members, maps.Maglev, maps.Affinity}
		before := 0
		for _, m := range ms {
			before += memlock(b, m)
		}
		tb, err := NewTable(maps)
		if err != nil {
			b.Fatal(err)
		}
		if err := tb.Sync(all); err != nil {
			b.Fatal(err)
		}
		after := 0
		for _, m := range ms {
			after += memlock(b, m)
		}
		return after - before
	}
	var one, five int
	for b.Loop() {
		one, five = use(1), use(5)
	}
	perBackend := float64(five-one) / (4 * n)
	b.ReportMetric(float64(one)/n-perBackend, "bytes/service")
	b.ReportMetric(perBackend, "bytes/backend")
	// The slots and backends maps are preallocated: they take their
	// memory when made, per backend of capacity two slots (the
	// datapath's sizing: two lists while one replaces the other) and an
	// entry.
	m := newBenchMaps(b, 1<<17)
	perCapacity := 2*float64(memlock(b, m.Slots))/float64(m.Slots.MaxEntries()) +
		float64(memlock(b, m.Backends))/float64(m.Backends.MaxEntries())
	b.ReportMetric(perCapacity, "bytes/backend-capacity")
}
