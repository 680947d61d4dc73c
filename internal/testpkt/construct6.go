package testpkt

import (
	"bytes"
	"net"
	"net/netip"
)

// IPv6 option types for hop-by-hop and destination options headers (RFC
// 8200 section 4.2, RFC 2711, RFC 2675).
const (
	IPv6OptPad1        uint8 = 0x00
	IPv6OptPadN        uint8 = 0x01
	IPv6OptRouterAlert uint8 = 0x05
	IPv6OptJumbo       uint8 = 0xc2
)

// Routing header types (the first byte of a routing header's Data).
const (
	// RoutingType0 is the deprecated source route (RFC 5095), which
	// receivers must not process while segments are left.
	RoutingType0 uint8 = 0
	// RoutingType2 is Mobile IPv6's home address route (RFC 6275).
	RoutingType2 uint8 = 2
	// RoutingTypeSRH is the segment routing header (RFC 8754).
	RoutingTypeSRH uint8 = 4
)

func defaultIPv6(src, dst netip.Addr) *IPv6 {
	return &IPv6{Src: src, Dst: dst, HopLimit: DefaultHopLimit}
}

// defaultEth6 is defaultEth with a multicast destination MAC for a
// multicast dst.
func defaultEth6(dst netip.Addr) Eth {
	eth := defaultEth()
	if dst.Is6() && dst.IsMulticast() {
		eth.Dst = MulticastMAC(dst)
	}
	return eth
}

// MulticastMAC is the Ethernet address an IPv6 multicast address maps to:
// 33:33 and the address's last 4 bytes (RFC 2464 section 7).
func MulticastMAC(addr netip.Addr) net.HardwareAddr {
	a := addr.As16()
	return net.HardwareAddr{0x33, 0x33, a[12], a[13], a[14], a[15]}
}

// SolicitedNodeAddr is the solicited-node multicast address of addr,
// ff02::1:ffXX:XXXX with addr's last 3 bytes (RFC 4291 section 2.7.1), where
// neighbour solicitations for addr go.
func SolicitedNodeAddr(addr netip.Addr) netip.Addr {
	a := addr.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 0x01, 12: 0xff, 13: a[13], 14: a[14], 15: a[15]})
}

// Well-known IPv6 multicast groups.
var (
	AllNodesAddr   = netip.MustParseAddr("ff02::1")
	AllRoutersAddr = netip.MustParseAddr("ff02::2")
)

// TCPv6 returns a TCP/IPv6 packet from src to dst with the given flags and
// payload, window 65535 and sequence numbers 0.
func TCPv6(src, dst netip.AddrPort, flags TCPFlags, payload []byte) Packet {
	return Packet{
		Eth:     defaultEth6(dst.Addr()),
		IPv6:    defaultIPv6(src.Addr(), dst.Addr()),
		TCP:     &TCP{SrcPort: src.Port(), DstPort: dst.Port(), Flags: flags, Window: 65535},
		Payload: bytes.Clone(payload),
	}
}

// UDPv6 returns a UDP/IPv6 packet from src to dst carrying payload.
func UDPv6(src, dst netip.AddrPort, payload []byte) Packet {
	return Packet{
		Eth:     defaultEth6(dst.Addr()),
		IPv6:    defaultIPv6(src.Addr(), dst.Addr()),
		UDP:     &UDP{SrcPort: src.Port(), DstPort: dst.Port()},
		Payload: bytes.Clone(payload),
	}
}

// ICMPv6Echo returns an ICMPv6 echo request, or an echo reply if reply is
// set, with no data.
func ICMPv6Echo(src, dst netip.Addr, id, seq uint16, reply bool) Packet {
	typ := ICMPv6EchoRequest
	if reply {
		typ = ICMPv6EchoReply
	}
	return Packet{
		Eth:    defaultEth6(dst),
		IPv6:   defaultIPv6(src, dst),
		ICMPv6: &ICMPv6{Type: typ, ID: id, Seq: seq},
	}
}

// ICMPv6Error returns an ICMPv6 error message (destination unreachable,
// time exceeded, ...) whose data is quoted, normally as much of the invoking
// packet as QuoteIPv6 cuts. As with ICMPv4Error the data is written as
// given, so bytes after a quote come back from Parse as the tail of Payload.
// Set ICMPv6.Rest for the type-specific field, or use ICMPv6TooBig and
// ICMPv6Problem.
func ICMPv6Error(src, dst netip.Addr, typ, code uint8, quoted []byte) Packet {
	return Packet{
		Eth:     defaultEth6(dst),
		IPv6:    defaultIPv6(src, dst),
		ICMPv6:  &ICMPv6{Type: typ, Code: code},
		Payload: bytes.Clone(quoted),
	}
}

// ICMPv6TooBig returns a packet too big error carrying the next-hop
// MTU.
func ICMPv6TooBig(src, dst netip.Addr, mtu uint32, quoted []byte) Packet {
	p := ICMPv6Error(src, dst, ICMPv6PacketTooBig, 0, quoted)
	be.PutUint32(p.ICMPv6.Rest[:], mtu)
	return p
}

