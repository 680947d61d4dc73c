package testpkt

import (
	"bytes"
	"net/netip"
	"slices"
)

// IP protocol numbers of the IPv6 extension headers and upper layers this
// package builds or walks (the IANA "Assigned Internet Protocol Numbers"
// registry; RFC 8200 section 4 for the extension headers).
const (
	ProtoHopByHop uint8 = 0
	ProtoRouting  uint8 = 43
	ProtoFragment uint8 = 44
	// ProtoESP is the Encapsulating Security Payload (RFC 4303). Nothing
	// after its SPI and sequence number can be read without the keys, so
	// the chain walk stops there as at an upper layer.
	ProtoESP uint8 = 50
	// ProtoAH is the Authentication Header (RFC 4302), whose length field
	// counts 4-byte words less 2.
	ProtoAH     uint8 = 51
	ProtoICMPv6 uint8 = 58
	// ProtoNoNextHeader says nothing follows (RFC 8200 section 4.7): the
	// bytes after it, if any, are ignored.
	ProtoNoNextHeader uint8 = 59
	ProtoDestOpts     uint8 = 60
	// ProtoMobility, ProtoHIP, ProtoShim6 and the experimental
	// ProtoExperiment1 and ProtoExperiment2 are extension headers in the
	// generic layout (RFC 7045): next header, length in 8-byte units past
	// the first 8, data.
	ProtoMobility    uint8 = 135
	ProtoHIP         uint8 = 139
	ProtoShim6       uint8 = 140
	ProtoExperiment1 uint8 = 253
	ProtoExperiment2 uint8 = 254
)

// IsIPv6ExtHeader reports whether the chain walk reads proto as an IPv6
// extension header rather than as the upper layer: hop-by-hop, routing,
// fragment, destination options, AH, mobility, HIP, shim6 and the two
// experimental numbers. ESP and No Next Header end the chain.
func IsIPv6ExtHeader(proto uint8) bool {
	switch proto {
	case ProtoHopByHop, ProtoRouting, ProtoFragment, ProtoDestOpts, ProtoAH,
		ProtoMobility, ProtoHIP, ProtoShim6, ProtoExperiment1, ProtoExperiment2:
		return true
	}
	return false
}

// IPv6 sizes in bytes.
const (
	// IPv6HdrLen is the fixed IPv6 header.
	IPv6HdrLen = 40
	// IPv6FragHdrLen is the fragment extension header.
	IPv6FragHdrLen = 8
	// IPv6MaxExtLen is the longest extension header the generic length
	// byte can describe: 8 * (255 + 1).
	IPv6MaxExtLen = 2048
	// IPv6MinMTU is the link MTU every IPv6 link must carry (RFC 8200
	// section 5).
	IPv6MinMTU = 1280
	// ICMPv6HdrLen is the ICMPv6 type, code, checksum and the 4 bytes of
	// Rest or ID and Seq.
	ICMPv6HdrLen = 8
	// ICMPv6MaxQuote is the most of the invoking packet an ICMPv6 error
	// carries, so that the error does not exceed IPv6MinMTU (RFC 4443
	// section 2.4 (c)): 1280 - 40 - 8.
	ICMPv6MaxQuote = IPv6MinMTU - IPv6HdrLen - ICMPv6HdrLen
)

// MaxExtHeaders is how many extension headers Parse walks before it gives
// up with ErrMalformed. WalkIPv6Chain takes its bound as an argument, for
// tests of a datapath with another one.
const MaxExtHeaders = 16

// DefaultHopLimit is the hop limit the IPv6 constructors set, and the one
// Bytes writes for HopLimit 0; neighbour discovery uses NDHopLimit.
const DefaultHopLimit = 64

// NDHopLimit is the hop limit every neighbour discovery message carries, and
// without which a receiver drops it (RFC 4861 section 6.1).
const NDHopLimit = 255

// IPv6 is an IPv6 header and its extension headers.
type IPv6 struct {
	Src, Dst     netip.Addr
	TrafficClass uint8
	// FlowLabel is 20 bits.
	FlowLabel uint32
	// HopLimit 0 means DefaultHopLimit; set ZeroHopLimit to put a literal 0
	// on the wire.
	HopLimit uint8
	// Ext are the extension headers, in wire order. Each header's next
	// header field names the one after it; the fixed header's names the
	// first, and the last one's names Protocol.
	Ext []IPv6Ext
	// Protocol is the next header value after the last header of the
	// chain. 0 means derived from the L4 layer, or ProtoNoNextHeader when
	// there is none. Parse sets it only when it did not decode an L4 layer
	// (an unknown protocol, ESP, a non-first fragment) and the value is not
	// ProtoNoNextHeader; a non-first fragment whose next header is 0 has
	// ZeroNextHeader set on its fragment header instead.
	Protocol uint8

	// Overrides for malformed variants; 0 means computed correctly.

	// Version replaces the version nibble (6); set ZeroVersion for a
	// literal 0.
	Version     uint8
	ZeroVersion bool
	// PayloadLen replaces the payload-length field; the bytes written do
	// not change. Set ZeroPayloadLen for a literal 0 (a jumbogram's).
	PayloadLen     uint16
	ZeroPayloadLen bool
	// NextHeader replaces the fixed header's next header field; set
	// ZeroNextHeader for a literal 0 (hop-by-hop).
	NextHeader     uint8
	ZeroNextHeader bool
	// ZeroHopLimit writes hop limit 0, which HopLimit cannot express.
	ZeroHopLimit bool
}

