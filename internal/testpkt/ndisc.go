package testpkt

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
)

// Neighbour discovery option types (RFC 4861 section 4.6).
const (
	NDOptSourceLinkAddr   uint8 = 1
	NDOptTargetLinkAddr   uint8 = 2
	NDOptPrefixInfo       uint8 = 3
	NDOptRedirectedHeader uint8 = 4
	NDOptMTU              uint8 = 5
)

// Flags of neighbour discovery messages.
const (
	// NAFlagRouter, NAFlagSolicited and NAFlagOverride are a neighbour
	// advertisement's R, S and O flags, in Rest[0].
	NAFlagRouter    uint8 = 0x80
	NAFlagSolicited uint8 = 0x40
	NAFlagOverride  uint8 = 0x20
	// RAFlagManaged and RAFlagOther are a router advertisement's M and O
	// flags.
	RAFlagManaged uint8 = 0x80
	RAFlagOther   uint8 = 0x40
	// PrefixFlagOnLink and PrefixFlagAuto are a prefix information
	// option's L and A flags.
	PrefixFlagOnLink uint8 = 0x80
	PrefixFlagAuto   uint8 = 0x40
)

// NDOption is one neighbour discovery option: type, length in 8-byte units
// and data (RFC 4861 section 4.6).
type NDOption struct {
	Type uint8
	// Data follows the type and length bytes; it is padded with zeros to
	// make the option a multiple of 8 bytes.
	Data []byte
	// Length replaces the length byte; the bytes written do not change. Set
	// ZeroLength for a literal 0, which receivers must drop.
	Length     uint8
	ZeroLength bool
}

// NDOptions serializes options for the body of a neighbour discovery
// message, each padded to a multiple of 8 bytes. An option's Data past 2038
// bytes (255 units) is cut there.
func NDOptions(opts ...NDOption) []byte {
	var out []byte
	for _, o := range opts {
		data := o.Data[:min(len(o.Data), 255*8-2)]
		total := roundUp(2+len(data), 8)
		h := make([]byte, total)
		h[0] = o.Type
		h[1] = overrideNext(uint8(total/8), o.Length, o.ZeroLength)
		copy(h[2:], data)
		out = append(out, h...)
	}
	return out
}

// ParseNDOptions reads the options of a neighbour discovery message body,
// as NDOptions writes them. A zero length wraps ErrMalformed, and an option
// past the end ErrTruncated.
func ParseNDOptions(b []byte) ([]NDOption, error) {
	var opts []NDOption
	for at := 0; at < len(b); {
		if at+2 > len(b) {
			return opts, fmt.Errorf("nd option at %d: %d of 2 bytes: %w", at, len(b)-at, ErrTruncated)
		}
		n := int(b[at+1]) * 8
		if n == 0 {
			return opts, fmt.Errorf("nd option at %d (type %d): length 0: %w", at, b[at], ErrMalformed)
		}
		if at+n > len(b) {
			return opts, fmt.Errorf("nd option at %d (type %d): %d bytes, have %d: %w", at, b[at], n, len(b)-at, ErrTruncated)
		}
		opts = append(opts, NDOption{Type: b[at], Data: bytes.Clone(b[at+2 : at+n])})
		at += n
	}
	return opts, nil
}

// NDOptionsOffset is where a neighbour discovery message's options start
// in its Payload (after the 8-byte ICMPv6 header): 0 for a router
// solicitation, 8 for an advertisement, 16 for neighbour solicitations and
// advertisements, 32 for a redirect; -1 for every other type.
func NDOptionsOffset(typ uint8) int {
	switch typ {
	case ICMPv6RouterSolicit:
		return 0
	case ICMPv6RouterAdvert:
		return 8
	case ICMPv6NeighborSolicit, ICMPv6NeighborAdvert:
		return 16
	case ICMPv6Redirect:
		return 32
	}
	return -1
}

// NDSourceLinkAddr is the source link-layer address option.
func NDSourceLinkAddr(mac net.HardwareAddr) NDOption {
	return NDOption{Type: NDOptSourceLinkAddr, Data: bytes.Clone(mac)}
}

// NDTargetLinkAddr is the target link-layer address option.
func NDTargetLinkAddr(mac net.HardwareAddr) NDOption {
	return NDOption{Type: NDOptTargetLinkAddr, Data: bytes.Clone(mac)}
}

