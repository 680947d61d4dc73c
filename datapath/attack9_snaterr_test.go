package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// Attack9 attacks the service stage's source NAT (sl_snat_needed,
// sl_snat_pick) and the translation of ICMP and ICMPv6 errors about
// source-NATed flows (related.h: sl_related_unsnat, sl_related_snat,
// sl_quote_fix) at lo as a host interface (newSNATHarness).
// attack9_snatport_test.go attacks the port choice and the flows' own
// packets. Every error is checked byte for byte against a quote built
// fresh for the tuple its receiver knows, and every checksum is
// recomputed here: the error's (over the ICMPv6 pseudo-header in IPv6),
// the outer and quoted IPv4 headers', and the quoted L4 checksum when the
// quote holds the whole segment.

// snatSvc is a NodePort on port 30080 of proto whose one backend is on
// another node.
func snatSvc(backend string, proto uint8) map[string]nat.Service {
	s := nodePort(backend, false)
	s.Frontends[0].Protocol = proto
	return map[string]nat.Service{"np": s}
}

// snatPacket is a TCP segment (SYN, or SYN-ACK when reply) or a UDP
// datagram between two endpoints, the same bytes whoever builds it.
func snatPacket(proto uint8, src, dst string, reply bool, zeroUDP bool) testpkt.Packet {
	if proto == nat.ProtoUDP {
		p := udp(src, dst, []byte("query"))
		p.UDP.NoChecksum = zeroUDP
		return p
	}
	if reply {
		return tcpSeg(src, dst, testpkt.SYN|testpkt.ACK, 500, 101)
	}
	return tcpSeg(src, dst, testpkt.SYN, 100, 0)
}

// snatFlow opens a source-NATed flow of proto from client to the node's
// NodePort front, balanced to backend: the client's packet is DNATed and
// SNATed at ingress, the translated packet policed at egress, and the
// backend's answer reverse-NATed. It returns the node's endpoint that
// stands in for the client.
func (h *lbHarness) snatFlow(proto uint8, client, front, backend string, zeroUDP bool) netip.AddrPort {
	h.t.Helper()
	got := h.counted(bpf.HookIngress, snatPacket(proto, client, front, false, zeroUDP), tcActOK, bpf.ReasonAcceptedByPolicy)
	src, dst := endpoints(h.t, got)
	node := snatNode4
	if src.Addr().Is6() {
		node = snatNode6
	}
	if src.Addr() != node || src.Port() < snatPortMin || src.Port() > snatPortMax || dst.String() != backend {
		h.t.Fatalf("client's packet left as %v -> %v, want from %v:%d-%d to %s", src, dst, node, snatPortMin, snatPortMax, backend)
	}
	h.counted(bpf.HookEgress, snatPacket(proto, src.String(), backend, false, zeroUDP), tcActOK, bpf.ReasonAcceptedByPolicy)
	got = h.counted(bpf.HookIngress, snatPacket(proto, backend, src.String(), true, zeroUDP), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(h.t, "backend's answer", got, front, client)
	return src
}

// ipOf is a packet's IP header on: what an error quotes of it.
func ipOf(t *testing.T, p testpkt.Packet) []byte { return testpkt.MustBytes(t, p)[14:] }

// icmpError is a destination (port) unreachable from src to dst quoting
// quote: ICMPv4 or ICMPv6 by the addresses.
func icmpError(src, dst netip.Addr, quote []byte) testpkt.Packet {
	if src.Is4() {
		return testpkt.ICMPv4Error(src, dst, 3, 3, quote)
	}
	return testpkt.ICMPv6Error(src, dst, 1, 4, quote)
}

// checkError checks a translated error frame: its outer addresses, every
// checksum recomputed, and the quote byte for byte.
func checkError(t *testing.T, step string, frame []byte, src, dst netip.Addr, want []byte) {
	t.Helper()
	ip := frame[14:]
	var s, d netip.Addr
	var icmp []byte
	if binary.BigEndian.Uint16(frame[12:14]) == 0x0800 {
		ihl := int(ip[0]&0x0f) * 4
		if testpkt.Checksum(ip[:ihl]) != 0 {
			t.Errorf("%s: the error's IPv4 header checksum does not verify", step)
		}
		s, d = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		icmp = ip[ihl:binary.BigEndian.Uint16(ip[2:4])]
		if testpkt.Checksum(icmp) != 0 {
			t.Errorf("%s: the ICMP checksum does not verify", step)
		}
	} else {
		s, d = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		icmp = ip[40 : 40+int(binary.BigEndian.Uint16(ip[4:6]))]
		if testpkt.L4Checksum(s, d, testpkt.ProtoICMPv6, icmp) != 0 {
			t.Errorf("%s: the ICMPv6 checksum (with its pseudo-header) does not verify", step)
		}
	}
	if s != src || d != dst {
		t.Errorf("%s: error %v -> %v, want %v -> %v", step, s, d, src, dst)
	}
	quote := icmp[8:]
	if !bytes.Equal(quote, want) {
		t.Errorf("%s: quote\n got %x\nwant %x", step, quote, want)
	}
	checkQuoteSums(t, step, quote)
}

// checkQuoteSums recomputes the checksums a quote holds: the quoted IPv4
// header's, and the L4 checksum when the quote is the whole segment (a
// UDP checksum of 0 is none).
func checkQuoteSums(t *testing.T, step string, q []byte) {
	t.Helper()
	var s, d netip.Addr
	var l4 []byte
	var proto uint8
	if q[0]>>4 == 4 {
		ihl := int(q[0]&0x0f) * 4
		if testpkt.Checksum(q[:ihl]) != 0 {
			t.Errorf("%s: the quoted IPv4 header checksum does not verify", step)
		}
		if int(binary.BigEndian.Uint16(q[2:4])) != len(q) {
			return
		}
		s, d, proto, l4 = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20])), q[9], q[ihl:]
	} else {
		if 40+int(binary.BigEndian.Uint16(q[4:6])) != len(q) {
			return
		}
		s, d, proto, l4 = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40])), q[6], q[40:]
	}
	if proto == testpkt.ProtoUDP && binary.BigEndian.Uint16(l4[6:8]) == 0 {
		return
	}
	if testpkt.L4Checksum(s, d, proto, l4) != 0 {
		t.Errorf("%s: the quoted L4 checksum does not verify", step)
	}
}

