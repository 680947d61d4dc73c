package peerbench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
)

// The sizes and the sampling of BenchmarkServiceConnect: per size, every
// side is measured in rounds, one batch per side and round in a rotating
// order, each batch warmup untimed and perRound timed connects to each
// target; the percentiles are over all rounds' samples.
var benchSizes = []int{1, 1000, 10000}

const (
	rounds   = 5
	warmup   = 50
	perRound = 400
)

// result is one cell: a peer's connect latency to one target at one size.
type result struct {
	N        int
	Peer     string
	Target   string // "first", "last" or, for the baseline, "direct"
	P50, P99 float64
	Samples  int
}

// BenchmarkServiceConnect measures TCP connect latency (the SYN's round
// trip through the node) to the first and to the last of N ClusterIP
// services, for sluice's TC NAT and connect-time balancing and
// kube-proxy's iptables (legacy and nft back ends) and nftables modes, and
// the no-rules floor, every side in the same run with interleaved
// rounds. Each sub-benchmark reports p50-ns, p99-ns and x-floor (its p50
// over the floor's p50 of the same size); the whole run writes
// peerbench-connect.csv, .md and .svg into docs/ (or
// $SLUICE_PEERBENCH_OUT). With SLUICE_PEERBENCH=1 missing peer tools are
// installed with apt-get; without them those peers are skipped.
func BenchmarkServiceConnect(b *testing.B) {
	testutil.RequirePrivileged(b)
	install := os.Getenv("SLUICE_PEERBENCH") == "1"
	var avail []peer
	for _, p := range peers {
		if missing := missingTools(b, p, install); len(missing) > 0 {
			b.Logf("skipping %s: %v not installed (SLUICE_PEERBENCH=1 installs them)", p.name, missing)
			continue
		}
		avail = append(avail, p)
	}
	plain, sock := testutil.TempCgroup(b), testutil.TempCgroup(b)
	var results []result
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			svcs := services(n)
			var sides []*side
			for _, p := range avail {
				sides = append(sides, openSide(b, p, svcs, plain, sock))
			}
			samples := make([][][]int64, len(sides))
			for r := range rounds {
				for j := range sides {
					i := (j + r) % len(sides)
					s := sides[i]
					s.flushConntrack()
					rep, err := runClientIn(b, s.cgroup, request{NetNS: s.client.NS.Name, Dests: s.targets(svcs), Warmup: warmup, Count: perRound})
					if err != nil {
						b.Fatal(err)
					}
					if samples[i] == nil {
						samples[i] = make([][]int64, len(rep.Nanos))
					}
					for t, ns := range rep.Nanos {
						samples[i][t] = append(samples[i][t], ns...)
					}
				}
			}
			var floor float64
			var cells []result
			for i, s := range sides {
				names := []string{"first", "last"}
				if s.peer.name == baseline {
					names = []string{"direct"}
				}
				for t, ns := range samples[i] {
					c := result{N: n, Peer: s.peer.name, Target: names[t], P50: percentile(ns, 50), P99: percentile(ns, 99), Samples: len(ns)}
					if s.peer.name == baseline {
						floor = c.P50
					}
					cells = append(cells, c)
				}
			}
			for _, c := range cells {
				b.Run(c.Peer+"/"+c.Target, func(b *testing.B) {
					b.ReportMetric(c.P50, "p50-ns")
					b.ReportMetric(c.P99, "p99-ns")
					if floor > 0 {
						b.ReportMetric(c.P50/floor, "x-floor")
					}
				})
			}
			results = append(results, cells...)
		})
	}
	if len(results) == 0 {
		return
	}
	writeOutputs(b, map[string][]byte{
		"peerbench-connect.csv": resultsCSV(results),
		"peerbench-connect.md":  resultsMarkdown(results),
		"peerbench-connect.svg": resultsSVG(results),
	})
}

// writeOutputs writes each file into docs/ or $SLUICE_PEERBENCH_OUT.
func writeOutputs(tb testing.TB, files map[string][]byte) {
	dir := os.Getenv("SLUICE_PEERBENCH_OUT")
	if dir == "" {
		dir = filepath.Join("..", "..", "docs")
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			tb.Error(err)
		}
	}
}

// percentile returns the p-th percentile of ns (nearest rank).
func percentile(ns []int64, p int) float64 {
	if len(ns) == 0 {
		return 0
	}
	s := slices.Clone(ns)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return float64(s[max(i-1, 0)])
}
