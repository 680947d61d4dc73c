package polprog

import (
	"fmt"
	"testing"
)

// classifierSteps are the variants of BenchmarkClassifierSteps: the
// default layout less some steps of its classified runs' code, and
// "trie", which classifies addresses by the trie alone (the code before
// the stride tables).
var classifierSteps = []struct {
	name string
	omit classOmit
}{
	{"trie", omitStrideTables},
	{"full", 0},
	{"no-arrays", omitArrayDims},
	{"no-addrs", omitAddrDims},
	{"no-members", omitMemberDims},
	{"no-cache", omitCacheLookup},
	{"no-dims", omitArrayDims | omitAddrDims | omitMemberDims},
	{"frame", omitArrayDims | omitAddrDims | omitMemberDims | omitCacheLookup},
}

// BenchmarkClassifierSteps shows where a warm new flow's ns go at 10,000
// random rules: the kernel's ns per single run of the default layout and
// of variants without some of its steps (omitted dimensions read row 0,
// "no-cache" acts on no outcome without the lookup), with the floor and
// the 10-rule policy, all interleaved. The variants decide wrongly; only
// their times mean something.
func BenchmarkClassifierSteps(b *testing.B) {
	k := newKernel(b)
	floor := k.load(b, Rules{NoMatchRuleID: 1}, Options{})
	shape := benchShapes[len(benchShapes)-1]
	small := k.load(b, benchPolicy(10, shape), Options{})
	rules := benchPolicy(10000, shape)
	progs := make([]*Program, len(classifierSteps))
	for i, s := range classifierSteps {
		progs[i] = k.load(b, rules, Options{omit: s.omit})
	}
	for _, c := range []string{"last-match", "no-match", "v6"} {
		pkt, ok := benchPackets[c]
		if !ok {
			// An IPv6 flow between addresses of the generator's pools,
			// which no log rule matches (a logged outcome is never
			// cached, so every run would search).
			pkt = Packet{Src: mustAddr("fd00:0:0:2::d4"), Dst: mustAddr("fd00:1::1cb"), Protocol: 6, SrcPort: 5555, DstPort: 80}
			if d, err := Evaluate(rules, nil, pkt); err != nil || d.Logged {
				b.Fatalf("the IPv6 flow: %+v, %v: want a decision without a log", d, err)
			}
		}
		for _, mode := range []string{"single", "hot"} {
			repeat := 500
			if mode == "hot" {
				repeat = 2000
			}
			b.Run(fmt.Sprintf("%s/%s", c, mode), func(b *testing.B) {
				sums := make([]float64, len(progs))
				var floorSum, smallSum float64
				runs := 0
				for b.Loop() {
					floorSum += k.kernelNs(b, floor, pkt, mode, repeat)
					smallSum += k.kernelNs(b, small, pkt, mode, repeat)
					for i, p := range progs {
						sums[i] += k.kernelNs(b, p, pkt, mode, repeat)
					}
					runs++
				}
				b.ReportMetric(floorSum/float64(runs), "floor-ns")
				b.ReportMetric(smallSum/float64(runs), "rules10-ns")
				for i, s := range classifierSteps {
					b.ReportMetric(sums[i]/float64(runs), s.name+"-ns")
				}
			})
		}
	}
}
