package testpkt

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	src6 = netip.MustParseAddrPort("[2001:db8::10]:40000")
	dst6 = netip.MustParseAddrPort("[2001:db8:1::20]:80")
	hop6 = netip.MustParseAddr("2001:db8:2::1")
)

// refPseudoHeader6 lays out the RFC 8200 section 8.1 pseudo-header byte by
// byte: source, destination, 32-bit upper-layer length, 3 zero bytes, next
// header.
func refPseudoHeader6(src, dst netip.Addr, proto uint8, l4Len int) []byte {
	ph := make([]byte, 40)
	copy(ph[0:16], src.AsSlice())
	copy(ph[16:32], dst.AsSlice())
	binary.BigEndian.PutUint32(ph[32:], uint32(l4Len))
	ph[39] = proto
	return ph
}

// TestIPv6FixedHeader checks every field of the fixed header at its RFC
// 8200 offset, and the L4 checksum against the reference pseudo-header.
func TestIPv6FixedHeader(t *testing.T) {
	p := UDPv6(src6, dst6, []byte("hi"))
	p.IPv6.TrafficClass, p.IPv6.FlowLabel, p.IPv6.HopLimit = 0xb8, 0xabcde, 17
	b := MustBytes(t, p)
	want := []byte{
		0x86, 0xdd, // EtherType at 12
		0x6b, 0x8a, 0xbc, 0xde, // version 6, traffic class 0xb8, flow label 0xabcde
		0x00, 0x0a, // payload length: 8 of UDP + 2
		ProtoUDP, 17,
	}
	if diff := cmp.Diff(want, b[12:22]); diff != "" {
		t.Errorf("fixed header (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(src6.Addr().AsSlice(), b[22:38]); diff != "" {
		t.Errorf("source (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(dst6.Addr().AsSlice(), b[38:54]); diff != "" {
		t.Errorf("destination (-want +got):\n%s", diff)
	}
	l4 := b[54:]
	if !refVerifies(append(refPseudoHeader6(src6.Addr(), dst6.Addr(), ProtoUDP, len(l4)), l4...)) {
		t.Errorf("UDP checksum does not verify over the IPv6 pseudo-header")
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := Diff(&p, got); diff != "" {
		t.Errorf("Parse (-built +parsed):\n%s", diff)
	}
}

// TestIPv6ExtHeaders builds each kind of extension header behind the fixed
// header and checks its bytes as the RFCs lay them out, the next header
// chain, the payload length, and the round trip.
func TestIPv6ExtHeaders(t *testing.T) {
	tests := []struct {
		name string
		ext  IPv6Ext
		want []byte // the header on the wire, next header ProtoUDP
	}{
		{"empty hop-by-hop gets PadN", ExtHopByHop(nil), []byte{17, 0, 1, 4, 0, 0, 0, 0}},
		{"router alert and PadN", ExtHopByHop(RouterAlertOption(0)), []byte{17, 0, 5, 2, 0, 0, 1, 0}},
		{"Pad1 when one byte is left", ExtDestOpts([]byte{0x1e, 3, 1, 2, 3}), []byte{17, 0, 0x1e, 3, 1, 2, 3, 0}},
		{"two units of options", ExtDestOpts(IPv6Option(0x1e, make([]byte, 8))), []byte{17, 1, 0x1e, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0}},
		{
			"routing type 0", ExtRoutingType0(1, hop6),
			concat([]byte{17, 2, 0, 1, 0, 0, 0, 0}, hop6.AsSlice()),
		},
		{
			"segment routing", ExtSegmentRouting(1, dst6.Addr(), hop6),
			concat([]byte{17, 4, 4, 1, 1, 0, 0, 0}, dst6.Addr().AsSlice(), hop6.AsSlice()),
		},
		{"opaque routing type 3", ExtRouting(3, 0, []byte{0xaa}), []byte{17, 0, 3, 0, 0xaa, 0, 0, 0}},
		{"fragment", ExtFragment(0x1234, true, 0xdeadbeef), []byte{17, 0, 0x91, 0xa1, 0xde, 0xad, 0xbe, 0xef}},
		{"fragment reserved bits", IPv6Ext{Type: ProtoFragment, FragReserved: 3, Length: 9}, []byte{17, 9, 0, 6, 0, 0, 0, 0}},
		{
			// RFC 4302: length 4 = 24 bytes / 4 - 2.
			"AH with 12 bytes of ICV", ExtAH(0x01020304, 7, bytes.Repeat([]byte{0xcc}, 12)),
			concat([]byte{17, 4, 0, 0, 1, 2, 3, 4, 0, 0, 0, 7}, bytes.Repeat([]byte{0xcc}, 12)),
		},
		{"AH padded to 8 bytes", ExtAH(1, 2, []byte{0xcc}), []byte{17, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0xcc, 0, 0, 0}},
		{"opaque type 253", IPv6Ext{Type: ProtoExperiment1, Data: []byte{1}}, []byte{17, 0, 1, 0, 0, 0, 0, 0}},
		{"next header override", IPv6Ext{Type: ProtoDestOpts, NextHeader: 200, Data: []byte{1, 4, 0, 0, 0, 0}}, []byte{200, 0, 1, 4, 0, 0, 0, 0}},
		{"zero next header", IPv6Ext{Type: ProtoDestOpts, ZeroNextHeader: true, Data: []byte{1, 4, 0, 0, 0, 0}}, []byte{0, 0, 1, 4, 0, 0, 0, 0}},
		{"length override", IPv6Ext{Type: ProtoDestOpts, Length: 3, Data: []byte{1, 4, 0, 0, 0, 0}}, []byte{17, 3, 1, 4, 0, 0, 0, 0}},
		{"zero length", IPv6Ext{Type: ProtoDestOpts, ZeroLength: true, Data: make([]byte, 14)}, concat([]byte{17, 0}, make([]byte, 14))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := UDPv6(src6, dst6, []byte("data"))
			p.IPv6.Ext = []IPv6Ext{tt.ext}
			b := MustBytes(t, p)
			ip := b[EthLen:]
			expectByte(t, ip, 6, tt.ext.Type)
			expectU16(t, ip, 4, uint16(len(tt.want)+UDPLen+4))
			if diff := cmp.Diff(tt.want, ip[IPv6HdrLen:IPv6HdrLen+len(tt.want)]); diff != "" {
				t.Errorf("extension header (-want +got):\n%s", diff)
			}
			l4 := ip[IPv6HdrLen+len(tt.want):]
			if !refVerifies(append(refPseudoHeader6(src6.Addr(), p.IPv6.FinalDst(), ProtoUDP, len(l4)), l4...)) {
				t.Errorf("UDP checksum does not verify")
			}
			got, err := Parse(b)
			if tt.ext.NextHeader != 0 || tt.ext.ZeroNextHeader || tt.ext.Length != 0 && tt.ext.Type != ProtoFragment || tt.ext.ZeroLength {
				// The override changes what the chain says; only the bytes
				// must survive Parse.
				if err == nil {
					if diff := cmp.Diff(b, MustBytes(t, *got)); diff != "" {
						t.Errorf("Bytes(Parse(b)) (-b +got):\n%s", diff)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := p.Clone()
			want.IPv6.Ext[0].Data = tt.want[2:] // with the padding
			if tt.ext.Type == ProtoFragment {
				want.IPv6.Ext[0].Data = nil
			}
			if tt.ext.Type == ProtoFragment && tt.ext.FragOffset != 0 {
				want.UDP, want.IPv6.Protocol, want.Payload = nil, ProtoUDP, l4
			}
			if diff := Diff(&want, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFinalDst checks the destination the pseudo-header uses behind each
// routing header type, and that Bytes and Parse use it.
func TestFinalDst(t *testing.T) {
	final := netip.MustParseAddr("2001:db8:f::1")
	tests := []struct {
		name string
		ext  []IPv6Ext
		want netip.Addr
	}{
		{"no routing header", nil, dst6.Addr()},
		{"type 0, segments left", []IPv6Ext{ExtRoutingType0(2, hop6, final)}, final},
		{"type 0, none left", []IPv6Ext{ExtRoutingType0(0, hop6, final)}, dst6.Addr()},
		{"type 2", []IPv6Ext{ExtRouting(RoutingType2, 1, concat(make([]byte, 4), final.AsSlice()))}, final},
		{"segment routing lists in reverse", []IPv6Ext{ExtSegmentRouting(2, final, hop6)}, final},
		{"opaque type keeps Dst", []IPv6Ext{ExtRouting(3, 1, concat(make([]byte, 4), final.AsSlice()))}, dst6.Addr()},
		{"too short for an address", []IPv6Ext{ExtRouting(RoutingType0, 1, make([]byte, 4))}, dst6.Addr()},
		{"behind other headers", []IPv6Ext{ExtHopByHop(nil), ExtDestOpts(nil), ExtRoutingType0(1, final)}, final},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := TCPv6(src6, dst6, SYN, []byte("x"))
			p.IPv6.Ext = tt.ext
			if got := p.IPv6.FinalDst(); got != tt.want {
				t.Fatalf("FinalDst = %v, want %v", got, tt.want)
			}
			b := MustBytes(t, p)
			chain := WalkIPv6Chain(b[EthLen:], MaxExtHeaders)
			l4 := b[EthLen+chain.Offset:]
			if !refVerifies(append(refPseudoHeader6(src6.Addr(), tt.want, ProtoTCP, len(l4)), l4...)) {
				t.Errorf("TCP checksum does not verify over the final destination")
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.TCP.BadChecksum || got.TCP.Checksum != 0 {
				t.Errorf("Parse reads the checksum as wrong: %+v", got.TCP)
			}
		})
	}
}

func TestConstructors6(t *testing.T) {
	a, b := src6.Addr(), dst6.Addr()
	eth := Eth{Dst: DefaultDstMAC, Src: DefaultSrcMAC}
	ip := func(src, dst netip.Addr) *IPv6 { return &IPv6{Src: src, Dst: dst, HopLimit: 64} }
	nd := func(src, dst netip.Addr) *IPv6 { return &IPv6{Src: src, Dst: dst, HopLimit: 255} }
	mac := DefaultSrcMAC
	ll := netip.MustParseAddr("fe80::1")
	tests := []struct {
		name string
		got  Packet
		want Packet
	}{
		{
			"TCPv6",
			TCPv6(netip.AddrPortFrom(a, 1), netip.AddrPortFrom(b, 2), SYN, []byte("x")),
			Packet{Eth: eth, IPv6: ip(a, b), TCP: &TCP{SrcPort: 1, DstPort: 2, Flags: SYN, Window: 65535}, Payload: []byte("x")},
		},
		{
			"UDPv6",
			UDPv6(netip.AddrPortFrom(a, 3), netip.AddrPortFrom(b, 4), []byte("y")),
			Packet{Eth: eth, IPv6: ip(a, b), UDP: &UDP{SrcPort: 3, DstPort: 4}, Payload: []byte("y")},
		},
		{"ICMPv6Echo request", ICMPv6Echo(a, b, 5, 6, false), Packet{Eth: eth, IPv6: ip(a, b), ICMPv6: &ICMPv6{Type: ICMPv6EchoRequest, ID: 5, Seq: 6}}},
		{"ICMPv6Echo reply", ICMPv6Echo(b, a, 5, 6, true), Packet{Eth: eth, IPv6: ip(b, a), ICMPv6: &ICMPv6{Type: ICMPv6EchoReply, ID: 5, Seq: 6}}},
		{
			"ICMPv6Error",
			ICMPv6Error(b, a, ICMPv6TimeExceeded, 1, []byte{0x60}),
			Packet{Eth: eth, IPv6: ip(b, a), ICMPv6: &ICMPv6{Type: ICMPv6TimeExceeded, Code: 1}, Payload: []byte{0x60}},
		},
		{
			"ICMPv6TooBig",
			ICMPv6TooBig(b, a, 1400, []byte{0x60}),
			Packet{Eth: eth, IPv6: ip(b, a), ICMPv6: &ICMPv6{Type: ICMPv6PacketTooBig, Rest: [4]byte{0, 0, 0x05, 0x78}}, Payload: []byte{0x60}},
		},
		{
			"ICMPv6Problem",
			ICMPv6Problem(b, a, 1, 40, []byte{0x60}),
			Packet{Eth: eth, IPv6: ip(b, a), ICMPv6: &ICMPv6{Type: ICMPv6ParamProblem, Code: 1, Rest: [4]byte{3: 40}}, Payload: []byte{0x60}},
		},
		{
			"NDRouterSolicit",
			NDRouterSolicit(ll, NDSourceLinkAddr(mac)),
			Packet{
				Eth:  Eth{Dst: mustMAC(t, "33:33:00:00:00:02"), Src: DefaultSrcMAC},
				IPv6: nd(ll, AllRoutersAddr), ICMPv6: &ICMPv6{Type: ICMPv6RouterSolicit},
				Payload: concat([]byte{1, 1}, mac),
			},
		},
		{
			"NDRouterAdvert",
			NDRouterAdvert(ll, AllNodesAddr, RouterAdvert{CurHopLimit: 64, Flags: RAFlagOther, Lifetime: 1800, ReachableTime: 30000, RetransTimer: 1000, Options: []NDOption{NDMTU(1400)}}),
			Packet{
				Eth:  Eth{Dst: mustMAC(t, "33:33:00:00:00:01"), Src: DefaultSrcMAC},
				IPv6: nd(ll, AllNodesAddr), ICMPv6: &ICMPv6{Type: ICMPv6RouterAdvert, Rest: [4]byte{64, 0x40, 0x07, 0x08}},
				Payload: []byte{0, 0, 0x75, 0x30, 0, 0, 0x03, 0xe8, 5, 1, 0, 0, 0, 0, 0x05, 0x78},
			},
		},
		{
			"NDNeighborSolicit",
			NDNeighborSolicit(a, netip.MustParseAddr("2001:db8::abcd:ef12")),
			Packet{
				Eth:    Eth{Dst: mustMAC(t, "33:33:ff:cd:ef:12"), Src: DefaultSrcMAC},
				IPv6:   nd(a, netip.MustParseAddr("ff02::1:ffcd:ef12")),
				ICMPv6: &ICMPv6{Type: ICMPv6NeighborSolicit}, Payload: netip.MustParseAddr("2001:db8::abcd:ef12").AsSlice(),
			},
		},
		{
			"NDNeighborAdvert",
			NDNeighborAdvert(b, a, b, NAFlagSolicited|NAFlagOverride, NDTargetLinkAddr(mac)),
			Packet{
				Eth: eth, IPv6: nd(b, a), ICMPv6: &ICMPv6{Type: ICMPv6NeighborAdvert, Rest: [4]byte{0x60}},
				Payload: concat(b.AsSlice(), []byte{2, 1}, mac),
			},
		},
		{
			"NDRedirect",
			NDRedirect(ll, a, hop6, b, NDRedirectedHeader([]byte{0x60, 0, 0})),
			Packet{
				Eth: eth, IPv6: nd(ll, a), ICMPv6: &ICMPv6{Type: ICMPv6Redirect},
				Payload: concat(hop6.AsSlice(), b.AsSlice(), []byte{4, 2, 0, 0, 0, 0, 0, 0, 0x60, 0, 0, 0, 0, 0, 0, 0}),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := Diff(&tt.want, &tt.got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			frame := MustBytes(t, tt.got)
			parsed, err := Parse(frame)
			if err != nil {
				t.Fatal(err)
			}
			if diff := Diff(&tt.got, parsed); diff != "" {
				t.Errorf("Parse(Bytes) (-built +parsed):\n%s", diff)
			}
			icmp := frame[EthLen+IPv6HdrLen:]
			if tt.got.ICMPv6 != nil && !refVerifies(append(refPseudoHeader6(tt.got.IPv6.Src, tt.got.IPv6.Dst, ProtoICMPv6, len(icmp)), icmp...)) {
				t.Errorf("ICMPv6 checksum does not verify over the pseudo-header")
			}
		})
	}
}

func TestBytesErrors6(t *testing.T) {
	base := func() Packet { return UDPv6(src6, dst6, nil) }
	tests := []struct {
		name  string
		build func() Packet
	}{
		{"IPv4 source in IPv6", func() Packet { p := base(); p.IPv6.Src = srcAP.Addr(); return p }},
		{"unset destination", func() Packet { p := base(); p.IPv6.Dst = netip.Addr{}; return p }},
		{"both L3 layers", func() Packet { p := base(); p.IPv4 = &IPv4{Src: srcAP.Addr(), Dst: dstAP.Addr()}; return p }},
		{"ICMPv4 over IPv6", func() Packet { p := base(); p.UDP, p.ICMPv4 = nil, &ICMPv4{}; return p }},
		{"ICMPv6 over IPv4", func() Packet { p := UDPv4(srcAP, dstAP, nil); p.UDP, p.ICMPv6 = nil, &ICMPv6{}; return p }},
		{"ICMPv6 without IP", func() Packet { return Packet{ICMPv6: &ICMPv6{}} }},
		{"flow label past 20 bits", func() Packet { p := base(); p.IPv6.FlowLabel = 1 << 20; return p }},
		{"version past 4 bits", func() Packet { p := base(); p.IPv6.Version = 16; return p }},
		{"payload past 65535", func() Packet { p := base(); p.Payload = make([]byte, 65535-8+1); return p }},
		{"fragment offset past 13 bits", func() Packet { p := base(); p.IPv6.Ext = []IPv6Ext{ExtFragment(0x2000, false, 1)}; return p }},
		{"fragment reserved past 2 bits", func() Packet { p := base(); p.IPv6.Ext = []IPv6Ext{{Type: ProtoFragment, FragReserved: 4}}; return p }},
		{"data on a fragment header", func() Packet { p := base(); p.IPv6.Ext = []IPv6Ext{{Type: ProtoFragment, Data: []byte{1}}}; return p }},
		{"options past 2048 bytes", func() Packet { p := base(); p.IPv6.Ext = []IPv6Ext{ExtDestOpts(make([]byte, 2047))}; return p }},
		{"AH past 1028 bytes", func() Packet {
			p := base()
			p.IPv6.Ext = []IPv6Ext{{Type: ProtoAH, Data: make([]byte, 1027)}}
			return p
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, err := tt.build().Bytes(); err == nil {
				t.Errorf("Bytes succeeded with % x, want an error", b)
			}
		})
	}
	// The largest of each still builds.
	for _, e := range []IPv6Ext{ExtDestOpts(make([]byte, 2046)), {Type: ProtoAH, Data: make([]byte, 1026)}} {
		p := base()
		p.IPv6.Ext = []IPv6Ext{e}
		if _, err := p.Bytes(); err != nil {
			t.Errorf("extension header type %d of %d data bytes: %v", e.Type, len(e.Data), err)
		}
	}
}

func TestIPv6Overrides(t *testing.T) {
	tests := []struct {
		name  string
		set   func(ip *IPv6)
		check func(t *testing.T, ip []byte)
	}{
		{"version", func(ip *IPv6) { ip.Version = 4 }, func(t *testing.T, ip []byte) { expectByte(t, ip, 0, 0x40) }},
		{"payload length", func(ip *IPv6) { ip.PayloadLen = 3 }, func(t *testing.T, ip []byte) { expectU16(t, ip, 4, 3) }},
		{"zero payload length", func(ip *IPv6) { ip.ZeroPayloadLen = true }, func(t *testing.T, ip []byte) { expectU16(t, ip, 4, 0) }},
		{"next header", func(ip *IPv6) { ip.NextHeader = 99 }, func(t *testing.T, ip []byte) { expectByte(t, ip, 6, 99) }},
		{"zero next header", func(ip *IPv6) { ip.ZeroNextHeader = true }, func(t *testing.T, ip []byte) { expectByte(t, ip, 6, 0) }},
		{"zero hop limit", func(ip *IPv6) { ip.ZeroHopLimit = true }, func(t *testing.T, ip []byte) { expectByte(t, ip, 7, 0) }},
		{"protocol", func(ip *IPv6) { ip.Protocol = ProtoTCP }, func(t *testing.T, ip []byte) { expectByte(t, ip, 6, ProtoTCP) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := UDPv6(src6, dst6, []byte("0123456789"))
			bad := good.Clone()
			tt.set(bad.IPv6)
			gb, bb := MustBytes(t, good), MustBytes(t, bad)
			expectLen(t, bb, len(gb))
			tt.check(t, bb[EthLen:])
			if diff := cmp.Diff(gb[EthLen+8:], bb[EthLen+8:]); diff != "" {
				t.Errorf("bytes past the field changed (-good +bad):\n%s", diff)
			}
		})
	}
}
