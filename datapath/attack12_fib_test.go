package datapath

import (
	"net"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// TestAttack12FIBIPv6NextHop attacks the FIB step with an operator's
// ordinary routing: an IPv4 route whose gateway is an IPv6 address (RFC
// 5549, `ip route add ... via inet6 ...`, what BGP unnumbered fabrics
// install). bpf_fib_lookup then answers with family AF_INET6 and the
// gateway in ipv6_dst; a redirect that names an IPv4 next hop from
// ipv4_dst (the first four bytes of that IPv6 address) resolves a
// neighbour that does not exist and the NodePort's source-NATed SYN to a
// backend elsewhere is lost. The stack, which forwards such routes, would
// have delivered it. The backend here is reachable only through such a
// route.
func TestAttack12FIBIPv6NextHop(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := testutil.NewNode(t)
	remote := testutil.NewNetNS(t)
	nodeAddr, remoteAddr := netip.MustParsePrefix("192.168.115.1/24"), netip.MustParsePrefix("192.168.115.2/24")
	backend := netip.MustParseAddrPort("10.115.0.3:8080")
	uplink, _ := testutil.ConnectVeth(t, &testutil.NetNS{NS: node.NS}, "sl12a6up", nodeAddr, remote, "eth0", remoteAddr)
	if err := remote.AddrAdd("eth0", netip.PrefixFrom(backend.Addr(), 32)); err != nil {
		t.Fatal(err)
	}
	// The IPv6 next hop, without DAD so that it answers neighbour
	// solicitations at once.
	gw := net.ParseIP("fd00:115::2")
	for _, side := range []struct {
		do   func(func() error) error
		name string
		addr string
	}{{node.NS.Do, uplink.Name, "fd00:115::1/64"}, {remote.Do, "eth0", "fd00:115::2/64"}} {
		err := side.do(func() error {
			link, err := netlink.LinkByName(side.name)
			if err != nil {
				return err
			}
			a, err := netlink.ParseAddr(side.addr)
			if err != nil {
				return err
			}
			a.Flags = unix.IFA_F_NODAD
			return netlink.AddrAdd(link, a)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := node.NS.Do(func() error {
		link, err := netlink.LinkByName(uplink.Name)
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index,
			Dst: &net.IPNet{IP: backend.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)},
			Via: &netlink.Via{AddrFamily: netlink.FAMILY_V6, Addr: gw}})
	})
	if err != nil {
		t.Fatalf("route via inet6: %v", err)
	}
	e2e12NoAcceptLocal(t, node.NS, uplink.Name)
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Routes().Put(routes.Route{Prefix: netip.PrefixFrom(nodeAddr.Addr(), 32), Flags: routes.FlagLocalHost}); err != nil {
		t.Fatal(err)
	}
	if err := d.SNAT().Set(nat.SNAT{IPv4: nodeAddr.Addr(), PortMin: 61000, PortMax: 61099}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(uplink.Index, Interface{Kind: Host, Ingress: allowAllRules, Egress: allowAllRules}); err != nil {
		t.Fatal(err)
	}
	e2e12Attach(t, node.NS, d, uplink.Name)
	if err := d.Services().Sync(map[string]nat.Service{"np": nodePort(backend.String(), false)}); err != nil {
		t.Fatal(err)
	}
	e2e12ServePeer(t, remote.NS, backend.String(), "far")
	answers, err := e2e12Ask(remote, netip.AddrPortFrom(nodeAddr.Addr(), 30080).String(), 3)
	if err != nil {
		t.Fatalf("NodePort to a backend behind an IPv6 next hop: %v", err)
	}
	for _, a := range answers {
		if peer, err := netip.ParseAddrPort(a[1]); err != nil || a[0] != "far" || peer.Addr().Unmap() != nodeAddr.Addr() {
			t.Errorf("answer from %s, which saw client %s; want far, seeing the node %v", a[0], a[1], nodeAddr.Addr())
		}
	}
}

// TestAttack12FIBPastMTU sends, through the FIB step at an uplink whose
// MTU is 1280, a backend's 1400-byte reply of a source-NATed NodePort
// flow, in both families. bpf_fib_lookup answers
// BPF_FIB_LKUP_RET_FRAG_NEEDED. The hook once left the packet, now from
// the node's address, to the stack, counted as accepted, where without
// accept_local (what the FIB step is for) the IPv4 input route dropped it
// as a martian: a path MTU black hole, silent, counted as accepted. The
// defined answer now: the hook drops it, counted as dropped_fib_mtu (no
// ICMP error: see docs/design.md, the FIB step). The same reply as a GSO
// packet (gso_size set) is not checked against the MTU, as the stack's
// forwarding does not check one (it segments it at the egress): the
// lookup gets no length, and the reply is redirected.
func TestAttack12FIBPastMTU(t *testing.T) {
	testutil.RequirePrivileged(t)
	if segs, size := unsafe.Offsetof(skbCtxGSO{}.GSOSegs), unsafe.Offsetof(skbCtxGSO{}.GSOSize); segs != 164 || size != 176 {
		t.Fatalf("skbCtxGSO: gso_segs at %d, gso_size at %d; struct __sk_buff has them at 164 and 176", segs, size)
	}
	for _, fam := range []struct{ name, client, node, remote string }{
		{"ipv4", "203.0.113.7:40000", "10.0.0.100:30080", "10.2.0.5:8080"},
		{"ipv6", "[2001:db8:77::7]:40000", "[fd00::100]:30080", "[fd00:2::5]:8080"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			n := newFIBNet(t, true)
			err := n.ns.Do(func() error {
				link, err := netlink.LinkByName("lbup")
				if err != nil {
					return err
				}
				return netlink.LinkSetMTU(link, 1280)
			})
			if err != nil {
				t.Fatal(err)
			}
			n.sync(map[string]nat.Service{"np": nodePort(fam.remote, false)})
			ret, _, syn := n.at(bpf.HookIngress, tcpSeg(fam.client, fam.node, testpkt.SYN, 10, 0))
			if ret != tcActRedirect {
				t.Fatalf("SYN: verdict %d, want %d", ret, tcActRedirect)
			}
			src, dst := endpoints(t, syn)
			if ret, _, _ := n.at(bpf.HookEgress, tcpSeg(src.String(), dst.String(), testpkt.SYN, 10, 0)); ret != tcActOK {
				t.Fatalf("SYN at the uplink's egress: verdict %d", ret)
			}
			big := tcpSeg(dst.String(), src.String(), testpkt.ACK, 50, 11)
			big.Payload = make([]byte, 1400)
			ret, counted, out := n.at(bpf.HookIngress, big)
			if ret != tcActShot || hops(out) != 64 {
				t.Errorf("a reply past the uplink's MTU: verdict %d with %d hops left, want %d (dropped) with 64", ret, hops(out), tcActShot)
			}
			if diff := cmp.Diff(map[bpf.Reason]uint64{bpf.ReasonDroppedFIBMTU: 1}, counted); diff != "" {
				t.Errorf("a reply past the uplink's MTU: counters (-want +got):\n%s", diff)
			}
			ret, counted, out = n.atCtx(bpf.HookIngress, big, skbCtxGSO{
				skbCtx: skbCtx{Ifindex: n.uplink, IngressIfindex: n.uplink}, GSOSegs: 2, GSOSize: 1000})
			if ret != tcActRedirect || hops(out) != 63 {
				t.Errorf("the same reply as a GSO packet: verdict %d with %d hops left, want %d with 63", ret, hops(out), tcActRedirect)
			}
			if diff := cmp.Diff(map[bpf.Reason]uint64{bpf.ReasonAcceptedEstablished: 1}, counted); diff != "" {
				t.Errorf("the same reply as a GSO packet: counters (-want +got):\n%s", diff)
			}
		})
	}
}

// skbCtxGSO is the head of struct __sk_buff up to gso_size: a test run
// may set gso_segs and gso_size to run a program on a GSO packet.
type skbCtxGSO struct {
	skbCtx
	_       [30]uint32 // tc_index (offset 44) to wire_len
	GSOSegs uint32     // gso_segs, at 164
	_       [2]uint32  // sk
	GSOSize uint32     // gso_size, at 176
}