// snatFam is one family's endpoints of a source-NATed flow, and a router
// on the path that is neither end. The "other address" variants reach the
// NodePort at a node address that is not the SNAT address, so that the
// frontend and the node's stand-in for the client differ.
type snatFam struct{ name, client, front, backend, router string }

var snatFams = []snatFam{
	{"ipv4", "203.0.113.7:40000", "10.0.0.100:30080", "10.2.0.5:8080", "198.51.100.254"},
	{"ipv6", "[2001:db8:77::7]:40000", "[fd00::100]:30080", "[fd00:2::5]:8080", "2001:db8:ffff::fe"},
	{"ipv4 other address", "203.0.113.7:40000", "10.0.0.101:30080", "10.2.0.5:8080", "198.51.100.254"},
	{"ipv6 other address", "[2001:db8:77::7]:40000", "[fd00::101]:30080", "[fd00:2::5]:8080", "2001:db8:ffff::fe"},
}

// newA9Harness is newSNATHarness with a second address of the node in
// each family, 10.0.0.101 and fd00::101, which SNAT does not use.
func newA9Harness(t *testing.T) *lbHarness {
	h := newSNATHarness(t)
	for _, a := range []string{"10.0.0.101/32", "fd00::101/128"} {
		h.setRoute(routes.Route{Prefix: netip.MustParsePrefix(a), Flags: routes.FlagLocalHost})
	}
	return h
}

