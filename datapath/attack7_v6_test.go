package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// atk7Frag returns p's frame with a fragment header (offset in 8-byte
// units, more fragments) put first in its chain, or after its hop-by-hop
// header, which must stay first.
func atk7Frag(tb testing.TB, p testpkt.Packet, offset uint16, more bool) []byte {
	q := p.Clone()
	at := 0
	if len(q.IPv6.Ext) > 0 && q.IPv6.Ext[0].Type == testpkt.ProtoHopByHop {
		at = 1
	}
	ext := append([]testpkt.IPv6Ext(nil), q.IPv6.Ext[:at]...)
	ext = append(ext, testpkt.ExtFragment(offset, more, 0x7007))
	q.IPv6.Ext = append(ext, q.IPv6.Ext[at:]...)
	return testpkt.MustBytes(tb, q)
}

// atk7MLD is an MLDv2 report behind its router alert, hop limit 1.
func atk7MLD(src netip.Addr) testpkt.Packet {
	ns := testpkt.NDNeighborSolicit(src, src)
	return testpkt.Packet{
		Eth:    ns.Eth,
		IPv6:   &testpkt.IPv6{Src: src, Dst: netip.MustParseAddr("ff02::16"), HopLimit: 1, Ext: []testpkt.IPv6Ext{testpkt.ExtHopByHop(testpkt.RouterAlertOption(0))}},
		ICMPv6: &testpkt.ICMPv6{Type: 143},
	}
}

// TestAttack7FragmentedND sends neighbour discovery and multicast listener
// messages inside fragments: atomic fragments at an interface that drops
// fragments, first fragments at one that passes them. RFC 6980 forbids
// fragmented ND and Linux drops it on receipt, so none is a link message
// that passes before policy and the reverse-path check: each meets policy
// (which denies here), as ordinary ICMPv6. The same messages unfragmented,
// or behind other extension headers, still pass as ND; a later fragment
// is a fragment, whatever its first held.
func TestAttack7FragmentedND(t *testing.T) {
	h := newDenyHarness6(t)
	ll := netip.MustParseAddr("fe80::7")
	target := netip.MustParseAddr("2001:db8:7::2")
	msgs := map[string]testpkt.Packet{
		"ns":       testpkt.NDNeighborSolicit(ll, target),
		"na":       testpkt.NDNeighborAdvert(ll, testpkt.AllNodesAddr, target, testpkt.NAFlagOverride),
		"rs":       testpkt.NDRouterSolicit(ll),
		"ra":       testpkt.NDRouterAdvert(ll, testpkt.AllNodesAddr, testpkt.RouterAdvert{Lifetime: 1800}),
		"redirect": testpkt.NDRedirect(ll, target, ll, netip.MustParseAddr("2001:db8:9::1")),
		"mld":      atk7MLD(ll),
	}
	host := enforce6 // the datapath's ND verdict at a host-like interface: passed
	frags := enforce6 | bpf.IfacePassFragments
	for name, p := range msgs {
		behind := p.Clone()
		behind.IPv6.Ext = append(behind.IPv6.Ext, testpkt.ExtDestOpts(nil))
		// A redirect goes to the redirected host's own address, which
		// here is no address of the node: the node would forward it, so
		// it is no link message (sl_nd_on_link) and meets policy.
		whole := bpf.ReasonNDPassed
		if name == "redirect" {
			whole = bpf.ReasonDroppedByPolicy
		}
		cases := []struct {
			name  string
			frame []byte
			flags bpf.IfaceFlags
			want  bpf.Reason
		}{
			{"whole", testpkt.MustBytes(t, p), host, whole},
			{"behind destination options", testpkt.MustBytes(t, behind), host, whole},
			{"atomic fragment", atk7Frag(t, p, 0, false), host, bpf.ReasonDroppedByPolicy},
			{"atomic fragment, workload", atk7Frag(t, p, 0, false), host | bpf.IfaceWorkload, bpf.ReasonDroppedByPolicy},
			{"atomic fragment, nd dropped", atk7Frag(t, p, 0, false), host | bpf.IfaceDropND, bpf.ReasonDroppedByPolicy},
			{"first fragment, fragments dropped", atk7Frag(t, p, 0, true), host, bpf.ReasonDroppedFragment},
			{"first fragment, fragments passed", atk7Frag(t, p, 0, true), frags, bpf.ReasonDroppedByPolicy},
			{"first fragment, workload", atk7Frag(t, p, 0, true), frags | bpf.IfaceWorkload, bpf.ReasonDroppedByPolicy},
			{"later fragment", atk7Frag(t, p, 1, false), frags, bpf.ReasonFragmentPassed},
		}
		for _, c := range cases {
			if !h.runMalformed(t, name+" "+c.name, c.frame, c.flags, c.want) {
				t.Errorf("%s %s: kernel refused the frame", name, c.name)
			}
		}
	}
}

