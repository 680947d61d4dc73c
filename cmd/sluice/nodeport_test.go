package main

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// TestExplainNodePort explains a host interface's packets as the kernel
// decided them: a client on a remote node reaches a NodePort through the
// node's uplink, whose host policy (normal tiers, as the destination is the
// node) admits TCP to the backend's (server2's) port 8080 after DNAT (rule 21) and
// denies the rest at its tier's end (rule 29), such as TCP to a port no
// service has.
func TestExplainNodePort(t *testing.T) {
	a := newAgent(t)
	nodeAddr, remoteAddr := netip.MustParsePrefix("192.168.131.1/24"), netip.MustParsePrefix("192.168.131.2/24")
	remote := testutil.NewNetNS(t)
	uplink, _ := testutil.ConnectVeth(t, &testutil.NetNS{NS: a.node.NS}, "sl13up", nodeAddr, remote, "eth0", remoteAddr)
	if err := a.d.Routes().Put(routes.Route{Prefix: netip.PrefixFrom(nodeAddr.Addr(), 32), Flags: routes.FlagLocalHost}); err != nil {
		t.Fatal(err)
	}
	hostPolicy := polprog.Rules{Tiers: []polprog.Tier{{Name: "host", EndRuleID: 29, Policies: []polprog.Policy{{Name: "np",
		Rules: []polprog.Rule{{ID: 21, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(8080)}}}}}}}}
	err := a.node.NS.Do(func() error {
		return a.d.SetInterface(uplink.Index, datapath.Interface{Kind: datapath.Host, Ingress: hostPolicy, Egress: allowAll})
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{{a.d.TCIngress(), ebpf.AttachTCXIngress}, {a.d.TCEgress(), ebpf.AttachTCXEgress}} {
		var l link.Link
		if err := a.node.NS.Do(func() (err error) {
			l, err = link.AttachTCX(link.TCXOptions{Interface: uplink.Index, Program: h.prog, Attach: h.typ})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
	}
	// The backend's reply, translated back at its interface, enters the
	// node from the node's own address (see datapath's e2e12 tests).
	if err := a.node.NS.Sysctl("net/ipv4/conf/"+a.server2.HostIfname+"/accept_local", "1"); err != nil {
		t.Fatal(err)
	}
	all := map[string]nat.Service{"np": {Backends: []nat.Backend{{Addr: server2Addr, Port: 8080, Local: true}},
		Frontends: []nat.Frontend{{Addr: netip.IPv4Unspecified(), Port: 30080, Protocol: nat.ProtoTCP, NodePort: true, External: true}}}}
	for name, s := range services {
		all[name] = s
	}
	if err := a.d.Services().Sync(all); err != nil {
		t.Fatal(err)
	}

	ap := netip.AddrPortFrom
	dial := func(port uint16, local uint16, timeout time.Duration) (string, error) {
		var name []byte
		err := remote.Do(func() error {
			d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(ap(remoteAddr.Addr(), local))}
			c, err := d.Dial("tcp4", ap(nodeAddr.Addr(), port).String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			name, err = io.ReadAll(c)
			return err
		})
		return string(name), err
	}
	up := uplink.Name

	// A new NodePort flow: explain's prediction, then the kernel's.
	client := ap(remoteAddr.Addr(), 46000)
	pred := a.explainJSON(t, up, "ingress", "tcp", client, ap(nodeAddr.Addr(), 30080))
	if pred.Service == nil || pred.Service.Frontend != "0.0.0.0:30080/tcp" || pred.Routes.ReversePath != "passes" || !pred.Routes.DstIsHost ||
		pred.Policy == nil || pred.Policy.RuleID != 21 || pred.Policy.PreNATDst != ap(nodeAddr.Addr(), 30080).String() ||
		pred.Outcome.Reason != "accepted_by_policy" || pred.Outcome.DNAT != ap(server2Addr, 8080).String() {
		t.Fatalf("NodePort flow: %+v, service %+v, routes %+v, policy %+v", pred.Outcome, pred.Service, pred.Routes, pred.Policy)
	}
	if name, err := dial(30080, 46000, 3*time.Second); err != nil || name != "srv2" {
		t.Fatalf("NodePort: %q, %v", name, err)
	}
	tracked := a.explainJSON(t, up, "ingress", "tcp", client, ap(nodeAddr.Addr(), 30080))
	if !tracked.Conntrack.Passes || tracked.Conntrack.Backend != ap(server2Addr, 8080).String() || tracked.Outcome.Reason != "accepted_established" {
		t.Errorf("tracked NodePort flow: %+v", tracked.Conntrack)
	}

	// At the backend's interface the translated flow is established.
	at := a.explainJSON(t, a.server2.HostIfname, "egress", "tcp", client, ap(server2Addr, 8080))
	if !at.Conntrack.Passes || at.Outcome.Reason != "accepted_established" {
		t.Errorf("translated NodePort flow at the backend: %+v", at.Conntrack)
	}

	// No service at 30081: the host policy's tier end denies it, which
	// the kernel's rule hits show.
	denied := a.explainJSON(t, up, "ingress", "tcp", ap(remoteAddr.Addr(), 46001), ap(nodeAddr.Addr(), 30081))
	if denied.Service != nil || denied.Policy == nil || denied.Policy.RuleID != 29 || denied.Outcome.Reason != "dropped_by_policy" {
		t.Fatalf("flow to 30081: %+v, policy %+v", denied.Outcome, denied.Policy)
	}
	before, err := a.d.RuleHits().Get(29)
	if err != nil {
		before = 0
	}
	if _, err := dial(30081, 46001, 500*time.Millisecond); err == nil {
		t.Fatal("TCP to 30081 was not denied")
	}
	after, err := a.d.RuleHits().Get(29)
	if err != nil || after <= before {
		t.Errorf("rule 29 hits %d then %d (%v): the kernel did not deny by it", before, after, err)
	}

	// A client claiming the node's own address fails the host check.
	spoof := a.explainJSON(t, up, "ingress", "tcp", ap(nodeAddr.Addr(), 1), ap(serverAddr, 8080))
	if spoof.Routes.ReversePath != "fails" || spoof.Outcome.Reason != "dropped_rpf" {
		t.Errorf("spoofed host source: %+v", spoof.Routes)
	}
}