// ICMPv6Problem returns a parameter problem error (code 0 erroneous
// header field, 1 unrecognized next header, 2 unrecognized option, 3
// incomplete chain in the first fragment) whose pointer is the offset in the
// invoking packet, from its fixed header, of the byte in question.
func ICMPv6Problem(src, dst netip.Addr, code uint8, pointer uint32, quoted []byte) Packet {
	p := ICMPv6Error(src, dst, ICMPv6ParamProblem, code, quoted)
	be.PutUint32(p.ICMPv6.Rest[:], pointer)
	return p
}

// QuoteIPv6 returns what an ICMPv6 error quotes of an Ethernet frame holding
// IPv6: the packet from its fixed header to the end of its payload length
// (or of the frame, if that comes first), cut to ICMPv6MaxQuote bytes. It
// skips VLAN tags. A frame with no bytes after its Ethernet header, or whose
// tags Parse cannot read, quotes nothing.
func QuoteIPv6(frame []byte) []byte {
	_, _, l3, err := splitEth(frame)
	if err != nil || len(frame) <= l3 {
		return nil
	}
	ip := frame[l3:]
	n := len(ip)
	if len(ip) >= IPv6HdrLen {
		n = min(n, IPv6HdrLen+int(be.Uint16(ip[4:])))
	}
	return Truncate(ip, min(n, ICMPv6MaxQuote))
}

// IPv6Option returns one option of a hop-by-hop or destination options
// header: type, data length and data (RFC 8200 section 4.2). Concatenate
// options for a header's Data; Bytes adds the padding.
func IPv6Option(typ uint8, data []byte) []byte {
	return append([]byte{typ, uint8(len(data))}, data...)
}

// RouterAlertOption is the hop-by-hop router alert option (RFC 2711) with
// the given value (0 for MLD).
func RouterAlertOption(value uint16) []byte {
	return IPv6Option(IPv6OptRouterAlert, be.AppendUint16(nil, value))
}

// ExtHopByHop returns a hop-by-hop options header holding options.
func ExtHopByHop(options []byte) IPv6Ext {
	return IPv6Ext{Type: ProtoHopByHop, Data: bytes.Clone(options)}
}

// ExtDestOpts returns a destination options header holding options.
func ExtDestOpts(options []byte) IPv6Ext {
	return IPv6Ext{Type: ProtoDestOpts, Data: bytes.Clone(options)}
}

// ExtRouting returns a routing header of any type, opaque after its routing
// type and segments left: data is the type-specific part (for type 0 and 2,
// 4 reserved bytes and the addresses).
func ExtRouting(routingType, segmentsLeft uint8, data []byte) IPv6Ext {
	return IPv6Ext{Type: ProtoRouting, Data: append([]byte{routingType, segmentsLeft}, data...)}
}

// ExtRoutingType0 returns a type 0 routing header listing addrs, the next
// hops in order after the fixed header's destination.
func ExtRoutingType0(segmentsLeft uint8, addrs ...netip.Addr) IPv6Ext {
	data := make([]byte, 4, 4+16*len(addrs))
	for _, a := range addrs {
		data = append(data, a.AsSlice()...)
	}
	return ExtRouting(RoutingType0, segmentsLeft, data)
}

// ExtSegmentRouting returns a segment routing header (RFC 8754) with no
// flags, tag or TLVs, whose segment list is segments as the wire holds them:
// segments[0] is the last segment, the final destination.
func ExtSegmentRouting(segmentsLeft uint8, segments ...netip.Addr) IPv6Ext {
	data := make([]byte, 4, 4+16*len(segments))
	data[0] = uint8(max(len(segments)-1, 0)) // last entry
	for _, a := range segments {
		data = append(data, a.AsSlice()...)
	}
	return ExtRouting(RoutingTypeSRH, segmentsLeft, data)
}

// ExtFragment returns a fragment header: offset in 8-byte units, the M flag
// and the identification.
func ExtFragment(offset uint16, more bool, id uint32) IPv6Ext {
	return IPv6Ext{Type: ProtoFragment, FragOffset: offset, MoreFragments: more, FragID: id}
}

// ExtAH returns an authentication header (RFC 4302) with the SPI, sequence
// number and integrity check value, the ICV padded with zeros so the header
// is a multiple of 8 bytes as IPv6 requires.
func ExtAH(spi, seq uint32, icv []byte) IPv6Ext {
	data := make([]byte, 10, 10+len(icv)+4)
	be.PutUint32(data[2:], spi)
	be.PutUint32(data[6:], seq)
	data = append(data, icv...)
	data = append(data, make([]byte, roundUp(2+len(data), 8)-2-len(data))...)
	return IPv6Ext{Type: ProtoAH, Data: data}
}

// RepeatExt returns n copies of e, for chains past a bound.
func RepeatExt(e IPv6Ext, n int) []IPv6Ext {
	out := make([]IPv6Ext, n)
	for i := range out {
		out[i] = e
		out[i].Data = bytes.Clone(e.Data)
	}
	return out
}