// TestAttack7FragmentedNDMeetsRPF is the bypass TestAttack7FragmentedND
// closes, at a workload: an atomic-fragment neighbour solicitation from an
// unrouted global source, to an off-node destination, used to pass before
// the reverse-path check; now the check drops it. Unfragmented, the same
// message from a link-local source to a solicited-node address passes.
func TestAttack7FragmentedNDMeetsRPF(t *testing.T) {
	h := newHarness(t) // routes only IPv4 to lo
	h.setLo(bpf.IfaceWorkload | bpf.IfaceReady | bpf.IfaceEnforceIPv6)
	forged := netip.MustParseAddr("2001:db8:66::6")
	far := netip.MustParseAddr("2001:db8:99::1")
	ns := testpkt.NDNeighborSolicit(forged, far)
	ns.IPv6.Dst = far
	ns.Payload = append(ns.Payload, make([]byte, 512)...) // anything rides along
	h.expect(t, bpf.HookIngress, atk7Frag(t, ns, 0, false), bpf.ReasonDroppedRPF, "fragmented ns", 0)
	link := testpkt.NDNeighborSolicit(netip.MustParseAddr("fe80::7"), netip.MustParseAddr("fe80::1"))
	h.expect(t, bpf.HookIngress, testpkt.MustBytes(t, link), bpf.ReasonNDPassed, "link ns", 0)
}

// TestAttack7NDForwarded is a workload with CAP_NET_RAW that sends
// neighbour discovery with hop limit 255 to destinations the node would
// forward: an off-node address, another node's workload, a global
// multicast group. Hop limit 255 proves a message was not routed only to
// the node that receives it; this one the node routes on, with any source
// and any payload. It must meet the reverse-path check and policy like
// other ICMPv6 (here: unrouted source, so DroppedRPF; routed, policy),
// at a workload's ingress hook and at a host interface's.
func TestAttack7NDForwarded(t *testing.T) {
	h := newHarness(t)
	h.putPolicy(h.lo.ingress, allowDstPorts())
	own := netip.MustParseAddr("2001:db8:7::3")
	h.setRoute(workloadRoute("2001:db8:7::3/128", loIfindex))
	h.setLo(bpf.IfaceWorkload | bpf.IfaceReady | bpf.IfaceEnforceIPv6)
	far := netip.MustParseAddr("2001:db8:99::1")
	nd := func(src, dst netip.Addr, typ uint8) []byte {
		p := testpkt.NDNeighborSolicit(src, far)
		p.IPv6.Dst, p.ICMPv6.Type = dst, typ
		p.Payload = append(p.Payload, []byte("exfiltrated bytes ride along")...)
		return testpkt.MustBytes(t, p)
	}
	for i, c := range []struct {
		name  string
		frame []byte
		want  bpf.Reason
	}{
		{"ns to an off-node address", nd(own, far, testpkt.ICMPv6NeighborSolicit), bpf.ReasonDroppedByPolicy},
		{"na to an off-node address", nd(own, far, testpkt.ICMPv6NeighborAdvert), bpf.ReasonDroppedByPolicy},
		{"rs to a global multicast group", nd(own, netip.MustParseAddr("ff0e::1"), testpkt.ICMPv6RouterSolicit), bpf.ReasonDroppedByPolicy},
		{"ns with a forged source", nd(netip.MustParseAddr("2001:db8:66::6"), far, testpkt.ICMPv6NeighborSolicit), bpf.ReasonDroppedRPF},
	} {
		h.expect(t, bpf.HookIngress, c.frame, c.want, c.name, i)
	}
	// A host interface's ingress hook: ND from outside that the node
	// would route on skips host-endpoint policy the same way.
	h.setLo(bpf.IfaceHost | bpf.IfaceReady | bpf.IfaceEnforceIPv6)
	outside := netip.MustParseAddr("2001:db8:55::5")
	h.expect(t, bpf.HookIngress, nd(outside, far, testpkt.ICMPv6NeighborSolicit), bpf.ReasonDroppedByPolicy, "host: ns routed through the node", 0)
}

