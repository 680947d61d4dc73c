package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
)

// fibFamilies are the NodePort flows the FIB step's tests send: a client
// from outside, the node's NodePort, a backend elsewhere (source-NATed),
// the backends' network and a next hop for a second uplink.
var fibFamilies = []struct{ name, client, node, remote, remoteNet, markNet, markAddr, markNext string }{
	{"ipv4", "203.0.113.7", "10.0.0.100:30080", "10.2.0.5:8080", "10.2.0.0/16", "10.3.0.0/24", "10.3.0.1/24", "10.3.0.200"},
	{"ipv6", "2001:db8:77::7", "[fd00::100]:30080", "[fd00:2::5]:8080", "fd00:2::/32", "fd00:3::/64", "fd00:3::1/64", "fd00:3::200"},
}

// clientAt is the client's endpoint with port.
func clientAt(client string, port uint16) string {
	return netip.AddrPortFrom(netip.MustParseAddr(client), port).String()
}

// withHops is p with TTL or hop limit h.
func withHops(p testpkt.Packet, h uint8) testpkt.Packet {
	if p.IPv4 != nil {
		p.IPv4.TTL = h
	} else {
		p.IPv6.HopLimit = h
	}
	return p
}

// TestServiceFIBTTL sends NodePort packets that the FIB step routes with
// one hop left: the source-NATed SYN (sl_tc_allow's step) and the
// backend's SYN-ACK (the established path's), each with a TTL or hop
// limit of 1, are dropped and counted as dropped_fib_ttl, untouched; a
// SYN with 2 is redirected with 1. Forwarding would drop them too (with a
// time exceeded quoting the translated header); the stack, without
// accept_local, drops the IPv4 ones as martians, uncounted.
func TestServiceFIBTTL(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, fam := range fibFamilies {
		t.Run(fam.name, func(t *testing.T) {
			n := newFIBNet(t, true)
			n.sync(map[string]nat.Service{"np": nodePort(fam.remote, false)})

			ret, counted, out := n.at(bpf.HookIngress, withHops(tcpSeg(clientAt(fam.client, 40000), fam.node, testpkt.SYN, 10, 0), 1))
			if ret != tcActShot || hops(out) != 1 {
				t.Errorf("SYN with 1 hop left: verdict %d, %d hops left; want %d, 1", ret, hops(out), tcActShot)
			}
			if diff := cmp.Diff(map[bpf.Reason]uint64{bpf.ReasonDroppedFIBTTL: 1}, counted); diff != "" {
				t.Errorf("SYN with 1 hop left: counters (-want +got):\n%s", diff)
			}

			ret, counted, syn := n.at(bpf.HookIngress, withHops(tcpSeg(clientAt(fam.client, 40001), fam.node, testpkt.SYN, 10, 0), 2))
			if ret != tcActRedirect || hops(syn) != 1 {
				t.Errorf("SYN with 2 hops left: verdict %d, %d hops left; want %d, 1", ret, hops(syn), tcActRedirect)
			}
			if diff := cmp.Diff(map[bpf.Reason]uint64{bpf.ReasonAcceptedByPolicy: 1}, counted); diff != "" {
				t.Errorf("SYN with 2 hops left: counters (-want +got):\n%s", diff)
			}
			src, dst := endpoints(t, syn)
			if ret, _, _ := n.at(bpf.HookEgress, tcpSeg(src.String(), dst.String(), testpkt.SYN, 10, 0)); ret != tcActOK {
				t.Fatalf("SYN at the uplink's egress: verdict %d", ret)
			}
			ret, counted, out = n.at(bpf.HookIngress, withHops(tcpSeg(dst.String(), src.String(), testpkt.SYN|testpkt.ACK, 50, 11), 1))
			if ret != tcActShot || hops(out) != 1 {
				t.Errorf("SYN-ACK with 1 hop left: verdict %d, %d hops left; want %d, 1", ret, hops(out), tcActShot)
			}
			if diff := cmp.Diff(map[bpf.Reason]uint64{bpf.ReasonDroppedFIBTTL: 1}, counted); diff != "" {
				t.Errorf("SYN-ACK with 1 hop left: counters (-want +got):\n%s", diff)
			}
		})
	}
}

