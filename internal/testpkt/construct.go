package testpkt

import (
	"bytes"
	"net"
	"net/netip"
)

// The MAC addresses the constructors set: locally administered unicast, so
// they never collide with a real NIC's.
var (
	DefaultSrcMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	DefaultDstMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
)

// DefaultTTL is the TTL the constructors set, and the one Bytes writes for
// TTL 0.
const DefaultTTL = 64

func defaultEth() Eth {
	return Eth{Dst: bytes.Clone(DefaultDstMAC), Src: bytes.Clone(DefaultSrcMAC)}
}

func defaultIPv4(src, dst netip.Addr) *IPv4 {
	return &IPv4{Src: src, Dst: dst, TTL: DefaultTTL}
}

// TCPv4 returns a TCP/IPv4 packet from src to dst with the given flags and
// payload, window 65535 and sequence numbers 0.
func TCPv4(src, dst netip.AddrPort, flags TCPFlags, payload []byte) Packet {
	return Packet{
		Eth:     defaultEth(),
		IPv4:    defaultIPv4(src.Addr(), dst.Addr()),
		TCP:     &TCP{SrcPort: src.Port(), DstPort: dst.Port(), Flags: flags, Window: 65535},
		Payload: bytes.Clone(payload),
	}
}

// UDPv4 returns a UDP/IPv4 packet from src to dst carrying payload.
func UDPv4(src, dst netip.AddrPort, payload []byte) Packet {
	return Packet{
		Eth:     defaultEth(),
		IPv4:    defaultIPv4(src.Addr(), dst.Addr()),
		UDP:     &UDP{SrcPort: src.Port(), DstPort: dst.Port()},
		Payload: bytes.Clone(payload),
	}
}

// ICMPv4Echo returns an ICMPv4 echo request, or an echo reply if reply is
// set, with no data.
func ICMPv4Echo(src, dst netip.Addr, id, seq uint16, reply bool) Packet {
	typ := ICMPv4EchoRequest
	if reply {
		typ = ICMPv4EchoReply
	}
	return Packet{
		Eth:    defaultEth(),
		IPv4:   defaultIPv4(src, dst),
		ICMPv4: &ICMPv4{Type: typ, ID: id, Seq: seq},
	}
}

// ICMPv4Error returns an ICMPv4 error message (destination unreachable, time
// exceeded, ...) whose data is quoted, normally the offending packet's IP
// header and the first 8 bytes of its L4 header, as Quote cuts them. The data
// is written as given, so it may run past the quote: bytes appended after it
// (an RFC 4884 extension after a quote PadQuote lengthened, or a payload an
// attacker smuggles behind a real quote) are covered by the ICMP checksum
// and come back from Parse as the tail of Payload. Set ICMPv4.Rest for
// type-specific fields such as the next-hop MTU, or the RFC 4884 length of
// the padded quote in 32-bit words in Rest[1].
func ICMPv4Error(src, dst netip.Addr, typ, code uint8, quoted []byte) Packet {
	return Packet{
		Eth:     defaultEth(),
		IPv4:    defaultIPv4(src, dst),
		ICMPv4:  &ICMPv4{Type: typ, Code: code},
		Payload: bytes.Clone(quoted),
	}
}

// Quote returns what an ICMP error quotes of an Ethernet frame: the IP
// header, by its IHL, and the first 8 bytes after it. It skips the frame's
// VLAN tags, copies less when the frame is shorter, and takes 20 header bytes
// when the IHL is below 5. A frame with no bytes after its Ethernet header,
// or whose tags Parse cannot read, quotes nothing. A frame of EtherType IPv6
// is quoted as QuoteIPv6 quotes it.
func Quote(frame []byte) []byte {
	_, typ, l3, err := splitEth(frame)
	if err != nil || len(frame) <= l3 {
		return nil
	}
	if typ == EtherTypeIPv6 {
		return QuoteIPv6(frame)
	}
	ip := frame[l3:]
	hlen := max(int(ip[0]&0x0f)*4, IPv4MinLen)
	return Truncate(ip, hlen+8)
}

// PadQuote returns a copy of quote with zeros appended up to n bytes, the way
// RFC 4884 pads an ICMP error's original-datagram field (to at least 128
// bytes, a multiple of 4) before an extension structure, or a test pads an
// error to a given size. A quote already n bytes or longer is copied as it
// is.
func PadQuote(quote []byte, n int) []byte {
	out := make([]byte, max(n, len(quote)))
	copy(out, quote)
	return out
}

// Truncate returns a copy of b cut to n bytes; n past the end copies all of
// b, and n below 0 returns an empty slice.
func Truncate(b []byte, n int) []byte {
	n = min(max(n, 0), len(b))
	return append([]byte{}, b[:n]...)
}
