package testpkt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"testing"
)

var be = binary.BigEndian

// Bytes serializes p as an Ethernet frame with correct lengths and checksums,
// except where an override field asks for a wrong one. VLAN tags are written
// outermost first; any number may be set, though Parse reads at most
// MaxVLANTags. It returns an error for packets no override can describe: a
// MAC that is not 6 bytes, a VLAN tag with TPID 0, an address of the wrong
// family, options past 40 bytes, both L3 layers, more than one L4 layer, an
// L4 layer without an L3 layer, ICMP of the other family, an IPv6 payload
// past 65535 bytes, or a field too wide for its bits (a PCP past 7, a VID
// past 4095, a flow label past 20 bits, ...).
func (p Packet) Bytes() ([]byte, error) {
	l4Count := 0
	for _, set := range []bool{p.TCP != nil, p.UDP != nil, p.ICMPv4 != nil, p.ICMPv6 != nil} {
		if set {
			l4Count++
		}
	}
	switch {
	case p.IPv4 != nil && p.IPv6 != nil:
		return nil, errors.New("both IPv4 and IPv6 set")
	case l4Count > 1:
		return nil, errors.New("more than one L4 layer set")
	case l4Count == 1 && p.IPv4 == nil && p.IPv6 == nil:
		return nil, errors.New("L4 layer set without an IP layer")
	case p.ICMPv4 != nil && p.IPv6 != nil:
		return nil, errors.New("ICMPv4 over IPv6")
	case p.ICMPv6 != nil && p.IPv4 != nil:
		return nil, errors.New("ICMPv6 over IPv4")
	}

	eth, err := p.Eth.header(p.etherTypeOfL3())
	if err != nil {
		return nil, fmt.Errorf("ethernet: %w", err)
	}
	var ip []byte
	switch {
	case p.IPv4 != nil:
		ip, err = p.ipv4Bytes()
	case p.IPv6 != nil:
		ip, err = p.ipv6Bytes()
	default:
		return concat(eth, p.Payload, p.Trailer), nil
	}
	if err != nil {
		return nil, err
	}
	return concat(eth, ip, p.Trailer), nil
}

// MustBytes is Bytes for tests: it fails tb on error.
func MustBytes(tb testing.TB, p Packet) []byte {
	tb.Helper()
	b, err := p.Bytes()
	if err != nil {
		tb.Fatalf("build packet: %v", err)
	}
	return b
}

// header writes the Ethernet header; l3Type is the EtherType of the L3
// layer set, or 0.
func (e Eth) header(l3Type uint16) ([]byte, error) {
	h := make([]byte, EthLen+VLANTagLen*len(e.VLANs))
	for _, m := range []struct {
		name string
		mac  net.HardwareAddr
		at   int
	}{{"dst", e.Dst, 0}, {"src", e.Src, 6}} {
		if len(m.mac) != 0 && len(m.mac) != 6 {
			return nil, fmt.Errorf("%s MAC %v is %d bytes, want 6", m.name, m.mac, len(m.mac))
		}
		copy(h[m.at:], m.mac)
	}
	at := 12
	for i, tag := range e.VLANs {
		switch {
		case tag.TPID == 0:
			return nil, fmt.Errorf("VLAN tag %d: TPID 0", i)
		case tag.PCP > 7:
			return nil, fmt.Errorf("VLAN tag %d: PCP %d does not fit 3 bits", i, tag.PCP)
		case tag.VID > 0x0fff:
			return nil, fmt.Errorf("VLAN tag %d: VID %d does not fit 12 bits", i, tag.VID)
		}
		be.PutUint16(h[at:], tag.TPID)
		be.PutUint16(h[at+2:], tag.TCI())
		at += VLANTagLen
	}
	typ := e.Type
	if typ == 0 {
		typ = l3Type
	}
	be.PutUint16(h[at:], typ)
	return h, nil
}

// ipv4Bytes serializes the IPv4 header, the L4 layer and the payload.
func (p Packet) ipv4Bytes() ([]byte, error) {
	ip := p.IPv4
	if !ip.Src.Is4() || !ip.Dst.Is4() {
		return nil, fmt.Errorf("ipv4: addresses %v -> %v are not both IPv4", ip.Src, ip.Dst)
	}
	l4, proto, err := p.l4Bytes()
	if err != nil {
		return nil, err
	}
	if ip.Protocol != 0 {
		proto = ip.Protocol
	}
	hdr, err := ip.header(proto, len(l4))
	if err != nil {
		return nil, fmt.Errorf("ipv4: %w", err)
	}
	return concat(hdr, l4), nil
}

func (ip *IPv4) header(proto uint8, l4Len int) ([]byte, error) {
	opts := pad4(ip.Options)
	if len(opts) > IPv4MaxLen-IPv4MinLen {
		return nil, fmt.Errorf("%d bytes of options, at most %d fit", len(opts), IPv4MaxLen-IPv4MinLen)
	}
	if ip.IHL > 15 || ip.Version > 15 {
		return nil, fmt.Errorf("IHL %d or version %d does not fit 4 bits", ip.IHL, ip.Version)
	}
	if ip.FragOffset > 0x1fff {
		return nil, fmt.Errorf("fragment offset %d does not fit 13 bits", ip.FragOffset)
	}
	hlen := IPv4MinLen + len(opts)
	total := hlen + l4Len
	if total > 0xffff {
		return nil, fmt.Errorf("total length %d exceeds 65535", total)
	}
	version, ihl := orDefault(ip.Version, 4), orDefault(ip.IHL, uint8(hlen/4))
	totalLen := orDefault(ip.TotalLen, uint16(total))
	ttl := orDefault(ip.TTL, 64)
	if ip.ZeroTTL {
		ttl = 0
	}
	frag := ip.FragOffset
	if ip.DontFragment {
		frag |= 0x4000
	}
	if ip.MoreFragments {
		frag |= 0x2000
	}

	h := make([]byte, hlen)
	h[0] = version<<4 | ihl
	h[1] = ip.TOS
	be.PutUint16(h[2:], totalLen)
	be.PutUint16(h[4:], ip.ID)
	be.PutUint16(h[6:], frag)
	h[8] = ttl
	h[9] = proto
	copy(h[12:16], ip.Src.AsSlice())
	copy(h[16:20], ip.Dst.AsSlice())
	copy(h[20:], opts)
	be.PutUint16(h[10:], pickChecksum(Checksum(h), ip.Checksum, ip.ZeroChecksum, ip.BadChecksum))
	return h, nil
}

