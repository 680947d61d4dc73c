// Package ipsets reads and writes sluice's IP set maps: the members map,
// the LPM trie bpf.MapIPSets ("sl_ipsets") that polprog's programs look
// rule IP sets and named ports up in, and the membership map derived from
// it (see Memberships). It is the only writer of their keys: the layouts
// below are what the programs expect, and nothing else needs to know them.
//
// # Layout
//
// A key is the generated mirror of struct sl_ipset_key in
// bpf/include/sluice/state.h (bpf.IPSetKey; the tests check it against the
// object's BTF): an LPM prefix length counted from the set ID on, the 64-bit
// set ID (big-endian), the member's address family, its 16-byte address
// (IPv4-mapped for IPv4), and a port and protocol that only named-port
// members use. Every prefix covers the set ID and the family, so a member
// only ever matches addresses of its own family: an IPv6 member ::/0 or
// ::ffff:0:0/95 never contains an IPv4 address, exactly as netip.Prefix
// says. A CIDR member's length is NetBits; a named-port member's is
// NamedPortBits, the whole key.
//
// Programs look an address up with the whole key and port and protocol 0,
// which finds CIDR members only (a named-port member's protocol is never
// 0), and a named port with the packet's port and protocol, which finds the
// exact member or a CIDR member covering the address: in a rule, a CIDR
// member of a named-port set matches every port. Members is the pure-Go
// reference of both lookups, and a differential test holds the kernel to it.
//
// # Memberships
//
// A classified run of polprog asks about up to eight sets per dimension
// of the same address; one lookup per set would be most of its cost. So
// the package also writes the membership map bpf.MapIPSetMembers
// ("sl_ipsetm"), an LPM trie with a key like the members map's without the
// set ID (MemberKey): one entry per distinct member of any set, whose
// value (MemberValue) lists every set a lookup ending there is in. The
// writer adds to each entry the sets of every shorter CIDR member covering
// it, and to a named-port entry those covering its address, so the
// longest match alone answers, for address and named-port lookups alike.
// A value has 32 slots: set ID id is in slot id % 32, which holds its ID
// when it is the entry's only set there; a slot two or more of the entry's
// sets fall into is marked shared, and a program asks the members map
// about each set of it instead (Map.Lookup is the reference).
//
// The membership map holds two generations, and bpf.MapIPSetGen names the
// one in use. Sync, Add and Remove write the idle one where it differs,
// then switch with one write: a program reads the generation once, so a
// classified run sees a change of set contents whole or not at all. The
// generation just left is rewritten only after an RCU grace period, when
// no packet can still be reading it. The members map itself is written
// entry by entry as before; inline rule checks read it, and a change is
// there a series of single-member changes (see Sync).
//
// # Set IDs
//
// A rule names a set by a 64-bit ID. NameID derives it from the set's name
// (its SHA-256), so IDs are stable across restarts and agree between agents
// without shared state; Names hands them out and refuses a second name with
// the same ID.
//
// # Kernel features
//
// BPF_MAP_TYPE_LPM_TRIE (Linux 4.11), created with BPF_F_NO_PREALLOC as the
// datapath declares it; the batch commands where the kernel has them
// (maps.Map falls back to per-element syscalls).
package ipsets
