package routes

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/sluicenet/sluice/bpf"
)

// Table is the pure-Go reference of the routes map: the routes a Map
// would hold after Sync, looked up as the kernel's LPM trie looks up a
// full-length key. It works on the same keys as the kernel (family, then
// 128 address bits), so routes of one family never match addresses of
// the other, and it finds the longest match by trying each stored prefix
// length from the longest down rather than by walking a trie, so that it
// shares no algorithm with the kernel it checks.
//
// A Table is immutable and safe for concurrent use. A nil Table is an
// empty one.
type Table struct {
	// byLen[n] holds the routes of key prefix length n, by family and
	// masked address.
	byLen map[uint32]map[familyAddr]Route
	// lens are the keys of byLen, longest first.
	lens []uint32
	n    int
}

// NewTable returns the table of routes. Every route must be valid
// (Route.Validate) and no two may have the same prefix (after masking,
// and with IPv4-mapped prefixes counted as IPv4), as for Map.Sync.
func NewTable(routes []Route) (*Table, error) {
	entries, err := entriesOf(routes)
	if err != nil {
		return nil, fmt.Errorf("routes table: %w", err)
	}
	t := &Table{byLen: make(map[uint32]map[familyAddr]Route), n: len(entries)}
	for k, i := range entries {
		byAddr := t.byLen[k.Prefixlen]
		if byAddr == nil {
			byAddr = make(map[familyAddr]Route)
			t.byLen[k.Prefixlen] = byAddr
		}
		byAddr[familyAddrOf(k)] = routes[i].normalized()
	}
	t.lens = slices.Sorted(maps.Keys(t.byLen))
	slices.Reverse(t.lens)
	return t, nil
}

// familyAddr is what a Table matches once the prefix length is fixed.
type familyAddr struct {
	family bpf.Family
	addr   [16]byte
}

func familyAddrOf(k Key) familyAddr { return familyAddr{k.Family, k.Addr} }

// entriesOf encodes routes, validating each, and returns the index in
// routes of each key. Two routes with one key are an error.
func entriesOf(routes []Route) (map[Key]int, error) {
	entries := make(map[Key]int, len(routes))
	for i, r := range routes {
		k, _, err := r.Encode()
		if err != nil {
			return nil, err
		}
		if j, dup := entries[k]; dup {
			return nil, fmt.Errorf("%w: routes %q and %q have one prefix, %s", ErrInvalidRoute, routes[j], r, k)
		}
		entries[k] = i
	}
	return entries, nil
}

// Len returns the number of routes.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return t.n
}

// Lookup returns the route with the longest prefix that contains addr,
// as the datapath's sl_route_of finds it, and whether there is one. IPv4
// and IPv4-mapped IPv6 addresses are one address, looked up among IPv4
// routes only. The zero Addr has no route.
func (t *Table) Lookup(addr netip.Addr) (Route, bool) {
	k, ok := addrKey(addr)
	if !ok || t == nil {
		return Route{}, false
	}
	for _, n := range t.lens {
		k.Prefixlen = n
		if r, ok := t.byLen[n][familyAddrOf(k.canonical())]; ok {
			return r, true
		}
	}
	return Route{}, false
}

// Get returns the route of exactly prefix p, as Map.Get does.
func (t *Table) Get(p netip.Prefix) (Route, bool) {
	if !p.IsValid() || t == nil {
		return Route{}, false
	}
	k := keyOf(p)
	r, ok := t.byLen[k.Prefixlen][familyAddrOf(k)]
	return r, ok
}

// Routes returns the table's routes, normalized as a Map read returns
// them, sorted IPv4 first, then by address, then by prefix length.
func (t *Table) Routes() []Route {
	if t == nil {
		return nil
	}
	routes := make([]Route, 0, t.n)
	for _, byAddr := range t.byLen {
		for _, r := range byAddr {
			routes = append(routes, r)
		}
	}
	slices.SortFunc(routes, compareRoutes)
	return routes
}

// RPFAllows is the model of the datapath's reverse-path check of a
// workload interface (sl_rpf_ok of sl_route_of(saddr) in bpf/datapath.c):
// a packet from src that arrived on interface ifindex passes only if the
// longest route to src is a FlagLocalWorkload route whose Ifindex is
// ifindex. A source without a route fails, as does one whose route is of
// another kind, even if a shorter local workload route covers it: the
// datapath looks at the longest match alone.
func RPFAllows(t *Table, src netip.Addr, ifindex uint32) bool {
	r, ok := t.Lookup(src)
	return rpfAllows(r, ok, ifindex)
}

// rpfAllows is sl_rpf_ok over a lookup's result.
func rpfAllows(r Route, found bool, ifindex uint32) bool {
	return found && r.Flags.Has(FlagLocalWorkload) && r.Ifindex == ifindex
}

// HostSourceAllowed is the model of the reverse-path check of a host
// interface's TC ingress hook (sl_host_source_ok in bpf/datapath.c): a
// packet entering the node from outside passes only if the longest route
// to its source is neither FlagLocalWorkload nor FlagLocalHost, since a
// packet from one of the node's workloads or from the node itself never
// arrives from outside. A source without a route passes.
func HostSourceAllowed(t *Table, src netip.Addr) bool {
	r, ok := t.Lookup(src)
	return !ok || !(r.Flags.Has(FlagLocalWorkload) || r.Flags.Has(FlagLocalHost))
}

// HostFlags is the model of the datapath's host flags for host-endpoint
// policy (sl_host_flags in bpf/datapath.c): bpf.StateFlagSrcIsHost when
// the longest route to src is FlagLocalHost, bpf.StateFlagDstIsHost when
// the longest route to dst is. The datapath computes them on host
// interfaces only.
func HostFlags(t *Table, src, dst netip.Addr) bpf.StateFlags {
	var flags bpf.StateFlags
	if r, ok := t.Lookup(src); ok && r.Flags.Has(FlagLocalHost) {
		flags |= bpf.StateFlagSrcIsHost
	}
	if r, ok := t.Lookup(dst); ok && r.Flags.Has(FlagLocalHost) {
		flags |= bpf.StateFlagDstIsHost
	}
	return flags
}