// TestAttack7NDLink pins what stays link traffic: ND with hop limit 255
// and MLD with hop limit 1 pass at either hook whatever their code, and
// with any other hop limit (254: routed once; 2 for MLD) are ICMPv6 for
// policy; a workload's router messages drop at its ingress hook, but the
// node's pass its egress hook.
func TestAttack7NDLink(t *testing.T) {
	h := newDenyHarness6(t)
	ll := netip.MustParseAddr("fe80::7")
	ns := testpkt.NDNeighborSolicit(ll, netip.MustParseAddr("fe80::1"))
	withHop := func(p testpkt.Packet, hop uint8) []byte {
		q := p.Clone()
		q.IPv6.HopLimit = hop
		return testpkt.MustBytes(t, q)
	}
	code := ns.Clone()
	code.ICMPv6.Code = 9
	ra := testpkt.NDRouterAdvert(ll, testpkt.AllNodesAddr, testpkt.RouterAdvert{Lifetime: 1800})
	wl := enforce6 | bpf.IfaceWorkload | bpf.IfaceReady
	for i, c := range []struct {
		name  string
		hook  bpf.Hook
		frame []byte
		want  bpf.Reason
	}{
		{"ns", bpf.HookIngress, testpkt.MustBytes(t, ns), bpf.ReasonNDPassed},
		{"ns with code 9", bpf.HookIngress, testpkt.MustBytes(t, code), bpf.ReasonNDPassed},
		{"ns routed once", bpf.HookIngress, withHop(ns, 254), bpf.ReasonDroppedByPolicy},
		{"ns routed once, to the workload", bpf.HookEgress, withHop(ns, 254), bpf.ReasonDroppedByPolicy},
		{"ns with hop limit 1", bpf.HookIngress, withHop(ns, 1), bpf.ReasonDroppedByPolicy},
		{"mld", bpf.HookIngress, testpkt.MustBytes(t, atk7MLD(ll)), bpf.ReasonNDPassed},
		{"mld with hop limit 2", bpf.HookIngress, withHop(atk7MLD(ll), 2), bpf.ReasonDroppedByPolicy},
		{"mld with hop limit 255", bpf.HookIngress, withHop(atk7MLD(ll), 255), bpf.ReasonDroppedByPolicy},
		{"ra from the workload", bpf.HookIngress, testpkt.MustBytes(t, ra), bpf.ReasonDroppedND},
		{"ra to the workload", bpf.HookEgress, testpkt.MustBytes(t, ra), bpf.ReasonNDPassed},
		{"ra to the workload, routed", bpf.HookEgress, withHop(ra, 254), bpf.ReasonDroppedByPolicy},
	} {
		h.setLo(wl)
		h.expect(t, c.hook, c.frame, c.want, c.name, i)
	}
}

// atk7Raw is an IPv6 frame from src to dst whose chain and L4 bytes are
// given whole (next is the fixed header's next header), with a correct
// payload length.
func atk7Raw(src, dst netip.Addr, next, hop uint8, rest []byte) []byte {
	b := make([]byte, 14+40, 14+40+len(rest))
	binary.BigEndian.PutUint16(b[12:], 0x86dd)
	b[14] = 0x60
	binary.BigEndian.PutUint16(b[18:], uint16(len(rest)))
	b[20], b[21] = next, hop
	s, d := src.As16(), dst.As16()
	copy(b[22:], s[:])
	copy(b[38:], d[:])
	return append(b, rest...)
}

// atk7Hdr is an extension header of the generic layout: next header,
// length byte, and total bytes (zeros after the first two).
func atk7Hdr(next, length uint8, total int) []byte {
	h := make([]byte, total)
	h[0], h[1] = next, length
	return h
}

// atk7TCP is a 20-byte TCP SYN header to port 80.
func atk7TCP() []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], 40000)
	binary.BigEndian.PutUint16(t[2:], 80)
	t[12], t[13] = 5<<4, 0x02
	return t
}

