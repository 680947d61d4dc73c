package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
)

// fibNet is the SNAT harness with an uplink in a network namespace of the
// test's: a veth (lbup) holding the node's addresses, whose peer in a
// second namespace is the next hop (10.0.0.200, fd00::200) of the
// backends' networks and of the default routes, so that bpf_fib_lookup
// in a test run at lbup finds a route for both directions of a NodePort
// flow to a backend elsewhere.
type fibNet struct {
	*lbHarness
	ns     *testutil.NetNS
	uplink uint32
}

func newFIBNet(t *testing.T, forwarding bool) *fibNet {
	h := newSNATHarness(t)
	ns, peer := testutil.NewNetNS(t), testutil.NewNetNS(t)
	up, _ := testutil.ConnectVeth(t, ns, "lbup", netip.PrefixFrom(snatNode4, 24), peer, "lbnext", netip.MustParsePrefix("10.0.0.200/24"))
	if err := ns.AddrAdd("lbup", netip.PrefixFrom(snatNode6, 64)); err != nil {
		t.Fatal(err)
	}
	if err := peer.AddrAdd("lbnext", netip.MustParsePrefix("fd00::200/64")); err != nil {
		t.Fatal(err)
	}
	for dst, gw := range map[string]string{"0.0.0.0/0": "10.0.0.200", "::/0": "fd00::200"} {
		ns.AddRoute(t, netip.MustParsePrefix(dst), netip.MustParseAddr(gw), "lbup")
	}
	on := map[bool]string{false: "0", true: "1"}[forwarding]
	ns.Sysctl(t, "net/ipv4/ip_forward", on)
	ns.Sysctl(t, "net/ipv6/conf/all/forwarding", on)
	n := &fibNet{lbHarness: h, ns: ns, uplink: uint32(up.Index)}
	h.setIface(n.uplink, bpf.IfaceHost|bpf.IfaceReady|bpf.IfaceEnforceIPv6, h.lo, 2)
	return n
}

// at runs hook's program on p at the uplink and returns the verdict, the
// reasons counted and the packet as it left.
func (n *fibNet) at(hook bpf.Hook, p testpkt.Packet) (uint32, map[bpf.Reason]uint64, *testpkt.Packet) {
	n.t.Helper()
	return n.atCtx(hook, p, skbCtx{Ifindex: n.uplink, IngressIfindex: n.uplink})
}

// atCtx is at with the test run's skb context (ctx: an skbCtx, or a
// larger head of struct __sk_buff), which names the uplink.
func (n *fibNet) atCtx(hook bpf.Hook, p testpkt.Packet, ctx any) (uint32, map[bpf.Reason]uint64, *testpkt.Packet) {
	n.t.Helper()
	frame := testpkt.MustBytes(n.t, p)
	before := n.counters(n.uplink, hook)
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+512), Context: ctx}
	var ret uint32
	if err := n.ns.Do(func() (err error) { ret, err = n.program(hookProg(hook)).Run(opts); return }); err != nil {
		n.t.Fatalf("run: %v", err)
	}
	got, err := testpkt.Parse(opts.DataOut)
	if err != nil {
		n.t.Fatalf("parse the program's output: %v", err)
	}
	return ret, reasonDelta(before, n.counters(n.uplink, hook)), got
}

// hops is the TTL or hop limit of p.
func hops(p *testpkt.Packet) uint8 {
	if p.IPv4 != nil {
		return p.IPv4.TTL
	}
	return p.IPv6.HopLimit
}

// ipEnds is p's IP source and destination.
func ipEnds(p *testpkt.Packet) (src, dst netip.Addr) {
	if p.IPv4 != nil {
		return p.IPv4.Src, p.IPv4.Dst
	}
	return p.IPv6.Src, p.IPv6.Dst
}