// TestAttack9SNATErrorsToClient: an error about the client's translated
// packet (node:port -> backend), from the backend or from a router on the
// way, reaches the client quoting client -> frontend, with every checksum
// the quote holds valid: whole quotes, quotes of 8 L4 bytes, quotes that
// stop one byte into the TCP checksum and quotes that end with it; UDP
// with a checksum and without (half a quoted checksum is left as it
// was: the other half, which the new value depends on, is not there).
// The backend's error comes from the frontend; a router's keeps its
// source. The translated error then passes the egress hook towards the
// client as it is.
func TestAttack9SNATErrorsToClient(t *testing.T) {
	for _, fam := range snatFams {
		for _, tc := range []struct {
			name    string
			proto   uint8
			zeroUDP bool
			cut     int // L4 bytes quoted; 0: all
		}{
			{"tcp whole", nat.ProtoTCP, false, 0},
			{"tcp 8 bytes", nat.ProtoTCP, false, 8},
			{"tcp half checksum", nat.ProtoTCP, false, 17},
			{"tcp to checksum", nat.ProtoTCP, false, 18},
			{"udp whole", nat.ProtoUDP, false, 0},
			{"udp header", nat.ProtoUDP, false, 8},
			{"udp no checksum", nat.ProtoUDP, true, 0},
		} {
			t.Run(fam.name+"/"+tc.name, func(t *testing.T) {
				h := newA9Harness(t)
				h.sync(snatSvc(fam.backend, tc.proto))
				wire := h.snatFlow(tc.proto, fam.client, fam.front, fam.backend, tc.zeroUDP)
				c, f, b := netip.MustParseAddrPort(fam.client), netip.MustParseAddrPort(fam.front), netip.MustParseAddrPort(fam.backend)
				hdr := 20
				if c.Addr().Is6() {
					hdr = 40
				}
				cut := func(p []byte) []byte {
					if tc.cut == 0 {
						return p
					}
					return testpkt.Truncate(p, hdr+tc.cut)
				}
				sent := cut(ipOf(t, snatPacket(tc.proto, wire.String(), fam.backend, false, tc.zeroUDP)))
				want := cut(ipOf(t, snatPacket(tc.proto, fam.client, fam.front, false, tc.zeroUDP)))
				if tc.cut == 17 {
					// Half a checksum cannot be updated: its byte
					// stays as the node sent it.
					want[len(want)-1] = sent[len(sent)-1]
				}
				for _, from := range []struct {
					name      string
					src, want netip.Addr
				}{
					{"backend", b.Addr(), f.Addr()},
					{"router", netip.MustParseAddr(fam.router), netip.MustParseAddr(fam.router)},
				} {
					frame := testpkt.MustBytes(t, icmpError(from.src, wire.Addr(), sent))
					out := h.rawCounted(from.name, bpf.HookIngress, frame, tcActOK, bpf.ReasonAcceptedRelated)
					checkError(t, from.name+"'s error", out, from.want, c.Addr(), want)
					// On its way out to the client it is the flow's,
					// as the client knows it, and stays as it is.
					translated := append([]byte{}, out[:len(frame)]...)
					if got := h.rawCounted(from.name+" at egress", bpf.HookEgress, translated, tcActOK, bpf.ReasonAcceptedRelated); !bytes.Equal(got[:len(frame)], translated) {
						t.Errorf("%s: the translated error changed at egress:\n got %x\nwant %x", from.name, got[:len(frame)], translated)
					}
				}
			})
		}
	}
}

// TestAttack9SNATErrorsToBackend: the client's error about the backend's
// translated answer (frontend -> client) goes on to the backend from the
// node, quoting backend -> node:port as the backend sent it; so does a
// router's (Linux's NAT also gives it the node's address: the backend
// knows no other). The translated error passes egress as it is.
func TestAttack9SNATErrorsToBackend(t *testing.T) {
	for _, fam := range snatFams {
		for _, tc := range []struct {
			name    string
			proto   uint8
			zeroUDP bool
			cut     int
		}{
			{"tcp whole", nat.ProtoTCP, false, 0},
			{"tcp 8 bytes", nat.ProtoTCP, false, 8},
			{"tcp to checksum", nat.ProtoTCP, false, 18},
			{"udp whole", nat.ProtoUDP, false, 0},
			{"udp no checksum", nat.ProtoUDP, true, 0},
		} {
			t.Run(fam.name+"/"+tc.name, func(t *testing.T) {
				h := newA9Harness(t)
				h.sync(snatSvc(fam.backend, tc.proto))
				wire := h.snatFlow(tc.proto, fam.client, fam.front, fam.backend, tc.zeroUDP)
				c, f, b := netip.MustParseAddrPort(fam.client), netip.MustParseAddrPort(fam.front), netip.MustParseAddrPort(fam.backend)
				hdr := 20
				if c.Addr().Is6() {
					hdr = 40
				}
				cut := func(p []byte) []byte {
					if tc.cut == 0 {
						return p
					}
					return testpkt.Truncate(p, hdr+tc.cut)
				}
				sent := cut(ipOf(t, snatPacket(tc.proto, fam.front, fam.client, true, tc.zeroUDP)))
				want := cut(ipOf(t, snatPacket(tc.proto, fam.backend, wire.String(), true, tc.zeroUDP)))
				for _, src := range []netip.Addr{c.Addr(), netip.MustParseAddr(fam.router)} {
					frame := testpkt.MustBytes(t, icmpError(src, f.Addr(), sent))
					out := h.rawCounted(src.String(), bpf.HookIngress, frame, tcActOK, bpf.ReasonAcceptedRelated)
					checkError(t, src.String()+"'s error", out, wire.Addr(), b.Addr(), want)
					translated := append([]byte{}, out[:len(frame)]...)
					if got := h.rawCounted("at egress", bpf.HookEgress, translated, tcActOK, bpf.ReasonAcceptedRelated); !bytes.Equal(got[:len(frame)], translated) {
						t.Errorf("the translated error changed at egress:\n got %x\nwant %x", got[:len(frame)], translated)
					}
				}
			})
		}
	}
}

