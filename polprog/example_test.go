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

// Compile and load a policy on its own, into maps of the datapath's
// layout: an embedder with its own runtime owns the sl_policy_jumps slots
// and the maps. (With package datapath, Datapath.SetInterface does all of
// this, and the slot bookkeeping, for you.)
func ExampleCompile() {
	spec, err := bpf.LoadSpec()
	if err != nil {
		log.Fatal(err)
	}
	newMap := func(name string) *ebpf.Map {
		m, err := ebpf.NewMap(spec.Maps[name])
		if err != nil {
			log.Fatal(err)
		}
		return m
	}
	maps := polprog.Maps{
		State:        newMap(bpf.MapState),
		IPSets:       newMap(bpf.MapIPSets),
		IPSetMembers: newMap(bpf.MapIPSetMembers),
		IPSetGen:     newMap(bpf.MapIPSetGen),
		RuleHits:     newMap(bpf.MapRuleHits),
		PolicyJumps:  newMap(bpf.MapPolicyJumps),
		Conts:        newMap(bpf.MapConts),
	}
	for _, m := range []*ebpf.Map{maps.State, maps.IPSets, maps.IPSetMembers, maps.IPSetGen, maps.RuleHits, maps.PolicyJumps, maps.Conts} {
		defer m.Close()
	}

	compiled, err := polprog.Compile(webPolicy, polprog.Options{})
	if err != nil {
		log.Fatal(err)
	}
	// One free sl_policy_jumps slot per part.
	const firstFreeSlot = 10
	slots := make([]uint32, len(compiled.Parts))
	for i := range slots {
		slots[i] = firstFreeSlot + uint32(i)
	}
	prog, err := compiled.Load(maps, slots)
	if err != nil {
		log.Fatal(err)
	}
	defer prog.Close()
	fmt.Printf("%d part(s), entry at slot %d\n", len(compiled.Parts), prog.EntrySlot())
}
