package peerbench

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
)

// The policy benchmark's sizes and sampling: per size, polRounds rounds,
// in each every side in a rotating order does warmup untimed and
// perRound timed connects and one floodFor UDP flood.
var policySizes = []int{10, 1000, 10000}

const (
	polRounds = 5
	floodFor  = time.Second
)

// The policy under test: n rules that miss on the source address (/24s
// of 100.64.0.0/10, never on the path) and then an allow of the client's
// /24. Traffic only ever flows to and from the benchmark's namespaces.
var clientNet = netip.PrefixFrom(clientAddr, 24).Masked()

// missNet is the source of non-matching rule i (i < 16384).
func missNet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i/256), byte(i % 256), 0}), 24)
}

// sluicePolicy is the policy as sluice rules, for the client's workload
// interface: n allows of TCP to backendPort from a missNet, then the
// allow of allow (clientNet); the tier denies the rest.
func sluicePolicy(n int, allow netip.Prefix) polprog.Rules {
	rules := make([]polprog.Rule, 0, n+1)
	for i := range n {
		rules = append(rules, polprog.Rule{ID: uint64(i + 2), Action: polprog.ActionAllow, Protocol: "tcp",
			SrcNets: []netip.Prefix{missNet(i)}, DstPorts: []polprog.PortRange{polprog.Port(backendPort)}})
	}
	rules = append(rules, polprog.Rule{ID: 1, Action: polprog.ActionAllow, SrcNets: []netip.Prefix{allow}})
	return polprog.Rules{Tiers: []polprog.Tier{{Name: "default", Policies: []polprog.Policy{{Name: "bench", Rules: rules}}}}}
}

// iptablesPolicy is the policy as a linear FORWARD chain with policy
// DROP, in iptables-restore input: established flows first (so that only
// a flow's first packet, and every packet of an unreplied UDP flow,
// walks the list), n "-s net -p tcp --dport" accepts, the accept of
// allow (clientNet).
func iptablesPolicy(n int, allow netip.Prefix) string {
	var b strings.Builder
	b.WriteString("*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	for i := range n {
		fmt.Fprintf(&b, "-A FORWARD -s %s -p tcp -m tcp --dport %d -j ACCEPT\n", missNet(i), backendPort)
	}
	fmt.Fprintf(&b, "-A FORWARD -s %s -j ACCEPT\nCOMMIT\n", allow)
	return b.String()
}

// ipsetName is the benchmark's set (sets are per namespace).
const ipsetName = "pb-allow"

// ipsetMembers is ipset restore input: a hash:net set of the n missNets
// and allow (clientNet), one prefix length so that a lookup is one
// probe.
func ipsetMembers(n int, allow netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "create %s hash:net family inet maxelem 65536\n", ipsetName)
	for i := range n {
		fmt.Fprintf(&b, "add %s %s\n", ipsetName, missNet(i))
	}
	fmt.Fprintf(&b, "add %s %s\n", ipsetName, allow)
	return b.String()
}

// ipsetRules is the FORWARD chain that allows by the set: one rule in
// place of iptablesPolicy's list.
const ipsetRules = "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n" +
	"-A FORWARD -m set --match-set " + ipsetName + " src -j ACCEPT\nCOMMIT\n"

// nftPolicy is the policy as nft -f input: a forward chain with policy
// drop, established flows first, then the n "ip saddr net tcp dport"
// accepts and the accept of allow, the shape iptablesPolicy has, rule by
// rule (nftables evaluates a chain's rules in order, as iptables does).
func nftPolicy(n int, allow netip.Prefix) string {
	var b strings.Builder
	b.WriteString("add table ip pbpolicy\n")
	b.WriteString("add chain ip pbpolicy forward { type filter hook forward priority 0 ; policy drop ; }\n")
	b.WriteString("add rule ip pbpolicy forward ct state established,related accept\n")
	for i := range n {
		fmt.Fprintf(&b, "add rule ip pbpolicy forward ip saddr %s tcp dport %d accept\n", missNet(i), backendPort)
	}
	fmt.Fprintf(&b, "add rule ip pbpolicy forward ip saddr %s accept\n", allow)
	return b.String()
}

