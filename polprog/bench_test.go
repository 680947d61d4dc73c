package polprog

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

var benchSizes = []int{10, 100, 1000, 10000}

// benchShape is a policy benchmarked at each size: n rules in one tier,
// none of which matches either benchmark packet except the last, which
// allows 10.255.255.0/24 (so the last-match packet matches only it and
// the no-match packet nothing).
type benchShape struct {
	name string
	// rules returns the n-1 rules before the last.
	rules func(n int) []Rule
}

// benchShapes:
//   - cidr: one source /24 per rule, actions alternating; runs of them
//     merge into one LPM lookup;
//   - proto+cidr: the same rules with "tcp" first, a check that passes for
//     the benchmark packets;
//   - proto+port+cidr: tcp, a destination port and a source /24 per rule;
//   - cidr+port: a source /24 and a destination port per rule;
//   - random: rules from the differential test's generator (every field
//     and negation, allow, deny, pass and log mixed), less those that
//     match a benchmark packet.
var benchShapes = []benchShape{
	{"cidr", func(n int) []Rule { return benchRules(n, func(i int) Rule { return benchRule(i, "", false) }) }},
	{"proto+cidr", func(n int) []Rule { return benchRules(n, func(i int) Rule { return benchRule(i, "tcp", false) }) }},
	{"proto+port+cidr", func(n int) []Rule { return benchRules(n, func(i int) Rule { return benchRule(i, "tcp", true) }) }},
	{"cidr+port", func(n int) []Rule { return benchRules(n, func(i int) Rule { return benchRule(i, "", true) }) }},
	{"random", benchRandomRules},
}

// benchLayouts are the compiler settings compared in the same run: plain
// is the linear layout (no merging, no fall-through, no classifier), the
// reference every other layout must not exceed; default is Options{}
// (the classifier from DefaultClassifierRules); classified classifies
// every size.
var benchLayouts = []struct {
	name string
	opts Options
}{
	{"plain", Options{FallThroughRules: -1, MergeThreshold: -1, ClassifierRules: -1}},
	{"fallthrough", Options{FallThroughRules: 1, MergeThreshold: -1, ClassifierRules: -1}},
	{"default", Options{}},
	{"classified", Options{ClassifierRules: 1}},
}

func benchRules(n int, rule func(int) Rule) []Rule {
	rs := make([]Rule, n-1)
	for i := range rs {
		rs[i] = rule(i)
	}
	return rs
}

func benchRule(i int, proto string, port bool) Rule {
	r := Rule{ID: uint64(i + 1), Action: []Action{ActionDeny, ActionAllow}[i%2], Protocol: proto,
		SrcNets: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)}}
	if port {
		r.DstPorts = []PortRange{Port(uint16(1000 + i))}
	}
	return r
}

// benchRandomRules draws rules from the differential generator and keeps
// those that match neither benchmark packet (with the IP sets empty, as
// in the benchmark's kernel).
func benchRandomRules(n int) []Rule {
	g := newGen(uint64(n))
	views := []packetView{view(benchPackets["last-match"], false), view(benchPackets["no-match"], false)}
	ev := evaluation{sets: IPSetMembers{}}
	var out []Rule
	for len(out) < n-1 {
		r := g.rule()
		p, err := validate(Rules{Tiers: []Tier{{Policies: []Policy{{Rules: []Rule{r}}}}}}, 0)
		if err != nil {
			panic(err)
		}
		vr := &p.tiers[0].rules[0]
		if !ev.matches(vr, &views[0]) && !ev.matches(vr, &views[1]) {
			out = append(out, r)
		}
	}
	return out
}

func benchPolicy(n int, shape benchShape) Rules {
	rs := append(shape.rules(n), Rule{ID: uint64(n), Action: ActionAllow, SrcNets: []netip.Prefix{mustPrefix("10.255.255.0/24")}})
	return Rules{Tiers: []Tier{{Name: "bench", EndRuleID: 1 << 40, Policies: []Policy{{Name: "p", Rules: rs}}}}}
}

