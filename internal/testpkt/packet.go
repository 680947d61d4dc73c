package testpkt

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// TCPFlags is the TCP flags byte (header byte 13).
type TCPFlags uint8

// TCP flag bits, lowest first.
const (
	FIN TCPFlags = 1 << iota
	SYN
	RST
	PSH
	ACK
	URG
	ECE
	CWR
)

var tcpFlagNames = [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

// String names the set flags, for example "SYN|ACK"; no flags is "0".
func (f TCPFlags) String() string {
	var names []string
	for i, name := range tcpFlagNames {
		if f&(1<<i) != 0 {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "0"
	}
	return strings.Join(names, "|")
}

// EtherTypes Parse decodes or the constructors set. Parse decodes IPv4,
// IPv6 and the VLAN TPIDs; every other EtherType's payload stays raw.
const (
	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeARP  uint16 = 0x0806
	EtherTypeIPv6 uint16 = 0x86dd
	// EtherTypeMPLSUnicast and EtherTypeMPLSMulticast carry an MPLS label
	// stack (RFC 3032).
	EtherTypeMPLSUnicast   uint16 = 0x8847
	EtherTypeMPLSMulticast uint16 = 0x8848
	// EtherTypePPPoEDiscovery and EtherTypePPPoESession carry PPPoE (RFC
	// 2516); session frames hold PPP, which can hold IPv4.
	EtherTypePPPoEDiscovery uint16 = 0x8863
	EtherTypePPPoESession   uint16 = 0x8864
	// EtherTypeLLDP is the Link Layer Discovery Protocol (IEEE 802.1AB).
	EtherTypeLLDP uint16 = 0x88cc
	// EtherTypeMin is the smallest EtherType: a smaller value in the type
	// field is an IEEE 802.3 length (at most MaxLength8023), and the frame
	// holds an 802.2 LLC header instead of an EtherType's protocol.
	EtherTypeMin uint16 = 0x0600
)

// MaxLength8023 is the largest value of an IEEE 802.3 length field.
const MaxLength8023 = 1500

// VLAN tag protocol identifiers: the value in the EtherType position that
// announces a VLANTag.
const (
	// TPID8021Q is an IEEE 802.1Q customer VLAN tag (C-tag).
	TPID8021Q uint16 = 0x8100
	// TPID8021AD is an IEEE 802.1ad service VLAN tag (S-tag), the outer tag
	// of QinQ.
	TPID8021AD uint16 = 0x88a8
	// TPIDQinQ is the pre-standard QinQ outer tag some switches still send.
	TPIDQinQ uint16 = 0x9100
)

// MaxVLANTags is how many VLAN tags Parse decodes before it gives up with
// ErrMalformed.
const MaxVLANTags = 8

// IP protocol numbers of the L4 layers this package builds.
const (
	ProtoICMPv4 uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
)

// ICMPv4 message types the tests use most.
const (
	ICMPv4EchoReply       uint8 = 0
	ICMPv4DestUnreachable uint8 = 3
	ICMPv4Redirect        uint8 = 5
	ICMPv4EchoRequest     uint8 = 8
	ICMPv4TimeExceeded    uint8 = 11
	ICMPv4ParamProblem    uint8 = 12
)

// Fixed header sizes in bytes.
const (
	EthLen       = 14
	IPv4MinLen   = 20
	IPv4MaxLen   = 60
	TCPMinLen    = 20
	TCPMaxLen    = 60
	UDPLen       = 8
	ICMPv4HdrLen = 8
	// VLANTagLen is one VLAN tag: TPID and TCI.
	VLANTagLen = 4
	// LLCSNAPLen is an 802.2 LLC header with a SNAP extension.
	LLCSNAPLen = 8
	// ARPv4Len is an ARP message for IPv4 over Ethernet.
	ARPv4Len = 28
)

// Eth is an Ethernet II header, with any VLAN tags.
type Eth struct {
	// Dst and Src are 6-byte MAC addresses; nil is written as all zeros.
	Dst, Src net.HardwareAddr
	// VLANs are the tags between Src and Type, outermost first, as they
	// appear on the wire.
	VLANs []VLANTag
	// Type is the inner EtherType: the one after the last VLAN tag, which
	// names the payload. 0 means derived from the L3 layer (0x0800 for
	// IPv4, 0x86dd for IPv6); Parse leaves it 0 when it decoded the L3
	// layer. Below
	// EtherTypeMin it is an 802.3 length field.
	Type uint16
}

// VLANTag is an IEEE 802.1Q or 802.1ad tag: a TPID and the 16-bit tag
// control information (PCP, DEI, VID).
type VLANTag struct {
	// TPID announces the tag: TPID8021Q, TPID8021AD or TPIDQinQ. Bytes
	// writes any other non-zero value as given, but Parse reads only those
	// three as tags.
	TPID uint16
	// PCP is the priority code point (3 bits).
	PCP uint8
	// DEI is the drop eligible indicator.
	DEI bool
	// VID is the VLAN identifier (12 bits). 0 is a priority tag: the frame
	// belongs to the port's native VLAN and the tag carries only PCP.
	VID uint16
}

// TCI packs the tag control information: PCP in the top 3 bits, then DEI,
// then VID. Bits past a field's width are dropped; Bytes rejects them.
func (v VLANTag) TCI() uint16 {
	tci := uint16(v.PCP&0x7)<<13 | v.VID&0x0fff
	if v.DEI {
		tci |= 0x1000
	}
	return tci
}

// VLANTagFromTCI unpacks a tag's control information, the inverse of TCI.
func VLANTagFromTCI(tpid, tci uint16) VLANTag {
	return VLANTag{TPID: tpid, PCP: uint8(tci >> 13), DEI: tci&0x1000 != 0, VID: tci & 0x0fff}
}

// IsVLANTPID reports whether Parse reads typ in the EtherType position as
// the start of a VLAN tag.
func IsVLANTPID(typ uint16) bool {
	return typ == TPID8021Q || typ == TPID8021AD || typ == TPIDQinQ
}

// IPv4 is an IPv4 header.
type IPv4 struct {
	Src, Dst netip.Addr
	// Protocol 0 means derived from the L4 layer. Parse sets it only when
	// it did not decode an L4 layer (unknown protocol, non-first fragment).
	Protocol uint8
	TOS      uint8
	ID       uint16
	// TTL 0 means 64; set ZeroTTL to put a literal 0 on the wire.
	TTL           uint8
	DontFragment  bool
	MoreFragments bool
	// FragOffset is in 8-byte units (13 bits).
	FragOffset uint16
	// Options are written after the fixed header, padded with zeros (End of
	// Options List) to a multiple of 4 bytes; at most 40 bytes.
	Options []byte

	// Overrides for malformed variants; 0 means computed correctly.

	// Version replaces the version nibble (4).
	Version uint8
	// IHL replaces the header-length nibble, in 4-byte words (max 15). The
	// bytes written are still the fixed header plus Options.
	IHL uint8
	// TotalLen replaces the total-length field; the bytes written do not
	// change.
	TotalLen uint16
	// Checksum replaces the header checksum; it wins over BadChecksum.
	Checksum uint16
	// ZeroChecksum writes a header checksum of 0, which Checksum cannot express;
	// Checksum wins over it. Parse sets it for a 0 on the wire that is not
	// the correct checksum's encoding.
	ZeroChecksum bool
	// BadChecksum writes a header checksum that does not verify. Parse sets
	// it whenever the checksum on the wire does not verify.
	BadChecksum bool
	// ZeroTTL writes TTL 0, which the TTL field cannot express.
	ZeroTTL bool
}

// TCP is a TCP header.
type TCP struct {
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            TCPFlags
	// Reserved fills the low 4 bits of byte 12 after the data offset (the
	// reserved bits and the AE, formerly NS, flag); Parse sets it from the
	// wire.
	Reserved uint8
	Window   uint16
	Urgent   uint16
	// Options are padded with zeros to a multiple of 4 bytes; at most 40.
	Options []byte

	// Overrides for malformed variants; 0 means computed correctly.

	// DataOffset replaces the data-offset nibble, in 4-byte words (max 15).
	DataOffset uint8
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

// UDP is a UDP header.
type UDP struct {
	SrcPort, DstPort uint16

	// Overrides for malformed variants; 0 means computed correctly.

	// Length replaces the length field; the bytes written do not change.
	Length uint16
	// ZeroLength writes length 0 (a jumbogram's in IPv6), which Length
	// cannot express.
	ZeroLength bool
	// Checksum replaces the checksum; it wins over NoChecksum and
	// BadChecksum.
	Checksum uint16
	// NoChecksum writes 0, which in IPv4 means "no checksum" and in IPv6
	// is invalid (RFC 8200 section 8.1).
	NoChecksum bool
	// BadChecksum writes a non-zero checksum that does not verify. Parse
	// sets it whenever a non-zero checksum on the wire does not verify.
	BadChecksum bool
}

// ICMPv4 is an ICMPv4 header.
type ICMPv4 struct {
	Type, Code uint8
	// ID and Seq fill bytes 4-7 of query messages (echo, timestamp,
	// information and address-mask requests and replies).
	ID, Seq uint16
	// Rest fills bytes 4-7 of every other type: unused, the next-hop MTU of
	// "fragmentation needed" in Rest[2:4], the pointer of a parameter
	// problem in Rest[0], the gateway of a redirect.
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

// IsQuery reports whether the type carries an identifier and sequence number
// in bytes 4-7 rather than Rest.
func (c *ICMPv4) IsQuery() bool {
	switch c.Type {
	case 0, 8, 13, 14, 15, 16, 17, 18:
		return true
	}
	return false
}

// Packet is an Ethernet frame and the layers inside it. At most one L3
// layer (IPv4 or IPv6) and one L4 layer may be set, an L4 layer only with an
// L3 layer, ICMPv4 only over IPv4 and ICMPv6 only over IPv6.
type Packet struct {
	Eth    Eth
	IPv4   *IPv4
	IPv6   *IPv6
	TCP    *TCP
	UDP    *UDP
	ICMPv4 *ICMPv4
	ICMPv6 *ICMPv6
	// Payload follows the innermost layer that is set.
	Payload []byte
	// Trailer follows the IP packet, outside its total length (IPv4) or
	// payload length (IPv6): Ethernet padding, or bytes a truncating
	// TotalLen or PayloadLen override left behind.
	Trailer []byte
}

// Clone returns a deep copy of p, so a test can change one field of a base
// packet without touching the base.
func (p Packet) Clone() Packet {
	c := p
	c.Eth.Dst = bytes.Clone(p.Eth.Dst)
	c.Eth.Src = bytes.Clone(p.Eth.Src)
	c.Eth.VLANs = slices.Clone(p.Eth.VLANs)
	if p.IPv4 != nil {
		ip := *p.IPv4
		ip.Options = bytes.Clone(ip.Options)
		c.IPv4 = &ip
	}
	if p.IPv6 != nil {
		c.IPv6 = cloneIPv6(p.IPv6)
	}
	if p.TCP != nil {
		tcp := *p.TCP
		tcp.Options = bytes.Clone(tcp.Options)
		c.TCP = &tcp
	}
	if p.UDP != nil {
		udp := *p.UDP
		c.UDP = &udp
	}
	if p.ICMPv4 != nil {
		icmp := *p.ICMPv4
		c.ICMPv4 = &icmp
	}
	if p.ICMPv6 != nil {
		icmp := *p.ICMPv6
		c.ICMPv6 = &icmp
	}
	c.Payload = bytes.Clone(p.Payload)
	c.Trailer = bytes.Clone(p.Trailer)
	return c
}
