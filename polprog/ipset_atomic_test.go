package polprog

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// TestIPSetChangeAtomic switches IP set contents between two states while
// every CPU runs a classified policy: under A the packet's source is in
// set x (through a /8 whose more specific member of another set, z, holds
// the address itself), under B its destination is in set y (z holds it
// too) and x is empty. Either allows; the mixes, both or neither, deny.
// The members map alone, written member by member, shows the mix between
// Sync's add and its delete; the membership map's switch must not.
func TestIPSetChangeAtomic(t *testing.T) {
	k := newKernel(t)
	const x, y, z = 1, 2, 3
	pkt := Packet{Src: mustAddr("10.9.9.9"), Dst: mustAddr("10.200.0.1"), Protocol: 6, SrcPort: 5555, DstPort: 80}
	var rs []Rule
	rs = append(rs,
		Rule{ID: 10, Action: ActionDeny, SrcIPSets: []uint64{x}, DstIPSets: []uint64{y}},
		Rule{ID: 11, Action: ActionAllow, SrcIPSets: []uint64{x}},
		Rule{ID: 12, Action: ActionAllow, DstIPSets: []uint64{y}})
	for i := 0; i < 50; i++ {
		rs = append(rs, benchRule(i, "tcp", true))
	}
	rules := Rules{NoMatchRuleID: 1 << 40, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 99,
		Policies: []Policy{{Name: "p", Rules: rs}}}}}
	zs := IPSet{Nets: []netip.Prefix{mustPrefix("10.9.9.9/32"), mustPrefix("10.200.0.1/32")}}
	a := IPSetMembers{x: {Nets: []netip.Prefix{mustPrefix("10.0.0.0/8")}}, z: zs}
	b := IPSetMembers{y: {Nets: []netip.Prefix{mustPrefix("10.200.0.0/16")}}, z: zs}
	for _, sets := range []IPSetMembers{a, b} {
		if d, _ := Evaluate(rules, sets, pkt); d.Verdict != VerdictAllow {
			t.Fatalf("sets %v decide %+v", sets, d)
		}
	}
	for _, mix := range []IPSetMembers{{z: zs}, {x: a[x], y: b[y], z: zs}} {
		if d, _ := Evaluate(rules, mix, pkt); d.Verdict != VerdictDeny {
			t.Fatalf("the mix %v decides %+v", mix, d)
		}
	}
	c := classifiedOnly(t, rules)
	if len(c.Parts) != 1 {
		t.Fatalf("%d parts, want 1", len(c.Parts))
	}
	p := k.loadCompiled(t, c)
	k.setIPSets(t, a)
	s := stateOf(pkt)
	for i := range k.state {
		k.state[i] = s
	}
	if err := k.maps.State.Put(uint32(0), k.state); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var runs, mixed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < max(2, k.ncpu); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ret, _, err := p.Programs()[0].Benchmark(packetData, 1, nil)
				if err != nil {
					t.Error(err)
					return
				}
				runs.Add(1)
				if ret != stubAllowRC+1 {
					mixed.Add(1)
				}
			}
		}()
	}
	changes := 600
	if testing.Short() {
		changes = 200
	}
	for u := 0; u < changes; u++ {
		sets := b
		if u%2 == 1 {
			sets = a
		}
		k.setIPSets(t, sets)
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d runs during %d set changes, %d not allowed", runs.Load(), changes, mixed.Load())
	if mixed.Load() != 0 {
		t.Errorf("%d of %d runs saw a half-applied set change", mixed.Load(), runs.Load())
	}
}
