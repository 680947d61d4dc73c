package datapath

import (
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// atk2HostNet is a workload and two host interfaces: the node's address
// is routed as the node's (FlagLocalHost), and the node has a second
// address that the routes map does not know, as on a node whose agent
// manages only its primary address.
type atk2HostNet struct {
	e                  *atkEnv
	pod, node, node2   netip.Addr
	outside            netip.AddrPort
	hif1End, hif2End   uint64
	hif1Allow, podDeny uint64
}

func atk2NewHostNet(t *testing.T, hif2 polprog.Rules) *atk2HostNet {
	e := atkNewEnv(t, "atk2w", "atk2h1", "atk2h2")
	n := &atk2HostNet{e: e,
		pod: netip.MustParseAddr("10.90.0.1"), node: netip.MustParseAddr("10.90.255.1"), node2: netip.MustParseAddr("10.91.0.1"),
		outside: netip.MustParseAddrPort("198.51.100.9:443"),
	}
	e.route(atkLocal(n.pod, e.idx("atk2w")))
	e.route(atkHostRoute(n.node))
	e.set("atk2w", Interface{Kind: Workload, Egress: atkAllowAll(100), Ingress: atkAllowAll(200)})
	// The first host interface lets the node out to port 443 and nothing
	// in; the second is configured by the caller.
	out := atkRules(309, polprog.Rule{ID: 301, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(443)}})
	e.set("atk2h1", Interface{Kind: Host, Ingress: atkHostRules(atkRules(399)), Egress: atkHostRules(out)})
	e.set("atk2h2", Interface{Kind: Host, Ingress: atkHostRules(hif2), Egress: atkHostRules(atkAllowAll(500))})
	return n
}

// TestAttack2NodeTrafficReplayedOnAnotherHostInterface: the node opens a
// connection to the outside through one host interface; an attacker on
// the other host interface (whose Ingress policy denies everything)
// replays the node's packets and the outside's replies into it, and
// reflects the node's packets back into the first. The node's packets
// are DROPPED_RPF wherever they enter; the replies meet the second
// interface's policy. The node's connection keeps working, and its legs
// keep their bindings.
func TestAttack2NodeTrafficReplayedOnAnotherHostInterface(t *testing.T) {
	n := atk2NewHostNet(t, atkRules(409))
	e := n.e
	nodeEnd := netip.AddrPortFrom(n.node, 45000)
	syn := atkTCP(t, nodeEnd, n.outside, testpkt.SYN, 0)
	synAck := atkTCP(t, n.outside, nodeEnd, testpkt.SYN|testpkt.ACK, 0)
	ack := atkTCP(t, nodeEnd, n.outside, testpkt.ACK, 0)
	data := atkTCP(t, n.outside, nodeEnd, testpkt.PSH|testpkt.ACK, 300)
	if !e.expect("the node's SYN leaves", "atk2h1", bpf.HookEgress, syn, bpf.ReasonAcceptedByPolicy) ||
		!e.expect("the SYN-ACK arrives", "atk2h1", bpf.HookIngress, synAck, bpf.ReasonAcceptedEstablished) ||
		!e.expect("the node's ACK leaves", "atk2h1", bpf.HookEgress, ack, bpf.ReasonAcceptedEstablished) {
		t.FailNow()
	}
	key, _ := ctKeyOf(testpkt.ProtoTCP, nodeEnd, n.outside)
	before, _ := e.ctEntry(key)
	for _, s := range []struct {
		name, iface string
		frame       []byte
		want        bpf.Reason
	}{
		{"the node's SYN replayed into the second interface", "atk2h2", syn, bpf.ReasonDroppedRPF},
		{"the node's ACK replayed into the second interface", "atk2h2", ack, bpf.ReasonDroppedRPF},
		{"the node's ACK reflected into the first interface", "atk2h1", ack, bpf.ReasonDroppedRPF},
		{"the outside's SYN-ACK replayed into the second interface", "atk2h2", synAck, bpf.ReasonDroppedByPolicy},
		{"the outside's data replayed into the second interface", "atk2h2", data, bpf.ReasonDroppedByPolicy},
	} {
		e.expect(s.name, s.iface, bpf.HookIngress, s.frame, s.want)
	}
	after, _ := e.ctEntry(key)
	if before.AToB.Ifindex != after.AToB.Ifindex || before.BToA.Ifindex != after.BToA.Ifindex ||
		before.AToB.Flags&(bpf.CTLegIngressOK|bpf.CTLegEgressOK) != after.AToB.Flags&(bpf.CTLegIngressOK|bpf.CTLegEgressOK) ||
		before.BToA.Flags&(bpf.CTLegIngressOK|bpf.CTLegEgressOK) != after.BToA.Flags&(bpf.CTLegIngressOK|bpf.CTLegEgressOK) {
		t.Errorf("the replays moved the node's legs: %s, was %s", atkLegs(after), atkLegs(before))
	}
	e.expect("the outside's data still arrives", "atk2h1", bpf.HookIngress, data, bpf.ReasonAcceptedEstablished)
	e.expect("the node's data still leaves", "atk2h1", bpf.HookEgress, atkTCP(t, nodeEnd, n.outside, testpkt.PSH|testpkt.ACK, 10), bpf.ReasonAcceptedEstablished)
}

