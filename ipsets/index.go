package ipsets

import (
	"fmt"
	stdmaps "maps"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/sluicenet/sluice/bpf"
)

// MemberKey is a key of the membership map bpf.MapIPSetMembers
// ("sl_ipsetm"), MemberValue its value: the sets of one member address or
// named port, in one entry, so that a program learns every set an address
// is in with one lookup instead of one per set.
type (
	MemberKey   = bpf.IPSetMKey
	MemberValue = bpf.IPSetMValue
)

// MemberSlots is the number of slots of a MemberValue: set ID id is in
// slot id % MemberSlots.
const MemberSlots = len(MemberValue{}.Ids)

// Prefix lengths of membership keys, in bits from the generation on.
const (
	// memberSetBits covers the generation and the family.
	memberSetBits = int(unsafe.Offsetof(MemberKey{}.Addr)-unsafe.Offsetof(MemberKey{}.Gen)) * 8
	// MemberLookupBits is the prefix length of a named-port entry and of
	// every lookup: the whole key after the prefix length.
	MemberLookupBits = int(unsafe.Sizeof(MemberKey{})-unsafe.Offsetof(MemberKey{}.Gen)) * 8
)

// MemberLookupKey returns the membership key programs look addr up with
// in generation gen, with port and protocol (both 0 for an address test),
// as LookupKey does for one set.
func MemberLookupKey(gen uint32, addr netip.Addr, proto uint8, port uint16) MemberKey {
	addr = addr.Unmap().WithZone("")
	return MemberKey{Prefixlen: uint32(MemberLookupBits), Gen: gen, Family: family(addr),
		Addr: addr.As16(), Port: port, Proto: proto}
}

// memberEntries returns the membership entries of generation gen for
// sets: one per distinct CIDR member (prefix masked) and named-port member
// of any set. The value of a CIDR entry lists the sets with a CIDR member
// covering its prefix, itself included, so that the longest match of an
// address lists every set whose CIDR members contain it (the longest
// entry containing an address is covered by every other one that does). A
// named-port entry adds the sets with that named port to those of the
// CIDR members covering its address: what a named-port lookup's longest
// match, the exact entry or else a CIDR one, must answer. Members that no
// key can hold are an error, as in Keys.
func (m Members) memberEntries(gen uint32) (map[MemberKey]MemberValue, error) {
	byNet := map[netip.Prefix][]uint64{}
	// lens are the member prefix lengths of each family (true: IPv4),
	// the only ones a covering prefix can have.
	lens := map[bool]map[int]bool{true: {}, false: {}}
	byNamed := map[NamedPort][]uint64{}
	for _, id := range slices.Sorted(stdmaps.Keys(m)) {
		s := m[id]
		for _, p := range s.Nets {
			if _, err := NetKey(id, p); err != nil {
				return nil, fmt.Errorf("set %d: %w", id, err)
			}
			p = p.Masked()
			byNet[p] = appendSet(byNet[p], id)
			lens[p.Addr().Is4()][p.Bits()] = true
		}
		for _, np := range s.NamedPorts {
			if _, err := NamedPortKey(id, np); err != nil {
				return nil, fmt.Errorf("set %d: %w", id, err)
			}
			byNamed[np] = appendSet(byNamed[np], id)
		}
	}
	sortedLens := map[bool][]int{}
	for is4, ls := range lens {
		sortedLens[is4] = slices.Sorted(stdmaps.Keys(ls))
	}
	// covering returns the sets with a CIDR member covering p.
	covering := func(p netip.Prefix, ids []uint64) []uint64 {
		for _, l := range sortedLens[p.Addr().Is4()] {
			if l > p.Bits() {
				break
			}
			q, _ := p.Addr().Prefix(l)
			for _, id := range byNet[q] {
				ids = appendSet(ids, id)
			}
		}
		return ids
	}
	out := make(map[MemberKey]MemberValue, len(byNet)+len(byNamed))
	for p := range byNet {
		bits := memberSetBits + p.Bits()
		if p.Addr().Is4() {
			bits += mappedBits
		}
		k := MemberKey{Prefixlen: uint32(bits), Gen: gen, Family: family(p.Addr()), Addr: p.Addr().As16()}
		out[k] = slotValue(covering(p, nil))
	}
	for np, ids := range byNamed {
		addr := np.Addr.WithZone("")
		ids = covering(netip.PrefixFrom(addr, addr.BitLen()), slices.Clone(ids))
		k := MemberKey{Prefixlen: uint32(MemberLookupBits), Gen: gen, Family: family(addr),
			Addr: addr.As16(), Port: np.Port, Proto: np.Protocol}
		out[k] = slotValue(ids)
	}
	return out, nil
}

// appendSet appends id to ids unless it is there already.
func appendSet(ids []uint64, id uint64) []uint64 {
	if slices.Contains(ids, id) {
		return ids
	}
	return append(ids, id)
}

// slotValue puts each set in its slot: a slot one set falls into holds
// its ID, one that two or more fall into is shared.
func slotValue(ids []uint64) MemberValue {
	var v MemberValue
	for _, id := range ids {
		s := id % uint64(MemberSlots)
		bit := uint32(1) << s
		switch {
		case v.Shared&bit != 0:
		case v.Member&bit != 0:
			v.Member &^= bit
			v.Shared |= bit
			v.Ids[s] = 0
		default:
			v.Member |= bit
			v.Ids[s] = id
		}
	}
	return v
}

// inMemberValue answers, from the membership entry v that a lookup found
// (nil: none did), whether set id holds the looked-up address as the
// programs do: the slot's set when it holds one, not a member when it
// holds none, and ask(id), the set's own lookup in sl_ipsets, when the
// slot is shared. It is the reference of the code polprog emits.
func inMemberValue(v *MemberValue, id uint64, ask func(id uint64) (bool, error)) (bool, error) {
	if v == nil {
		return false, nil
	}
	s := id % uint64(MemberSlots)
	bit := uint32(1) << s
	switch {
	case v.Member&bit != 0:
		return v.Ids[s] == id, nil
	case v.Shared&bit != 0:
		return ask(id)
	}
	return false, nil
}
