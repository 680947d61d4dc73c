package ipsets

import (
	"fmt"
	"net/netip"
)

// Set is the content of one IP set.
type Set struct {
	// Nets are CIDR members, of either family.
	Nets []netip.Prefix
	// NamedPorts are (address, protocol, port) members.
	NamedPorts []NamedPort
}

// NamedPort is an IP set member that matches one address, protocol and
// port exactly (a Kubernetes named port resolved to its endpoints).
type NamedPort struct {
	// Addr is the endpoint's address, IPv4 or IPv6 (not IPv4-mapped).
	Addr netip.Addr
	// Protocol is the IPPROTO_* number; never 0.
	Protocol uint8
	// Port is the port, host order.
	Port uint16
}

// Member is one member of a set as a key holds it: Net, or NamedPort when
// its Protocol is not 0.
type Member struct {
	// Net is a CIDR member.
	Net netip.Prefix
	// NamedPort is a named-port member when its Protocol is not 0.
	NamedPort NamedPort
}

// IsNamedPort reports whether m is a named-port member.
func (m Member) IsNamedPort() bool { return m.NamedPort.Protocol != 0 }

// Key returns the key of m in set id.
func (m Member) Key(id uint64) (Key, error) {
	if m.IsNamedPort() {
		return NamedPortKey(id, m.NamedPort)
	}
	return NetKey(id, m.Net)
}

// Members is IP sets by set ID, in memory: what Map.Sync programs and Read
// returns, and the pure-Go reference of the lookups programs make.
type Members map[uint64]Set

// ContainsAddr reports whether a CIDR member of set id contains addr, as a
// program's address lookup finds it: only members of addr's family, with
// an IPv4-mapped addr taken as IPv4 and a zone ignored, as the map has
// none. Named-port members never match.
func (m Members) ContainsAddr(id uint64, addr netip.Addr) bool {
	addr = addr.Unmap().WithZone("")
	for _, p := range m[id].Nets {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// ContainsNamedPort reports whether set id has the named-port member
// (addr, proto, port), or a CIDR member containing addr, which in a
// named-port lookup matches every port.
func (m Members) ContainsNamedPort(id uint64, addr netip.Addr, proto uint8, port uint16) bool {
	if m.ContainsAddr(id, addr) {
		return true
	}
	addr = addr.Unmap().WithZone("")
	for _, np := range m[id].NamedPorts {
		if np.Addr.Unmap() == addr && np.Protocol == proto && np.Port == port {
			return true
		}
	}
	return false
}

// Keys returns the key of every member, or an error naming the first
// member no key can hold.
func (m Members) Keys() (map[Key]uint32, error) {
	out := make(map[Key]uint32)
	for id, s := range m {
		for _, p := range s.Nets {
			k, err := NetKey(id, p)
			if err != nil {
				return nil, fmt.Errorf("set %d: %w", id, err)
			}
			out[k] = memberValue
		}
		for _, np := range s.NamedPorts {
			k, err := NamedPortKey(id, np)
			if err != nil {
				return nil, fmt.Errorf("set %d: %w", id, err)
			}
			out[k] = memberValue
		}
	}
	return out, nil
}

// memberValue is the value of every key: programs test for presence only.
const memberValue = 1