// TestAttack2UnroutedNodeAddressNeverBound: the node's second address is
// not in the routes map, so the host reverse-path check cannot know it is
// the node's. The node connects out from it through the first host
// interface; an attacker on the second host interface, whose Ingress
// policy allows everything, replays the node's packets. Policy allows
// them (ACCEPTED_BY_POLICY), but a leg approved only leaving is never
// bound to an ingress hook: every replay meets policy again, none passes
// as established, and the node's leg gains no ingress binding.
func TestAttack2UnroutedNodeAddressNeverBound(t *testing.T) {
	n := atk2NewHostNet(t, atkAllowAll(400))
	e := n.e
	nodeEnd := netip.AddrPortFrom(n.node2, 46000)
	syn := atkTCP(t, nodeEnd, n.outside, testpkt.SYN, 0)
	ack := atkTCP(t, nodeEnd, n.outside, testpkt.ACK, 0)
	if !e.expect("the node's SYN leaves", "atk2h1", bpf.HookEgress, syn, bpf.ReasonAcceptedByPolicy) ||
		!e.expect("the SYN-ACK arrives", "atk2h1", bpf.HookIngress, atkTCP(t, n.outside, nodeEnd, testpkt.SYN|testpkt.ACK, 0), bpf.ReasonAcceptedEstablished) {
		t.FailNow()
	}
	for i := range 3 {
		for _, iface := range []string{"atk2h2", "atk2h1"} {
			want := bpf.ReasonAcceptedByPolicy
			if iface == "atk2h1" {
				want = bpf.ReasonDroppedByPolicy // its Ingress policy denies all
			}
			e.expect("replay of the node's ACK into "+iface+" #"+string(rune('1'+i)), iface, bpf.HookIngress, ack, want)
		}
	}
	key, dir := ctKeyOf(testpkt.ProtoTCP, nodeEnd, n.outside)
	v, _ := e.ctEntry(key)
	if leg := atkLegOf(&v, dir); leg.Flags&bpf.CTLegIngressOK != 0 || leg.Ifindex != 0 {
		t.Errorf("the node's leg got an ingress binding from the replays: %s", atkLegs(v))
	}
}