// nftSetPolicy is nftPolicy's set form, what an nftables policy
// compiler emits for a rule with many sources: one interval set of the
// n nets and allow, one rule that matches it.
func nftSetPolicy(n int, allow netip.Prefix) string {
	var b strings.Builder
	b.WriteString("add table ip pbpolicy\n")
	b.WriteString("add set ip pbpolicy allow { type ipv4_addr ; flags interval ; }\n")
	b.WriteString("add chain ip pbpolicy forward { type filter hook forward priority 0 ; policy drop ; }\n")
	b.WriteString("add rule ip pbpolicy forward ct state established,related accept\n")
	b.WriteString("add rule ip pbpolicy forward ip saddr @allow accept\n")
	// One element statement per 1,000 nets keeps each line short.
	nets := make([]string, 0, n+1)
	for i := range n {
		nets = append(nets, missNet(i).String())
	}
	nets = append(nets, allow.String())
	for len(nets) > 0 {
		k := min(len(nets), 1000)
		fmt.Fprintf(&b, "add element ip pbpolicy allow { %s }\n", strings.Join(nets[:k], ", "))
		nets = nets[k:]
	}
	return b.String()
}

// policyPeers are the sides of the policy benchmark with n rules:
// the floor, sluice without and with the policy, and the netfilter
// peers. allow is the policy's last rule's source: clientNet, or
// another net for TestPeerSetup's check that the policy denies.
func policyPeers(n int, allow netip.Prefix) []peer {
	return []peer{
		{name: baseline, code: 'B', program: func(testing.TB, *side, []svc) error { return nil }},
		{name: "sluice-nopolicy", code: 'q', program: func(tb testing.TB, s *side, _ []svc) error { return programSluice(tb, s, nil, allowAll, false) }},
		{name: "sluice", code: 'Q', program: func(tb testing.TB, s *side, _ []svc) error {
			return programSluice(tb, s, nil, sluicePolicy(n, allow), false)
		}},
		{name: "iptables-legacy", code: 'g', conntrack: true, tools: []string{"iptables-legacy-restore"},
			program: func(_ testing.TB, s *side, _ []svc) error {
				return s.restore(iptablesPolicy(n, allow), "iptables-legacy-restore")
			}},
		{name: "iptables-nft", code: 'h', conntrack: true, tools: []string{"iptables-nft-restore"},
			program: func(_ testing.TB, s *side, _ []svc) error {
				return s.restore(iptablesPolicy(n, allow), "iptables-nft-restore")
			}},
		{name: "ipset", code: 'i', conntrack: true, tools: []string{"ipset", "iptables-legacy-restore"},
			program: func(_ testing.TB, s *side, _ []svc) error {
				if err := s.restore(ipsetMembers(n, allow), "ipset", "restore"); err != nil {
					return err
				}
				return s.restore(ipsetRules, "iptables-legacy-restore")
			}},
		{name: "nftables", code: 'j', conntrack: true, tools: []string{"nft"},
			program: func(_ testing.TB, s *side, _ []svc) error { return s.restore(nftPolicy(n, allow), "nft", "-f", "-") }},
		{name: "nftables-set", code: 'k', conntrack: true, tools: []string{"nft"},
			program: func(_ testing.TB, s *side, _ []svc) error { return s.restore(nftSetPolicy(n, allow), "nft", "-f", "-") }},
	}
}

// policyDests are the connect and the flood destination: server 1.
var (
	policyConnect = netip.AddrPortFrom(serverAddr(1), backendPort)
	policyFlood   = netip.AddrPortFrom(serverAddr(1), floodPort)
)

