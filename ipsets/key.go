package ipsets

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"github.com/sluicenet/sluice/bpf"
)

// Key is a key of the IP set members map.
type Key = bpf.IPSetKey

// Prefix lengths of keys, in bits from the set ID on; the offsets come from
// the generated mirror, so they follow the header.
const (
	// setBits covers the set ID and the family, which every key matches.
	setBits = int(unsafe.Offsetof(Key{}.Addr)-unsafe.Offsetof(Key{}.SetID)) * 8
	// mappedBits is the ::ffff:0:0/96 part of an IPv4-mapped address.
	mappedBits = 96
	// NamedPortBits is the prefix length of a named-port member and of
	// every lookup: the whole key after the prefix length.
	NamedPortBits = int(unsafe.Sizeof(Key{})-unsafe.Offsetof(Key{}.SetID)) * 8
)

// ErrInvalidMember is wrapped by every error about a member the map cannot
// hold.
var ErrInvalidMember = errors.New("invalid IP set member")

// NetBits returns the prefix length of the key of CIDR member p: the set ID
// and family, the IPv4-mapped part for IPv4, and p's own bits.
func NetBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return setBits + mappedBits + p.Bits()
	}
	return setBits + p.Bits()
}

// NetKey returns the key of CIDR member p of set id, its address masked to
// the prefix. IPv4-mapped prefixes (::ffff:0:0/96 and longer) are refused:
// they would be IPv6 members that no IPv6 packet carries, and never match an
// IPv4 packet. A shorter IPv6 prefix covering them, ::/0 say, is an IPv6
// member and matches IPv6 addresses only.
func NetKey(id uint64, p netip.Prefix) (Key, error) {
	if !p.IsValid() {
		return Key{}, fmt.Errorf("%w: invalid prefix %q", ErrInvalidMember, p.String())
	}
	p = p.Masked()
	if p.Addr().Is4In6() {
		return Key{}, fmt.Errorf("%w: IPv4-mapped prefix %s: use the IPv4 form", ErrInvalidMember, p)
	}
	return Key{Prefixlen: uint32(NetBits(p)), SetID: bpf.IPSetID(id), Family: family(p.Addr()),
		Addr: p.Addr().As16()}, nil
}

// NamedPortKey returns the key of named-port member np of set id. Its
// protocol must not be 0, which address lookups use.
func NamedPortKey(id uint64, np NamedPort) (Key, error) {
	if !np.Addr.IsValid() {
		return Key{}, fmt.Errorf("%w: named port with no address", ErrInvalidMember)
	}
	if np.Addr.Is4In6() {
		return Key{}, fmt.Errorf("%w: IPv4-mapped address %s: use the IPv4 form", ErrInvalidMember, np.Addr)
	}
	if np.Addr.Zone() != "" {
		return Key{}, fmt.Errorf("%w: address %s has a zone, which the map cannot hold", ErrInvalidMember, np.Addr)
	}
	if np.Protocol == 0 {
		return Key{}, fmt.Errorf("%w: named port %s with protocol 0", ErrInvalidMember, np.Addr)
	}
	return Key{Prefixlen: uint32(NamedPortBits), SetID: bpf.IPSetID(id), Family: family(np.Addr),
		Addr: np.Addr.As16(), Port: np.Port, Proto: np.Protocol}, nil
}

// LookupKey returns the key programs look addr up with in set id: the
// whole key, with port and protocol (both 0 for an address test).
func LookupKey(id uint64, addr netip.Addr, proto uint8, port uint16) Key {
	addr = addr.Unmap().WithZone("")
	return Key{Prefixlen: uint32(NamedPortBits), SetID: bpf.IPSetID(id), Family: family(addr),
		Addr: addr.As16(), Port: port, Proto: proto}
}

// Decode returns the set ID and the member a key holds, or an error
// wrapping ErrInvalidMember for a key NetKey or NamedPortKey would not write.
func Decode(k Key) (id uint64, m Member, err error) {
	id = setID(k)
	var addr netip.Addr
	switch k.Family {
	case bpf.FamilyIPv4:
		a := netip.AddrFrom16(k.Addr)
		if !a.Is4In6() {
			return 0, Member{}, fmt.Errorf("%w: IPv4 key with address %s", ErrInvalidMember, a)
		}
		addr = a.Unmap()
	case bpf.FamilyIPv6:
		addr = netip.AddrFrom16(k.Addr)
		if addr.Is4In6() {
			return 0, Member{}, fmt.Errorf("%w: IPv6 key with IPv4-mapped address %s", ErrInvalidMember, addr)
		}
	default:
		return 0, Member{}, fmt.Errorf("%w: family %d", ErrInvalidMember, k.Family)
	}
	if int(k.Prefixlen) == NamedPortBits && k.Proto != 0 {
		m = Member{NamedPort: NamedPort{Addr: addr, Protocol: k.Proto, Port: k.Port}}
		if want, _ := NamedPortKey(id, m.NamedPort); want != k {
			return 0, Member{}, fmt.Errorf("%w: named-port key %+v", ErrInvalidMember, k)
		}
		return id, m, nil
	}
	bits := int(k.Prefixlen) - setBits
	if addr.Is4() {
		bits -= mappedBits
	}
	if bits < 0 || bits > addr.BitLen() {
		return 0, Member{}, fmt.Errorf("%w: prefix length %d for %s", ErrInvalidMember, k.Prefixlen, addr)
	}
	p := netip.PrefixFrom(addr, bits)
	if want, _ := NetKey(id, p); want != k {
		return 0, Member{}, fmt.Errorf("%w: CIDR key %+v is not in canonical form", ErrInvalidMember, k)
	}
	return id, Member{Net: p}, nil
}

func family(a netip.Addr) bpf.Family {
	if a.Is4() {
		return bpf.FamilyIPv4
	}
	return bpf.FamilyIPv6
}

func setID(k Key) uint64 {
	var id uint64
	for _, b := range k.SetID {
		id = id<<8 | uint64(b)
	}
	return id
}
