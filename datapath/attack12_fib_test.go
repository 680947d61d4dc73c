package datapath

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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