// TestServiceFIBRedirect drives sl_fib_redirect with BPF_PROG_TEST_RUN at
// an uplink: a NodePort's SYN to a backend elsewhere, source-NATed to the
// node, and the backend's SYN-ACK, reverse-translated to come from the
// NodePort, both leave the program from the node's address (the SYN
// crossing the uplink's egress hook between them, as a redirected one
// does). With
// forwarding on, the hook routes them itself: TC_ACT_REDIRECT (to the
// FIB's interface, with its next hop) and one hop fewer, the IPv4 header
// checksum updated, each counted once as accepted, as before the step
// existed. With forwarding off the FIB lookup fails
// (BPF_FIB_LKUP_RET_FWD_DISABLED) and each is dropped (TC_ACT_SHOT, no hop
// taken), counted once as dropped_fib_no_route: the stack would drop the
// IPv4 ones as martians, uncounted. A packet whose source stays the
// client's (the local backend's SYN, not source-NATed) is never
// redirected.
func TestServiceFIBRedirect(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, fam := range []struct{ name, client, node, remote, local string }{
		{"ipv4", "203.0.113.7:40000", "10.0.0.100:30080", "10.2.0.5:8080", "10.1.0.5:8080"},
		{"ipv6", "[2001:db8:77::7]:40000", "[fd00::100]:30080", "[fd00:2::5]:8080", "[fd00:1::5]:8080"},
	} {
		for _, forwarding := range []bool{true, false} {
			t.Run(fam.name+map[bool]string{true: "/forwarding", false: "/no-forwarding"}[forwarding], func(t *testing.T) {
				n := newFIBNet(t, forwarding)
				n.sync(map[string]nat.Service{"np": nodePort(fam.remote, false)})
				verdict, hop := uint32(tcActShot), uint8(0)
				// The reason each of the three is counted under.
				synReason, synAckReason, errReason := bpf.ReasonDroppedFIBNoRoute, bpf.ReasonDroppedFIBNoRoute, bpf.ReasonDroppedFIBNoRoute
				if forwarding {
					verdict, hop = tcActRedirect, 1
					synReason, synAckReason, errReason = bpf.ReasonAcceptedByPolicy, bpf.ReasonAcceptedEstablished, bpf.ReasonAcceptedRelated
				}
				node := netip.MustParseAddrPort(fam.node)
				ret, counted, syn := n.at(bpf.HookIngress, tcpSeg(fam.client, fam.node, testpkt.SYN, 10, 0))
				src, dst := endpoints(t, syn)
				if ret != verdict || src.Addr() != node.Addr() || dst.String() != fam.remote || hops(syn) != 64-hop {
					t.Errorf("SYN: verdict %d, %v -> %v with %d hops left; want verdict %d, from %v to %s with %d",
						ret, src, dst, hops(syn), verdict, node.Addr(), fam.remote, 64-hop)
				}
				if diff := cmp.Diff(map[bpf.Reason]uint64{synReason: 1}, counted); diff != "" {
					t.Errorf("SYN counters (-want +got):\n%s", diff)
				}
				// It leaves by the uplink, whose egress hook approves it
				// (it was redirected there): the reply's leg opens.
				if ret, counted, _ := n.at(bpf.HookEgress, tcpSeg(src.String(), dst.String(), testpkt.SYN, 10, 0)); ret != tcActOK ||
					counted[bpf.ReasonAcceptedByPolicy] != 1 {
					t.Fatalf("SYN at the uplink's egress: verdict %d, counted %v", ret, counted)
				}
				ret, counted, synAck := n.at(bpf.HookIngress, tcpSeg(dst.String(), src.String(), testpkt.SYN|testpkt.ACK, 50, 11))
				rsrc, rdst := endpoints(t, synAck)
				if ret != verdict || rsrc != node || rdst.String() != fam.client || hops(synAck) != 64-hop {
					t.Errorf("SYN-ACK: verdict %d, %v -> %v with %d hops left; want verdict %d, from %v to %s with %d",
						ret, rsrc, rdst, hops(synAck), verdict, node, fam.client, 64-hop)
				}
				if diff := cmp.Diff(map[bpf.Reason]uint64{synAckReason: 1}, counted); diff != "" {
					t.Errorf("SYN-ACK counters (-want +got):\n%s", diff)
				}
				// The backend's error about the SYN reaches the client from
				// the NodePort, so it takes the same step.
				ret, counted, icmp := n.at(bpf.HookIngress, icmpError(dst.Addr(), src.Addr(), ipOf(t, *syn)))
				esrc, edst := ipEnds(icmp)
				if client := netip.MustParseAddrPort(fam.client).Addr(); ret != verdict || esrc != node.Addr() || edst != client || hops(icmp) != 64-hop {
					t.Errorf("error about the SYN: verdict %d, %v -> %v with %d hops left; want verdict %d, from %v to %v with %d",
						ret, esrc, edst, hops(icmp), verdict, node.Addr(), client, 64-hop)
				}
				if diff := cmp.Diff(map[bpf.Reason]uint64{errReason: 1}, counted); diff != "" {
					t.Errorf("error counters (-want +got):\n%s", diff)
				}

				// A local backend keeps the client's address: the stack
				// routes the SYN, as it always did.
				n.sync(map[string]nat.Service{"np": nodePort(fam.local, true)})
				client := netip.MustParseAddrPort(fam.client)
				ret, _, local := n.at(bpf.HookIngress, tcpSeg(netip.AddrPortFrom(client.Addr(), 40001).String(), fam.node, testpkt.SYN, 10, 0))
				if lsrc, ldst := endpoints(t, local); ret != tcActOK || lsrc.Addr() != client.Addr() || ldst.String() != fam.local || hops(local) != 64 {
					t.Errorf("SYN to the local backend: verdict %d, %v -> %v with %d hops left; want %d, from the client to %s, untouched",
						ret, lsrc, ldst, hops(local), tcActOK, fam.local)
				}
			})
		}
	}
}