var benchPackets = map[string]Packet{
	"last-match": {Src: mustAddr("10.255.255.1"), Dst: mustAddr("10.200.0.1"), Protocol: 6, SrcPort: 5555, DstPort: 80},
	"no-match":   {Src: mustAddr("10.254.0.1"), Dst: mustAddr("10.200.0.1"), Protocol: 6, SrcPort: 5555, DstPort: 80},
}

// benchModes: hot reruns one packet in the kernel's repeat loop (a SYN
// that re-runs policy with warm caches); single times one run per
// BPF_PROG_TEST_RUN call, as a new flow's first packet meets policy; cold
// is single with the classifier's outcome cache emptied before each run,
// as the first packet of a row combination meets it.
var benchModes = []string{"hot", "single", "cold"}

// kernelNs runs p's entry program on pkt and returns the kernel's mean ns
// per run: repeat runs in one call (hot), or one run in each of repeat
// calls (single).
func (k *kernel) kernelNs(b *testing.B, p *Program, pkt Packet, mode string, repeat int) float64 {
	s := stateOf(pkt)
	for i := range k.state {
		k.state[i] = s
	}
	if err := k.maps.State.Put(uint32(0), k.state); err != nil {
		b.Fatal(err)
	}
	if mode == "hot" {
		_, d, err := p.Programs()[0].Benchmark(packetData, repeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		return float64(d.Nanoseconds())
	}
	var sum float64
	for range repeat {
		if mode == "cold" {
			emptyCache(b, p)
		}
		_, d, err := p.Programs()[0].Benchmark(packetData, 1, nil)
		if err != nil {
			b.Fatal(err)
		}
		sum += float64(d.Nanoseconds())
	}
	return sum / float64(repeat)
}

// emptyCache deletes every entry of p's outcome cache, if it has one.
func emptyCache(b *testing.B, p *Program) {
	if p.class == nil || p.class.lookups[cacheMapName] == nil {
		return
	}
	m := p.class.lookups[cacheMapName]
	key := make([]byte, cacheKeySize)
	for m.NextKey(nil, key) == nil {
		if err := m.Delete(key); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPolicy reports the kernel's ns per packet of each shape and
// size under each layout, and of an empty policy (no rules: state lookup,
// default deny, counter, tail call), all interleaved in the same loop.
// The ratio metrics are each layout's time over the plain layout's.
func BenchmarkPolicy(b *testing.B) {
	k := newKernel(b)
	floor := k.load(b, Rules{NoMatchRuleID: 1}, Options{})
	for _, shape := range benchShapes {
		for _, n := range benchSizes {
			rules := benchPolicy(n, shape)
			progs := make([]*Program, len(benchLayouts))
			for i, l := range benchLayouts {
				progs[i] = k.load(b, rules, l.opts)
			}
			for _, c := range []string{"last-match", "no-match"} {
				pkt := benchPackets[c]
				want, err := Evaluate(rules, nil, pkt)
				if err != nil {
					b.Fatal(err)
				}
				for i, p := range progs {
					if d := k.run(b, p, pkt); d.Verdict != want.Verdict || d.RuleID != want.RuleID {
						b.Fatalf("%s/%d/%s/%s: decision %+v, want %+v", shape.name, n, c, benchLayouts[i].name, d, want)
					}
				}
				for _, mode := range benchModes {
					// Enough runs for a stable mean, few enough that
					// 10,000 plain rules stay under a second.
					repeat := min(20000, 20_000_000/n)
					if mode != "hot" {
						repeat = min(500, 2_000_000/n)
					}
					b.Run(fmt.Sprintf("%s/rules=%d/%s/%s", shape.name, n, c, mode), func(b *testing.B) {
						sums := make([]float64, len(progs))
						var floorSum float64
						runs := 0
						for b.Loop() {
							floorSum += k.kernelNs(b, floor, pkt, mode, repeat)
							for i, p := range progs {
								sums[i] += k.kernelNs(b, p, pkt, mode, repeat)
							}
							runs++
						}
						b.ReportMetric(floorSum/float64(runs), "floor-ns")
						for i, l := range benchLayouts {
							b.ReportMetric(sums[i]/float64(runs), l.name+"-ns")
							if i > 0 {
								b.ReportMetric(sums[i]/sums[0], l.name+"/plain")
							}
						}
					})
				}
			}
		}
	}
}

// BenchmarkCompileLoad measures compiling and loading (verifier included)
// policies of each shape and size with default options, and closing them.
func BenchmarkCompileLoad(b *testing.B) {
	k := newKernel(b)
	slots, free := k.allocSlots(b, MaxParts)
	defer free()
	for _, shape := range benchShapes {
		for _, n := range benchSizes {
			rules := benchPolicy(n, shape)
			b.Run(fmt.Sprintf("%s/rules=%d", shape.name, n), func(b *testing.B) {
				for b.Loop() {
					c, err := Compile(rules, Options{})
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

// BenchmarkUpdate measures Program.Update of a classified policy (merging
// off, so that every shape is classified) of each shape and size, changing
// the middle rule back and forth: "action" its action and ID (table
// entries only), "cidr" its source CIDR, "port" its destination ports
// (with protocol tcp) and "proto" its protocol (to sctp); each a map
// update of the idle generation and a switch. A policy is loaded only
// when a sub-benchmark of its shape and size runs.
func BenchmarkUpdate(b *testing.B) {
	k := newKernel(b)
	opts := Options{MergeThreshold: -1}
	for _, shape := range benchShapes {
		b.Run(shape.name, func(b *testing.B) {
			for _, n := range benchSizes[2:] {
				b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
					benchUpdates(b, k, benchPolicy(n, shape), opts)
				})
			}
		})
	}
}

// benchUpdates loads rules and times one-rule changes of them.
func benchUpdates(b *testing.B, k *kernel, rules Rules, opts Options) {
	p := k.load(b, rules, opts)
	n := len(rules.Tiers[0].Policies[0].Rules)
	for _, change := range []string{"action", "cidr", "port", "proto"} {
		changed := cloneRules(rules)
		r := &changed.Tiers[0].Policies[0].Rules[n/2]
		switch change {
		case "action":
			r.ID, r.Action = 1<<35, ActionLog
		case "cidr":
			r.SrcNets = []netip.Prefix{mustPrefix("172.16.0.0/16")}
		case "port":
			r.Protocol, r.ICMP, r.NotICMP = "tcp", nil, nil
			r.DstPorts = []PortRange{{First: 9000, Last: 9099}}
		default:
			r.Protocol, r.ICMP, r.NotICMP = "sctp", nil, nil
		}
		// back-to-back: each update waits for the grace period of the
		// one before; spaced: the grace periods pass (untimed) between
		// them, as for an agent's occasional change.
		for _, spacing := range []string{"back-to-back", "spaced"} {
			b.Run(change+"/"+spacing, func(b *testing.B) {
				// A change the run's dimensions cannot tell (a protocol
				// in rules that have none) is a reload: not measured.
				if err := p.Update(changed); errors.Is(err, ErrNeedsReload) {
					b.Skip(err)
				} else if err != nil {
					b.Fatal(err)
				}
				if err := p.Update(rules); err != nil {
					b.Fatal(err)
				}
				i := 0
				for b.Loop() {
					if spacing == "spaced" {
						b.StopTimer()
						for g := range p.class.left {
							if err := p.class.left[g].Wait(); err != nil {
								b.Fatal(err)
							}
						}
						b.StartTimer()
					}
					next := rules
					if i%2 == 0 {
						next = changed
					}
					i++
					if err := p.Update(next); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkValidate is the validation of 10,000 rules of each shape:
// "fresh" as Compile does, "previous" as Update does, against the
// program of the same rules but the middle one (whose action changed).
func BenchmarkValidate(b *testing.B) {
	for _, shape := range benchShapes {
		rules := benchPolicy(10000, shape)
		changed := cloneRules(rules)
		r := &changed.Tiers[0].Policies[0].Rules[len(changed.Tiers[0].Policies[0].Rules)/2]
		r.ID, r.Action = 1<<35, ActionLog
		prev, err := validateWith(changed, validator{noWhere: true})
		if err != nil {
			b.Fatal(err)
		}
		for _, v := range []struct {
			name string
			prev *program
		}{{"fresh", nil}, {"previous", prev}} {
			b.Run(shape.name+"/"+v.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := validateWith(rules, validator{noWhere: true, prev: v.prev}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
