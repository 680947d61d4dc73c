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
// exceeded, ...) whose data is quoted: the offending packet's IP header and
// the first 8 bytes of its L4 header, as Quote cuts them. Set ICMPv4.Rest
// for type-specific fields such as the next-hop MTU.
func ICMPv4Error(src, dst netip.Addr, typ, code uint8, quoted []byte) Packet {
	return Packet{
		Eth:     defaultEth(),
		IPv4:    defaultIPv4(src, dst),
		ICMPv4:  &ICMPv4{Type: typ, Code: code},
		Payload: bytes.Clone(quoted),
	}
}

// Quote returns what an ICMP error quotes of an Ethernet frame: the IP
// header, by its IHL, and the first 8 bytes after it. It copies less when
// the frame is shorter, and takes 20 header bytes when the IHL is below 5.
func Quote(frame []byte) []byte {
	if len(frame) <= EthLen {
		return nil
	}
	ip := frame[EthLen:]
	hlen := max(int(ip[0]&0x0f)*4, IPv4MinLen)
	return Truncate(ip, hlen+8)
}

// Truncate returns a copy of b cut to n bytes; n past the end copies all of
// b, and n below 0 returns an empty slice.
func Truncate(b []byte, n int) []byte {
	n = min(max(n, 0), len(b))
	return append([]byte{}, b[:n]...)
}
