package peerbench

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
)

// BenchmarkServiceConnect measures every size in a topology of its own,
// minutes apart, and on a shared machine the floor itself moves by a
// quarter between such batches, more than the 1.1 the goal allows. The
// paired benchmark measures the sizes in the same topology instead,
// seconds apart: each sluice side switches its one table between the
// last service alone and all pairedSize services, and a pair is a batch
// in each state next to one of nftables and one of the floor.

// The paired benchmark's sampling: pairedPairs pairs, each batch
// warmup untimed and perRound timed connects to the last service.
const (
	pairedSize  = 10000
	pairedPairs = 200
)

// The sides of the paired benchmark, by peer name.
var pairedPeers = []string{baseline, "sluice-tc", "sluice-sock", "nftables"}

// pairedRatios are the ratios the paired benchmark summarises: the
// goals of issue 12 first, then every side over the floor.
var pairedRatios = []ratioDef{
	{Name: "tc-10k-over-1", Num: batchKey("sluice-tc", pairedSize), Den: batchKey("sluice-tc", 1), Goal: 1.1},
	{Name: "sock-10k-over-1", Num: batchKey("sluice-sock", pairedSize), Den: batchKey("sluice-sock", 1), Goal: 1.1},
	{Name: "tc-over-nftables", Num: batchKey("sluice-tc", pairedSize), Den: batchKey("nftables", pairedSize), Goal: 1},
	{Name: "sock-over-nftables", Num: batchKey("sluice-sock", pairedSize), Den: batchKey("nftables", pairedSize), Goal: 1},
	{Name: "tc-1-over-floor", Num: batchKey("sluice-tc", 1), Den: baseline},
	{Name: "tc-10k-over-floor", Num: batchKey("sluice-tc", pairedSize), Den: baseline},
	{Name: "sock-1-over-floor", Num: batchKey("sluice-sock", 1), Den: baseline},
	{Name: "sock-10k-over-floor", Num: batchKey("sluice-sock", pairedSize), Den: baseline},
	{Name: "nftables-10k-over-floor", Num: batchKey("nftables", pairedSize), Den: baseline},
}

// pairedBatch is one batch of a pair: a side and the number of services
// its table holds during it (0 for the floor, which has none).
type pairedBatch struct {
	Peer string
	N    int
}

// batchKey names a batch in a pair's medians: "peer/N", or the peer
// alone for the floor.
func batchKey(peer string, n int) string {
	if n == 0 {
		return peer
	}
	return fmt.Sprintf("%s/%d", peer, n)
}

// switches says whether peer is a sluice side, whose table the
// benchmark switches between 1 and size services.
func switches(peer string) bool { return peer == "sluice-tc" || peer == "sluice-sock" }

// pairSchedule is pair k's batches over the sides named in peers: each
// sluice side in one state, the others, each sluice side in the other
// state. The order of the states alternates from pair to pair (1 then
// size in even pairs, size then 1 in odd ones: ABBA over two pairs), so
// that neither state always comes first, and a side's state changes once
// a pair, between its two batches. nftables holds size services; the
// floor none.
func pairSchedule(k int, peers []string, size int) []pairedBatch {
	a, b := 1, size
	if k%2 == 1 {
		a, b = b, a
	}
	var first, middle, second []pairedBatch
	for _, p := range peers {
		switch {
		case switches(p):
			first = append(first, pairedBatch{p, a})
			second = append(second, pairedBatch{p, b})
		case p == baseline:
			middle = append(middle, pairedBatch{p, 0})
		default:
			middle = append(middle, pairedBatch{p, size})
		}
	}
	return slices.Concat(first, middle, second)
}

// tableStates are the two tables a sluice side switches between: the
// last of svcs alone (its endpoints are the five servers) and all of
// them, by number of services.
func tableStates(svcs []svc) map[int]map[string]nat.Service {
	all := sluiceServices(svcs)
	last := svcs[len(svcs)-1].name
	return map[int]map[string]nat.Service{1: {last: all[last]}, len(svcs): all}
}

