package conntrack

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/sluicenet/sluice/bpf"
)

// IP protocol numbers with their own timeouts or names.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
	ProtoSCTP = 132
)

// Key is a conntrack key, struct sl_ct_key: the canonical IPv4 five-tuple
// of a flow, lower endpoint first (see the package documentation). The
// address fields hold the network-order bytes as the kernel stores them;
// use A and B rather than reading them directly.
type Key bpf.CTKey

// NewKey returns the canonical key of a packet from src to dst, and
// whether the packet travels from B to A (dst is the lower endpoint).
// Addresses must be IPv4; IPv4-mapped IPv6 addresses are unmapped.
func NewKey(proto uint8, src, dst netip.AddrPort) (key Key, reversed bool, err error) {
	srcAddr, err := ipv4(src.Addr())
	if err != nil {
		return Key{}, false, fmt.Errorf("conntrack key source %v: %w", src, err)
	}
	dstAddr, err := ipv4(dst.Addr())
	if err != nil {
		return Key{}, false, fmt.Errorf("conntrack key destination %v: %w", dst, err)
	}
	src = netip.AddrPortFrom(srcAddr, src.Port())
	dst = netip.AddrPortFrom(dstAddr, dst.Port())
	reversed = compareEndpoints(dst, src) < 0
	a, b := src, dst
	if reversed {
		a, b = dst, src
	}
	key = Key{
		AddrA: be32(a.Addr()),
		AddrB: be32(b.Addr()),
		PortA: a.Port(),
		PortB: b.Port(),
		Proto: proto,
	}
	return key, reversed, nil
}

func ipv4(addr netip.Addr) (netip.Addr, error) {
	if !addr.IsValid() {
		return netip.Addr{}, errors.New("no address")
	}
	addr = addr.Unmap()
	if !addr.Is4() {
		return netip.Addr{}, errors.New("not an IPv4 address")
	}
	return addr, nil
}

// compareEndpoints orders endpoints as the datapath must: address as a
// big-endian number (netip compares IPv4 bytes in that order), then port.
func compareEndpoints(x, y netip.AddrPort) int {
	if c := x.Addr().Compare(y.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(x.Port(), y.Port())
}

// be32 returns the in-memory form of addr's network-order bytes, as the
// kernel stores a __be32 and cilium/ebpf decodes it into a uint32.
func be32(addr netip.Addr) uint32 {
	b := addr.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// addrFromBE32 is the inverse of be32.
func addrFromBE32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// A returns endpoint A, the lower one.
func (k Key) A() netip.AddrPort {
	return netip.AddrPortFrom(addrFromBE32(k.AddrA), k.PortA)
}

// B returns endpoint B, the higher one.
func (k Key) B() netip.AddrPort {
	return netip.AddrPortFrom(addrFromBE32(k.AddrB), k.PortB)
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
// knows (icmp, tcp, udp, sctp) and "proto N" for others.
func ProtoName(proto uint8) string {
	switch proto {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoSCTP:
		return "sctp"
	}
	return "proto " + strconv.Itoa(int(proto))
}
