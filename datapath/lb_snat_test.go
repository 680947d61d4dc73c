package datapath

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// The node of the SNAT tests: its address of each family, and the
// source-port range its SNAT uses.
var (
	snatNode4 = netip.MustParseAddr("10.0.0.100")
	snatNode6 = netip.MustParseAddr("fd00::100")
)

const snatPortMin, snatPortMax = 61000, 61001

// newSNATHarness is an lbHarness whose lo is a host interface: its
// clients are outside the node (no route), the node's addresses route as
// the host's, backends under 10.2.0.0/16 and fd00:2::/32 are on another
// node, and SNAT uses the node's addresses and two ports.
func newSNATHarness(t *testing.T) *lbHarness {
	h := newLBHarness(t)
	for _, p := range []string{"0.0.0.0/0", "::/0"} {
		if err := h.d.routes.Delete(netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	h.setIface(loIfindex, bpf.IfaceHost|bpf.IfaceReady|bpf.IfaceEnforceIPv6, h.lo, loCounterSlot)
	h.setRoute(routes.Route{Prefix: netip.PrefixFrom(snatNode4, 32), Flags: routes.FlagLocalHost})
	h.setRoute(routes.Route{Prefix: netip.PrefixFrom(snatNode6, 128), Flags: routes.FlagLocalHost})
	for p, via := range map[string]string{"10.2.0.0/16": "10.0.0.200", "fd00:2::/32": "fd00::200"} {
		h.setRoute(routes.Route{Prefix: netip.MustParsePrefix(p), Flags: routes.FlagRemoteWorkload, NextHop: netip.MustParseAddr(via)})
	}
	for _, p := range []string{"10.1.0.0/16", "fd00:1::/32"} {
		h.setRoute(routes.Route{Prefix: netip.MustParsePrefix(p), Flags: routes.FlagLocalWorkload, Ifindex: 99})
	}
	if err := h.d.SNAT().Set(nat.SNAT{IPv4: snatNode4, IPv6: snatNode6, PortMin: snatPortMin, PortMax: snatPortMax}); err != nil {
		t.Fatal(err)
	}
	return h
}

// nodePort is a NodePort service on port 30080 of the family of backend.
func nodePort(backend string, local bool) nat.Service {
	b := netip.MustParseAddrPort(backend)
	any := netip.IPv4Unspecified()
	if b.Addr().Is6() {
		any = netip.IPv6Unspecified()
	}
	return nat.Service{
		Frontends: []nat.Frontend{{Addr: any, Port: 30080, Protocol: nat.ProtoTCP, NodePort: true, External: true}},
		Backends:  []nat.Backend{{Addr: b.Addr(), Port: b.Port(), Local: local}},
	}
}

// TestServiceSNATRemoteBackend: a client from outside reaches a NodePort
// whose backend is on another node. Its SYN leaves from the node's
// address and an SNAT port, the backend's reply comes back to the client
// from the NodePort, and the client's next segment takes the same
// translation; the entries are the flow's as on the wire, marked SNAT.
// A local backend keeps the client's address.
func TestServiceSNATRemoteBackend(t *testing.T) {
	for _, fam := range []struct{ name, client, node, remote, local string }{
		{"ipv4", "203.0.113.7:40000", "10.0.0.100:30080", "10.2.0.5:8080", "10.1.0.5:8080"},
		{"ipv6", "[2001:db8:77::7]:40000", "[fd00::100]:30080", "[fd00:2::5]:8080", "[fd00:1::5]:8080"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			h := newSNATHarness(t)
			h.sync(map[string]nat.Service{"np": nodePort(fam.remote, false)})
			node := netip.MustParseAddrPort(fam.node).Addr()

			got := h.counted(bpf.HookIngress, tcpSeg(fam.client, fam.node, testpkt.SYN, 10, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
			src, dst := endpoints(t, got)
			if src.Addr() != node || src.Port() < snatPortMin || src.Port() > snatPortMax || dst.String() != fam.remote {
				t.Fatalf("SYN left as %v -> %v, want from %v and a port of %d-%d to %s", src, dst, node, snatPortMin, snatPortMax, fam.remote)
			}
			revKey, _ := ctKeyOf(nat.ProtoTCP, src, dst)
			rev, ok := h.ctEntry(revKey)
			if !ok || rev.Type != bpf.CTNATRev || rev.Flags&bpf.CTFSNAT == 0 {
				t.Fatalf("entry under the wire tuple %+v (found %v), want NAT_REV with snat", rev, ok)
			}
			fwdKey, _ := ctKeyOf(nat.ProtoTCP, netip.MustParseAddrPort(fam.client), netip.MustParseAddrPort(fam.node))
			if rev.NATPeer != fwdKey {
				t.Errorf("reverse entry's peer %+v, want the client's tuple %+v", rev.NATPeer, fwdKey)
			}

			h.counted(bpf.HookEgress, tcpSeg(src.String(), fam.remote, testpkt.SYN, 10, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
			got = h.counted(bpf.HookIngress, tcpSeg(fam.remote, src.String(), testpkt.SYN|testpkt.ACK, 70, 11), tcActOK, bpf.ReasonAcceptedEstablished)
			wantEndpoints(t, "backend's reply", got, fam.node, fam.client)
			got = h.counted(bpf.HookIngress, tcpSeg(fam.client, fam.node, testpkt.ACK, 11, 71), tcActOK, bpf.ReasonAcceptedEstablished)
			wantEndpoints(t, "client's ACK", got, src.String(), fam.remote)

			h.sync(map[string]nat.Service{"np": nodePort(fam.local, true)})
			other := netip.MustParseAddrPort(fam.client)
			other = netip.AddrPortFrom(other.Addr(), other.Port()+1)
			got = h.counted(bpf.HookIngress, tcpSeg(other.String(), fam.node, testpkt.SYN, 10, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
			wantEndpoints(t, "to a local backend", got, other.String(), fam.local)
		})
	}
}

// TestServiceSNATPortsRunOut: flows from distinct clients to one backend
// take distinct SNAT ports; with both ports of the range taken, a third
// is dropped and counted rather than merged into another's tuple.
func TestServiceSNATPortsRunOut(t *testing.T) {
	h := newSNATHarness(t)
	h.sync(map[string]nat.Service{"np": nodePort("10.2.0.9:8080", false)})
	ports := map[uint16]bool{}
	for i, client := range []string{"203.0.113.1:1000", "203.0.113.2:1000"} {
		got := h.counted(bpf.HookIngress, tcpSeg(client, "10.0.0.100:30080", testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		src, _ := endpoints(t, got)
		if ports[src.Port()] {
			t.Errorf("client %d got port %d, which another flow has", i, src.Port())
		}
		ports[src.Port()] = true
	}
	h.counted(bpf.HookIngress, tcpSeg("203.0.113.3:1000", "10.0.0.100:30080", testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedNATFailed)
	if diff := cmp.Diff(map[uint16]bool{snatPortMin: true, snatPortMax: true}, ports); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
}

// TestServiceHairpin: a workload whose ClusterIP connection is balanced to
// itself sends from the node's address, and its answer comes back to it
// from the frontend.
func TestServiceHairpin(t *testing.T) {
	h := newLBHarness(t)
	if err := h.d.SNAT().Set(nat.SNAT{IPv4: snatNode4, PortMin: snatPortMin, PortMax: snatPortMax}); err != nil {
		t.Fatal(err)
	}
	const self, frontend = "10.0.0.50:45000", "10.96.0.50:80"
	h.sync(map[string]nat.Service{"self": oneBackend(frontend, "10.0.0.50:8080", nat.ProtoTCP)})
	got := h.counted(bpf.HookIngress, tcpSeg(self, frontend, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	src, dst := endpoints(t, got)
	if src.Addr() != snatNode4 || dst.String() != "10.0.0.50:8080" {
		t.Fatalf("hairpin SYN %v -> %v, want from %v to the workload itself", src, dst, snatNode4)
	}
	h.counted(bpf.HookEgress, tcpSeg(src.String(), "10.0.0.50:8080", testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	got = h.counted(bpf.HookIngress, tcpSeg("10.0.0.50:8080", src.String(), testpkt.SYN|testpkt.ACK, 5, 2), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(t, "answer", got, frontend, self)
}

// TestSNATSetting: the setting round-trips, ports default, and bad ones
// are refused.
func TestSNATSetting(t *testing.T) {
	h := newLBHarness(t)
	if err := h.d.SNAT().Set(nat.SNAT{IPv4: snatNode4}); err != nil {
		t.Fatal(err)
	}
	got, err := h.d.SNAT().Get()
	if err != nil {
		t.Fatal(err)
	}
	want := nat.SNAT{IPv4: snatNode4, PortMin: nat.DefaultSNATPortMin, PortMax: nat.DefaultSNATPortMax}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("setting (-want +got):\n%s", diff)
	}
	for _, bad := range []nat.SNAT{
		{IPv4: snatNode6},
		{IPv6: netip.MustParseAddr("::ffff:10.0.0.1")},
		{IPv4: snatNode4, PortMin: 10, PortMax: 9},
		{IPv4: netip.IPv4Unspecified()},
	} {
		if err := h.d.SNAT().Set(bad); err == nil {
			t.Errorf("Set(%+v) accepted", bad)
		}
	}
}

// TestServiceSNATSCTP: an SCTP flow that must be source-NATed (an outside
// client to a backend elsewhere) keeps its source port, as its CRC32c
// covers the ports: the addresses change, every SCTP byte stays, and the
// reply comes back reverse-NATed alike. A second client with the same
// port to the same backend would share the translated tuple: it is
// dropped and counted.
func TestServiceSNATSCTP(t *testing.T) {
	for _, fam := range []struct{ name, client, other, frontend, backend string }{
		{"ipv4", "203.0.113.8:5000", "203.0.113.9:5000", "10.96.0.60:80", "10.2.0.6:80"},
		{"ipv6", "[2001:db8:77::8]:5000", "[2001:db8:77::9]:5000", "[fd00:96::60]:80", "[fd00:2::6]:80"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			h := newSNATHarness(t)
			h.sync(map[string]nat.Service{"sctp": oneBackend(fam.frontend, fam.backend, nat.ProtoSCTP)})
			node := snatNode4
			if fam.name == "ipv6" {
				node = snatNode6
			}
			addrs := func(p *testpkt.Packet) (netip.Addr, netip.Addr) {
				if p.IPv6 != nil {
					return p.IPv6.Src, p.IPv6.Dst
				}
				return p.IPv4.Src, p.IPv4.Dst
			}
			client, backend := netip.MustParseAddrPort(fam.client), netip.MustParseAddrPort(fam.backend)
			init := sctpPacket(fam.client, fam.frontend)
			got := h.counted(bpf.HookIngress, init, tcActOK, bpf.ReasonAcceptedByPolicy)
			if src, dst := addrs(got); src != node || dst != backend.Addr() || !bytes.Equal(got.Payload, init.Payload) {
				t.Fatalf("INIT left %v -> %v with SCTP %x, want %v -> %v with %x (the client's port, the CRC untouched)",
					src, dst, got.Payload, node, backend.Addr(), init.Payload)
			}
			wire := netip.AddrPortFrom(node, client.Port())
			h.counted(bpf.HookEgress, sctpPacket(wire.String(), fam.backend), tcActOK, bpf.ReasonAcceptedByPolicy)

			h.counted(bpf.HookIngress, sctpPacket(fam.other, fam.frontend), tcActShot, bpf.ReasonDroppedNATFailed)

			reply := sctpPacket(fam.backend, wire.String())
			got = h.counted(bpf.HookIngress, reply, tcActOK, bpf.ReasonAcceptedEstablished)
			front := netip.MustParseAddrPort(fam.frontend)
			if src, dst := addrs(got); src != front.Addr() || dst != client.Addr() || !bytes.Equal(got.Payload, reply.Payload) {
				t.Errorf("reply left %v -> %v with SCTP %x, want %v -> %v with %x", src, dst, got.Payload, front.Addr(), client.Addr(), reply.Payload)
			}
		})
	}
}