// pairedTarget is where a side's client connects: the last service, or
// for the floor a server's own address.
func pairedTarget(s *side, svcs []svc) netip.AddrPort {
	t := s.targets(svcs)
	return t[len(t)-1]
}

// BenchmarkServiceConnectPaired measures TCP connect latency to the last
// of pairedSize services in pairs of batches (pairSchedule): sluice's TC
// NAT and connect-time balancing each with their table switched by
// nat.Table.Sync between that service alone and all of them, nftables
// with all of them and the floor, every side built once. Each pair gives
// its batches' medians and the ratios of pairedRatios; the summary over
// the pairs is each ratio's median, an order-statistic interval for it
// and, for the goals of issue 12, a sign test (summarize). The client
// runs SCHED_FIFO (request.RealTime) on every side. It reports the
// summary as metrics of one sub-benchmark per ratio and writes
// peerbench-connect-paired.csv (every pair) and .md (the summary) into
// docs/ or $SLUICE_PEERBENCH_OUT. nftables is skipped, and said so,
// when nft is missing and SLUICE_PEERBENCH is not 1.
func BenchmarkServiceConnectPaired(b *testing.B) {
	testutil.RequirePrivileged(b)
	install := os.Getenv("SLUICE_PEERBENCH") == "1"
	svcs := services(pairedSize)
	states := tableStates(svcs)
	plain, sock := testutil.TempCgroup(b), testutil.TempCgroup(b)
	sides := map[string]*side{}
	var names []string
	setup := time.Now()
	for _, p := range peers {
		if !slices.Contains(pairedPeers, p.name) {
			continue
		}
		if missing := missingTools(b, p, install); len(missing) > 0 {
			b.Logf("skipping %s: %v not installed (SLUICE_PEERBENCH=1 installs them)", p.name, missing)
			continue
		}
		sides[p.name] = openSide(b, p, svcs, plain, sock)
		names = append(names, p.name)
	}
	b.Logf("sides %v built in %v", names, time.Since(setup).Round(time.Millisecond))
	var schedule []pairedBatch
	for k := range pairedPairs {
		schedule = append(schedule, pairSchedule(k, names, pairedSize)...)
	}
	// A sluice side is switched to its next batch's state right after
	// each of its batches, so that the Sync and the garbage collection
	// after it lie between other sides' batches where the schedule
	// allows; only its first batch waits on a Sync (the check before each
	// batch).
	current := map[string]int{}
	for _, s := range sides {
		if s.services != nil {
			current[s.peer.name] = pairedSize
		}
	}
	switchTo := func(peer string, n int) {
		if current[peer] == n {
			return
		}
		if err := sides[peer].services.Sync(states[n]); err != nil {
			b.Fatalf("%s: sync %d services: %v", peer, n, err)
		}
		current[peer] = n
		runtime.GC()
	}
	start := time.Now()
	pairs := make([]map[string]float64, pairedPairs)
	perPair := len(schedule) / pairedPairs
	for i, bt := range schedule {
		k := i / perPair
		if switches(bt.Peer) {
			switchTo(bt.Peer, bt.N)
		}
		s := sides[bt.Peer]
		s.flushConntrack()
		rep, err := runClientIn(b, s.cgroup, request{NetNS: s.client.NS.Name, Dests: []netip.AddrPort{pairedTarget(s, svcs)},
			Warmup: warmup, Count: perRound, RealTime: true})
		if err != nil {
			b.Fatalf("pair %d, %s: %v", k, batchKey(bt.Peer, bt.N), err)
		}
		if pairs[k] == nil {
			pairs[k] = map[string]float64{}
		}
		pairs[k][batchKey(bt.Peer, bt.N)] = medianNanos(rep.Nanos[0])
		if switches(bt.Peer) {
			if j := slices.IndexFunc(schedule[i+1:], func(n pairedBatch) bool { return n.Peer == bt.Peer }); j >= 0 {
				switchTo(bt.Peer, schedule[i+1+j].N)
			}
		}
	}
	b.Logf("%d pairs measured in %v", pairedPairs, time.Since(start).Round(time.Millisecond))
	summary := summarize(pairs, pairedRatios)
	for _, s := range summary {
		b.Run(s.Name, func(b *testing.B) {
			b.ReportMetric(s.Median, "median-x")
			b.ReportMetric(s.Lo, "lo-x")
			b.ReportMetric(s.Hi, "hi-x")
			if s.Goal > 0 {
				b.ReportMetric(s.P, "p-below-goal")
			}
		})
	}
	writeOutputs(b, map[string][]byte{
		"peerbench-connect-paired.csv": pairedCSV(pairs, pairedRatios),
		"peerbench-connect-paired.md":  pairedMarkdown(pairs, summary),
	})
}