// TestAttack9SNATForgedErrors: errors that name no flow of this node as
// the hook sees it are not related, pass to policy as ICMP (lo's allows
// port 0) and leave exactly as they came: a quote whose source is not the
// error's destination (the client's address, or the node's address
// quoted to an error for the backend), one of the flow's tuple with
// another SNAT port or backend port, one claiming the frontend sent to
// another client port, and one whose quoted packet is the client's as it
// sent it, addressed to the node (the node never sent it). The flow's
// own tuple still translates afterwards.
func TestAttack9SNATForgedErrors(t *testing.T) {
	for _, fam := range snatFams {
		t.Run(fam.name, func(t *testing.T) {
			h := newA9Harness(t)
			h.sync(snatSvc(fam.backend, nat.ProtoTCP))
			wire := h.snatFlow(nat.ProtoTCP, fam.client, fam.front, fam.backend, false)
			c, f, b := netip.MustParseAddrPort(fam.client), netip.MustParseAddrPort(fam.front), netip.MustParseAddrPort(fam.backend)
			other := uint16(snatPortMin + snatPortMax - int(wire.Port()))
			at := func(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }
			attacker := netip.MustParseAddr(fam.router)
			for _, tc := range []struct {
				name     string
				src, dst netip.Addr
				quote    testpkt.Packet
			}{
				{"quote's source is not the error's destination", b.Addr(), c.Addr(), snatPacket(nat.ProtoTCP, wire.String(), fam.backend, false, false)},
				{"to the backend quoting the node's packet", attacker, b.Addr(), snatPacket(nat.ProtoTCP, wire.String(), fam.backend, false, false)},
				{"another SNAT port", b.Addr(), wire.Addr(), snatPacket(nat.ProtoTCP, at(wire.Addr(), other), fam.backend, false, false)},
				{"another backend port", b.Addr(), wire.Addr(), snatPacket(nat.ProtoTCP, wire.String(), at(b.Addr(), b.Port()+1), false, false)},
				{"another client port", c.Addr(), f.Addr(), snatPacket(nat.ProtoTCP, fam.front, at(c.Addr(), c.Port()+1), true, false)},
				{"the client's own packet", attacker, f.Addr(), snatPacket(nat.ProtoTCP, fam.client, fam.front, false, false)},
			} {
				frame := testpkt.MustBytes(t, icmpError(tc.src, tc.dst, ipOf(t, tc.quote)))
				if out := h.rawCounted(tc.name, bpf.HookIngress, frame, tcActOK, bpf.ReasonAcceptedByPolicy); !bytes.Equal(out[:len(frame)], frame) {
					t.Errorf("%s: the error was rewritten:\n got %x\nwant %x", tc.name, out[:len(frame)], frame)
				}
			}
			sent := ipOf(t, snatPacket(nat.ProtoTCP, wire.String(), fam.backend, false, false))
			out := h.rawCounted("real error", bpf.HookIngress, testpkt.MustBytes(t, icmpError(b.Addr(), wire.Addr(), sent)), tcActOK, bpf.ReasonAcceptedRelated)
			checkError(t, "real error", out, f.Addr(), c.Addr(), ipOf(t, snatPacket(nat.ProtoTCP, fam.client, fam.front, false, false)))
		})
	}
}