// IPv6Ext is one IPv6 extension header. Bytes writes it in the layout its
// Type has: the fragment header's fixed 8 bytes from the Frag fields, AH's
// with its length in 4-byte words less 2, and every other type in the
// generic layout (next header, length in 8-byte units not counting the first
// 8, Data), so an unknown Type is an opaque header of that layout.
type IPv6Ext struct {
	// Type is the protocol number the previous header's next header field
	// holds: ProtoHopByHop, ProtoRouting, ProtoFragment, ProtoDestOpts,
	// ProtoAH or any other.
	Type uint8
	// Data is everything after the next header and length bytes; unused
	// for a fragment header. Bytes pads it to the header's unit: options
	// (hop-by-hop, destination) with a Pad1 or PadN option to a multiple of
	// 8 bytes in all, AH and every other type with zeros, AH to 4 bytes and
	// the rest to 8. Parse gives it back with the padding. A routing
	// header's Data starts with the routing type and segments left.
	Data []byte

	// FragOffset is the fragment offset in 8-byte units (13 bits).
	FragOffset uint16
	// MoreFragments is the M flag.
	MoreFragments bool
	// FragID is the fragment header's identification.
	FragID uint32
	// FragReserved fills the 2 reserved bits between the offset and the M
	// flag; Parse sets it from the wire.
	FragReserved uint8

	// Overrides for malformed variants; 0 means computed correctly.

	// NextHeader replaces the next header field; set ZeroNextHeader for a
	// literal 0 (hop-by-hop).
	NextHeader     uint8
	ZeroNextHeader bool
	// Length replaces the length byte (the reserved byte of a fragment
	// header, which Parse sets from the wire); the bytes written do not
	// change. Set ZeroLength for a literal 0 where the computed length is
	// not.
	Length     uint8
	ZeroLength bool
}

// ICMPv6 message types (RFC 4443, RFC 4861).
const (
	ICMPv6DestUnreachable uint8 = 1
	ICMPv6PacketTooBig    uint8 = 2
	ICMPv6TimeExceeded    uint8 = 3
	ICMPv6ParamProblem    uint8 = 4
	ICMPv6EchoRequest     uint8 = 128
	ICMPv6EchoReply       uint8 = 129
	ICMPv6RouterSolicit   uint8 = 133
	ICMPv6RouterAdvert    uint8 = 134
	ICMPv6NeighborSolicit uint8 = 135
	ICMPv6NeighborAdvert  uint8 = 136
	ICMPv6Redirect        uint8 = 137
)

// ICMPv6 is an ICMPv6 header. Its checksum covers the IPv6 pseudo-header.
type ICMPv6 struct {
	Type, Code uint8
	// ID and Seq fill bytes 4-7 of echo requests and replies.
	ID, Seq uint16
	// Rest fills bytes 4-7 of every other type: unused; the MTU of packet
	// too big and the pointer of a parameter problem (32 bits each); a
	// router advertisement's current hop limit, flags and router lifetime;
	// a neighbour advertisement's flags in Rest[0].
	Rest [4]byte

	// Checksum replaces the checksum; it wins over BadChecksum.
	Checksum uint16
	// ZeroChecksum writes a checksum of 0, which Checksum cannot express;
	// Checksum wins over it. Parse sets it for a 0 on the wire that is not
	// the correct checksum's encoding.
	ZeroChecksum bool
	// BadChecksum writes a checksum that does not verify. Parse sets it
	// whenever the checksum on the wire does not verify.
	BadChecksum bool
}

// IsEcho reports whether the type is an echo request or reply, which carry
// an identifier and sequence number in bytes 4-7 rather than Rest.
func (c *ICMPv6) IsEcho() bool {
	return c.Type == ICMPv6EchoRequest || c.Type == ICMPv6EchoReply
}

// IsError reports whether the type is an error message (types below 128),
// whose body quotes the invoking packet.
func (c *ICMPv6) IsError() bool { return c.Type < 128 }

// cloneIPv6 deep-copies an IPv6 layer.
func cloneIPv6(ip *IPv6) *IPv6 {
	c := *ip
	c.Ext = slices.Clone(ip.Ext)
	for i := range c.Ext {
		c.Ext[i].Data = bytes.Clone(c.Ext[i].Data)
	}
	return &c
}

// etherTypeOfL3 is the EtherType of the L3 layer set, or 0.
func (p Packet) etherTypeOfL3() uint16 {
	switch {
	case p.IPv4 != nil:
		return EtherTypeIPv4
	case p.IPv6 != nil:
		return EtherTypeIPv6
	}
	return 0
}

// l4Addrs returns the addresses of the L4 pseudo-header: the IPv4 header's,
// or the IPv6 source and final destination.
func (p *Packet) l4Addrs() (src, dst netip.Addr) {
	if p.IPv4 != nil {
		return p.IPv4.Src, p.IPv4.Dst
	}
	return p.IPv6.Src, p.IPv6.FinalDst()
}

// FinalDst is the destination of the upper-layer pseudo-header (RFC 8200
// section 8.1): Dst, unless a routing header with segments left names
// another final destination, the last address of a type 0 or type 2
// header's list or the first of a segment routing header's (type 4, RFC
// 8754), which lists the segments in reverse. Routing headers of other
// types, or too short for an address, leave Dst.
func (ip *IPv6) FinalDst() netip.Addr {
	dst := ip.Dst
	for _, e := range ip.Ext {
		if e.Type != ProtoRouting || len(e.Data) < 6+16 || e.Data[1] == 0 {
			continue
		}
		addrs := e.Data[6:]
		switch e.Data[0] {
		case RoutingType0, RoutingType2:
			n := len(addrs) / 16
			dst = netip.AddrFrom16([16]byte(addrs[16*(n-1):]))
		case RoutingTypeSRH:
			dst = netip.AddrFrom16([16]byte(addrs[:16]))
		}
	}
	return dst
}
