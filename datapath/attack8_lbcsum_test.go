package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
)

// Checksums of translated packets (rewrite.h): UDP's zero checksum in
// both families, a UDP checksum that comes out 0, SCTP, and TCP behind
// IPv4 options and IPv6 extension headers.

// udpFlow runs a UDP flow through a frontend at lo: the client's query
// (DNATed), the translated query leaving (policed, the backend's replies
// let in), the backend's answer (reverse-NATed) and the client's second
// query (established), each built by mk from its endpoints, and returns
// the four packets as they left the programs.
func (h *lbHarness) udpFlow(client, frontend, backend string, mk func(src, dst string, step int) testpkt.Packet) [4]*testpkt.Packet {
	h.t.Helper()
	var out [4]*testpkt.Packet
	out[0] = h.counted(bpf.HookIngress, mk(client, frontend, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	wantEndpoints(h.t, "query", out[0], client, backend)
	out[1] = h.counted(bpf.HookEgress, mk(client, backend, 1), tcActOK, bpf.ReasonAcceptedByPolicy)
	out[2] = h.counted(bpf.HookIngress, mk(backend, client, 2), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(h.t, "answer", out[2], frontend, client)
	out[3] = h.counted(bpf.HookIngress, mk(client, frontend, 3), tcActOK, bpf.ReasonAcceptedEstablished)
	wantEndpoints(h.t, "second query", out[3], client, backend)
	return out
}

// TestAttack8UDPZeroChecksum: a UDP datagram without a checksum keeps
// none through DNAT, the established DNAT and the reverse NAT, in IPv4
// and in IPv6 (where 0 is valid on tunnels that allow it, RFC 6935, and
// used to be turned into a non-zero checksum that does not verify; fixed
// in rewrite.h).
func TestAttack8UDPZeroChecksum(t *testing.T) {
	for _, fam := range []struct{ name, client, frontend, backend string }{
		{"ipv4", "10.0.0.31:33000", "10.96.0.31:53", "10.1.0.31:5353"},
		{"ipv6", "[fd00::31]:33000", "[fd00:96::31]:53", "[fd00::1:31]:5353"},
	} {
		h := newLBHarness(t)
		h.sync(map[string]nat.Service{"dns": oneBackend(fam.frontend, fam.backend, nat.ProtoUDP)})
		out := h.udpFlow(fam.client, fam.frontend, fam.backend, func(src, dst string, _ int) testpkt.Packet {
			p := udp(src, dst, []byte("no checksum"))
			p.UDP.NoChecksum = true
			return p
		})
		for i, p := range out {
			if !p.UDP.NoChecksum || p.UDP.BadChecksum {
				t.Errorf("%s: step %d left with checksum %#04x, want 0", fam.name, i, p.UDP.Checksum)
			}
		}
	}
}

// TestAttack8UDPChecksumComesOutZero: a translation after which a UDP
// checksum computes to 0 writes 0xffff, never 0 (which would say "no
// checksum" and leave the datagram unverified): the client's port and
// the answer's payload are chosen to make each of the query's DNAT, the
// answer's reverse NAT and the established DNAT come out 0.
func TestAttack8UDPChecksumComesOutZero(t *testing.T) {
	for _, fam := range []struct{ name, client, frontend, backend string }{
		{"ipv4", "10.0.0.32", "10.96.0.32:53", "10.1.0.32:5353"},
		{"ipv6", "fd00::32", "[fd00:96::32]:53", "[fd00::1:32]:5353"},
	} {
		h := newLBHarness(t)
		h.sync(map[string]nat.Service{"dns": oneBackend(fam.frontend, fam.backend, nat.ProtoUDP)})
		caddr := netip.MustParseAddr(fam.client)
		f, b := netip.MustParseAddrPort(fam.frontend), netip.MustParseAddrPort(fam.backend)
		// zeroing finds the 2-byte word that, placed at the start of the
		// payload, makes the datagram from src to dst checksum to 0.
		zeroing := func(src, dst netip.AddrPort, rest []byte) []byte {
			for w := 0; w < 1<<16; w++ {
				payload := append([]byte{byte(w >> 8), byte(w)}, rest...)
				dgram := testpkt.MustBytes(t, udpAt(src, dst, payload))
				l4 := dgram[len(dgram)-8-len(payload):]
				l4[6], l4[7] = 0, 0
				if testpkt.L4Checksum(src.Addr(), dst.Addr(), testpkt.ProtoUDP, l4) == 0 {
					return payload
				}
			}
			t.Fatalf("no payload word zeroes the checksum of %v -> %v", src, dst)
			return nil
		}
		client := netip.AddrPortFrom(caddr, 33001)
		queryPayload := zeroing(client, b, []byte("query"))
		answerPayload := zeroing(f, client, []byte("answer"))
		againPayload := zeroing(client, b, []byte("again"))
		out := h.udpFlow(client.String(), fam.frontend, fam.backend, func(src, dst string, step int) testpkt.Packet {
			return udp(src, dst, [][]byte{queryPayload, queryPayload, answerPayload, againPayload}[step])
		})
		for _, i := range []int{0, 2, 3} {
			p := out[i]
			if p.UDP.NoChecksum || p.UDP.BadChecksum {
				t.Errorf("%s: step %d left with checksum %#04x (none %v, bad %v), want 0xffff", fam.name, i, p.UDP.Checksum, p.UDP.NoChecksum, p.UDP.BadChecksum)
			}
		}
	}
}

// udpAt is udp for endpoints given as values.
func udpAt(src, dst netip.AddrPort, payload []byte) testpkt.Packet {
	return udp(src.String(), dst.String(), payload)
}

// sctpPacket is an SCTP packet: the common header (ports, a verification
// tag, a CRC32c the datapath must leave as it is) and one DATA-like chunk.
func sctpPacket(src, dst string) testpkt.Packet {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	body := make([]byte, 12, 28)
	binary.BigEndian.PutUint16(body[0:], s.Port())
	binary.BigEndian.PutUint16(body[2:], d.Port())
	binary.BigEndian.PutUint32(body[4:], 0xdeadbeef)
	binary.BigEndian.PutUint32(body[8:], 0x12345678)
	body = append(body, 0, 3, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
	p := udp(src, dst, nil)
	p.UDP = nil
	p.Payload = body
	if p.IPv4 != nil {
		p.IPv4.Protocol = nat.ProtoSCTP
	} else {
		p.IPv6.Protocol = nat.ProtoSCTP
	}
	return p
}

// TestAttack8SCTP: SCTP's CRC32c covers no pseudo-header, so a frontend
// whose backend keeps its port translates the addresses and leaves every
// SCTP byte alone, both ways, with a valid IPv4 header checksum. One that
// would change the port cannot be translated without recomputing the CRC
// over the packet: such a service is refused (ErrInvalidService), and a
// packet to a frontend nothing programmed passes untranslated.
func TestAttack8SCTP(t *testing.T) {
	for _, fam := range []struct{ name, client, frontend, backend, moved string }{
		{"ipv4", "10.0.0.40:5000", "10.96.0.40:80", "10.1.0.40:80", "10.96.0.41:80"},
		{"ipv6", "[fd00::40]:5000", "[fd00:96::40]:80", "[fd00::1:40]:80", "[fd00:96::41]:80"},
	} {
		h := newLBHarness(t)
		moved := oneBackend(fam.moved, "10.1.0.41:8080", nat.ProtoSCTP)
		if fam.name == "ipv6" {
			moved = oneBackend(fam.moved, "[fd00::1:41]:8080", nat.ProtoSCTP)
		}
		if err := h.d.Services().Sync(map[string]nat.Service{"moved": moved}); !errors.Is(err, nat.ErrInvalidService) {
			t.Errorf("%s: SCTP to another port: Sync %v, want ErrInvalidService", fam.name, err)
		}
		h.sync(map[string]nat.Service{"sctp": oneBackend(fam.frontend, fam.backend, nat.ProtoSCTP)})
		check := func(step string, p, sent testpkt.Packet, src, dst string) {
			t.Helper()
			s, d := netip.MustParseAddrPort(src).Addr(), netip.MustParseAddrPort(dst).Addr()
			var gs, gd netip.Addr
			if p.IPv6 != nil {
				gs, gd = p.IPv6.Src, p.IPv6.Dst
			}
			if p.IPv4 != nil {
				gs, gd = p.IPv4.Src, p.IPv4.Dst
				if p.IPv4.BadChecksum {
					t.Errorf("%s %s: IPv4 header checksum does not verify", fam.name, step)
				}
			}
			if gs != s || gd != d || !bytes.Equal(p.Payload, sent.Payload) {
				t.Errorf("%s %s: %v -> %v with SCTP %x, want %v -> %v with %x", fam.name, step, gs, gd, p.Payload, s, d, sent.Payload)
			}
		}
		q := sctpPacket(fam.client, fam.frontend)
		check("INIT", *h.counted(bpf.HookIngress, q, tcActOK, bpf.ReasonAcceptedByPolicy), q, fam.client, fam.backend)
		h.counted(bpf.HookEgress, sctpPacket(fam.client, fam.backend), tcActOK, bpf.ReasonAcceptedByPolicy)
		a := sctpPacket(fam.backend, fam.client)
		check("INIT ACK", *h.counted(bpf.HookIngress, a, tcActOK, bpf.ReasonAcceptedEstablished), a, fam.frontend, fam.client)

		m := sctpPacket(fam.client, fam.moved)
		check("to the refused frontend", *h.counted(bpf.HookIngress, m, tcActOK, bpf.ReasonAcceptedByPolicy), m, fam.client, fam.moved)
	}
}

// TestAttack8TCPBehindHeaders: TCP behind IPv4 options or IPv6
// extension headers is translated at its own offset, both ways, with the
// options and headers kept and every checksum verifying.
func TestAttack8TCPBehindHeaders(t *testing.T) {
	for _, fam := range []struct{ name, client, frontend, backend string }{
		{"ipv4", "10.0.0.50:41000", "10.96.0.50:80", "10.1.0.50:8080"},
		{"ipv6", "[fd00::50]:41000", "[fd00:96::50]:80", "[fd00::1:50]:8080"},
	} {
		h := newLBHarness(t)
		h.sync(map[string]nat.Service{"web": oneBackend(fam.frontend, fam.backend, nat.ProtoTCP)})
		dress := func(p testpkt.Packet) testpkt.Packet {
			if p.IPv4 != nil {
				p.IPv4.Options = []byte{1, 1, 0x94, 4, 0, 0, 1, 0}
			} else {
				p.IPv6.Ext = []testpkt.IPv6Ext{{Type: testpkt.ProtoHopByHop}, {Type: testpkt.ProtoDestOpts, Data: make([]byte, 6)}}
			}
			p.TCP.Options = []byte{2, 4, 0x05, 0xb4}
			p.Payload = []byte("GET / HTTP/1.0\r\n\r\n")
			return p
		}
		kept := func(step string, p *testpkt.Packet) {
			t.Helper()
			if (p.IPv4 != nil && len(p.IPv4.Options) != 8) || (p.IPv6 != nil && len(p.IPv6.Ext) != 2) || len(p.TCP.Options) != 4 || string(p.Payload) != "GET / HTTP/1.0\r\n\r\n" {
				t.Errorf("%s %s: headers or payload lost: %+v", fam.name, step, p)
			}
		}
		got := h.counted(bpf.HookIngress, dress(tcpSeg(fam.client, fam.frontend, testpkt.SYN, 1, 0)), tcActOK, bpf.ReasonAcceptedByPolicy)
		wantEndpoints(t, fam.name+" SYN", got, fam.client, fam.backend)
		kept("SYN", got)
		h.counted(bpf.HookEgress, dress(tcpSeg(fam.client, fam.backend, testpkt.SYN, 1, 0)), tcActOK, bpf.ReasonAcceptedByPolicy)
		got = h.counted(bpf.HookIngress, dress(tcpSeg(fam.backend, fam.client, testpkt.SYN|testpkt.ACK, 9, 2)), tcActOK, bpf.ReasonAcceptedEstablished)
		wantEndpoints(t, fam.name+" SYN-ACK", got, fam.frontend, fam.client)
		kept("SYN-ACK", got)
		got = h.counted(bpf.HookIngress, dress(tcpSeg(fam.client, fam.frontend, testpkt.ACK, 2, 10)), tcActOK, bpf.ReasonAcceptedEstablished)
		wantEndpoints(t, fam.name+" ACK", got, fam.client, fam.backend)
		kept("ACK", got)
	}
}
