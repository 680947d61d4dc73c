package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// TestAttack7ForgedICMPv6Errors sends ICMPv6 errors about a tracked TCP
// flow and echo of a workload behind lo, with every part of the error or
// its quote bent. lo's policy allows ICMPv6, so an error that passes as
// related (AcceptedRelated) and one policy decides (AcceptedByPolicy)
// tell apart. Related: the whole error in an atomic fragment, behind
// extension headers of its own and 1280 bytes with them, the shortest
// quote (40 + 8 bytes), from the flow's peer, and a workload's own error
// about its peer's packet at the ingress hook. Policy's: an error in a
// first fragment, 1288 bytes with its own chain, a quote of a fragment,
// with an IPv4-mapped destination, of version 4, with payload length 0,
// ICMP types outside 1-4, an ICMPv4 error type carried in IPv6 (next
// header 1), and echo quotes of identifiers the flow never used.
func TestAttack7ForgedICMPv6Errors(t *testing.T) {
	h := newHarness6(t)
	client := netip.MustParseAddrPort("[2001:db8:3::10]:40000")
	server := netip.MustParseAddrPort("[2001:db8:4::20]:80")
	router := netip.MustParseAddr("2001:db8:ff::1")
	syn := testpkt.MustBytes(t, testpkt.TCPv6(client, server, testpkt.SYN, nil))
	ping := func(id uint16, reply bool) []byte {
		return testpkt.MustBytes(t, testpkt.ICMPv6Echo(client.Addr(), server.Addr(), id, 1, reply))
	}
	h.expect(t, bpf.HookIngress, syn, bpf.ReasonAcceptedByPolicy, "SYN", 0)
	h.expect(t, bpf.HookIngress, ping(77, false), bpf.ReasonAcceptedByPolicy, "ping", 0)
	synAck := testpkt.MustBytes(t, testpkt.TCPv6(server, client, testpkt.SYN|testpkt.ACK, nil))
	h.expect(t, bpf.HookEgress, synAck, bpf.ReasonAcceptedEstablished, "SYN-ACK", 0)

	quote := testpkt.QuoteIPv6(syn)
	unreach := func(quoted []byte, ext ...testpkt.IPv6Ext) testpkt.Packet {
		p := testpkt.ICMPv6Error(router, client.Addr(), testpkt.ICMPv6DestUnreachable, 0, quoted)
		p.IPv6.Ext = ext
		return p
	}
	bytesOf := func(p testpkt.Packet) []byte { return testpkt.MustBytes(t, p) }
	bent := func(mod func(q []byte)) []byte {
		q := append([]byte(nil), quote...)
		mod(q)
		return bytesOf(unreach(q))
	}
	ofType := func(typ uint8) []byte {
		return testpkt.MustBytes(t, testpkt.ICMPv6Error(router, client.Addr(), typ, 0, quote))
	}
	// A quote padded so that the error, with an 8-byte destination
	// options header of its own, is n bytes of IPv6.
	sized := func(n int) []byte {
		pad := append(append([]byte(nil), quote...), make([]byte, n-40-8-8-len(quote))...)
		binary.BigEndian.PutUint16(pad[4:], uint16(len(pad)-40))
		return bytesOf(unreach(pad, testpkt.ExtDestOpts(nil)))
	}
	if n := len(sized(1280)) - 14; n != 1280 {
		t.Fatalf("sized error of %d bytes, want 1280", n)
	}
	fragQuote := func() []byte {
		p := testpkt.TCPv6(client, server, testpkt.SYN, nil)
		p.IPv6.Ext = []testpkt.IPv6Ext{testpkt.ExtFragment(0, true, 1)}
		return testpkt.QuoteIPv6(testpkt.MustBytes(t, p))
	}()
	v4type := func() []byte {
		b := bytesOf(unreach(quote))
		b[20] = 1 // next header ICMP; the type stays 1 (an ICMPv6 type, not ICMP's 3)
		b[14+40] = 3
		return b
	}()
	clientErr := testpkt.MustBytes(t, testpkt.ICMPv6Error(client.Addr(), server.Addr(), testpkt.ICMPv6DestUnreachable, 4, testpkt.QuoteIPv6(synAck)))
	pf := bpf.IfaceWorkload | bpf.IfaceReady | bpf.IfaceEnforceIPv6 | bpf.IfacePassFragments
	cases := []struct {
		name  string
		hook  bpf.Hook
		flags bpf.IfaceFlags
		frame []byte
		want  bpf.Reason
	}{
		{"in an atomic fragment", bpf.HookEgress, 0, bytesOf(unreach(quote, testpkt.ExtFragment(0, false, 9))), bpf.ReasonAcceptedRelated},
		{"behind hop-by-hop and destination options", bpf.HookEgress, 0, bytesOf(unreach(quote, testpkt.ExtHopByHop(nil), testpkt.ExtDestOpts(make([]byte, 30)))), bpf.ReasonAcceptedRelated},
		{"1280 bytes with its own chain", bpf.HookEgress, 0, sized(1280), bpf.ReasonAcceptedRelated},
		{"the shortest quote", bpf.HookEgress, 0, bytesOf(unreach(quote[:48])), bpf.ReasonAcceptedRelated},
		{"from the flow's peer", bpf.HookEgress, 0, testpkt.MustBytes(t, testpkt.ICMPv6Error(server.Addr(), client.Addr(), testpkt.ICMPv6DestUnreachable, 4, quote)), bpf.ReasonAcceptedRelated},
		{"the workload's error about the SYN-ACK", bpf.HookIngress, 0, clientErr, bpf.ReasonAcceptedRelated},
		{"quoting the ping", bpf.HookEgress, 0, bytesOf(unreach(testpkt.QuoteIPv6(ping(77, false)))), bpf.ReasonAcceptedRelated},
		{"in a first fragment", bpf.HookEgress, pf, bytesOf(unreach(quote, testpkt.ExtFragment(0, true, 9))), bpf.ReasonAcceptedByPolicy},
		{"1288 bytes with its own chain", bpf.HookEgress, 0, sized(1288), bpf.ReasonAcceptedByPolicy},
		{"quoting a fragment", bpf.HookEgress, 0, bytesOf(unreach(fragQuote)), bpf.ReasonAcceptedByPolicy},
		{"quoted destination IPv4-mapped", bpf.HookEgress, 0, bent(func(q []byte) { copy(q[24:40], netip.MustParseAddr("::ffff:10.0.0.1").AsSlice()) }), bpf.ReasonAcceptedByPolicy},
		{"quoted version 4", bpf.HookEgress, 0, bent(func(q []byte) { q[0] = 0x45 }), bpf.ReasonAcceptedByPolicy},
		{"quoted payload length 0", bpf.HookEgress, 0, bent(func(q []byte) { q[4], q[5] = 0, 0 }), bpf.ReasonAcceptedByPolicy},
		{"quoted source another", bpf.HookEgress, 0, bent(func(q []byte) { q[23] ^= 1 }), bpf.ReasonAcceptedByPolicy},
		{"quoted ports swapped", bpf.HookEgress, 0, bent(func(q []byte) { q[40], q[41], q[42], q[43] = q[42], q[43], q[40], q[41] }), bpf.ReasonAcceptedByPolicy},
		{"type 0", bpf.HookEgress, 0, ofType(0), bpf.ReasonAcceptedByPolicy},
		{"type 5", bpf.HookEgress, 0, ofType(5), bpf.ReasonAcceptedByPolicy},
		{"type 127", bpf.HookEgress, 0, ofType(127), bpf.ReasonAcceptedByPolicy},
		{"an ICMP error type in IPv6", bpf.HookEgress, 0, v4type, bpf.ReasonAcceptedByPolicy},
		{"quoting a ping of identifier 78", bpf.HookEgress, 0, bytesOf(unreach(testpkt.QuoteIPv6(ping(78, false)))), bpf.ReasonAcceptedByPolicy},
		{"quoting an echo reply of identifier 76", bpf.HookEgress, 0, bytesOf(unreach(testpkt.QuoteIPv6(ping(76, true)))), bpf.ReasonAcceptedByPolicy},
	}
	def := bpf.IfaceWorkload | bpf.IfaceReady | bpf.IfaceEnforceIPv6
	for i, c := range cases {
		flags := c.flags
		if flags == 0 {
			flags = def
		}
		h.setLo(flags)
		h.expect(t, c.hook, c.frame, c.want, c.name, i)
	}
}