// floodOnce floods server 1 from the side's client for d and returns
// the packets per second server 1's interface received, per second of
// the flood and per second of CPU the sender's thread was charged. The
// second leaves out the time the sender waited for the CPU while other
// work ran, which on a loaded machine swings the first by tens of
// percent.
func floodOnce(tb testing.TB, s *side, d time.Duration) (pps, cpuPPS float64, err error) {
	srv := s.node.Workloads[1]
	rx := func() (uint64, error) {
		l, err := srv.NS.Handle.LinkByName("eth0")
		if err != nil {
			return 0, err
		}
		return l.Attrs().Statistics.RxPackets, nil
	}
	before, err := rx()
	if err != nil {
		return 0, 0, err
	}
	rep, err := runClientIn(tb, s.cgroup, request{NetNS: s.client.NS.Name, Dests: []netip.AddrPort{policyFlood}, FloodFor: d})
	if err != nil {
		return 0, 0, err
	}
	after, err := rx()
	if err != nil {
		return 0, 0, err
	}
	if rep.Elapsed <= 0 {
		return 0, 0, fmt.Errorf("flood took %d ns", rep.Elapsed)
	}
	if rep.CPU <= 0 {
		return 0, 0, fmt.Errorf("flood charged %d ns of CPU", rep.CPU)
	}
	got := float64(after - before)
	return got / (float64(rep.Elapsed) / 1e9), got / (float64(rep.CPU) / 1e9), nil
}

// polResult is one cell: a side's connect latency (ns) and flood rate
// (packets per second of the flood and per CPU-second of its sender,
// one value per round) at one size.
type polResult struct {
	N           int
	Peer        string
	P50, P99    float64
	PPS, CPUPPS []float64
}

