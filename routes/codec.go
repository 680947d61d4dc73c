package routes

import (
	"fmt"
	"net/netip"
	"unsafe"

	"github.com/sluicenet/sluice/bpf"
)

// This file is the only one that reads or writes the fields of the generated
// mirrors (bpf.RouteKey, bpf.Route), so a rename by the generator touches
// it alone.

// Key is a key of the routes map, struct sl_route_key: a prefix as the LPM
// trie holds it, Prefixlen bits from the Family on (the family, then the
// 16-byte Addr). Build it with NewKey and read it with Prefix.
type Key bpf.RouteKey

// Value is a value of the routes map, struct sl_route. Build it with
// Route.Encode and read it with Decode.
type Value bpf.Route

// Sizes of the kernel map's key and value; the layout test holds them to
// BTF.
const (
	keySize   = int(unsafe.Sizeof(Key{}))
	valueSize = int(unsafe.Sizeof(Value{}))
)

// Prefix lengths of the trie count bits from Family on: 32 for the
// family, always matched, then the 16 address bytes, where an IPv4 prefix
// sits behind the 96 bits of ::ffff:0:0/96.
const (
	familyBits   = 32
	maxPrefixLen = familyBits + 128
	ipv4Offset   = 96
)

// NewKey returns the key of prefix p: its family, its address masked to
// its length, IPv4 stored IPv4-mapped with 96 added to the length (an
// IPv4-mapped prefix of at least 96 bits is the IPv4 prefix it maps).
func NewKey(p netip.Prefix) (Key, error) {
	if !p.IsValid() {
		return Key{}, fmt.Errorf("route key of %s: %w: no valid prefix", p, ErrInvalidRoute)
	}
	return keyOf(p), nil
}

// keyOf is NewKey of a valid prefix.
func keyOf(p netip.Prefix) Key {
	p = normalPrefix(p)
	if p.Addr().Is4() {
		return Key{Prefixlen: uint32(familyBits + ipv4Offset + p.Bits()), Family: bpf.FamilyIPv4, Addr: p.Addr().As16()}
	}
	return Key{Prefixlen: uint32(familyBits + p.Bits()), Family: bpf.FamilyIPv6, Addr: p.Addr().As16()}
}

// addrKey is the key the datapath looks an address up with (sl_route_of):
// its family and all 128 bits, IPv4 mapped. It reports false for the zero
// Addr.
func addrKey(a netip.Addr) (Key, bool) {
	if !a.IsValid() {
		return Key{}, false
	}
	family := bpf.FamilyIPv6
	if a.Unmap().Is4() {
		family = bpf.FamilyIPv4
	}
	return Key{Prefixlen: maxPrefixLen, Family: family, Addr: a.As16()}, true
}

// Prefix returns the prefix k covers, as the kernel matches it: Addr
// masked to the bits the prefix length gives it. A key of family IPv4
// must cover ::ffff:0:0/96 and decodes as an IPv4 prefix; a key of family
// IPv6 decodes as an IPv6 prefix, even one inside ::ffff:0:0/96, which
// matches only IPv6 addresses. Any other family, a prefix length that
// does not cover the family, or one above its maximum, the kernel cannot
// match as the datapath looks up, and is an error.
func (k Key) Prefix() (netip.Prefix, error) {
	if k.Prefixlen < familyBits || k.Prefixlen > maxPrefixLen {
		return netip.Prefix{}, fmt.Errorf("route key: prefix length %d outside [%d, %d]", k.Prefixlen, familyBits, maxPrefixLen)
	}
	bits := int(k.Prefixlen - familyBits)
	p := netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits).Masked()
	switch k.Family {
	case bpf.FamilyIPv6:
		return p, nil
	case bpf.FamilyIPv4:
		if bits < ipv4Offset || !p.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("route key: IPv4 key %s outside ::ffff:0:0/96", p)
		}
		return netip.PrefixFrom(p.Addr().Unmap(), bits-ipv4Offset), nil
	}
	return netip.Prefix{}, fmt.Errorf("route key: family %d", k.Family)
}

// canonical returns k with the bits past its prefix length cleared, as
// every key the package writes has them. The kernel ignores those bits
// when it matches, but stores and returns them.
func (k Key) canonical() Key {
	if k.Prefixlen >= familyBits && k.Prefixlen <= maxPrefixLen {
		k.Addr = netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen-familyBits)).Masked().Addr().As16()
	}
	return k
}

// String returns the key's prefix, or what is wrong with it.
func (k Key) String() string {
	p, err := k.Prefix()
	if err != nil {
		return fmt.Sprintf("invalid key (prefix length %d)", k.Prefixlen)
	}
	return p.String()
}

// Encode validates r (Route.Validate) and returns its key and value.
func (r Route) Encode() (Key, Value, error) {
	if err := r.Validate(); err != nil {
		return Key{}, Value{}, err
	}
	return keyOf(r.Prefix), r.value(), nil
}

// value is the map value of a valid route.
func (r Route) value() Value {
	v := Value{Flags: bpf.RouteFlags(r.Flags), Ifindex: r.Ifindex}
	if r.NextHop.IsValid() {
		v.NextHop = r.NextHop.As16()
	}
	return v
}

// Decode returns the route of a map entry, with the prefix in the form
// Key.Prefix gives and an all-zero next hop read as none. It reports an
// error only for a key the kernel cannot hold; it does not validate the
// value, so that entries other writers made can still be read (call
// Route.Validate to judge them).
func Decode(k Key, v Value) (Route, error) {
	p, err := k.Prefix()
	if err != nil {
		return Route{}, err
	}
	r := Route{Prefix: p, Flags: Flags(v.Flags), Ifindex: v.Ifindex}
	if v.NextHop != [16]byte{} {
		r.NextHop = netip.AddrFrom16(v.NextHop).Unmap()
	}
	return r, nil
}