func atk7Cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// TestAttack7ChainLimits walks chains at and past every bound of the
// parser, each held to its reason and to the reference model: the 8th
// header and the 9th, 256 bytes of chain and 260 (AH counts in 4-byte
// words), a header past both the byte bound and the payload (the byte
// bound decides), hop-by-hop repeated or behind a fragment header, AH of
// the shortest lengths, routing types and segments left, fragments whose
// chain or L4 header the first fragment cuts (RFC 7112) or that sit past
// the byte bound, payload lengths one past the frame, a jumbogram's
// option, and special addresses, which only IPv4-mapped ones refuse.
func TestAttack7ChainLimits(t *testing.T) {
	h := newDenyHarness6(t)
	src, dst := netip.MustParseAddr("2001:db8:7::1"), netip.MustParseAddr("2001:db8:7::2")
	const (
		hbh, rt, frag, esp, ah, dstopts, tcp, udp, none = 0, 43, 44, 50, 51, 60, 6, 17, 59
	)
	raw := func(next uint8, rest ...[]byte) []byte { return atk7Raw(src, dst, next, 64, atk7Cat(rest...)) }
	fragHdr := func(next uint8, offset uint16, more bool) []byte {
		f := make([]byte, 8)
		f[0] = next
		v := offset << 3
		if more {
			v |= 1
		}
		binary.BigEndian.PutUint16(f[2:], v)
		return f
	}
	routing := func(next, typ, left uint8) []byte {
		r := atk7Hdr(next, 2, 24)
		r[2], r[3] = typ, left
		return r
	}
	udpHdr := []byte{0x9c, 0x40, 0, 80, 0, 8, 0, 0}
	setLen := func(b []byte, n int) []byte {
		b = append([]byte(nil), b...)
		binary.BigEndian.PutUint16(b[18:], uint16(n))
		return b
	}
	tcp20 := atk7TCP()
	eight := []byte{} // 8 mixed headers ending in TCP
	eight = atk7Cat(atk7Hdr(dstopts, 0, 8), atk7Hdr(rt, 0, 8), routing(frag, 2, 0), fragHdr(ah, 0, false),
		atk7Hdr(dstopts, 1, 12), routing(rt, 0, 0), routing(dstopts, 4, 0), atk7Hdr(tcp, 0, 8))
	mapped := func(a string) []byte { return atk7Raw(netip.MustParseAddr(a), dst, tcp, 64, tcp20) }
	mappedDst := func(a string) []byte { return atk7Raw(src, netip.MustParseAddr(a), tcp, 64, tcp20) }
	jumbo := func(payloadLen int) []byte {
		opt := atk7Hdr(tcp, 0, 8)
		opt[2], opt[3] = testpkt.IPv6OptJumbo, 4
		binary.BigEndian.PutUint32(opt[4:], 28)
		return setLen(raw(hbh, opt, tcp20), payloadLen)
	}
	pf := enforce6 | bpf.IfacePassFragments
	cases := []struct {
		name  string
		frame []byte
		flags bpf.IfaceFlags
		want  bpf.Reason
	}{
		{"8 mixed headers", raw(hbh, eight, tcp20), enforce6, bpf.ReasonDroppedByPolicy},
		{"8 mixed headers, the 8th naming a 9th", raw(hbh, eight[:len(eight)-8], atk7Hdr(dstopts, 0, 8), atk7Hdr(tcp, 0, 8), tcp20), enforce6, bpf.ReasonDroppedIPv6ChainLong},
		{"248 bytes and an 8-byte AH: 256", raw(dstopts, atk7Hdr(ah, 30, 248), atk7Hdr(tcp, 0, 8), tcp20), enforce6, bpf.ReasonDroppedByPolicy},
		{"248 bytes and a 12-byte AH: 260", raw(dstopts, atk7Hdr(ah, 30, 248), atk7Hdr(tcp, 1, 12), tcp20), enforce6, bpf.ReasonDroppedIPv6ChainLong},
		{"one AH of 256 bytes", raw(ah, atk7Hdr(tcp, 62, 256), tcp20), enforce6, bpf.ReasonDroppedByPolicy},
		{"one AH of 1028 bytes, past the payload", raw(ah, atk7Hdr(tcp, 255, 8), tcp20), enforce6, bpf.ReasonDroppedIPv6ChainLong},
		{"destination options of 2048 bytes, past the payload", raw(dstopts, atk7Hdr(tcp, 255, 8), tcp20), enforce6, bpf.ReasonDroppedIPv6ChainLong},
		{"a header one unit past the payload", raw(dstopts, atk7Hdr(tcp, 3, 8), tcp20[:16]), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"hop-by-hop twice", raw(hbh, atk7Hdr(hbh, 0, 8), atk7Hdr(tcp, 0, 8), tcp20), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"hop-by-hop behind an atomic fragment", raw(frag, fragHdr(hbh, 0, false), atk7Hdr(tcp, 0, 8), tcp20), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"hop-by-hop as the 8th header", raw(dstopts, atk7Cat(atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(hbh, 0, 8), atk7Hdr(tcp, 0, 8)), tcp20), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"AH of 8 bytes (length 0)", raw(ah, atk7Hdr(tcp, 0, 8), tcp20), enforce6, bpf.ReasonDroppedByPolicy},
		{"AH of 12 bytes, then UDP at a 4-byte boundary", raw(ah, atk7Hdr(udp, 1, 12), udpHdr), enforce6, bpf.ReasonDroppedByPolicy},
		{"routing type 0, 255 segments left", raw(rt, routing(tcp, 0, 255), tcp20), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"routing type 0 behind the 7th header", raw(dstopts, atk7Cat(atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(rt, 0, 8), routing(tcp, 0, 1)), tcp20), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"routing type 1, segments left", raw(rt, routing(tcp, 1, 1), tcp20), enforce6, bpf.ReasonDroppedByPolicy},
		{"segment routing, segments left", raw(rt, routing(tcp, 4, 1), tcp20), enforce6, bpf.ReasonDroppedByPolicy},
		{"first fragment cutting its chain", raw(frag, fragHdr(dstopts, 0, true), atk7Hdr(tcp, 4, 8), tcp20[:8]), pf, bpf.ReasonDroppedIPv6Ext},
		{"first fragment cutting its TCP header", raw(frag, fragHdr(tcp, 0, true), tcp20[:16]), pf, bpf.ReasonDroppedShort},
		{"first fragment with just a UDP header", raw(frag, fragHdr(udp, 0, true), udpHdr), pf, bpf.ReasonDroppedByPolicy},
		{"first fragment of ESP", raw(frag, fragHdr(esp, 0, true), make([]byte, 8)), pf, bpf.ReasonDroppedByPolicy},
		{"first fragment with no next header", raw(frag, fragHdr(none, 0, true), make([]byte, 8)), pf, bpf.ReasonDroppedByPolicy},
		{"later fragment behind 256 bytes", raw(dstopts, atk7Hdr(frag, 31, 256), fragHdr(tcp, 1, false), make([]byte, 8)), pf, bpf.ReasonFragmentPassed},
		{"later fragment as the 9th header", raw(dstopts, atk7Cat(atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(dstopts, 0, 8), atk7Hdr(frag, 0, 8)), fragHdr(tcp, 1, false)), pf, bpf.ReasonDroppedIPv6ChainLong},
		{"later fragment with reserved bits", setFragReserved(raw(frag, fragHdr(tcp, 1, true), make([]byte, 8))), pf, bpf.ReasonFragmentPassed},
		{"atomic fragment with reserved bits", setFragReserved(raw(frag, fragHdr(tcp, 0, false), tcp20)), enforce6, bpf.ReasonDroppedByPolicy},
		{"payload length one past the frame", setLen(raw(tcp, tcp20), 21), enforce6, bpf.ReasonDroppedBadLen},
		{"payload length 65535", setLen(raw(tcp, tcp20), 65535), enforce6, bpf.ReasonDroppedBadLen},
		{"payload length cutting TCP", setLen(raw(tcp, tcp20), 19), enforce6, bpf.ReasonDroppedShort},
		{"jumbogram", jumbo(0), enforce6, bpf.ReasonDroppedBadLen},
		{"jumbo option with a payload length", jumbo(28), enforce6, bpf.ReasonDroppedByPolicy},
		{"source ::ffff:0.0.0.0", mapped("::ffff:0.0.0.0"), enforce6, bpf.ReasonDroppedIPv4Mapped},
		{"destination ::ffff:255.255.255.255", mappedDst("::ffff:255.255.255.255"), enforce6, bpf.ReasonDroppedIPv4Mapped},
		{"IPv4-compatible source", mapped("::10.0.0.1"), enforce6, bpf.ReasonDroppedByPolicy},
		{"IPv4-translated source", mapped("::ffff:0:10.0.0.1"), enforce6, bpf.ReasonDroppedByPolicy},
		{"unspecified source", mapped("::"), enforce6, bpf.ReasonDroppedByPolicy},
		{"loopback destination", mappedDst("::1"), enforce6, bpf.ReasonDroppedByPolicy},
		{"multicast source", mapped("ff02::1"), enforce6, bpf.ReasonDroppedByPolicy},
		{"link-local destination", mappedDst("fe80::1"), enforce6, bpf.ReasonDroppedByPolicy},
		{"unspecified destination", mappedDst("::"), enforce6, bpf.ReasonDroppedByPolicy},
	}
	for _, c := range cases {
		if !h.runMalformed(t, c.name, c.frame, c.flags, c.want) {
			t.Errorf("%s: kernel refused the frame", c.name)
		}
	}
}

// setFragReserved sets the two reserved bits of the fragment header that
// directly follows the fixed header.
func setFragReserved(b []byte) []byte {
	b = append([]byte(nil), b...)
	b[14+40+3] |= 0x06
	return b
}