// pairKeys are the batch keys present in any pair, sorted.
func pairKeys(pairs []map[string]float64) []string {
	var keys []string
	for _, p := range pairs {
		for k := range p {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

// pairedCSV is one line per pair: its number, its batches' medians in ns
// and its ratios (empty where a side was skipped).
func pairedCSV(pairs []map[string]float64, defs []ratioDef) []byte {
	keys := pairKeys(pairs)
	var b strings.Builder
	b.WriteString("pair")
	for _, k := range keys {
		b.WriteString("," + k + "_p50_ns")
	}
	for _, d := range defs {
		b.WriteString("," + d.Name)
	}
	b.WriteString("\n")
	for i, p := range pairs {
		fmt.Fprintf(&b, "%d", i)
		for _, k := range keys {
			fmt.Fprintf(&b, ",%.0f", p[k])
		}
		for _, d := range defs {
			if r := pairRatios([]map[string]float64{p}, d); len(r) == 1 {
				fmt.Fprintf(&b, ",%.4f", r[0])
			} else {
				b.WriteString(",")
			}
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}

// pairedMarkdown is the summary table (one row per ratio) and the
// median over pairs of each batch's median, in µs.
func pairedMarkdown(pairs []map[string]float64, summary []ratioSummary) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "**Paired TCP connect latency to the last service: ratios over %d pairs**\n\n", len(pairs))
	b.WriteString("| ratio | pairs | median | interval | coverage | goal | pairs below goal | sign-test p |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, s := range summary {
		fmt.Fprintf(&b, "| %s | %d | %.3f | %.3f-%.3f (x(%d), x(%d)) | %.1f %% |", s.Name, s.Pairs, s.Median, s.Lo, s.Hi, s.LoRank, s.HiRank, 100*s.Coverage)
		if s.Goal > 0 {
			fmt.Fprintf(&b, " < %g | %d | %.2g |\n", s.Goal, s.Below, s.P)
		} else {
			b.WriteString(" - | - | - |\n")
		}
	}
	b.WriteString("\n**Median over pairs of each batch's p50 (µs)**\n\n|")
	keys := pairKeys(pairs)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s |", k)
	}
	b.WriteString("\n|" + strings.Repeat(" --- |", len(keys)) + "\n|")
	for _, k := range keys {
		var v []float64
		for _, p := range pairs {
			if x, ok := p[k]; ok {
				v = append(v, x)
			}
		}
		fmt.Fprintf(&b, " %s |", micros(sampleMedian(v)))
	}
	b.WriteString("\n")
	return []byte(b.String())
}

// TestPairedSetup builds the sluice sides with 10 services and switches
// each table by Sync from all of them to the last alone, back and again:
// in every state the client (SCHED_FIFO, as the benchmark's) connects
// to the last service, and to the first, which only the full table
// holds, exactly while it is there.
func TestPairedSetup(t *testing.T) {
	testutil.RequirePrivileged(t)
	svcs := services(10)
	states := tableStates(svcs)
	last := netip.AddrPortFrom(svcs[len(svcs)-1].ip, servicePort)
	first := netip.AddrPortFrom(svcs[0].ip, servicePort)
	plain, sock := testutil.TempCgroup(t), testutil.TempCgroup(t)
	for _, p := range peers {
		if !switches(p.name) {
			continue
		}
		t.Run(p.name, func(t *testing.T) {
			s := openSide(t, p, svcs, plain, sock)
			for step, n := range []int{len(svcs), 1, len(svcs), 1} {
				if step > 0 {
					if err := s.services.Sync(states[n]); err != nil {
						t.Fatalf("sync %d services: %v", n, err)
					}
				}
				if got := len(s.services.Services()); got != n {
					t.Errorf("step %d: table holds %d services, want %d", step, got, n)
				}
				rep, err := runClientIn(t, s.cgroup, request{NetNS: s.client.NS.Name, Dests: []netip.AddrPort{last}, Count: 5, RealTime: true})
				if err != nil {
					t.Fatalf("step %d, %d services: last service: %v", step, n, err)
				}
				if len(rep.Nanos[0]) != 5 {
					t.Errorf("step %d: %d connects timed, want 5", step, len(rep.Nanos[0]))
				}
				if rep.Policy != unix.SCHED_FIFO {
					t.Errorf("step %d: the RealTime client ran under scheduling policy %d, want SCHED_FIFO (%d)", step, rep.Policy, unix.SCHED_FIFO)
				}
				// Out of the table, the first service's SYN is dropped (the
				// node has no route to ClusterIPs): the connect times out,
				// soon, since a connect here takes microseconds.
				_, err = runClientIn(t, s.cgroup, request{NetNS: s.client.NS.Name, Dests: []netip.AddrPort{first}, Count: 1, ConnectTimeout: 100 * time.Millisecond})
				switch {
				case n > 1 && err != nil:
					t.Errorf("step %d, %d services: first service: %v", step, n, err)
				case n == 1 && err == nil:
					t.Errorf("step %d: the first service is reachable with only the last in the table", step)
				case n == 1 && !strings.Contains(err.Error(), "connect 0 to "+first.String()):
					t.Errorf("step %d: the client failed otherwise than by its connect: %v", step, err)
				}
			}
		})
	}
}

// TestPairSchedule checks the order of a pair's batches: the sluice
// sides in one state, the others, the sluice sides in the other, with
// the states' order alternating from pair to pair.
func TestPairSchedule(t *testing.T) {
	peers := []string{baseline, "sluice-tc", "sluice-sock", "nftables"}
	for _, tc := range []struct {
		k    int
		want []pairedBatch
	}{
		{0, []pairedBatch{{"sluice-tc", 1}, {"sluice-sock", 1}, {baseline, 0}, {"nftables", 7}, {"sluice-tc", 7}, {"sluice-sock", 7}}},
		{1, []pairedBatch{{"sluice-tc", 7}, {"sluice-sock", 7}, {baseline, 0}, {"nftables", 7}, {"sluice-tc", 1}, {"sluice-sock", 1}}},
		{2, []pairedBatch{{"sluice-tc", 1}, {"sluice-sock", 1}, {baseline, 0}, {"nftables", 7}, {"sluice-tc", 7}, {"sluice-sock", 7}}},
	} {
		if diff := cmp.Diff(tc.want, pairSchedule(tc.k, peers, 7)); diff != "" {
			t.Errorf("pair %d (-want +got):\n%s", tc.k, diff)
		}
	}
	// Without nftables (not installed) the rest keep their order.
	want := []pairedBatch{{"sluice-tc", 1}, {baseline, 0}, {"sluice-tc", 7}}
	if diff := cmp.Diff(want, pairSchedule(0, []string{baseline, "sluice-tc"}, 7)); diff != "" {
		t.Errorf("without nftables (-want +got):\n%s", diff)
	}
}