// NDPrefixInfo is the prefix information option of a router advertisement:
// the prefix, PrefixFlagOnLink and PrefixFlagAuto flags and the valid and
// preferred lifetimes in seconds.
func NDPrefixInfo(prefix netip.Prefix, flags uint8, valid, preferred uint32) NDOption {
	data := make([]byte, 30)
	data[0] = uint8(prefix.Bits())
	data[1] = flags
	be.PutUint32(data[2:], valid)
	be.PutUint32(data[6:], preferred)
	copy(data[14:], prefix.Masked().Addr().AsSlice())
	return NDOption{Type: NDOptPrefixInfo, Data: data}
}

// NDMTU is the MTU option of a router advertisement.
func NDMTU(mtu uint32) NDOption {
	data := make([]byte, 6)
	be.PutUint32(data[2:], mtu)
	return NDOption{Type: NDOptMTU, Data: data}
}

// NDRedirectedHeader is a redirect's redirected header option: 6 reserved
// bytes, then as much of the redirected packet as fits (quoted, cut to a
// multiple of 8 bytes by the padding NDOptions adds).
func NDRedirectedHeader(quoted []byte) NDOption {
	return NDOption{Type: NDOptRedirectedHeader, Data: concat(make([]byte, 6), quoted)}
}

// ndPacket is an ICMPv6 neighbour discovery message with hop limit
// NDHopLimit and the given body (after the 8-byte header) and options.
func ndPacket(src, dst netip.Addr, typ uint8, rest [4]byte, body []byte, opts []NDOption) Packet {
	ip := defaultIPv6(src, dst)
	ip.HopLimit = NDHopLimit
	return Packet{
		Eth:     defaultEth6(dst),
		IPv6:    ip,
		ICMPv6:  &ICMPv6{Type: typ, Rest: rest},
		Payload: concat(body, NDOptions(opts...)),
	}
}

// NDRouterSolicit returns a router solicitation from src (which may be
// the unspecified address) to AllRoutersAddr.
func NDRouterSolicit(src netip.Addr, opts ...NDOption) Packet {
	return ndPacket(src, AllRoutersAddr, ICMPv6RouterSolicit, [4]byte{}, nil, opts)
}

// RouterAdvert holds a router advertisement's fields.
type RouterAdvert struct {
	// CurHopLimit is the hop limit hosts should use; 0 leaves it
	// unspecified.
	CurHopLimit uint8
	// Flags holds RAFlagManaged and RAFlagOther (and the other bits of the
	// byte).
	Flags uint8
	// Lifetime is the router lifetime in seconds; 0 says it is not a
	// default router.
	Lifetime uint16
	// ReachableTime and RetransTimer are in milliseconds.
	ReachableTime, RetransTimer uint32
	Options                     []NDOption
}

// NDRouterAdvert returns a router advertisement from src (a link-local
// address, or receivers drop it) to dst, normally AllNodesAddr.
func NDRouterAdvert(src, dst netip.Addr, ra RouterAdvert) Packet {
	rest := [4]byte{ra.CurHopLimit, ra.Flags}
	be.PutUint16(rest[2:], ra.Lifetime)
	body := make([]byte, 8)
	be.PutUint32(body[0:], ra.ReachableTime)
	be.PutUint32(body[4:], ra.RetransTimer)
	return ndPacket(src, dst, ICMPv6RouterAdvert, rest, body, ra.Options)
}

// NDNeighborSolicit returns a neighbour solicitation from src for
// target, sent to target's solicited-node address; set IPv6.Dst (and
// Eth.Dst) to target for a unicast probe. A src of the unspecified address
// is duplicate address detection, which must carry no source link-layer
// option.
func NDNeighborSolicit(src, target netip.Addr, opts ...NDOption) Packet {
	return ndPacket(src, SolicitedNodeAddr(target), ICMPv6NeighborSolicit, [4]byte{}, target.AsSlice(), opts)
}

// NDNeighborAdvert returns a neighbour advertisement from src to dst
// about target with NAFlag flags.
func NDNeighborAdvert(src, dst, target netip.Addr, flags uint8, opts ...NDOption) Packet {
	return ndPacket(src, dst, ICMPv6NeighborAdvert, [4]byte{flags}, target.AsSlice(), opts)
}

// NDRedirect returns a redirect from src (the current first-hop router,
// link-local) to dst saying that packets for dest go better through target.
func NDRedirect(src, dst, target, dest netip.Addr, opts ...NDOption) Packet {
	return ndPacket(src, dst, ICMPv6Redirect, [4]byte{}, concat(target.AsSlice(), dest.AsSlice()), opts)
}
