package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
)

// Tuples that collide with a NAT flow's, forged stubs, fragments and
// mid-flow segments to frontends, and policy of the translated packet.

// TestAttack8FragmentsToFrontend: where fragments are not passed, a
// first fragment to a frontend is dropped, counted, unchanged and
// without NAT entries, in both families, like any fragment.
func TestAttack8FragmentsToFrontend(t *testing.T) {
	h := newLBHarness(t)
	h.sync(map[string]nat.Service{
		"dns":  oneBackend("10.96.0.60:53", "10.1.0.60:5353", nat.ProtoUDP),
		"dns6": oneBackend("[fd00:96::60]:53", "[fd00::1:60]:5353", nat.ProtoUDP),
	})
	first := udp("10.0.0.60:33000", "10.96.0.60:53", make([]byte, 64))
	first.IPv4.MoreFragments = true
	h.untouched("IPv4 first fragment", bpf.HookIngress, first, tcActShot, bpf.ReasonDroppedFragment)
	h.noNAT(nat.ProtoUDP, "10.0.0.60:33000", "10.96.0.60:53", "10.1.0.60:5353")
	first6 := udp("[fd00::60]:33000", "[fd00:96::60]:53", make([]byte, 64))
	first6.IPv6.Ext = []testpkt.IPv6Ext{{Type: testpkt.ProtoFragment, MoreFragments: true, FragID: 7}}
	h.untouched("IPv6 first fragment", bpf.HookIngress, first6, tcActShot, bpf.ReasonDroppedFragment)
	h.noNAT(nat.ProtoUDP, "[fd00::60]:33000", "[fd00:96::60]:53", "[fd00::1:60]:5353")
}

// TestAttack8MidFlowToFrontend: at an interface that drops mid-flow TCP,
// a segment without SYN to a frontend is dropped as mid-flow before the
// service stage: not DNATed, no NAT entries, and no RST from a frontend
// without backends either. Without the flag the segment is a new flow:
// DNATed and policed.
func TestAttack8MidFlowToFrontend(t *testing.T) {
	h := newLBHarness(t)
	h.sync(map[string]nat.Service{
		"web":  oneBackend("10.96.0.61:80", "10.1.0.61:8080", nat.ProtoTCP),
		"none": {Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("10.96.0.62"), Port: 80, Protocol: nat.ProtoTCP}}},
	})
	h.setIface(loIfindex, bpf.IfaceWorkload|bpf.IfaceReady|bpf.IfaceEnforceIPv6|bpf.IfaceDropMidFlow, h.lo, loCounterSlot)
	for _, f := range []testpkt.TCPFlags{testpkt.ACK, testpkt.ACK | testpkt.PSH, testpkt.FIN | testpkt.ACK, testpkt.RST, 0} {
		h.untouched("mid-flow "+f.String()+" to a frontend", bpf.HookIngress, tcpSeg("10.0.0.61:41000", "10.96.0.61:80", f, 5, 5), tcActShot, bpf.ReasonDroppedMidFlow)
		h.untouched("mid-flow "+f.String()+" to one without backends", bpf.HookIngress, tcpSeg("10.0.0.61:41000", "10.96.0.62:80", f, 5, 5), tcActShot, bpf.ReasonDroppedMidFlow)
	}
	h.noNAT(nat.ProtoTCP, "10.0.0.61:41000", "10.96.0.61:80", "10.1.0.61:8080")
	h.setIface(loIfindex, bpf.IfaceWorkload|bpf.IfaceReady|bpf.IfaceEnforceIPv6, h.lo, loCounterSlot)
	got := h.counted(bpf.HookIngress, tcpSeg("10.0.0.61:41000", "10.96.0.61:80", testpkt.ACK, 5, 5), tcActOK, bpf.ReasonAcceptedByPolicy)
	wantEndpoints(t, "mid-flow without the flag", got, "10.0.0.61:41000", "10.1.0.61:8080")
}

