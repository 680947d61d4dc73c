package polprog

import "net/netip"

// IPSets answers the IP set questions a rule asks, the way the sl_ipsets
// LPM trie answers them in the kernel.
type IPSets interface {
	// ContainsAddr reports whether a CIDR member of set id contains
	// addr. Named-port members never match an address test.
	ContainsAddr(id uint64, addr netip.Addr) bool
	// ContainsNamedPort reports whether set id has the named-port member
	// (addr, proto, port), or a CIDR member containing addr (which, in
	// the trie, matches every port).
	ContainsNamedPort(id uint64, addr netip.Addr, proto uint8, port uint16) bool
}

// IPSet is the content of one IP set.
type IPSet struct {
	// Nets are CIDR members.
	Nets []netip.Prefix
	// NamedPorts are (address, protocol, port) members.
	NamedPorts []NamedPortMember
}

// NamedPortMember is an IP set member that matches one address, protocol
// and port exactly.
type NamedPortMember struct {
	Addr     netip.Addr
	Protocol uint8
	Port     uint16
}

// IPSetMembers is an in-memory IPSets keyed by set ID.
type IPSetMembers map[uint64]IPSet

// ContainsAddr implements IPSets.
func (m IPSetMembers) ContainsAddr(id uint64, addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range m[id].Nets {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// ContainsNamedPort implements IPSets.
func (m IPSetMembers) ContainsNamedPort(id uint64, addr netip.Addr, proto uint8, port uint16) bool {
	if m.ContainsAddr(id, addr) {
		return true
	}
	addr = addr.Unmap()
	for _, np := range m[id].NamedPorts {
		if np.Addr.Unmap() == addr && np.Protocol == proto && np.Port == port {
			return true
		}
	}
	return false
}
