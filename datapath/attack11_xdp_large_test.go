package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/polprog"
)

// TestAttack11XDPLargeTiers: XDP tiers long enough that polprog merges
// rules into LPM lookups and classifies runs of rules by bit vectors
// (lookup maps of their own, loaded into the XDP jump map), held to
// polprog.Evaluate on random packets, as TestXDPDifferential holds short
// ones.
func TestAttack11XDPLargeTiers(t *testing.T) {
	d := openXDP(t)
	r := rand.New(rand.NewPCG(11, 7))
	var merged, classified []polprog.Rule
	// A run differing only in the source: merged into one lookup.
	for i := range 40 {
		merged = append(merged, polprog.Rule{ID: uint64(2000 + i), Action: polprog.ActionDeny, Protocol: "tcp",
			SrcNets: []netip.Prefix{randomPrefix(r, i%2 == 0)}, DstPorts: []polprog.PortRange{polprog.Port(22)}})
	}
	for i := range 300 {
		rule := polprog.Rule{ID: uint64(3000 + i), Action: []polprog.Action{polprog.ActionDeny, polprog.ActionAllow, polprog.ActionPass}[r.IntN(3)],
			Protocol: []string{"", "tcp", "udp", "icmp", "icmpv6"}[r.IntN(5)]}
		if r.IntN(3) != 0 {
			rule.SrcNets = []netip.Prefix{randomPrefix(r, r.IntN(2) == 0)}
		}
		if r.IntN(3) == 0 {
			rule.DstNets = []netip.Prefix{randomPrefix(r, r.IntN(2) == 0)}
		}
		if (rule.Protocol == "tcp" || rule.Protocol == "udp") && r.IntN(2) == 0 {
			rule.DstPorts = []polprog.PortRange{polprog.Port(xdpPorts[r.IntN(len(xdpPorts))])}
		}
		classified = append(classified, rule)
	}
	tiers := []polprog.Tier{
		{Name: "merged", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Name: "m", Rules: merged}}},
		{Name: "classified", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Name: "c", Rules: classified}}},
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: tiers}); err != nil {
		t.Fatal(err)
	}
	rules := polprog.Rules{ForHost: true, PreDNATTiers: tiers}
	opts := d.opts.Policy
	opts.Hook = polprog.HookXDP
	c, err := polprog.Compile(rules, opts)
	if err != nil {
		t.Fatal(err)
	}
	// The merged run's LPM trie and the classified run's maps.
	if len(c.LookupMaps) < 2 {
		t.Fatalf("%d lookup maps: the tiers were neither merged nor classified", len(c.LookupMaps))
	}
	verdicts := map[string]int{}
	for i := range 3000 {
		pkt, frame := randomXDPPacket(t, r)
		want, err := polprog.Evaluate(rules, nil, pkt)
		if err != nil {
			t.Fatal(err)
		}
		wantRet := uint32(xdpPass)
		if want.Verdict == polprog.VerdictDeny {
			wantRet = xdpDrop
		}
		if got := runXDP(t, d, frame); got != wantRet {
			t.Fatalf("packet %d %+v: xdp returned %d, Evaluate %+v", i, pkt, got, want)
		}
		verdicts[fmt.Sprint(want.Verdict, " ", want.RuleID >= 3000)]++
	}
	t.Logf("%d lookup maps; verdicts %v", len(c.LookupMaps), verdicts)
}
