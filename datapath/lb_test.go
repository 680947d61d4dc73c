package datapath

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// tcActRedirect is the TC verdict of a packet bpf_redirect sends on.
const tcActRedirect = 7

// lbHarness is a harness whose lo carries services: both hooks allow
// TCP and UDP to the frontend and backend ports the tests use, IPv6 is
// enforced, and every address routes to lo.
type lbHarness struct {
	*harness
	t *testing.T
}

// lbPorts are the destination ports lo's policy allows.
var lbPorts = []uint16{80, 8080, 8081, 53, 5353, 30080, 0}

func newLBHarness(t *testing.T) *lbHarness {
	h := newHarness(t)
	slots := stubSlots{h.setPolicy(allowDstPorts(lbPorts...)), h.setPolicy(allowDstPorts(lbPorts...))}
	h.lo = slots
	h.setIface(loIfindex, bpf.IfaceWorkload|bpf.IfaceReady|bpf.IfaceEnforceIPv6, slots, loCounterSlot)
	h.setRoute(workloadRoute("::/0", loIfindex))
	return &lbHarness{harness: h, t: t}
}

// sync programs the services.
func (h *lbHarness) sync(svcs map[string]nat.Service) {
	h.t.Helper()
	if err := h.d.Services().Sync(svcs); err != nil {
		h.t.Fatal(err)
	}
}

// send runs hook's program on p at lo and returns the verdict and the
// packet as it left the program, parsed.
func (h *lbHarness) send(hook bpf.Hook, p testpkt.Packet) (uint32, *testpkt.Packet) {
	h.t.Helper()
	out := make([]byte, 2048)
	ret, err := h.program(hookProg(hook)).Run(&ebpf.RunOptions{Data: testpkt.MustBytes(h.t, p), DataOut: out})
	if err != nil {
		h.t.Fatalf("run: %v", err)
	}
	got, err := testpkt.Parse(out)
	if err != nil {
		h.t.Fatalf("parse the program's output: %v", err)
	}
	return ret, got
}

// counted runs p like send and checks the verdict and the one reason the
// hook counted.
func (h *lbHarness) counted(hook bpf.Hook, p testpkt.Packet, verdict uint32, reason bpf.Reason) *testpkt.Packet {
	h.t.Helper()
	before := h.counters(loIfindex, hook)
	ret, got := h.send(hook, p)
	delta := reasonDelta(before, h.counters(loIfindex, hook))
	if ret != verdict {
		h.t.Errorf("verdict %d, want %d (counted %v)", ret, verdict, delta)
	}
	if diff := cmp.Diff(map[bpf.Reason]uint64{reason: 1}, delta); diff != "" {
		h.t.Errorf("counters (-want +got):\n%s", diff)
	}
	return got
}

// tcpSeg is a TCP segment between two endpoints, IPv4 or IPv6 by their
// addresses.
func tcpSeg(src, dst string, flags testpkt.TCPFlags, seq, ack uint32) testpkt.Packet {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	var p testpkt.Packet
	if s.Addr().Is4() {
		p = testpkt.TCPv4(s, d, flags, nil)
	} else {
		p = testpkt.TCPv6(s, d, flags, nil)
	}
	p.TCP.Seq, p.TCP.Ack = seq, ack
	return p
}

// udp is a datagram between two endpoints.
func udp(src, dst string, payload []byte) testpkt.Packet {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	if s.Addr().Is4() {
		return testpkt.UDPv4(s, d, payload)
	}
	return testpkt.UDPv6(s, d, payload)
}

// endpoints returns a parsed packet's source and destination, and fails
// the test if a checksum does not verify.
func endpoints(t *testing.T, p *testpkt.Packet) (src, dst netip.AddrPort) {
	t.Helper()
	var s, d netip.Addr
	switch {
	case p.IPv4 != nil:
		if p.IPv4.BadChecksum {
			t.Error("IPv4 header checksum does not verify")
		}
		s, d = p.IPv4.Src, p.IPv4.Dst
	case p.IPv6 != nil:
		s, d = p.IPv6.Src, p.IPv6.Dst
	default:
		t.Fatal("not an IP packet")
	}
	switch {
	case p.TCP != nil:
		if p.TCP.BadChecksum {
			t.Error("TCP checksum does not verify")
		}
		return netip.AddrPortFrom(s, p.TCP.SrcPort), netip.AddrPortFrom(d, p.TCP.DstPort)
	case p.UDP != nil:
		if p.UDP.BadChecksum {
			t.Error("UDP checksum does not verify")
		}
		return netip.AddrPortFrom(s, p.UDP.SrcPort), netip.AddrPortFrom(d, p.UDP.DstPort)
	}
	return netip.AddrPortFrom(s, 0), netip.AddrPortFrom(d, 0)
}

