package datapath

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/polprog"
)

// denyAllRules denies everything new, with rule ID 99 on its tier's end.
var denyAllRules = polprog.Rules{Tiers: []polprog.Tier{{Name: "none", EndRuleID: 99}}}

// TestRestartTakesOver plays an agent restart with pinned state: a second
// Open of the same PinDir, while the first one's programs carry a TCP
// stream, configures the same interfaces, moves the links to its programs
// and settles. The stream loses no byte; the server's replies, which its
// egress policy would deny, keep passing on the flow the first generation
// tracked; the counters go on in the same slots; and the interface
// entries end with the second generation's policy records only.
func TestRestartTakesOver(t *testing.T) {
	node, client, server := nodePair(t, "10.68.0.1", "10.68.0.2")
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	opts := Options{PinDir: pinDir, ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64}
	configure := func(d *Datapath) {
		t.Helper()
		for _, c := range []struct {
			w   *topo.Workload
			cfg Interface
		}{
			{client, Interface{Kind: Workload, Egress: allowAllRules, Ingress: denyAllRules}},
			{server, Interface{Kind: Workload, Ingress: allowTCPPort(80, 10), Egress: denyAllRules}},
		} {
			if err := d.Routes().Put(workloadRoute(netip.PrefixFrom(c.w.Addr, 32).String(), uint32(c.w.HostIfindex))); err != nil {
				t.Fatal(err)
			}
			if err := d.SetInterface(c.w.HostIfindex, c.cfg); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	configure(a)
	links := append(attachTCX(t, node.NS, a, client.HostIfindex), attachTCX(t, node.NS, a, server.HostIfindex)...)

	stream := startEchoStream(t, client, server, "10.68.0.2:80")
	time.Sleep(100 * time.Millisecond)
	serverBefore, err := a.Counters(server.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}

	// The takeover.
	b, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Generation() != a.Generation()+1 {
		t.Errorf("generations %d then %d, want consecutive", a.Generation(), b.Generation())
	}
	configure(b)
	for i, l := range links {
		prog := b.TCIngress()
		if i%2 == 1 {
			prog = b.TCEgress()
		}
		if err := l.Update(prog); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Settle(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	got := stream.Stop()

	serverAfter, err := b.Counters(server.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if serverAfter.Egress[bpf.ReasonAcceptedEstablished] <= serverBefore.Egress[bpf.ReasonAcceptedEstablished] {
		t.Errorf("server egress established went from %d to %d: the counters did not go on",
			serverBefore.Egress[bpf.ReasonAcceptedEstablished], serverAfter.Egress[bpf.ReasonAcceptedEstablished])
	}
	for _, c := range []Counters{serverAfter} {
		for _, hc := range []HookCounters{c.Ingress, c.Egress} {
			if n := hc.Dropped() - hc[bpf.ReasonDroppedIPv6]; n != 0 {
				t.Errorf("server dropped %v", hc.NonZero())
			}
		}
	}
	for _, w := range []*topo.Workload{client, server} {
		entry, err := b.InterfaceEntry(w.HostIfindex)
		if err != nil {
			t.Fatal(err)
		}
		if entry.Records[0].Generation != b.Generation() && entry.Records[1].Generation != b.Generation() ||
			entry.Records[0].Generation != b.Generation() && entry.Records[0].Generation != 0 ||
			entry.Records[1].Generation != b.Generation() && entry.Records[1].Generation != 0 {
			t.Errorf("%s: records %+v after Settle, want generation %d's only", w.HostIfname, entry.Records, b.Generation())
		}
	}
	t.Logf("stream %d bytes each way across the takeover", got)
}
