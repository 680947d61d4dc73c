package testpkt

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrTruncated is wrapped by Parse's error when a header or a length field
// reaches past the end of the bytes.
var ErrTruncated = errors.New("truncated")

// ErrMalformed is wrapped by Parse's error when a header cannot be decoded
// for a reason other than truncation, such as an IHL below 5.
var ErrMalformed = errors.New("malformed")

// Parse decodes an Ethernet frame: Ethernet with up to MaxVLANTags VLAN
// tags, IPv4 with options or IPv6 with up to MaxExtHeaders extension
// headers, and a TCP, UDP, ICMPv4 (over IPv4) or ICMPv6 (over IPv6) layer.
// It fills override fields only where the wire differs from what Bytes would
// compute: BadChecksum whenever a checksum does not verify, Checksum when the
// wrong value is not the one BadChecksum writes, UDP Length (ZeroLength for
// 0) when it is not the datagram's size, ZeroTTL or ZeroHopLimit for a TTL
// or hop limit of 0, a fragment header's Length and FragReserved from its
// reserved bits. Bytes
// after the IPv4 total length or the IPv6 payload length go to Trailer. A
// non-first fragment's payload is not decoded as L4; a first fragment's is,
// and its L4 checksum is checked over the bytes present, as Bytes computes
// it. Any EtherType other than IPv4, IPv6 and the VLAN TPIDs (ARP, MPLS, an
// 802.3 length, ...) is kept in Eth.Type with everything after it in
// Payload, raw.
//
// It returns an error wrapping ErrTruncated when a header or a length field
// reaches past the bytes, and ErrMalformed for more than MaxVLANTags tags, an
// IHL below 5, a TCP data offset below 5 or a total length shorter than the
// IPv4 header. An IPv6 extension chain Parse cannot walk (too long, a
// hop-by-hop header not first, a header past the payload length or the
// frame) gives a *ChainError, which says where the walk stopped and why and
// wraps ErrMalformed or ErrTruncated.
func Parse(b []byte) (*Packet, error) {
	tags, typ, l3, err := splitEth(b)
	if err != nil {
		return nil, err
	}
	p := &Packet{Eth: Eth{
		Dst:   net.HardwareAddr(bytes.Clone(b[0:6])),
		Src:   net.HardwareAddr(bytes.Clone(b[6:12])),
		VLANs: tags,
		Type:  typ,
	}}
	rest := b[l3:]
	switch p.Eth.Type {
	case EtherTypeIPv4:
		p.Eth.Type = 0
		if err := p.parseIPv4(rest); err != nil {
			return nil, fmt.Errorf("ipv4: %w", err)
		}
	case EtherTypeIPv6:
		p.Eth.Type = 0
		if err := p.parseIPv6(rest); err != nil {
			return nil, fmt.Errorf("ipv6: %w", err)
		}
	default:
		p.Payload = cloneOrNil(rest)
	}
	return p, nil
}

// splitEth decodes an Ethernet header's VLAN tags and returns them, the
// inner EtherType and the offset of the payload it names.
func splitEth(b []byte) (tags []VLANTag, etherType uint16, l3 int, err error) {
	if len(b) < EthLen {
		return nil, 0, 0, fmt.Errorf("ethernet header: %d of %d bytes: %w", len(b), EthLen, ErrTruncated)
	}
	at := 12
	typ := be.Uint16(b[at:])
	for IsVLANTPID(typ) {
		if len(tags) == MaxVLANTags {
			return nil, 0, 0, fmt.Errorf("ethernet: more than %d VLAN tags: %w", MaxVLANTags, ErrMalformed)
		}
		if need := at + VLANTagLen + 2; len(b) < need {
			return nil, 0, 0, fmt.Errorf("ethernet: VLAN tag %d: %d of %d bytes: %w", len(tags), len(b), need, ErrTruncated)
		}
		tags = append(tags, VLANTagFromTCI(typ, be.Uint16(b[at+2:])))
		at += VLANTagLen
		typ = be.Uint16(b[at:])
	}
	return tags, typ, at + 2, nil
}