// TestServiceFIBNoRoute routes the backends' network of the uplink's
// namespace to a blackhole, an unreachable and a prohibit route in turn:
// the FIB step's lookup of the source-NATed SYN fails
// (BPF_FIB_LKUP_RET_BLACKHOLE, _UNREACHABLE, _PROHIBIT), and the SYN is
// dropped, counted as dropped_fib_no_route, with its hop not taken.
func TestServiceFIBNoRoute(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, fam := range fibFamilies {
		for _, rt := range []struct {
			name string
			typ  int
		}{{"blackhole", unix.RTN_BLACKHOLE}, {"unreachable", unix.RTN_UNREACHABLE}, {"prohibit", unix.RTN_PROHIBIT}} {
			t.Run(fam.name+"/"+rt.name, func(t *testing.T) {
				n := newFIBNet(t, true)
				dst := netip.MustParsePrefix(fam.remoteNet)
				err := n.ns.Do(func() error {
					return netlink.RouteAdd(&netlink.Route{Type: rt.typ, Family: family(dst.Addr()),
						Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}})
				})
				if err != nil {
					t.Fatalf("%s route to %v: %v", rt.name, dst, err)
				}
				n.sync(map[string]nat.Service{"np": nodePort(fam.remote, false)})
				ret, counted, out := n.at(bpf.HookIngress, tcpSeg(clientAt(fam.client, 40000), fam.node, testpkt.SYN, 10, 0))
				if ret != tcActShot || hops(out) != 64 {
					t.Errorf("SYN: verdict %d, %d hops left; want %d, 64", ret, hops(out), tcActShot)
				}
				if diff := cmp.Diff(map[bpf.Reason]uint64{bpf.ReasonDroppedFIBNoRoute: 1}, counted); diff != "" {
					t.Errorf("SYN: counters (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// family is a's netlink address family.
func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// TestServiceFIBMark gives the uplink's namespace a second uplink (lbmark,
// MTU 1280) and policy routing: `ip rule fwmark 0x5a lookup 100`, and in
// table 100 alone a route to the backends' network through lbmark; the
// main table routes it through lbup (MTU 1500). The FIB step's lookup of a
// source-NATed SYN with 1400 bytes of data tells the two apart: with skb
// mark 0x5a it takes table 100's route, past lbmark's MTU
// (dropped_fib_mtu); without a mark, or with another one, the main
// table's (redirected). A small SYN with the mark is redirected (through
// lbmark). On a kernel whose bpf_fib_lookup does not take the mark
// (Datapath.FIBLookupMark false) every SYN takes the main table's route.
func TestServiceFIBMark(t *testing.T) {
	testutil.RequirePrivileged(t)
	const mark, table = 0x5a, 100
	for _, fam := range fibFamilies {
		t.Run(fam.name, func(t *testing.T) {
			n := newFIBNet(t, true)
			next := testutil.NewNetNS(t)
			testutil.ConnectVeth(t, n.ns, "lbmark", netip.MustParsePrefix(fam.markAddr), next, "lbmarknext", netip.Prefix{})
			dst := netip.MustParsePrefix(fam.remoteNet)
			err := n.ns.Do(func() error {
				link, err := netlink.LinkByName("lbmark")
				if err != nil {
					return err
				}
				if err := netlink.LinkSetMTU(link, 1280); err != nil {
					return err
				}
				err = netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Table: table,
					Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
					Gw:  netip.MustParseAddr(fam.markNext).AsSlice()})
				if err != nil {
					return fmt.Errorf("route in table %d: %w", table, err)
				}
				rule := netlink.NewRule()
				rule.Family, rule.Mark, rule.Table = family(dst.Addr()), mark, table
				if err := netlink.RuleAdd(rule); err != nil {
					return fmt.Errorf("rule fwmark %#x lookup %d: %w", mark, table, err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			n.sync(map[string]nat.Service{"np": nodePort(fam.remote, false)})
			// A source port for each of the SYNs' flows.
			if err := n.d.SNAT().Set(nat.SNAT{IPv4: snatNode4, IPv6: snatNode6, PortMin: snatPortMin, PortMax: snatPortMin + 63}); err != nil {
				t.Fatal(err)
			}
			marked := n.d.FIBLookupMark()
			big := func(port uint16) testpkt.Packet {
				p := tcpSeg(clientAt(fam.client, port), fam.node, testpkt.SYN, 10, 0)
				p.Payload = make([]byte, 1400)
				return p
			}
			for _, c := range []struct {
				name   string
				p      testpkt.Packet
				mark   uint32
				ret    uint32
				reason bpf.Reason
			}{
				{"small, marked", tcpSeg(clientAt(fam.client, 40000), fam.node, testpkt.SYN, 10, 0), mark, tcActRedirect, bpf.ReasonAcceptedByPolicy},
				{"large, marked", big(40001), mark, tcActShot, bpf.ReasonDroppedFIBMTU},
				{"large, unmarked", big(40002), 0, tcActRedirect, bpf.ReasonAcceptedByPolicy},
				{"large, another mark", big(40003), mark + 1, tcActRedirect, bpf.ReasonAcceptedByPolicy},
			} {
				if !marked && c.ret == tcActShot {
					c.ret, c.reason = tcActRedirect, bpf.ReasonAcceptedByPolicy
				}
				ret, counted, _ := n.atCtx(bpf.HookIngress, c.p, skbCtx{Ifindex: n.uplink, IngressIfindex: n.uplink, Mark: c.mark})
				if ret != c.ret {
					t.Errorf("%s SYN (mark %#x, FIB lookup with marks %v): verdict %d, want %d", c.name, c.mark, marked, ret, c.ret)
				}
				if diff := cmp.Diff(map[bpf.Reason]uint64{c.reason: 1}, counted); diff != "" {
					t.Errorf("%s SYN (mark %#x, FIB lookup with marks %v): counters (-want +got):\n%s", c.name, c.mark, marked, diff)
				}
			}
		})
	}
}

// TestHaveFIBLookupMark: the probe answers yes or ErrNotSupported, never
// another error, and an Open's programs use the mark exactly when it
// says yes.
func TestHaveFIBLookupMark(t *testing.T) {
	testutil.RequirePrivileged(t)
	err := HaveFIBLookupMark()
	if err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("HaveFIBLookupMark: %v", err)
	}
	t.Logf("bpf_fib_lookup takes BPF_FIB_LOOKUP_MARK: %v (%v)", err == nil, err)
	d, err2 := Open(Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16})
	if err2 != nil {
		t.Fatal(err2)
	}
	defer d.Close()
	if d.FIBLookupMark() != (err == nil) {
		t.Errorf("FIBLookupMark %v, but the probe said %v", d.FIBLookupMark(), err)
	}
	var v uint32
	if err := d.objs.SlFibMark.Get(&v); err != nil {
		t.Fatal(err)
	}
	if (v != 0) != d.FIBLookupMark() {
		t.Errorf("sl_fib_mark is %d, FIBLookupMark %v", v, d.FIBLookupMark())
	}
}