// TestAttack7EchoAndPortlessFlows checks conntrack's keys on IPv6 where
// identifiers and ports could collide: after A pings B with identifier
// 77, B's reply passes as established behind an 8-header chain, but ICMP
// (next header 1) with the same identifier, and UDP on the echo's key
// ports, meet policy. Protocols without ports (ESP, no next header, the
// mobility header and an experimental type, which the walk does not step
// over) reach policy with ports 0 whatever their first bytes hold, so a
// policy of "port 80" never matches them; a TCP header behind such a
// header is not read.
func TestAttack7EchoAndPortlessFlows(t *testing.T) {
	h := newHarness6(t)
	a, b := netip.MustParseAddr("2001:db8:5::a"), netip.MustParseAddr("2001:db8:5::b")
	h.expect(t, bpf.HookIngress, testpkt.MustBytes(t, testpkt.ICMPv6Echo(a, b, 77, 1, false)), bpf.ReasonAcceptedByPolicy, "A's ping", 0)
	reply := testpkt.ICMPv6Echo(b, a, 77, 1, true)
	chained := reply.Clone()
	chained.IPv6.Ext = testpkt.RepeatExt(testpkt.ExtDestOpts(nil), 8)
	icmp4 := func(typ uint8) []byte {
		msg := []byte{typ, 0, 0, 0, 0, 77, 0, 1}
		return atk7Raw(b, a, 1, 64, msg)
	}
	h.expect(t, bpf.HookEgress, testpkt.MustBytes(t, chained), bpf.ReasonAcceptedEstablished, "B's reply behind 8 headers", 0)
	for i, c := range []struct {
		name  string
		frame []byte
		want  bpf.Reason
	}{
		// lo's stub policy allows destination port 0 (ICMP and
		// port-less protocols), so these are new approvals, not passes.
		{"ICMP echo reply of identifier 77 in IPv6", icmp4(0), bpf.ReasonAcceptedByPolicy},
		{"ICMP echo request of identifier 77 in IPv6", icmp4(8), bpf.ReasonAcceptedByPolicy},
		{"UDP on the echo's ports", testpkt.MustBytes(t, testpkt.UDPv6(netip.AddrPortFrom(b, 78), netip.AddrPortFrom(a, 77), nil)), bpf.ReasonDroppedByPolicy},
		{"UDP on the echo's ports reversed", testpkt.MustBytes(t, testpkt.UDPv6(netip.AddrPortFrom(b, 77), netip.AddrPortFrom(a, 78), nil)), bpf.ReasonDroppedByPolicy},
	} {
		h.expect(t, bpf.HookEgress, c.frame, c.want, c.name, i)
	}

	// Port 80 only, at ingress.
	h.putPolicy(h.lo.ingress, allowDstPorts(80))
	ports := []byte{0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0} // "40000 -> 80", SYN-ish
	behind := func(typ uint8) []byte {
		return atk7Raw(a, b, typ, 64, atk7Cat(atk7Hdr(6, 0, 8), atk7TCP()))
	}
	for i, c := range []struct {
		name  string
		frame []byte
	}{
		{"esp", atk7Raw(a, b, 50, 64, ports)},
		{"no next header", atk7Raw(a, b, 59, 64, ports)},
		{"IPv6 in IPv6", atk7Raw(a, b, 41, 64, ports)},
		{"tcp behind a mobility header", behind(135)},
		{"tcp behind an experimental header", behind(253)},
		{"tcp behind HIP", behind(139)},
	} {
		h.expect(t, bpf.HookIngress, c.frame, bpf.ReasonDroppedByPolicy, c.name, i)
	}
	h.expect(t, bpf.HookIngress, atk7Raw(a, b, 6, 64, atk7TCP()), bpf.ReasonAcceptedByPolicy, "tcp to port 80", 0)
}
