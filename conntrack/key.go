package conntrack

import (
	"bytes"
	"cmp"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/sluicenet/sluice/bpf"
)

// IP protocol numbers with their own timeouts or names.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
	ProtoSCTP   = 132
)

// Key is a conntrack key, struct sl_ct_key: the canonical five-tuple of a
// flow, lower endpoint first (see the package documentation). Addresses
// are 16 bytes in network order, IPv4 stored IPv4-mapped; use A and B
// rather than reading them directly.
type Key bpf.CTKey

// NewKey returns the canonical key of a packet from src to dst, and
// whether the packet travels from B to A (dst is the lower endpoint).
// Both addresses must be of one family; IPv4-mapped IPv6 addresses count
// as IPv4, as the datapath stores IPv4.
func NewKey(proto uint8, src, dst netip.AddrPort) (key Key, reversed bool, err error) {
	srcAddr, dstAddr := src.Addr().Unmap(), dst.Addr().Unmap()
	if !srcAddr.IsValid() || !dstAddr.IsValid() {
		return Key{}, false, fmt.Errorf("conntrack key %v -> %v: missing address", src, dst)
	}
	if srcAddr.Is4() != dstAddr.Is4() {
		return Key{}, false, fmt.Errorf("conntrack key %v -> %v: addresses of two families", src, dst)
	}
	src = netip.AddrPortFrom(srcAddr, src.Port())
	dst = netip.AddrPortFrom(dstAddr, dst.Port())
	reversed = compareEndpoints(dst, src) < 0
	a, b := src, dst
	if reversed {
		a, b = dst, src
	}
	key = Key{
		AddrA: a.Addr().As16(),
		AddrB: b.Addr().As16(),
		PortA: a.Port(),
		PortB: b.Port(),
		Proto: proto,
	}
	return key, reversed, nil
}

// EchoPorts returns the ports the datapath keys an ICMP or ICMPv6 echo by
// (sl_ct_echo_ports): for a request, the identifier as the source port and
// the identifier plus one (wrapping) as the destination port; for a reply,
// the other way round. No request in the other direction, whatever its
// identifier, has the key of a request and its reply.
func EchoPorts(request bool, id uint16) (sport, dport uint16) {
	responder := id + 1
	if request {
		return id, responder
	}
	return responder, id
}

// compareEndpoints orders endpoints as the datapath must: address as a
// 128-bit big-endian number of its 16-byte form (IPv4-mapped for IPv4),
// then port.
func compareEndpoints(x, y netip.AddrPort) int {
	xa, ya := x.Addr().As16(), y.Addr().As16()
	if c := bytes.Compare(xa[:], ya[:]); c != 0 {
		return c
	}
	return cmp.Compare(x.Port(), y.Port())
}

// addrFrom16 is the address of a 16-byte field, unmapped for IPv4.
func addrFrom16(b [16]byte) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}

// A returns endpoint A, the lower one.
func (k Key) A() netip.AddrPort {
	return netip.AddrPortFrom(addrFrom16(k.AddrA), k.PortA)
}

// B returns endpoint B, the higher one.
func (k Key) B() netip.AddrPort {
	return netip.AddrPortFrom(addrFrom16(k.AddrB), k.PortB)
}

// Directed undoes canonicalisation: it returns the source and destination
// of a packet whose key is k and whose direction NewKey reported as
// reversed.
func (k Key) Directed(reversed bool) (src, dst netip.AddrPort) {
	if reversed {
		return k.B(), k.A()
	}
	return k.A(), k.B()
}

// Canonical reports whether A is not higher than B, as in every key the
// datapath or NewKey writes.
func (k Key) Canonical() bool {
	return compareEndpoints(k.A(), k.B()) <= 0
}

// Compare orders keys by protocol, then endpoint A, then endpoint B
// (addresses numerically); Map.Dump sorts with it.
func (k Key) Compare(other Key) int {
	if c := cmp.Compare(k.Proto, other.Proto); c != 0 {
		return c
	}
	if c := compareEndpoints(k.A(), other.A()); c != 0 {
		return c
	}
	return compareEndpoints(k.B(), other.B())
}

// String formats the key as "tcp 10.0.0.1:1234 <-> 10.0.0.2:80".
func (k Key) String() string {
	return ProtoName(k.Proto) + " " + k.A().String() + " <-> " + k.B().String()
}

// ProtoName returns the lower-case name of the IP protocols the package
// knows (icmp, tcp, udp, icmpv6, sctp) and "proto N" for others.
func ProtoName(proto uint8) string {
	switch proto {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "icmpv6"
	case ProtoSCTP:
		return "sctp"
	}
	return "proto " + strconv.Itoa(int(proto))
}