// BenchmarkPolicy measures a node's forwarding policy with N rules that
// do not match and then an allow: one-way UDP flood rate (64-byte
// frames, every packet through the policy: an unreplied UDP flow stays
// new to conntrack) and TCP connect latency from the client to server 1,
// for sluice (the datapath on every node interface through
// attach.AttachTC, the policy on the client's workload interface) and
// sluice without policy, against iptables (a linear FORWARD chain, legacy
// and nft back ends), ipset (one hash:net set match), nftables (the same
// linear chain, and one interval-set match) and the no-rules floor, every side in the same run with interleaved rounds. Each
// sub-benchmark reports kpps, p50-ns and p99-ns, and sluice x-nopolicy
// (its rate over sluice-nopolicy's); the run writes peerbench-policy.csv,
// .md and .svg beside the connect benchmark's files.
func BenchmarkPolicy(b *testing.B) {
	testutil.RequirePrivileged(b)
	install := os.Getenv("SLUICE_PEERBENCH") == "1"
	cgroup := testutil.TempCgroup(b)
	var results []polResult
	for _, n := range policySizes {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			var sides []*side
			for _, p := range policyPeers(n, clientNet) {
				if missing := missingTools(b, p, install); len(missing) > 0 {
					b.Logf("skipping %s: %v not installed (SLUICE_PEERBENCH=1 installs them)", p.name, missing)
					continue
				}
				sides = append(sides, openSide(b, p, nil, cgroup, cgroup))
			}
			samples := make([][]int64, len(sides))
			pps, cpuPPS := make([][]float64, len(sides)), make([][]float64, len(sides))
			for r := range polRounds {
				for j := range sides {
					i := (j + r) % len(sides)
					s := sides[i]
					s.flushConntrack()
					rep, err := runClientIn(b, s.cgroup, request{NetNS: s.client.NS.Name, Dests: []netip.AddrPort{policyConnect}, Warmup: warmup, Count: perRound})
					if err != nil {
						b.Fatalf("%s: %v", s.peer.name, err)
					}
					samples[i] = append(samples[i], rep.Nanos[0]...)
					s.flushConntrack()
					rate, cpuRate, err := floodOnce(b, s, floodFor)
					if err != nil {
						b.Fatalf("%s: %v", s.peer.name, err)
					}
					pps[i] = append(pps[i], rate)
					cpuPPS[i] = append(cpuPPS[i], cpuRate)
				}
			}
			var nopolicy, nopolicyCPU float64
			var cells []polResult
			for i, s := range sides {
				c := polResult{N: n, Peer: s.peer.name, P50: percentile(samples[i], 50), P99: percentile(samples[i], 99), PPS: pps[i], CPUPPS: cpuPPS[i]}
				if c.Peer == "sluice-nopolicy" {
					nopolicy, nopolicyCPU = median(c.PPS), median(c.CPUPPS)
				}
				cells = append(cells, c)
			}
			for _, c := range cells {
				b.Run(c.Peer, func(b *testing.B) {
					b.ReportMetric(median(c.PPS)/1000, "kpps")
					b.ReportMetric(median(c.CPUPPS)/1000, "kpps-cpu")
					b.ReportMetric(c.P50, "p50-ns")
					b.ReportMetric(c.P99, "p99-ns")
					if c.Peer == "sluice" && nopolicy > 0 {
						b.ReportMetric(median(c.PPS)/nopolicy, "x-nopolicy")
						b.ReportMetric(median(c.CPUPPS)/nopolicyCPU, "x-nopolicy-cpu")
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
		"peerbench-policy.csv": policyCSV(results),
		"peerbench-policy.md":  policyMarkdown(results),
		"peerbench-policy.svg": barsSVG("Policy: UDP flood through N rules then an allow (kpps, median, log scale)", policyBars(results)),
	})
}

// policyPeerNames are the peers with results, in policyPeers' order.
func policyPeerNames(results []polResult) []string {
	var names []string
	for _, p := range policyPeers(0, clientNet) {
		if slices.ContainsFunc(results, func(r polResult) bool { return r.Peer == p.name }) {
			names = append(names, p.name)
		}
	}
	return names
}

// policyCSV is one line per cell and round.
func policyCSV(results []polResult) []byte {
	var b strings.Builder
	b.WriteString("n,peer,p50_ns,p99_ns,round,pps,cpu_pps\n")
	for _, r := range results {
		for i, v := range r.PPS {
			fmt.Fprintf(&b, "%d,%s,%.0f,%.0f,%d,%.0f,%.0f\n", r.N, r.Peer, r.P50, r.P99, i, v, r.CPUPPS[i])
		}
	}
	return []byte(b.String())
}

// policyMarkdown is a kpps table (median (min-max) of the rounds) and a
// connect p50 and p99 table, a row per size.
func policyMarkdown(results []polResult) []byte {
	var b strings.Builder
	names := policyPeerNames(results)
	header := func(title string) {
		fmt.Fprintf(&b, "**%s**\n\n| N rules |", title)
		for _, n := range names {
			fmt.Fprintf(&b, " %s |", n)
		}
		b.WriteString("\n| --- |" + strings.Repeat(" --- |", len(names)) + "\n")
	}
	rows := func(cell func(polResult) string) {
		for _, n := range sizes(results) {
			fmt.Fprintf(&b, "| %d |", n)
			for _, name := range names {
				i := slices.IndexFunc(results, func(r polResult) bool { return r.N == n && r.Peer == name })
				if i < 0 {
					b.WriteString(" - |")
					continue
				}
				fmt.Fprintf(&b, " %s |", cell(results[i]))
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	header(fmt.Sprintf("Policy: one-way UDP flood, 64-byte frames, kpps received (median (min-max) of %d floods of %v)", polRounds, floodFor))
	kpps := func(v []float64) string {
		return fmt.Sprintf("%s (%s-%s)", millis(median(v)/1000), millis(slices.Min(v)/1000), millis(slices.Max(v)/1000))
	}
	rows(func(r polResult) string { return kpps(r.PPS) })
	header("Policy: the same floods, kpps per CPU-second of the sender (median (min-max))")
	rows(func(r polResult) string { return kpps(r.CPUPPS) })
	header("Policy: TCP connect latency p50 / p99 (µs)")
	rows(func(r polResult) string { return micros(r.P50) + " / " + micros(r.P99) })
	return []byte(b.String())
}

// size is the cell's size, for sizes.
func (r polResult) size() int { return r.N }

// policyBars are the median rates as bars, by size and peer.
func policyBars(results []polResult) []bar {
	var bars []bar
	for _, n := range sizes(results) {
		for _, name := range policyPeerNames(results) {
			i := slices.IndexFunc(results, func(r polResult) bool { return r.N == n && r.Peer == name })
			if i >= 0 {
				bars = append(bars, bar{Label: fmt.Sprintf("N=%d %s", n, name), Value: median(results[i].PPS) / 1000, Color: svgColors[name]})
			}
		}
	}
	return bars
}
