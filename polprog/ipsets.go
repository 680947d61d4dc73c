package polprog

import (
	"net/netip"

	"github.com/sluicenet/sluice/ipsets"
)

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

// IPSet is the content of one IP set: package ipsets' Set, named here so
// that policy code reads in one package.
type IPSet = ipsets.Set

// NamedPortMember is an IP set member that matches one address, protocol
// and port exactly: package ipsets' NamedPort.
type NamedPortMember = ipsets.NamedPort

// IPSetMembers is an in-memory IPSets keyed by set ID, the reference of
// the trie's lookups: package ipsets' Members, which Map.Sync writes.
type IPSetMembers = ipsets.Members