// TestAttack8PolicyAfterDNAT: policy decides the translated packet. A
// frontend whose backend's port policy denies is dropped by policy, with
// no NAT entries, every time (no later packet passes as established); a
// frontend on a port policy does not allow, whose backend's port it
// does, is allowed.
func TestAttack8PolicyAfterDNAT(t *testing.T) {
	h := newLBHarness(t)
	h.sync(map[string]nat.Service{
		"denied":  oneBackend("10.96.0.70:80", "10.1.0.70:9999", nat.ProtoTCP),
		"allowed": oneBackend("10.96.0.71:9998", "10.1.0.71:8080", nat.ProtoTCP),
	})
	const client = "10.0.0.70:42000"
	for _, f := range []testpkt.TCPFlags{testpkt.SYN, testpkt.ACK, testpkt.SYN} {
		h.counted(bpf.HookIngress, tcpSeg(client, "10.96.0.70:80", f, 1, 1), tcActShot, bpf.ReasonDroppedByPolicy)
	}
	h.noNAT(nat.ProtoTCP, client, "10.96.0.70:80", "10.1.0.70:9999")
	got := h.counted(bpf.HookIngress, tcpSeg(client, "10.96.0.71:9998", testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	wantEndpoints(t, "to the allowed backend", got, client, "10.1.0.71:8080")
}

// TestAttack8TupleCollisions: a new NAT flow whose translated tuple is
// already another flow's (a flow the client opened straight to the
// backend, or one through another frontend to the same backend) is
// dropped as a failed translation, counted, and leaves that flow's entry
// as it was; the earlier flow stays established.
func TestAttack8TupleCollisions(t *testing.T) {
	h := newLBHarness(t)
	h.sync(map[string]nat.Service{
		"a": oneBackend("10.96.0.80:80", "10.1.0.80:8080", nat.ProtoTCP),
		"b": oneBackend("10.96.0.81:80", "10.1.0.80:8080", nat.ProtoTCP),
	})
	c, b := netip.MustParseAddrPort("10.0.0.80:43000"), netip.MustParseAddrPort("10.1.0.80:8080")
	revKey, _ := ctKeyOf(nat.ProtoTCP, c, b)

	// Straight to the backend first.
	h.counted(bpf.HookIngress, tcpSeg(c.String(), b.String(), testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	before, _ := h.ctEntry(revKey)
	h.counted(bpf.HookIngress, tcpSeg(c.String(), "10.96.0.80:80", testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedNATFailed)
	if after, _ := h.ctEntry(revKey); after != before {
		t.Errorf("the direct flow's entry changed:\n%+v\nwas\n%+v", after, before)
	}
	fwdKey, _ := ctKeyOf(nat.ProtoTCP, c, netip.MustParseAddrPort("10.96.0.80:80"))
	if v, ok := h.ctEntry(fwdKey); ok {
		t.Errorf("a stub %+v for the refused flow", v)
	}
	got := h.counted(bpf.HookIngress, tcpSeg(c.String(), b.String(), testpkt.ACK, 2, 1), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(t, "the direct flow", got, c.String(), b.String())

	// Through frontend a, then b, from one client port.
	c2 := "10.0.0.80:43001"
	h.counted(bpf.HookIngress, tcpSeg(c2, "10.96.0.80:80", testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	rev2, _ := ctKeyOf(nat.ProtoTCP, netip.MustParseAddrPort(c2), b)
	before, _ = h.ctEntry(rev2)
	h.counted(bpf.HookIngress, tcpSeg(c2, "10.96.0.81:80", testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedNATFailed)
	if after, _ := h.ctEntry(rev2); after.NATPeer != before.NATPeer || after.OrigAddr != before.OrigAddr || after.Type != bpf.CTNATRev {
		t.Errorf("frontend b's flow took over frontend a's entry: %+v", after)
	}
	got = h.counted(bpf.HookIngress, tcpSeg(c2, "10.96.0.80:80", testpkt.ACK, 2, 1), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(t, "frontend a's flow", got, c2, b.String())
}

// TestAttack8ForgedStubs: a stub that leads to an entry that is not a
// NAT flow's reverse entry, or to one whose stub it is not, is an orphan:
// the client's packet deletes it, the flow starts afresh through the
// service stage, and the entry it pointed at is left as it was.
func TestAttack8ForgedStubs(t *testing.T) {
	h := newLBHarness(t)
	h.sync(map[string]nat.Service{"web": oneBackend("10.96.0.90:80", "10.1.0.90:8080", nat.ProtoTCP)})
	b := netip.MustParseAddrPort("10.1.0.90:8080")
	// The victims: a direct flow and a NAT flow of other clients.
	h.counted(bpf.HookIngress, tcpSeg("10.0.0.91:44000", b.String(), testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	h.counted(bpf.HookIngress, tcpSeg("10.0.0.92:44000", "10.96.0.90:80", testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	direct, _ := ctKeyOf(nat.ProtoTCP, netip.MustParseAddrPort("10.0.0.91:44000"), b)
	natRev, _ := ctKeyOf(nat.ProtoTCP, netip.MustParseAddrPort("10.0.0.92:44000"), b)
	for i, target := range []bpf.CTKey{direct, natRev} {
		client := netip.AddrPortFrom(netip.MustParseAddr("10.0.0.93"), uint16(45000+i))
		fwd, _ := ctKeyOf(nat.ProtoTCP, client, netip.MustParseAddrPort("10.96.0.90:80"))
		if err := h.d.state.ct.Update(&fwd, &bpf.CTValue{Type: bpf.CTNATFwd, NATPeer: target}, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		before, _ := h.ctEntry(target)
		got := h.counted(bpf.HookIngress, tcpSeg(client.String(), "10.96.0.90:80", testpkt.ACK, 2, 1), tcActOK, bpf.ReasonAcceptedByPolicy)
		wantEndpoints(t, "after the forged stub", got, client.String(), b.String())
		if after, _ := h.ctEntry(target); after != before {
			t.Errorf("stub %d: the entry it pointed at changed:\n%+v\nwas\n%+v", i, after, before)
		}
		own, _ := ctKeyOf(nat.ProtoTCP, client, b)
		if stub, ok := h.ctEntry(fwd); !ok || stub.Type != bpf.CTNATFwd || stub.NATPeer != own {
			t.Errorf("stub %d: %+v (found %v), want one leading to the flow's own reverse entry", i, stub, ok)
		}
	}
}