// l4Bytes serializes the L4 layer (if any) and the payload, and returns the
// protocol number the IP header derives.
func (p Packet) l4Bytes() ([]byte, uint8, error) {
	src, dst := p.l4Addrs()
	switch {
	case p.TCP != nil:
		b, err := p.TCP.segment(p.Payload)
		if err != nil {
			return nil, 0, fmt.Errorf("tcp: %w", err)
		}
		be.PutUint16(b[16:], pickChecksum(L4Checksum(src, dst, ProtoTCP, b), p.TCP.Checksum, p.TCP.ZeroChecksum, p.TCP.BadChecksum))
		return b, ProtoTCP, nil
	case p.UDP != nil:
		b := p.UDP.datagram(p.Payload)
		be.PutUint16(b[6:], p.UDP.checksum(L4Checksum(src, dst, ProtoUDP, b)))
		return b, ProtoUDP, nil
	case p.ICMPv4 != nil:
		b := p.ICMPv4.message(p.Payload)
		be.PutUint16(b[2:], pickChecksum(Checksum(b), p.ICMPv4.Checksum, p.ICMPv4.ZeroChecksum, p.ICMPv4.BadChecksum))
		return b, ProtoICMPv4, nil
	case p.ICMPv6 != nil:
		b := p.ICMPv6.message(p.Payload)
		be.PutUint16(b[2:], pickChecksum(L4Checksum(src, dst, ProtoICMPv6, b), p.ICMPv6.Checksum, p.ICMPv6.ZeroChecksum, p.ICMPv6.BadChecksum))
		return b, ProtoICMPv6, nil
	}
	return concat(p.Payload), 0, nil
}

// segment is the TCP header and payload with a zero checksum.
func (t *TCP) segment(payload []byte) ([]byte, error) {
	opts := pad4(t.Options)
	if len(opts) > TCPMaxLen-TCPMinLen {
		return nil, fmt.Errorf("%d bytes of options, at most %d fit", len(opts), TCPMaxLen-TCPMinLen)
	}
	if t.DataOffset > 15 {
		return nil, fmt.Errorf("data offset %d does not fit 4 bits", t.DataOffset)
	}
	hlen := TCPMinLen + len(opts)
	b := make([]byte, hlen, hlen+len(payload))
	be.PutUint16(b[0:], t.SrcPort)
	be.PutUint16(b[2:], t.DstPort)
	be.PutUint32(b[4:], t.Seq)
	be.PutUint32(b[8:], t.Ack)
	if t.Reserved > 15 {
		return nil, fmt.Errorf("reserved bits %d do not fit 4 bits", t.Reserved)
	}
	b[12] = orDefault(t.DataOffset, uint8(hlen/4))<<4 | t.Reserved
	b[13] = uint8(t.Flags)
	be.PutUint16(b[14:], t.Window)
	be.PutUint16(b[18:], t.Urgent)
	copy(b[20:], opts)
	return append(b, payload...), nil
}

// datagram is the UDP header and payload with a zero checksum.
func (u *UDP) datagram(payload []byte) []byte {
	b := make([]byte, UDPLen, UDPLen+len(payload))
	be.PutUint16(b[0:], u.SrcPort)
	be.PutUint16(b[2:], u.DstPort)
	length := orDefault(u.Length, uint16(UDPLen+len(payload)))
	if u.ZeroLength {
		length = 0
	}
	be.PutUint16(b[4:], length)
	return append(b, payload...)
}

// checksum applies the overrides to the correct checksum, which UDP never
// writes as 0 because 0 means "no checksum".
func (u *UDP) checksum(correct uint16) uint16 {
	if correct == 0 {
		correct = 0xffff
	}
	if u.NoChecksum && u.Checksum == 0 {
		return 0
	}
	return pickChecksum(correct, u.Checksum, false, u.BadChecksum)
}

// message is the ICMPv4 header and payload with a zero checksum.
func (c *ICMPv4) message(payload []byte) []byte {
	b := make([]byte, ICMPv4HdrLen, ICMPv4HdrLen+len(payload))
	b[0], b[1] = c.Type, c.Code
	if c.IsQuery() {
		be.PutUint16(b[4:], c.ID)
		be.PutUint16(b[6:], c.Seq)
	} else {
		copy(b[4:], c.Rest[:])
	}
	return append(b, payload...)
}

// pad4 pads options with zeros (End of Options List) to a 4-byte multiple.
func pad4(opts []byte) []byte {
	if len(opts)%4 == 0 {
		return opts
	}
	return append(concat(opts), make([]byte, 4-len(opts)%4)...)
}

func orDefault[T uint8 | uint16](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// concat returns a new slice holding the parts back to back.
func concat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