// wantEndpoints checks where a packet goes.
func wantEndpoints(t *testing.T, step string, p *testpkt.Packet, src, dst string) {
	t.Helper()
	s, d := endpoints(t, p)
	if s.String() != src || d.String() != dst {
		t.Errorf("%s: packet %v -> %v, want %s -> %s", step, s, d, src, dst)
	}
}

// oneBackend is a ClusterIP service with one backend.
func oneBackend(frontend, backend string, proto uint8) nat.Service {
	f, b := netip.MustParseAddrPort(frontend), netip.MustParseAddrPort(backend)
	return nat.Service{
		Frontends: []nat.Frontend{{Addr: f.Addr(), Port: f.Port(), Protocol: proto}},
		Backends:  []nat.Backend{{Addr: b.Addr(), Port: b.Port(), Local: true}},
	}
}

// TestServiceNATNarrative follows one TCP connection through a frontend,
// in IPv4 and IPv6, with the backend's address below the client's (the
// order in which a frontend-side packet used to land on the client's
// leg): the client's SYN is DNATed at its ingress hook, the translated
// packet is policed at the egress hook it leaves by (as at the backend's
// interface), the backend's SYN-ACK is reverse-NATed, the translated
// reply passes out to the client, and the client's ACK is DNATed as an
// established packet. The conntrack entries are the reverse entry under
// the translated tuple and the stub under the client's.
func TestServiceNATNarrative(t *testing.T) {
	for _, fam := range []struct {
		name                      string
		client, frontend, backend string
	}{
		{"ipv4", "10.200.0.1:40000", "10.96.0.1:80", "10.1.0.5:8080"},
		{"ipv6", "[fd00::200:1]:40000", "[fd00:96::1]:80", "[fd00::1:5]:8080"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			h := newLBHarness(t)
			h.sync(map[string]nat.Service{"web": oneBackend(fam.frontend, fam.backend, nat.ProtoTCP)})

			got := h.counted(bpf.HookIngress, tcpSeg(fam.client, fam.frontend, testpkt.SYN, 100, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
			wantEndpoints(t, "client's SYN", got, fam.client, fam.backend)

			c, f, b := netip.MustParseAddrPort(fam.client), netip.MustParseAddrPort(fam.frontend), netip.MustParseAddrPort(fam.backend)
			revKey, revDir := ctKeyOf(nat.ProtoTCP, c, b)
			fwdKey, _ := ctKeyOf(nat.ProtoTCP, c, f)
			rev, ok := h.ctEntry(revKey)
			if !ok || rev.Type != bpf.CTNATRev || rev.NATPeer != fwdKey || rev.OrigAddr != f.Addr().As16() || rev.OrigPort != f.Port() {
				t.Fatalf("reverse entry %+v (found %v), want NAT_REV pointing at %+v with the frontend", rev, ok, fwdKey)
			}
			if clientB := rev.Flags&bpf.CTFClientIsB != 0; clientB != (revDir == bpf.CTDirBToA) {
				t.Errorf("reverse entry says client is B: %v, want %v", clientB, revDir == bpf.CTDirBToA)
			}
			if stub, ok := h.ctEntry(fwdKey); !ok || stub.Type != bpf.CTNATFwd || stub.NATPeer != revKey {
				t.Fatalf("stub %+v (found %v), want NAT_FWD pointing at %+v", stub, ok, revKey)
			}

			got = h.counted(bpf.HookEgress, tcpSeg(fam.client, fam.backend, testpkt.SYN, 100, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
			wantEndpoints(t, "SYN towards the backend", got, fam.client, fam.backend)

			got = h.counted(bpf.HookIngress, tcpSeg(fam.backend, fam.client, testpkt.SYN|testpkt.ACK, 500, 101), tcActOK, bpf.ReasonAcceptedEstablished)
			wantEndpoints(t, "backend's SYN-ACK", got, fam.frontend, fam.client)

			got = h.counted(bpf.HookEgress, tcpSeg(fam.frontend, fam.client, testpkt.ACK|testpkt.FIN, 501, 101), tcActOK, bpf.ReasonAcceptedEstablished)
			wantEndpoints(t, "translated reply towards the client", got, fam.frontend, fam.client)

			got = h.counted(bpf.HookIngress, tcpSeg(fam.client, fam.frontend, testpkt.ACK, 101, 502), tcActOK, bpf.ReasonAcceptedEstablished)
			wantEndpoints(t, "client's ACK", got, fam.client, fam.backend)

			// The frontend-side FIN belongs to the backend's leg.
			rev, _ = h.ctEntry(revKey)
			clientLeg, backendLeg := rev.AToB, rev.BToA
			if revDir == bpf.CTDirBToA {
				clientLeg, backendLeg = rev.BToA, rev.AToB
			}
			if clientLeg.Flags&bpf.CTLegFIN != 0 || backendLeg.Flags&bpf.CTLegFIN == 0 {
				t.Errorf("FIN from the frontend's side: client leg %v, backend leg %v; want it on the backend's only", clientLeg.Flags, backendLeg.Flags)
			}
		})
	}
}

// TestServiceOrphanStubHeals deletes a NAT flow's reverse entry, leaving
// its stub: the client's next packet deletes the stub and starts the
// flow afresh (DNAT, policy, both entries), and the one after it is
// established, instead of every packet re-running policy while the
// allow writes into the stub.
func TestServiceOrphanStubHeals(t *testing.T) {
	h := newLBHarness(t)
	const client, frontend, backend = "10.0.0.9:41000", "10.96.0.2:80", "10.1.0.6:8080"
	h.sync(map[string]nat.Service{"web": oneBackend(frontend, backend, nat.ProtoTCP)})
	h.counted(bpf.HookIngress, tcpSeg(client, frontend, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	c, b := netip.MustParseAddrPort(client), netip.MustParseAddrPort(backend)
	revKey, _ := ctKeyOf(nat.ProtoTCP, c, b)
	if err := h.d.state.ct.Delete(&revKey); err != nil {
		t.Fatal(err)
	}
	got := h.counted(bpf.HookIngress, tcpSeg(client, frontend, testpkt.ACK, 2, 1), tcActOK, bpf.ReasonAcceptedByPolicy)
	wantEndpoints(t, "after the orphan", got, client, backend)
	if rev, ok := h.ctEntry(revKey); !ok || rev.Type != bpf.CTNATRev {
		t.Fatalf("no reverse entry after the flow restarted: %+v", rev)
	}
	got = h.counted(bpf.HookIngress, tcpSeg(client, frontend, testpkt.ACK, 3, 1), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(t, "established again", got, client, backend)
}

// TestServiceRejects: a frontend without backends answers at once, a TCP
// SYN with a RST acknowledging it and a UDP datagram with a port
// unreachable quoting it, from the frontend to the client, checksums
// valid, sent back out of lo; a RST is dropped, not answered.
func TestServiceRejects(t *testing.T) {
	for _, fam := range []struct{ name, client, tcpFront, udpFront string }{
		{"ipv4", "10.0.0.7:40001", "10.96.0.3:80", "10.96.0.3:53"},
		{"ipv6", "[fd00::7]:40001", "[fd00:96::3]:80", "[fd00:96::3]:53"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			h := newLBHarness(t)
			tf, uf := netip.MustParseAddrPort(fam.tcpFront), netip.MustParseAddrPort(fam.udpFront)
			h.sync(map[string]nat.Service{
				"tcp": {Frontends: []nat.Frontend{{Addr: tf.Addr(), Port: tf.Port(), Protocol: nat.ProtoTCP}}},
				"udp": {Frontends: []nat.Frontend{{Addr: uf.Addr(), Port: uf.Port(), Protocol: nat.ProtoUDP}}},
			})

			syn := tcpSeg(fam.client, fam.tcpFront, testpkt.SYN, 1000, 0)
			got := h.counted(bpf.HookIngress, syn, tcActRedirect, bpf.ReasonRejectedNoBackend)
			wantEndpoints(t, "RST", got, fam.tcpFront, fam.client)
			if got.TCP == nil || got.TCP.Flags != testpkt.RST|testpkt.ACK || got.TCP.Ack != 1001 || got.TCP.Seq != 0 || len(got.Payload) != 0 {
				t.Errorf("answer to a SYN: %+v, want RST|ACK seq 0 ack 1001 without payload", got.TCP)
			}
			if got.Eth.Dst.String() != testpkt.DefaultSrcMAC.String() {
				t.Errorf("answer to %v, want the client's MAC %v", got.Eth.Dst, testpkt.DefaultSrcMAC)
			}
			ack := tcpSeg(fam.client, fam.tcpFront, testpkt.ACK, 1000, 777)
			got = h.counted(bpf.HookIngress, ack, tcActRedirect, bpf.ReasonRejectedNoBackend)
			if got.TCP == nil || got.TCP.Flags != testpkt.RST || got.TCP.Seq != 777 {
				t.Errorf("answer to an ACK: %+v, want RST seq 777", got.TCP)
			}
			h.counted(bpf.HookIngress, tcpSeg(fam.client, fam.tcpFront, testpkt.RST, 1000, 0), tcActShot, bpf.ReasonDroppedNoBackend)

			dgram := udp(fam.client, fam.udpFront, []byte("query"))
			wire := testpkt.MustBytes(t, dgram)
			got = h.counted(bpf.HookIngress, dgram, tcActRedirect, bpf.ReasonRejectedNoBackend)
			if fam.name == "ipv4" {
				if got.ICMPv4 == nil || got.ICMPv4.Type != 3 || got.ICMPv4.Code != 3 || got.ICMPv4.BadChecksum {
					t.Fatalf("answer to UDP: %+v, want a port unreachable with a valid checksum", got.ICMPv4)
				}
				if diff := cmp.Diff(wire[14:14+28], got.Payload); diff != "" {
					t.Errorf("quote (-want +got):\n%s", diff)
				}
				if got.IPv4.Src != uf.Addr() || got.IPv4.BadChecksum {
					t.Errorf("answer from %v (bad checksum %v), want %v", got.IPv4.Src, got.IPv4.BadChecksum, uf.Addr())
				}
				return
			}
			if got.ICMPv6 == nil || got.ICMPv6.Type != 1 || got.ICMPv6.Code != 4 || got.ICMPv6.BadChecksum {
				t.Fatalf("answer to UDP: %+v, want a port unreachable with a valid checksum", got.ICMPv6)
			}
			if diff := cmp.Diff(wire[14:14+48], got.Payload); diff != "" {
				t.Errorf("quote (-want +got):\n%s", diff)
			}
			if got.IPv6.Src != uf.Addr() {
				t.Errorf("answer from %v, want %v", got.IPv6.Src, uf.Addr())
			}
		})
	}
}

// TestServiceSourceRanges: an external frontend with source ranges admits
// clients inside them and drops, counted, those outside.
func TestServiceSourceRanges(t *testing.T) {
	h := newLBHarness(t)
	svc := oneBackend("192.0.2.10:80", "10.1.0.7:8080", nat.ProtoTCP)
	svc.Frontends[0].External = true
	svc.SourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	h.sync(map[string]nat.Service{"lb": svc})
	got := h.counted(bpf.HookIngress, tcpSeg("198.51.100.9:40000", "192.0.2.10:80", testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	wantEndpoints(t, "inside", got, "198.51.100.9:40000", "10.1.0.7:8080")
	h.counted(bpf.HookIngress, tcpSeg("203.0.113.9:40000", "192.0.2.10:80", testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedSvcSourceRange)
}

// TestServiceNodePort: a NodePort answers on the node's addresses only.
func TestServiceNodePort(t *testing.T) {
	h := newLBHarness(t)
	h.setRoute(routes.Route{Prefix: netip.MustParsePrefix("10.0.0.100/32"), Flags: routes.FlagLocalHost})
	h.setRoute(routes.Route{Prefix: netip.MustParsePrefix("fd00::100/128"), Flags: routes.FlagLocalHost})
	for _, np := range []struct{ any, node, other, client, backend string }{
		{"0.0.0.0", "10.0.0.100:30080", "10.0.0.101:30080", "10.0.0.9:40000", "10.1.0.8:8080"},
		{"::", "[fd00::100]:30080", "[fd00::101]:30080", "[fd00::9]:40000", "[fd00::1:8]:8080"},
	} {
		svc := oneBackend(netip.AddrPortFrom(netip.MustParseAddr(np.any), 30080).String(), np.backend, nat.ProtoTCP)
		svc.Frontends[0].NodePort, svc.Frontends[0].External = true, true
		h.sync(map[string]nat.Service{"np": svc})
		got := h.counted(bpf.HookIngress, tcpSeg(np.client, np.node, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		wantEndpoints(t, "to a node address", got, np.client, np.backend)
		got = h.counted(bpf.HookIngress, tcpSeg(np.client, np.other, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		wantEndpoints(t, "to another address", got, np.client, np.other)
	}
}

// backendOf sends a SYN from client to frontend and returns the backend
// it was DNATed to.
func (h *lbHarness) backendOf(client, frontend string) string {
	h.t.Helper()
	ret, got := h.send(bpf.HookIngress, tcpSeg(client, frontend, testpkt.SYN, 1, 0))
	if ret != tcActOK {
		h.t.Fatalf("SYN %s -> %s: verdict %d", client, frontend, ret)
	}
	_, dst := endpoints(h.t, got)
	return dst.String()
}

// threeBackends is a ClusterIP service at 10.96.0.5:80.
func threeBackends() nat.Service {
	s := oneBackend("10.96.0.5:80", "10.1.0.11:8080", nat.ProtoTCP)
	for _, a := range []string{"10.1.0.12", "10.1.0.13"} {
		s.Backends = append(s.Backends, nat.Backend{Addr: netip.MustParseAddr(a), Port: 8080, Local: true})
	}
	return s
}

// TestServiceAffinity: with affinity every connection of a client goes
// to the backend its affinity names while the affinity is younger than
// the timeout; an expired one, or one naming a backend the service no
// longer has, gives way to the hash, which spreads the client's ports.
func TestServiceAffinity(t *testing.T) {
	h := newLBHarness(t)
	svc := threeBackends()
	svc.Affinity = 30 * time.Second
	h.sync(map[string]nat.Service{"web": svc})
	first := h.backendOf("10.0.0.20:50000", "10.96.0.5:80")
	for port := 50001; port < 50040; port++ {
		if got := h.backendOf(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.20"), uint16(port)).String(), "10.96.0.5:80"); got != first {
			t.Fatalf("port %d went to %s, want the affinity's %s", port, got, first)
		}
	}

	var v svcLookup
	v.read(t, h, "10.96.0.5:80")
	key := bpf.AffinityKey{SvcID: v.svc.ID, Client: netip.MustParseAddr("10.0.0.20").As16()}
	var aff bpf.Affinity
	if err := h.d.state.affinity.Lookup(&key, &aff); err != nil {
		t.Fatal(err)
	}
	aff.LastUsedNs -= uint64(31 * time.Second)
	if err := h.d.state.affinity.Update(&key, &aff, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for port := 50100; port < 50140; port++ {
		// Expire the affinity the previous connection refreshed.
		if err := h.d.state.affinity.Update(&key, &aff, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		seen[h.backendOf(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.20"), uint16(port)).String(), "10.96.0.5:80")] = true
	}
	if len(seen) < 2 {
		t.Errorf("with the affinity expired 40 connections went to %v only", seen)
	}

	// An affinity to a backend the service lost is not honoured.
	aff.LastUsedNs += uint64(31 * time.Second)
	lost := svc
	lost.Backends = svc.Backends[1:]
	h.sync(map[string]nat.Service{"web": lost})
	gone, _ := h.d.Services().BackendID(netip.MustParseAddrPort("10.1.0.11:8080"))
	aff.BackendID = gone
	if gone == 0 {
		aff.BackendID = 1 << 30
	}
	if err := h.d.state.affinity.Update(&key, &aff, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if got := h.backendOf("10.0.0.20:50200", "10.96.0.5:80"); got == "10.1.0.11:8080" {
		t.Errorf("a connection went to %s, which the service no longer has", got)
	}
}

// svcLookup reads a frontend's entry.
type svcLookup struct{ svc bpf.Svc }

func (v *svcLookup) read(t *testing.T, h *lbHarness, frontend string) {
	t.Helper()
	f := netip.MustParseAddrPort(frontend)
	key := bpf.SvcKey{Addr: f.Addr().As16(), Port: f.Port(), Proto: nat.ProtoTCP}
	if err := h.d.state.svcs.Lookup(&key, &v.svc); err != nil {
		t.Fatalf("frontend %s: %v", frontend, err)
	}
}

// TestServiceTerminating: new flows go to serving backends while there is
// one, and to terminating ones when none is left; an established flow
// keeps its backend when that backend starts terminating.
func TestServiceTerminating(t *testing.T) {
	h := newLBHarness(t)
	svc := threeBackends()
	svc.Backends[1].Terminating = true
	svc.Backends[2].Terminating = true
	h.sync(map[string]nat.Service{"web": svc})
	for port := 51000; port < 51030; port++ {
		if got := h.backendOf(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.21"), uint16(port)).String(), "10.96.0.5:80"); got != "10.1.0.11:8080" {
			t.Fatalf("a new flow went to %s while 10.1.0.11:8080 serves", got)
		}
	}
	const client = "10.0.0.21:52000"
	h.counted(bpf.HookIngress, tcpSeg(client, "10.96.0.5:80", testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	svc.Backends[0].Terminating = true
	h.sync(map[string]nat.Service{"web": svc})
	got := h.counted(bpf.HookIngress, tcpSeg(client, "10.96.0.5:80", testpkt.ACK, 2, 1), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(t, "established flow of a terminating backend", got, client, "10.1.0.11:8080")
	seen := map[string]bool{}
	for port := 53000; port < 53040; port++ {
		seen[h.backendOf(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.21"), uint16(port)).String(), "10.96.0.5:80")] = true
	}
	if len(seen) != 3 {
		t.Errorf("with every backend terminating, 40 new flows went to %v, want all three", seen)
	}
}

// TestServiceLocalOnly: a frontend with traffic policy Local uses local
// backends only.
func TestServiceLocalOnly(t *testing.T) {
	h := newLBHarness(t)
	svc := threeBackends()
	svc.Frontends[0].External = true
	svc.ExternalLocal = true
	svc.Backends[0].Local = false
	svc.Backends[1].Local = false
	h.sync(map[string]nat.Service{"web": svc})
	for port := 54000; port < 54030; port++ {
		if got := h.backendOf(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.22"), uint16(port)).String(), "10.96.0.5:80"); got != "10.1.0.13:8080" {
			t.Fatalf("a flow went to %s, not to the only local backend", got)
		}
	}
}

// TestServiceMaglevTable: a Maglev frontend takes its backend from the
// service's table at the flow's hash: a table that names one backend
// everywhere sends every flow there.
func TestServiceMaglevTable(t *testing.T) {
	h := newLBHarness(t)
	svc := threeBackends()
	svc.Maglev = true
	h.sync(map[string]nat.Service{"web": svc})
	var v svcLookup
	v.read(t, h, "10.96.0.5:80")
	id, ok := h.d.Services().BackendID(netip.MustParseAddrPort("10.1.0.12:8080"))
	if !ok {
		t.Fatal("no backend ID")
	}
	var table bpf.MaglevTable
	for i := range table.BackendIds {
		table.BackendIds[i] = id
	}
	key := bpf.MaglevKey{SvcID: v.svc.ID, SlotBase: v.svc.SlotBase}
	if err := h.d.state.maglev.Update(&key, &table, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	for port := 55000; port < 55030; port++ {
		if got := h.backendOf(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.23"), uint16(port)).String(), "10.96.0.5:80"); got != "10.1.0.12:8080" {
			t.Fatalf("a flow went to %s, not to the table's 10.1.0.12:8080", got)
		}
	}
}

// TestServiceUDPNAT: a UDP request is DNATed and its reply reverse-NATed,
// through a frontend whose port differs from the backend's.
func TestServiceUDPNAT(t *testing.T) {
	h := newLBHarness(t)
	h.sync(map[string]nat.Service{"dns": oneBackend("10.96.0.10:53", "10.1.0.9:5353", nat.ProtoUDP)})
	got := h.counted(bpf.HookIngress, udp("10.0.0.30:33000", "10.96.0.10:53", []byte("q")), tcActOK, bpf.ReasonAcceptedByPolicy)
	wantEndpoints(t, "query", got, "10.0.0.30:33000", "10.1.0.9:5353")
	h.counted(bpf.HookEgress, udp("10.0.0.30:33000", "10.1.0.9:5353", []byte("q")), tcActOK, bpf.ReasonAcceptedByPolicy)
	got = h.counted(bpf.HookIngress, udp("10.1.0.9:5353", "10.0.0.30:33000", []byte("answer")), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(t, "answer", got, "10.96.0.10:53", "10.0.0.30:33000")
	if string(got.Payload) != "answer" {
		t.Errorf("payload %q", got.Payload)
	}
}

// TestServiceICMPErrorsTranslated: ICMP errors about a NAT flow reach each
// end as that end knows the flow. The backend's port unreachable about
// the client's translated SYN reaches the client from the frontend,
// quoting the SYN the client sent; the client's port unreachable about
// the frontend's reply goes on to the backend, quoting the reply the
// backend sent. Every checksum stays valid: the error's, the quoted IPv4
// header's and the quoted TCP segment's.
func TestServiceICMPErrorsTranslated(t *testing.T) {
	for _, fam := range []struct {
		name                      string
		client, frontend, backend string
	}{
		{"ipv4", "10.200.0.1:40000", "10.96.0.1:80", "10.1.0.5:8080"},
		{"ipv6", "[fd00::200:1]:40000", "[fd00:96::1]:80", "[fd00::1:5]:8080"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			h := newLBHarness(t)
			h.sync(map[string]nat.Service{"web": oneBackend(fam.frontend, fam.backend, nat.ProtoTCP)})
			h.counted(bpf.HookIngress, tcpSeg(fam.client, fam.frontend, testpkt.SYN, 100, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
			h.counted(bpf.HookEgress, tcpSeg(fam.client, fam.backend, testpkt.SYN, 100, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
			c, f, b := netip.MustParseAddrPort(fam.client), netip.MustParseAddrPort(fam.frontend), netip.MustParseAddrPort(fam.backend)

			quoteOf := func(p testpkt.Packet) []byte { return testpkt.MustBytes(t, p)[14:] }
			errorOf := func(src, dst netip.Addr, quote []byte) testpkt.Packet {
				if src.Is4() {
					return testpkt.ICMPv4Error(src, dst, 3, 3, quote)
				}
				return testpkt.ICMPv6Error(src, dst, 1, 4, quote)
			}
			check := func(step string, got *testpkt.Packet, outerSrc, outerDst netip.Addr, want testpkt.Packet) {
				t.Helper()
				s, d := endpoints(t, got)
				if s.Addr() != outerSrc || d.Addr() != outerDst {
					t.Errorf("%s: error %v -> %v, want %v -> %v", step, s.Addr(), d.Addr(), outerSrc, outerDst)
				}
				if (got.ICMPv4 != nil && got.ICMPv4.BadChecksum) || (got.ICMPv6 != nil && got.ICMPv6.BadChecksum) {
					t.Errorf("%s: the error's checksum does not verify", step)
				}
				if diff := cmp.Diff(quoteOf(want), got.Payload); diff != "" {
					t.Errorf("%s: quote (-want +got):\n%s", step, diff)
				}
			}

			// The backend refuses the translated SYN.
			fromBackend := errorOf(b.Addr(), c.Addr(), quoteOf(tcpSeg(fam.client, fam.backend, testpkt.SYN, 100, 0)))
			got := h.counted(bpf.HookIngress, fromBackend, tcActOK, bpf.ReasonAcceptedRelated)
			check("backend's error", got, f.Addr(), c.Addr(), tcpSeg(fam.client, fam.frontend, testpkt.SYN, 100, 0))

			// The client refuses the frontend's reply.
			fromClient := errorOf(c.Addr(), f.Addr(), quoteOf(tcpSeg(fam.frontend, fam.client, testpkt.SYN|testpkt.ACK, 500, 101)))
			got = h.counted(bpf.HookIngress, fromClient, tcActOK, bpf.ReasonAcceptedRelated)
			check("client's error", got, c.Addr(), b.Addr(), tcpSeg(fam.backend, fam.client, testpkt.SYN|testpkt.ACK, 500, 101))
		})
	}
}

// TestServiceSharedBackendReopen: two frontends share a backend, and a
// client reuses its port through the second once its flow through the
// first is over (closed by a RST, or by a FIN each way): the new SYN
// replaces the old reverse entry and is DNATed, its reply reverse-NATed
// to the second frontend. A flow through the first that is still open
// keeps its entry, and the SYN through the second is refused rather than
// merged into it. (A peer benchmark found the RST case timing out.)
func TestServiceSharedBackendReopen(t *testing.T) {
	const front1, front2, backend = "10.96.0.10:80", "10.96.0.11:80", "10.1.0.9:8080"
	for i, tc := range []struct {
		name  string
		close []testpkt.TCPFlags // the client's, then the backend's, packets that end the flow
		open  bool               // the first flow is still open
	}{
		{"rst", []testpkt.TCPFlags{testpkt.RST}, false},
		{"fin-both-ways", []testpkt.TCPFlags{testpkt.FIN | testpkt.ACK, testpkt.FIN | testpkt.ACK}, false},
		{"fin-one-way", []testpkt.TCPFlags{testpkt.FIN | testpkt.ACK}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fmt.Sprintf("10.200.0.7:%d", 40100+i)
			h := newLBHarness(t)
			h.sync(map[string]nat.Service{
				"one": oneBackend(front1, backend, nat.ProtoTCP),
				"two": oneBackend(front2, backend, nat.ProtoTCP),
			})
			// A packet from the client meets its ingress hook, then the
			// translated one the egress hook it leaves by; the backend's
			// the same way round.
			fromClient := func(front string, flags testpkt.TCPFlags, seq, ack uint32, reason bpf.Reason) {
				t.Helper()
				got := h.counted(bpf.HookIngress, tcpSeg(client, front, flags, seq, ack), tcActOK, reason)
				wantEndpoints(t, "client's packet", got, client, backend)
				h.counted(bpf.HookEgress, tcpSeg(client, backend, flags, seq, ack), tcActOK, map[bool]bpf.Reason{true: bpf.ReasonAcceptedByPolicy, false: bpf.ReasonAcceptedEstablished}[reason == bpf.ReasonAcceptedByPolicy])
			}
			fromBackend := func(front string, flags testpkt.TCPFlags, seq, ack uint32) {
				t.Helper()
				got := h.counted(bpf.HookIngress, tcpSeg(backend, client, flags, seq, ack), tcActOK, bpf.ReasonAcceptedEstablished)
				wantEndpoints(t, "backend's packet", got, front, client)
				h.counted(bpf.HookEgress, tcpSeg(front, client, flags, seq, ack), tcActOK, bpf.ReasonAcceptedEstablished)
			}
			fromClient(front1, testpkt.SYN, 100, 0, bpf.ReasonAcceptedByPolicy)
			fromBackend(front1, testpkt.SYN|testpkt.ACK, 500, 101)
			fromClient(front1, tc.close[0], 101, 501, bpf.ReasonAcceptedEstablished)
			if len(tc.close) > 1 {
				fromBackend(front1, tc.close[1], 501, 102)
			}

			c, f2, b := netip.MustParseAddrPort(client), netip.MustParseAddrPort(front2), netip.MustParseAddrPort(backend)
			revKey, _ := ctKeyOf(nat.ProtoTCP, c, b)
			stub1, _ := ctKeyOf(nat.ProtoTCP, c, netip.MustParseAddrPort(front1))
			stub2, _ := ctKeyOf(nat.ProtoTCP, c, f2)
			if tc.open {
				if v, _ := h.send(bpf.HookIngress, tcpSeg(client, front2, testpkt.SYN, 900, 0)); v != tcActShot {
					t.Errorf("SYN through the second while the first is open: verdict %d, want TC_ACT_SHOT", v)
				}
				if rev, _ := h.ctEntry(revKey); rev.NATPeer != stub1 {
					t.Errorf("an open flow's reverse entry leads to %+v, want its own stub", rev.NATPeer)
				}
				return
			}
			fromClient(front2, testpkt.SYN, 900, 0, bpf.ReasonAcceptedByPolicy)
			if rev, ok := h.ctEntry(revKey); !ok || rev.Type != bpf.CTNATRev || rev.NATPeer != stub2 || rev.OrigAddr != f2.Addr().As16() {
				t.Fatalf("reverse entry %+v (found %v), want the second frontend's", rev, ok)
			}
			fromBackend(front2, testpkt.SYN|testpkt.ACK, 700, 901)
			fromClient(front2, testpkt.ACK, 901, 701, bpf.ReasonAcceptedEstablished)
		})
	}
}