// TestAttack2AsymmetricFlowCountedOnce: a flow from outside arrives
// through an interface the datapath does not run on (so only the
// workload's TC egress hook sees its packets: they are counted there),
// and the workload's replies leave through a managed host interface,
// whose egress policy approves them and so lets replies in at its
// ingress. The outside's packets keep arriving the way they came, never
// through that host interface. Each must still be counted once on its
// leg ("a TC egress hook adds only packets no ingress hook of sluice
// vouched for"): no ingress hook of sluice ever saw them.
func TestAttack2AsymmetricFlowCountedOnce(t *testing.T) {
	n := atk2NewHostNet(t, atkRules(409))
	e := n.e
	e.route(routes.Route{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Flags: routes.FlagRemoteHost, NextHop: netip.MustParseAddr("198.51.100.1")})
	e.set("atk2h1", Interface{Kind: Host, Ingress: atkHostRules(atkRules(399)), Egress: atkHostRules(atkAllowAll(300))})
	podEnd := netip.AddrPortFrom(n.pod, 8443)
	remote := netip.AddrPortFrom(n.outside.Addr(), 50000)
	key, fromRemote := ctKeyOf(testpkt.ProtoTCP, remote, podEnd)
	legPackets := func() uint32 {
		v, ok := e.ctEntry(key)
		if !ok {
			t.Fatal("no entry for the flow")
		}
		return atkLegOf(&v, fromRemote).Packets
	}
	if !e.expect("the outside's SYN reaches the workload", "atk2w", bpf.HookEgress, atkTCP(t, remote, podEnd, testpkt.SYN, 0), bpf.ReasonAcceptedByPolicy) {
		t.FailNow()
	}
	synAck := atkTCP(t, podEnd, remote, testpkt.SYN|testpkt.ACK, 0)
	if !e.expect("the SYN-ACK leaves the workload", "atk2w", bpf.HookIngress, synAck, bpf.ReasonAcceptedEstablished) ||
		!e.expect("the SYN-ACK leaves the host interface", "atk2h1", bpf.HookEgress, synAck, bpf.ReasonAcceptedByPolicy) {
		t.FailNow()
	}
	for i := range 3 {
		before := legPackets()
		e.expect("the outside's packet reaches the workload", "atk2w", bpf.HookEgress, atkTCP(t, remote, podEnd, testpkt.ACK, 100*i), bpf.ReasonAcceptedEstablished)
		if got := legPackets() - before; got != 1 {
			t.Errorf("the outside's packet %d: its leg gained %d packets, want 1 (the leg: %s)", i+2, got, func() string { v, _ := e.ctEntry(key); return atkLegs(v) }())
		}
	}
}

// TestAttack2OutsideSourceBecomesWorkload: an outside address with no
// route has a connection to the node through a host interface; then the
// address is given to a local workload (its /32 route appears). From then
// on a new packet entering the host interface from that address is
// forged (DROPPED_RPF), while the connection approved before keeps
// passing there, as "packets conntrack passes already arrived where their
// flow was approved". The workload that now owns the address does not
// inherit the connection: its packets on the old tuple meet its own
// Egress policy, and the node's replies meet its Ingress policy.
func TestAttack2OutsideSourceBecomesWorkload(t *testing.T) {
	n := atk2NewHostNet(t, atkRules(409))
	e := n.e
	e.set("atk2h1", Interface{Kind: Host, Ingress: atkHostRules(atkAllowAll(300)), Egress: atkHostRules(atkAllowAll(310))})
	e.set("atk2w", Interface{Kind: Workload, Egress: atkRules(119), Ingress: atkRules(219)})
	outside := netip.AddrPortFrom(netip.MustParseAddr("10.90.7.7"), 51000)
	nodeEnd := netip.AddrPortFrom(n.node, 22)
	if !e.expect("the outside's SYN", "atk2h1", bpf.HookIngress, atkTCP(t, outside, nodeEnd, testpkt.SYN, 0), bpf.ReasonAcceptedByPolicy) ||
		!e.expect("the node's SYN-ACK", "atk2h1", bpf.HookEgress, atkTCP(t, nodeEnd, outside, testpkt.SYN|testpkt.ACK, 0), bpf.ReasonAcceptedEstablished) {
		t.FailNow()
	}
	e.route(atkLocal(outside.Addr(), e.idx("atk2w")))
	e.expect("a new SYN from the address, now a workload's, at the host interface", "atk2h1", bpf.HookIngress,
		atkTCP(t, netip.AddrPortFrom(outside.Addr(), 51001), nodeEnd, testpkt.SYN, 0), bpf.ReasonDroppedRPF)
	e.expect("the connection approved before", "atk2h1", bpf.HookIngress, atkTCP(t, outside, nodeEnd, testpkt.ACK, 10), bpf.ReasonAcceptedEstablished)
	e.expect("the workload sends on the old tuple", "atk2w", bpf.HookIngress, atkTCP(t, outside, nodeEnd, testpkt.ACK, 10), bpf.ReasonDroppedByPolicy)
	e.expect("the node's reply routed to the workload", "atk2w", bpf.HookEgress, atkTCP(t, nodeEnd, outside, testpkt.ACK, 10), bpf.ReasonDroppedByPolicy)
}
