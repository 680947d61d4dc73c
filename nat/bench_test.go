package nat

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// benchServices returns n services of 5 backends each.
func benchServices(n int) map[string]Service {
	out := make(map[string]Service, n)
	for i := range n {
		s := Service{Frontends: []Frontend{{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: ProtoTCP}}}
		for j := range 5 {
			s.Backends = append(s.Backends, Backend{Addr: netip.AddrFrom4([4]byte{10, byte(1 + j), byte(i >> 8), byte(i)}), Port: 8080})
		}
		out[fmt.Sprintf("svc-%d", i)] = s
	}
	return out
}

// newBenchMaps creates the load-balancing maps as the datapath declares
// them, with entries each (Maglev: 64 tables).
func newBenchMaps(b testing.TB, entries uint32) Maps {
	return newBenchMapsAllocating(b, entries, false)
}

// newBenchMapsAllocating is newBenchMaps, with the slots and backends
// maps allocating each entry (BPF_F_NO_PREALLOC, their layout before
// they were preallocated) when allocating.
func newBenchMapsAllocating(b testing.TB, entries uint32, allocating bool) Maps {
	b.Helper()
	testutil.RequirePrivileged(b)
	spec, err := bpf.LoadSpec()
	if err != nil {
		b.Fatal(err)
	}
	mk := func(name string) *ebpf.Map {
		ms := spec.Maps[name].Copy()
		ms.MaxEntries = entries
		if allocating && (name == bpf.MapBackendSlots || name == bpf.MapBackends) {
			ms.Flags |= unix.BPF_F_NO_PREALLOC
		}
		if name == mapMaglev {
			ms.MaxEntries = 64 // 64 KiB a table; these services use none
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		return m
	}
	return Maps{Services: mk(bpf.MapServices), Slots: mk(bpf.MapBackendSlots), Backends: mk(bpf.MapBackends),
		Ranges: mk(bpf.MapServiceRanges), Members: mk(mapMembers), Maglev: mk(mapMaglev), Affinity: mk(bpf.MapAffinity)}
}

// BenchmarkSync: 10,000 services of 5 backends from empty, and one
// service's backends changed among 10,000, by a Sync of all, an Apply of
// the one and an Upsert.
func BenchmarkSync(b *testing.B) {
	const n = 10000
	all := benchServices(n)
	// from-empty-allocating is from-empty over slots and backends maps
	// that allocate each entry, as they did before they were
	// preallocated: the ratio is what preallocation saves.
	for _, allocating := range []bool{false, true} {
		name := "from-empty/services=10000"
		if allocating {
			name = "from-empty-allocating/services=10000"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				tb, err := NewTable(newBenchMapsAllocating(b, 1<<17, allocating))
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := tb.Sync(all); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("one-changed/services=10000", func(b *testing.B) {
		tb, err := NewTable(newBenchMaps(b, 1<<17))
		if err != nil {
			b.Fatal(err)
		}
		if err := tb.Sync(all); err != nil {
			b.Fatal(err)
		}
		i := 0
		for b.Loop() {
			s := all["svc-7"]
			s.Backends = append([]Backend(nil), s.Backends...)
			s.Backends[0].Port = uint16(9000 + i%2)
			all["svc-7"] = s
			i++
			if err := tb.Sync(all); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("apply-one/services=10000", func(b *testing.B) {
		tb, err := NewTable(newBenchMaps(b, 1<<17))
		if err != nil {
			b.Fatal(err)
		}
		if err := tb.Sync(all); err != nil {
			b.Fatal(err)
		}
		i := 0
		for b.Loop() {
			s := all["svc-7"]
			s.Backends = append([]Backend(nil), s.Backends...)
			s.Backends[0].Port = uint16(9000 + i%2)
			i++
			if err := tb.Apply(map[string]Service{"svc-7": s}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("upsert-one/services=10000", func(b *testing.B) {
		tb, err := NewTable(newBenchMaps(b, 1<<17))
		if err != nil {
			b.Fatal(err)
		}
		if err := tb.Sync(all); err != nil {
			b.Fatal(err)
		}
		i := 0
		for b.Loop() {
			s := all["svc-7"]
			s.Backends = append([]Backend(nil), s.Backends...)
			s.Backends[0].Port = uint16(9000 + i%2)
			i++
			if err := tb.Upsert("svc-7", s); err != nil {
				b.Fatal(err)
			}
		}
	})
}
