package polprog_test

import (
	"fmt"
	"log"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/polprog"
)

// webPolicy allows TCP/80 and /443 from 10.0.0.0/8 and denies everything
// else in its tier.
var webPolicy = polprog.Rules{
	Tiers: []polprog.Tier{{
		Name: "default",
		Policies: []polprog.Policy{{
			Name:      "web",
			Namespace: "shop",
			Rules: []polprog.Rule{{
				ID:       101,
				Action:   polprog.ActionAllow,
				Protocol: "tcp",
				SrcNets:  []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
				DstPorts: []polprog.PortRange{polprog.Port(80), polprog.Port(443)},
			}},
		}},
		EndAction: polprog.EndDeny,
		EndRuleID: 199,
	}},
}

// Evaluate explains a decision without root: the same semantics the
// compiled program has in the kernel.
func ExampleEvaluate() {
	for _, src := range []string{"10.1.2.3", "192.168.0.9"} {
		d, err := polprog.Evaluate(webPolicy, nil, polprog.Packet{
			Src:      netip.MustParseAddr(src),
			Dst:      netip.MustParseAddr("10.9.9.9"),
			Protocol: 6,
			SrcPort:  40000,
			DstPort:  443,
		})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %s by rule %d\n", src, d.Verdict, d.RuleID)
	}
	// Output:
	// 10.1.2.3: allow by rule 101
	// 192.168.0.9: deny by rule 199
}

// Compile and load a policy into a loaded datapath, and point an
// interface's ingress hook at it. Attaching dp.Ingress and dp.Egress to the
// interface (for example with link.AttachTCX) is the embedder's.
func ExampleCompile() {
	dp, err := bpf.Load(bpf.LoadOptions{ConntrackEntries: 1 << 18})
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close()

	compiled, err := polprog.Compile(webPolicy, polprog.Options{})
	if err != nil {
		log.Fatal(err)
	}
	// One free sl_policy_jumps slot per part; the embedder (or its
	// runtime) owns the slots.
	const firstFreeSlot = 10
	slots := make([]uint32, len(compiled.Parts))
	for i := range slots {
		slots[i] = firstFreeSlot + uint32(i)
	}
	maps := dp.Collection.Maps
	prog, err := compiled.Load(polprog.Maps{
		State:       maps[bpf.MapState],
		IPSets:      maps[bpf.MapIPSets],
		RuleHits:    maps[bpf.MapRuleHits],
		PolicyJumps: maps[bpf.MapPolicyJumps],
		Conts:       maps[bpf.MapConts],
	}, slots)
	if err != nil {
		log.Fatal(err)
	}
	defer prog.Close()

	const ifindex = 7 // the workload's host-side veth
	iface := bpf.Iface{
		Flags:         bpf.IfaceWorkload | bpf.IfaceReady,
		IngressPolicy: prog.EntrySlot(),
		EgressPolicy:  prog.EntrySlot(),
		CounterSlot:   1,
	}
	if err := maps[bpf.MapIfaces].Update(uint32(ifindex), iface, ebpf.UpdateAny); err != nil {
		log.Fatal(err)
	}
}
