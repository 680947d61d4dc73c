package peerbench

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
)

// The control-plane benchmark's size and rounds: cpServices services
// with five endpoints each, programmed cpRounds times per side.
const (
	cpServices = 10000
	cpRounds   = 3
)

// cpSide is one control plane: it programs the services into an empty
// node and then changes one service, timing each operation.
type cpSide struct {
	// name is the column's name.
	name string
	// peer names the side's namespaces (sidePrefix) and its tools.
	peer peer
	// run programs svcs into node from empty and then adds more[0] (and,
	// by a second way, more[1]), and returns the milliseconds of each
	// operation by name.
	run func(node *topo.Node, svcs, more []svc) (map[string]float64, error)
}

// cpSides are the control planes measured. Each runs in a namespace of
// its own that the benchmark makes (sluice's maps are not namespaced, its
// namespace is made alike all the same).
var cpSides = []cpSide{
	{name: "exec", peer: peer{name: "exec", code: 'e', tools: []string{"true"}}, run: runExecFloor},
	{name: "sluice", peer: peer{name: "sluice", code: 's'}, run: runSluiceControl},
	{name: "iptables-legacy", peer: peer{name: "iptables-legacy", code: 'L', tools: []string{"iptables-legacy-restore"}},
		run: func(node *topo.Node, svcs, more []svc) (map[string]float64, error) {
			return runRestores(node, svcs, more, iptablesRules, iptablesDelta, "iptables-legacy-restore")
		}},
	{name: "iptables-nft", peer: peer{name: "iptables-nft", code: 'N', tools: []string{"iptables-nft-restore"}},
		run: func(node *topo.Node, svcs, more []svc) (map[string]float64, error) {
			return runRestores(node, svcs, more, iptablesRules, iptablesDelta, "iptables-nft-restore")
		}},
	{name: "nftables", peer: peer{name: "nftables", code: 'F', tools: []string{"nft"}},
		run: func(node *topo.Node, svcs, more []svc) (map[string]float64, error) {
			nftDelta := func(s svc) string {
				var b strings.Builder
				nftService(&b, s)
				return b.String()
			}
			return runRestores(node, svcs, more, nftRules, nftDelta, "nft", "-f", "-")
		}},
}

// timed returns how long fn took, in milliseconds.
func timed(fn func() error) (float64, error) {
	start := time.Now()
	err := fn()
	return float64(time.Since(start).Nanoseconds()) / 1e6, err
}

// runExecFloor times starting a program in the namespace the way the
// netfilter sides start their loaders (side.restore), without any input:
// the part of their figures that is not the loader's own.
func runExecFloor(node *topo.Node, _, _ []svc) (map[string]float64, error) {
	s := &side{node: node}
	ms, err := timed(func() error { return s.restore("", "true") })
	return map[string]float64{"full": ms, "delta": ms}, err
}

// runRestores loads full(svcs) into the node's empty namespace with tool
// and then delta(more[0]) on top, with --noflush for iptables-restore.
func runRestores(node *topo.Node, svcs, more []svc, full func([]svc) string, delta func(svc) string, tool ...string) (map[string]float64, error) {
	s := &side{node: node}
	in := full(svcs)
	fullMs, err := timed(func() error { return s.restore(in, tool...) })
	if err != nil {
		return nil, err
	}
	deltaTool := tool
	if strings.HasPrefix(tool[0], "iptables") {
		deltaTool = []string{tool[0], "--noflush"}
	}
	in = delta(more[0])
	deltaMs, err := timed(func() error { return s.restore(in, deltaTool...) })
	return map[string]float64{"full": fullMs, "delta": deltaMs}, err
}

// runSluiceControl opens a datapath and times nat.Table.Sync of svcs
// into its empty maps, then one added service by Sync of everything and
// another by Apply of that one service.
func runSluiceControl(_ *topo.Node, svcs, more []svc) (map[string]float64, error) {
	d, err := datapath.Open(datapath.Options{ConntrackEntries: 1 << 16, MaxInterfaces: 16, PolicySlots: 64})
	if err != nil {
		return nil, err
	}
	defer d.Close()
	t := d.Services()
	all := sluiceServices(svcs)
	fullMs, err := timed(func() error { return t.Sync(all) })
	if err != nil {
		return nil, err
	}
	// more's services have fake endpoints only, so sluiceServices of
	// one alone marks none local, as for every middle service.
	maps.Copy(all, sluiceServices(more[:1]))
	syncMs, err := timed(func() error { return t.Sync(all) })
	if err != nil {
		return nil, err
	}
	one := sluiceServices(more[1:2])
	applyMs, err := timed(func() error { return t.Apply(one, nil) })
	if err != nil {
		return nil, err
	}
	if got := len(t.Services()); got != len(svcs)+2 {
		return nil, fmt.Errorf("%d services programmed, want %d", got, len(svcs)+2)
	}
	return map[string]float64{"full": fullMs, "sync-one": syncMs, "apply-one": applyMs}, nil
}

