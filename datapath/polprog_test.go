package datapath

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
)

// loadWithPolicy opens a datapath and makes lo a workload interface that
// runs rules at both TC hooks (as its egress and ingress policy), with
// every IPv4 address routed to it so lo's reverse-path check passes.
func loadWithPolicy(tb testing.TB, rules polprog.Rules, opts polprog.Options) *Datapath {
	tb.Helper()
	return loadWithPolicyAs(tb, Workload, rules, opts)
}

// loadWithPolicyAs is loadWithPolicy with lo as an interface of kind.
func loadWithPolicyAs(tb testing.TB, kind Kind, rules polprog.Rules, opts polprog.Options) *Datapath {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	d, err := Open(Options{ConntrackEntries: 1 << 16, PolicySlots: 64, IPSetEntries: 1024, RuleHitEntries: 1024,
		MaxInterfaces: 8, Policy: opts})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	// A workload at lo sends from every IPv4 address; at a host
	// interface the sources stay unrouted, as the outside world is.
	if kind == Workload {
		if err := d.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
			tb.Fatal(err)
		}
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: kind, Ingress: rules, Egress: rules}); err != nil {
		tb.Fatal(err)
	}
	return d
}

// loadIPv6WithPolicy is loadWithPolicyAs for a workload at lo that
// enforces IPv6 and sends from every IPv6 address.
func loadIPv6WithPolicy(tb testing.TB, rules polprog.Rules, opts polprog.Options) *Datapath {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	d, err := Open(Options{ConntrackEntries: 1 << 16, PolicySlots: 64, IPSetEntries: 1024, RuleHitEntries: 1024,
		MaxInterfaces: 8, Policy: opts})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	if err := d.Routes().Put(workloadRoute("::/0", loIfindex)); err != nil {
		tb.Fatal(err)
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Workload, Ingress: rules, Egress: rules}); err != nil {
		tb.Fatal(err)
	}
	return d
}

// tcCounters returns lo's counters at a TC hook: for a workload, its
// egress is the TC ingress hook.
func tcCounters(tb testing.TB, d *Datapath, hook bpf.Hook) HookCounters {
	tb.Helper()
	c, err := d.Counters(loIfindex)
	if err != nil {
		tb.Fatal(err)
	}
	if hook == bpf.HookIngress {
		return c.Egress
	}
	return c.Ingress
}

// tenRules is a policy of ten rules in Calico's benchmark shape: nine that
// do not match the test traffic (source network and port), then an allow
// of TCP to port 80. Rule i has ID i+1; the tier's end denies as ID 99.
func tenRules() polprog.Rules {
	var rules []polprog.Rule
	for i := range 9 {
		rules = append(rules, polprog.Rule{
			ID: uint64(i + 1), Action: polprog.ActionAllow, Protocol: "tcp",
			SrcNets:  []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("192.168.%d.0/24", i))},
			DstPorts: []polprog.PortRange{polprog.Port(uint16(1000 + i))},
		})
	}
	rules = append(rules, polprog.Rule{ID: 10, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}})
	return polprog.Rules{
		Tiers: []polprog.Tier{{Name: "default", Policies: []polprog.Policy{{Name: "ten", Rules: rules}}, EndRuleID: 99}},
	}
}

func ruleHits(tb testing.TB, d *Datapath, id uint64) uint64 {
	tb.Helper()
	n, err := d.RuleHits().Get(id)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestPolprogPolicy runs a policy polprog compiled: allowed and denied new
// flows, the established path that skips it, and rule hits counted once
// per decision (polprog counts them; the continuations do not).
func TestPolprogPolicy(t *testing.T) {
	dp := loadWithPolicy(t, tenRules(), polprog.Options{MergeThreshold: -1})
	client := netip.MustParseAddrPort("10.7.0.1:40000")
	steps := []struct {
		name     string
		prog     prog
		frame    []byte
		wantRet  uint32
		reason   bpf.Reason
		hook     bpf.Hook
		wantHits map[uint64]uint64
	}{
		{"SYN to 80 allowed by rule 10", progIngress, syn(t, client, "10.7.0.2:80"), tcActOK, bpf.ReasonAcceptedByPolicy, bpf.HookIngress, map[uint64]uint64{10: 1, 99: 0}},
		{"reply passes without policy", progEgress, tcp(t, "10.7.0.2:80", client.String(), testpkt.SYN|testpkt.ACK), tcActOK, bpf.ReasonAcceptedEstablished, bpf.HookEgress, map[uint64]uint64{10: 1, 99: 0}},
		{"ACK passes without policy", progIngress, tcp(t, client.String(), "10.7.0.2:80", testpkt.ACK), tcActOK, bpf.ReasonAcceptedEstablished, bpf.HookIngress, map[uint64]uint64{10: 1, 99: 0}},
		{"SYN to 1000 denied: rule 1 needs 192.168.0.0/24", progIngress, syn(t, client, "10.7.0.2:1000"), tcActShot, bpf.ReasonDroppedByPolicy, bpf.HookIngress, map[uint64]uint64{10: 1, 99: 1}},
		{"UDP to 80 denied", progIngress, testpkt.MustBytes(t, testpkt.UDPv4(client, netip.MustParseAddrPort("10.7.0.2:80"), nil)), tcActShot, bpf.ReasonDroppedByPolicy, bpf.HookIngress, map[uint64]uint64{10: 1, 99: 2}},
	}
	for _, s := range steps {
		before := tcCounters(t, dp, s.hook)
		ret, err := programOf(dp, s.prog).Run(&ebpf.RunOptions{Data: s.frame})
		if err != nil {
			t.Fatal(err)
		}
		if ret != s.wantRet {
			t.Errorf("%s: verdict %d, want %d", s.name, ret, s.wantRet)
		}
		after := tcCounters(t, dp, s.hook)
		if got := after[s.reason] - before[s.reason]; got != 1 {
			t.Errorf("%s: reason %d counted %d times, want once", s.name, s.reason, got)
		}
		gotHits := map[uint64]uint64{}
		for id := range s.wantHits {
			gotHits[id] = ruleHits(t, dp, id)
		}
		if diff := cmp.Diff(s.wantHits, gotHits); diff != "" {
			t.Errorf("%s: rule hits (-want +got):\n%s", s.name, diff)
		}
	}
}

func tcp(tb testing.TB, src, dst string, flags testpkt.TCPFlags) []byte {
	return testpkt.MustBytes(tb, testpkt.TCPv4(netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), flags, nil))
}

func syn(tb testing.TB, src netip.AddrPort, dst string) []byte {
	return testpkt.MustBytes(tb, testpkt.TCPv4(src, netip.MustParseAddrPort(dst), testpkt.SYN, nil))
}
