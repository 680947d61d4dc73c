package maps

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkSyncerApply programs a 100,000-entry hash map in which 1% of
// the entries change between Applies, and in the same loop rewrites every
// entry the naive way (one batch update of the whole desired state), so
// the two are compared under the same conditions.
//
// Metrics: ns/op and entries/s are for Apply (entries/s counts the whole
// desired state reconciled per second); naive-ns/op is the full rewrite;
// naive/apply is how many times longer the rewrite takes.
func BenchmarkSyncerApply(b *testing.B) {
	for _, mode := range []struct {
		name    string
		noBatch bool
	}{{"batch", false}, {"per-element", true}} {
		b.Run(mode.name, func(b *testing.B) {
			benchmarkApply(b, mode.noBatch)
		})
	}
}

func benchmarkApply(b *testing.B, noBatch bool) {
	const entries = 100_000
	const changedPerOp = entries / 100
	m := newFlowHash(b, entries)
	if noBatch {
		m.DisableBatch()
	}
	desired := make(map[flowKey]flowValue, entries)
	keys := make([]flowKey, entries)
	for i := range entries {
		k, v := flowEntry(i)
		desired[k] = v
		keys[i] = k
	}
	s := NewSyncer(m)
	if _, err := s.Apply(desired); err != nil {
		b.Fatal(err)
	}
	values := make([]flowValue, entries)

	var applyTime, naiveTime time.Duration
	ops := 0
	for b.Loop() {
		for j := range changedPerOp {
			k := keys[(ops*changedPerOp+j)%entries]
			v := desired[k]
			v.Packets++
			desired[k] = v
		}

		start := time.Now()
		stats, err := s.Apply(desired)
		applyTime += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if stats.Changed != changedPerOp || stats.Added+stats.Deleted != 0 {
			b.Fatalf("Apply did %+v, want %d changes only", stats, changedPerOp)
		}

		for i, k := range keys {
			values[i] = desired[k]
		}
		start = time.Now()
		if _, err := m.BatchUpdate(keys, values, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
		naiveTime += time.Since(start)
		ops++
	}
	applyNs := float64(applyTime.Nanoseconds()) / float64(ops)
	naiveNs := float64(naiveTime.Nanoseconds()) / float64(ops)
	b.ReportMetric(applyNs, "ns/op")
	b.ReportMetric(entries/(applyNs/1e9), "entries/s")
	b.ReportMetric(naiveNs, "naive-ns/op")
	b.ReportMetric(naiveNs/applyNs, "naive/apply")
}

// BenchmarkMapDump reads a 100,000-entry hash map with Dump, the read at
// the start of every Apply.
func BenchmarkMapDump(b *testing.B) {
	const entries = 100_000
	m := newFlowHash(b, entries)
	keys, values := benchEntries(entries)
	if _, err := m.BatchUpdate(keys, values, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var err error
		keys, values, err = m.dumpInto(keys[:0], values[:0])
		if err != nil {
			b.Fatal(err)
		}
		if len(keys) != entries {
			b.Fatalf("dumped %d entries, want %d", len(keys), entries)
		}
	}
	b.ReportMetric(entries/(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e9), "entries/s")
}

// BenchmarkMapBatchUpdate overwrites every entry of a 100,000-entry hash
// map with one BatchUpdate, the naive baseline of BenchmarkSyncerApply.
func BenchmarkMapBatchUpdate(b *testing.B) {
	const entries = 100_000
	m := newFlowHash(b, entries)
	keys, values := benchEntries(entries)
	for b.Loop() {
		if _, err := m.BatchUpdate(keys, values, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(entries/(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e9), "entries/s")
}

func benchEntries(n int) ([]flowKey, []flowValue) {
	keys := make([]flowKey, n)
	values := make([]flowValue, n)
	for i := range n {
		keys[i], values[i] = flowEntry(i)
	}
	return keys, values
}