// cpResult is one cell: a side's milliseconds for one operation, one
// value per round.
type cpResult struct {
	Side, Op string
	Ms       []float64
}

// BenchmarkControlPlane measures programming cpServices ClusterIP
// services with five endpoints into an empty node and adding one more
// at that size: sluice's nat.Table (Sync from empty; one service by
// Sync of everything and by Apply) against kube-proxy's loaders run
// inside the side's node namespace (iptables-restore with the legacy
// and the nft back end, nft -f; the one-service change is the smallest
// delta each could send), and the cost of starting a loader there at
// all ("exec"). Every round makes a new namespace per side, in a
// rotating order. Each sub-benchmark reports the median ms; the run
// writes peerbench-control.csv, .md and .svg beside the connect
// benchmark's files.
func BenchmarkControlPlane(b *testing.B) {
	testutil.RequirePrivileged(b)
	install := os.Getenv("SLUICE_PEERBENCH") == "1"
	var avail []cpSide
	for _, s := range cpSides {
		if missing := missingTools(b, s.peer, install); len(missing) > 0 {
			b.Logf("skipping %s: %v not installed (SLUICE_PEERBENCH=1 installs them)", s.name, missing)
			continue
		}
		avail = append(avail, s)
	}
	svcs := services(cpServices)
	// Two services past the last, with fake endpoints: the changes.
	more := services(cpServices + 3)[cpServices : cpServices+2]
	ms := make([]map[string][]float64, len(avail))
	for r := range cpRounds {
		for j := range avail {
			i := (j + r) % len(avail)
			got, err := runControlSide(avail[i], svcs, more)
			if err != nil {
				b.Fatalf("%s: %v", avail[i].name, err)
			}
			if ms[i] == nil {
				ms[i] = map[string][]float64{}
			}
			for op, v := range got {
				ms[i][op] = append(ms[i][op], v)
			}
		}
	}
	var results []cpResult
	for i, s := range avail {
		for _, op := range []string{"full", "sync-one", "apply-one", "delta"} {
			if v, ok := ms[i][op]; ok {
				c := cpResult{Side: s.name, Op: op, Ms: v}
				results = append(results, c)
				b.Run(s.name+"/"+op, func(b *testing.B) { b.ReportMetric(median(c.Ms), "ms") })
			}
		}
	}
	writeOutputs(b, map[string][]byte{
		"peerbench-control.csv": controlCSV(results),
		"peerbench-control.md":  controlMarkdown(results),
		"peerbench-control.svg": barsSVG("Control plane: 10,000 services, then one more (ms, median, log scale)", controlBars(results)),
	})
}

// runControlSide runs one side in a namespace of its own and removes it.
func runControlSide(s cpSide, svcs, more []svc) (map[string]float64, error) {
	node, err := topo.NewNode(sidePrefix(s.peer))
	if err != nil {
		return nil, err
	}
	got, err := s.run(node, svcs, more)
	if cerr := node.Close(); err == nil {
		err = cerr
	}
	return got, err
}

// median returns the median of v (the lower of the middle two).
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// controlCSV is one line per round and cell.
func controlCSV(results []cpResult) []byte {
	var b strings.Builder
	b.WriteString("side,op,round,ms\n")
	for _, r := range results {
		for i, v := range r.Ms {
			fmt.Fprintf(&b, "%s,%s,%d,%.3f\n", r.Side, r.Op, i, v)
		}
	}
	return []byte(b.String())
}

// controlMarkdown is a table of the median (min-max) ms, a row per side.
func controlMarkdown(results []cpResult) []byte {
	var b strings.Builder
	ops := []string{"full", "sync-one", "apply-one", "delta"}
	fmt.Fprintf(&b, "**Control plane: %d services with 5 endpoints from empty, then one more (ms, median (min-max) of %d rounds)**\n\n", cpServices, cpRounds)
	b.WriteString("| side | full | one by Sync | one by Apply | one by delta |\n| --- | --- | --- | --- | --- |\n")
	var sides []string
	for _, r := range results {
		if !slices.Contains(sides, r.Side) {
			sides = append(sides, r.Side)
		}
	}
	for _, s := range sides {
		fmt.Fprintf(&b, "| %s |", s)
		for _, op := range ops {
			i := slices.IndexFunc(results, func(r cpResult) bool { return r.Side == s && r.Op == op })
			if i < 0 {
				b.WriteString(" - |")
				continue
			}
			v := results[i].Ms
			fmt.Fprintf(&b, " %s (%s-%s) |", millis(median(v)), millis(slices.Min(v)), millis(slices.Max(v)))
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}

// millis formats ms with three significant digits, without an exponent.
func millis(ms float64) string {
	if ms >= 100 {
		return fmt.Sprintf("%.0f", ms)
	}
	return fmt.Sprintf("%.3g", ms)
}

// controlBars are the medians as bars, one per side and operation.
func controlBars(results []cpResult) []bar {
	var bars []bar
	for _, r := range results {
		bars = append(bars, bar{Label: r.Side + " " + r.Op, Value: median(r.Ms), Color: svgColors[r.Side]})
	}
	return bars
}