func (p *Packet) parseIPv4(b []byte) error {
	if len(b) < IPv4MinLen {
		return fmt.Errorf("header: %d of %d bytes: %w", len(b), IPv4MinLen, ErrTruncated)
	}
	version, ihl := b[0]>>4, b[0]&0x0f
	if ihl < 5 {
		return fmt.Errorf("IHL %d below 5: %w", ihl, ErrMalformed)
	}
	hlen := int(ihl) * 4
	if hlen > len(b) {
		return fmt.Errorf("IHL %d needs %d bytes, have %d: %w", ihl, hlen, len(b), ErrTruncated)
	}
	total := int(be.Uint16(b[2:]))
	if total < hlen {
		return fmt.Errorf("total length %d below header length %d: %w", total, hlen, ErrMalformed)
	}
	if total > len(b) {
		return fmt.Errorf("total length %d, have %d bytes: %w", total, len(b), ErrTruncated)
	}
	frag := be.Uint16(b[6:])
	ip := &IPv4{
		Src:           netip.AddrFrom4([4]byte(b[12:16])),
		Dst:           netip.AddrFrom4([4]byte(b[16:20])),
		TOS:           b[1],
		ID:            be.Uint16(b[4:]),
		TTL:           b[8],
		ZeroTTL:       b[8] == 0,
		DontFragment:  frag&0x4000 != 0,
		MoreFragments: frag&0x2000 != 0,
		FragOffset:    frag & 0x1fff,
		Options:       cloneOrNil(b[IPv4MinLen:hlen]),
	}
	if version != 4 {
		ip.Version = version
	}
	hdr := bytes.Clone(b[:hlen])
	hdr[10], hdr[11] = 0, 0
	ip.Checksum, ip.ZeroChecksum, ip.BadChecksum = classifyChecksum(be.Uint16(b[10:]), Checksum(hdr))
	p.IPv4 = ip
	p.Trailer = cloneOrNil(b[total:])

	l4, proto := b[hlen:total], b[9]
	if ip.FragOffset != 0 {
		ip.Protocol = proto
		p.Payload = cloneOrNil(l4)
		return nil
	}
	var err error
	switch proto {
	case ProtoTCP:
		err = p.parseTCP(l4)
	case ProtoUDP:
		err = p.parseUDP(l4)
	case ProtoICMPv4:
		err = p.parseICMPv4(l4)
	default:
		ip.Protocol = proto
		p.Payload = cloneOrNil(l4)
	}
	return err
}

func (p *Packet) parseTCP(b []byte) error {
	if len(b) < TCPMinLen {
		return fmt.Errorf("tcp header: %d of %d bytes: %w", len(b), TCPMinLen, ErrTruncated)
	}
	off := b[12] >> 4
	if off < 5 {
		return fmt.Errorf("tcp data offset %d below 5: %w", off, ErrMalformed)
	}
	hlen := int(off) * 4
	if hlen > len(b) {
		return fmt.Errorf("tcp data offset %d needs %d bytes, have %d: %w", off, hlen, len(b), ErrTruncated)
	}
	t := &TCP{
		SrcPort:  be.Uint16(b[0:]),
		DstPort:  be.Uint16(b[2:]),
		Seq:      be.Uint32(b[4:]),
		Ack:      be.Uint32(b[8:]),
		Flags:    TCPFlags(b[13]),
		Reserved: b[12] & 0x0f,
		Window:   be.Uint16(b[14:]),
		Urgent:   be.Uint16(b[18:]),
		Options:  cloneOrNil(b[TCPMinLen:hlen]),
	}
	seg := bytes.Clone(b)
	seg[16], seg[17] = 0, 0
	src, dst := p.l4Addrs()
	correct := L4Checksum(src, dst, ProtoTCP, seg)
	t.Checksum, t.ZeroChecksum, t.BadChecksum = classifyChecksum(be.Uint16(b[16:]), correct)
	p.TCP = t
	p.Payload = cloneOrNil(b[hlen:])
	return nil
}

func (p *Packet) parseUDP(b []byte) error {
	if len(b) < UDPLen {
		return fmt.Errorf("udp header: %d of %d bytes: %w", len(b), UDPLen, ErrTruncated)
	}
	u := &UDP{SrcPort: be.Uint16(b[0:]), DstPort: be.Uint16(b[2:])}
	if l := be.Uint16(b[4:]); int(l) != len(b) {
		if int(l) > len(b) {
			return fmt.Errorf("udp length %d, have %d bytes: %w", l, len(b), ErrTruncated)
		}
		u.Length, u.ZeroLength = l, l == 0
	}
	wire := be.Uint16(b[6:])
	if wire == 0 {
		u.NoChecksum = true
	} else {
		dgram := bytes.Clone(b)
		dgram[6], dgram[7] = 0, 0
		src, dst := p.l4Addrs()
		correct := L4Checksum(src, dst, ProtoUDP, dgram)
		if correct == 0 {
			correct = 0xffff
		}
		u.Checksum, _, u.BadChecksum = classifyChecksum(wire, correct)
	}
	p.UDP = u
	p.Payload = cloneOrNil(b[UDPLen:])
	return nil
}

func (p *Packet) parseICMPv4(b []byte) error {
	if len(b) < ICMPv4HdrLen {
		return fmt.Errorf("icmp header: %d of %d bytes: %w", len(b), ICMPv4HdrLen, ErrTruncated)
	}
	c := &ICMPv4{Type: b[0], Code: b[1]}
	if c.IsQuery() {
		c.ID, c.Seq = be.Uint16(b[4:]), be.Uint16(b[6:])
	} else {
		c.Rest = [4]byte(b[4:8])
	}
	msg := bytes.Clone(b)
	msg[2], msg[3] = 0, 0
	c.Checksum, c.ZeroChecksum, c.BadChecksum = classifyChecksum(be.Uint16(b[2:]), Checksum(msg))
	p.ICMPv4 = c
	p.Payload = cloneOrNil(b[ICMPv4HdrLen:])
	return nil
}

// cloneOrNil copies b, returning nil for an empty b so parsed packets compare
// equal to built ones that left the field unset.
func cloneOrNil(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return bytes.Clone(b)
}