// TestAttack9HairpinErrors: a workload balanced to itself (hairpin) sees
// its flow from the frontend; its error as the backend about the node's
// packet reaches it as the client from the frontend, quoting what it sent
// to the frontend, and its error as the client about the answer reaches
// it as the backend from the node.
func TestAttack9HairpinErrors(t *testing.T) {
	h := newLBHarness(t)
	if err := h.d.SNAT().Set(nat.SNAT{IPv4: snatNode4, PortMin: snatPortMin, PortMax: snatPortMax}); err != nil {
		t.Fatal(err)
	}
	const self, frontend, backend = "10.0.0.50:45000", "10.96.0.50:80", "10.0.0.50:8080"
	h.sync(map[string]nat.Service{"self": oneBackend(frontend, backend, nat.ProtoTCP)})
	got := h.counted(bpf.HookIngress, tcpSeg(self, frontend, testpkt.SYN, 100, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	wire, _ := endpoints(t, got)
	if wire.Addr() != snatNode4 {
		t.Fatalf("hairpin SYN from %v, want from %v", wire, snatNode4)
	}
	h.counted(bpf.HookEgress, tcpSeg(wire.String(), backend, testpkt.SYN, 100, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	h.counted(bpf.HookIngress, tcpSeg(backend, wire.String(), testpkt.SYN|testpkt.ACK, 500, 101), tcActOK, bpf.ReasonAcceptedEstablished)
	w, f := netip.MustParseAddrPort(self).Addr(), netip.MustParseAddrPort(frontend).Addr()

	sent := ipOf(t, tcpSeg(wire.String(), backend, testpkt.SYN, 100, 0))
	out := h.rawCounted("as the backend", bpf.HookIngress, testpkt.MustBytes(t, icmpError(w, snatNode4, sent)), tcActOK, bpf.ReasonAcceptedRelated)
	checkError(t, "as the backend", out, f, w, ipOf(t, tcpSeg(self, frontend, testpkt.SYN, 100, 0)))

	reply := ipOf(t, tcpSeg(frontend, self, testpkt.SYN|testpkt.ACK, 500, 101))
	out = h.rawCounted("as the client", bpf.HookIngress, testpkt.MustBytes(t, icmpError(w, f, reply)), tcActOK, bpf.ReasonAcceptedRelated)
	checkError(t, "as the client", out, snatNode4, w, ipOf(t, tcpSeg(backend, wire.String(), testpkt.SYN|testpkt.ACK, 500, 101)))
}

// TestAttack9SNATErrorQuoteWithOptions: a quoted IPv4 header with
// options puts the quoted L4 header past them; the translation finds the
// ports and the TCP checksum there, and the quote comes out exactly the
// client's segment with the same options.
func TestAttack9SNATErrorQuoteWithOptions(t *testing.T) {
	fam := snatFams[2]
	h := newA9Harness(t)
	h.sync(snatSvc(fam.backend, nat.ProtoTCP))
	wire := h.snatFlow(nat.ProtoTCP, fam.client, fam.front, fam.backend, false)
	withOpts := func(p testpkt.Packet) []byte {
		p.IPv4.Options = []byte{1, 1, 1, 1, 1, 1, 1, 1}
		return ipOf(t, p)
	}
	sent := withOpts(snatPacket(nat.ProtoTCP, wire.String(), fam.backend, false, false))
	b, f, c := netip.MustParseAddrPort(fam.backend), netip.MustParseAddrPort(fam.front), netip.MustParseAddrPort(fam.client)
	out := h.rawCounted("options", bpf.HookIngress, testpkt.MustBytes(t, icmpError(b.Addr(), wire.Addr(), sent)), tcActOK, bpf.ReasonAcceptedRelated)
	checkError(t, "options", out, f.Addr(), c.Addr(), withOpts(snatPacket(nat.ProtoTCP, fam.client, fam.front, false, false)))
}
