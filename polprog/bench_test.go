package polprog

import (
	"fmt"
	"net/netip"
	"testing"
)

var benchSizes = []int{10, 100, 1000, 10000}

// benchShapes are the policies benchmarked, each of n rules in one tier
// whose last rule allows 10.255.255.1 (last-match) and where 10.254.0.1
// matches nothing (no-match):
//   - cidr: one source CIDR per rule, actions alternating, which merge into
//     one LPM lookup;
//   - cidr-inline: the same with merging off, one compare per rule as
//     Calico emits;
//   - cidr+port: a source CIDR and a destination port per rule, which do
//     not merge (consecutive rules differ in two fields).
var benchShapes = []struct {
	name string
	opts Options
	rule func(i int) Rule
}{
	{"cidr", Options{}, func(i int) Rule { return benchRule(i, false) }},
	{"cidr-inline", Options{MergeThreshold: -1}, func(i int) Rule { return benchRule(i, false) }},
	{"cidr+port", Options{}, func(i int) Rule { return benchRule(i, true) }},
}

func benchRule(i int, port bool) Rule {
	r := Rule{ID: uint64(i + 1), Action: []Action{ActionDeny, ActionAllow}[i%2],
		SrcNets: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)}}
	if port {
		r.DstPorts = []PortRange{Port(uint16(1000 + i))}
	}
	return r
}

func benchPolicy(n int, rule func(int) Rule) Rules {
	rs := make([]Rule, n)
	for i := range rs {
		rs[i] = rule(i)
	}
	last := &rs[n-1]
	last.Action, last.SrcNets, last.DstPorts = ActionAllow, []netip.Prefix{mustPrefix("10.255.255.0/24")}, nil
	return Rules{Tiers: []Tier{{Name: "bench", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}}
}

var benchPackets = map[string]Packet{
	"last-match": {Src: mustAddr("10.255.255.1"), Dst: mustAddr("10.200.0.1"), Protocol: 6, SrcPort: 5555},
	"no-match":   {Src: mustAddr("10.254.0.1"), Dst: mustAddr("10.200.0.1"), Protocol: 6, SrcPort: 5555},
}

// kernelNs runs p's entry program repeat times on pkt and returns the
// kernel's ns per run.
func (k *kernel) kernelNs(b *testing.B, p *Program, pkt Packet, repeat int) float64 {
	s := stateOf(pkt)
	for i := range k.state {
		k.state[i] = s
	}
	if err := k.maps.State.Put(uint32(0), k.state); err != nil {
		b.Fatal(err)
	}
	_, d, err := p.Programs()[0].Benchmark(packetData, repeat, nil)
	if err != nil {
		b.Fatal(err)
	}
	return float64(d.Nanoseconds())
}

// BenchmarkPolicy reports the kernel's ns per packet of policies of each
// shape and size, and the same over an empty policy (no rules: state
// lookup, default deny, counter, tail call) measured in the same run.
func BenchmarkPolicy(b *testing.B) {
	k := newKernel(b)
	floor := k.load(b, Rules{NoMatchRuleID: 1}, Options{})
	for _, shape := range benchShapes {
		for _, n := range benchSizes {
			// Enough runs per call for a stable mean, few enough that
			// the slowest (10,000 inline rules) stays under a second.
			repeat := min(20000, 20_000_000/n)
			p := k.load(b, benchPolicy(n, shape.rule), shape.opts)
			for _, c := range []string{"last-match", "no-match"} {
				pkt := benchPackets[c]
				if d := k.run(b, p, pkt); (d.Verdict == VerdictAllow) != (c == "last-match") {
					b.Fatalf("%s/%d/%s: decision %+v", shape.name, n, c, d)
				}
				b.Run(fmt.Sprintf("%s/rules=%d/%s", shape.name, n, c), func(b *testing.B) {
					var sum, floorSum float64
					runs := 0
					for b.Loop() {
						floorSum += k.kernelNs(b, floor, pkt, repeat)
						sum += k.kernelNs(b, p, pkt, repeat)
						runs++
					}
					ns, fl := sum/float64(runs), floorSum/float64(runs)
					b.ReportMetric(ns, "ns/pkt")
					b.ReportMetric(fl, "floor-ns/pkt")
					b.ReportMetric(ns-fl, "over-floor-ns/pkt")
					b.ReportMetric((ns-fl)/float64(n), "over-floor-ns/rule")
				})
			}
		}
	}
}

// BenchmarkCompileLoad measures compiling and loading (verifier included)
// policies of each size, and closing them.
func BenchmarkCompileLoad(b *testing.B) {
	k := newKernel(b)
	slots, free := k.allocSlots(b, MaxParts)
	defer free()
	for _, shape := range benchShapes {
		for _, n := range benchSizes {
			rules := benchPolicy(n, shape.rule)
			b.Run(fmt.Sprintf("%s/rules=%d", shape.name, n), func(b *testing.B) {
				for b.Loop() {
					c, err := Compile(rules, shape.opts)
					if err != nil {
						b.Fatal(err)
					}
					p, err := c.Load(k.maps, slots[:len(c.Parts)])
					if err != nil {
						b.Fatal(err)
					}
					if err := p.Close(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
