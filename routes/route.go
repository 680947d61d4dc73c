package routes

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/sluicenet/sluice/bpf"
)

// Flags says what a route's prefix is to this node (enum sl_route_flags).
// A valid route has exactly one kind (FlagLocalWorkload, FlagLocalHost,
// FlagRemoteWorkload or FlagRemoteHost), and remote kinds may add
// FlagTunneled.
type Flags uint32

// Route flags; see the package documentation.
const (
	// FlagLocalWorkload: a workload on this node; Route.Ifindex is its
	// host-side interface, the only one its packets may arrive on.
	FlagLocalWorkload = Flags(bpf.RouteLocalWorkload)
	// FlagLocalHost: an address of this node. Host-endpoint policy sees
	// packets from or to it as from or to the host.
	FlagLocalHost = Flags(bpf.RouteLocalHost)
	// FlagRemoteWorkload: a workload on another node, Route.NextHop.
	FlagRemoteWorkload = Flags(bpf.RouteRemoteWorkload)
	// FlagRemoteHost: an address of another node, Route.NextHop.
	FlagRemoteHost = Flags(bpf.RouteRemoteHost)
	// FlagTunneled: reached through a tunnel to Route.NextHop; only with
	// a remote kind.
	FlagTunneled = Flags(bpf.RouteTunneled)
)

const (
	kindFlags   = FlagLocalWorkload | FlagLocalHost | FlagRemoteWorkload | FlagRemoteHost
	remoteFlags = FlagRemoteWorkload | FlagRemoteHost
	knownFlags  = kindFlags | FlagTunneled
)

// String joins the set flags with "|" ("remote_workload|tunneled"), as
// the generated bpf.RouteFlags names them, with unknown bits in hex.
func (f Flags) String() string { return bpf.RouteFlags(f).String() }

// Has reports whether every flag in want is set.
func (f Flags) Has(want Flags) bool {
	return f&want == want
}

// Route is what the datapath knows about the addresses of one prefix.
//
// Prefix may be IPv4 or IPv6. Its host bits are ignored (10.0.0.1/8 is
// 10.0.0.0/8), and an IPv4-mapped IPv6 prefix of at least 96 bits is the
// IPv4 prefix it maps (::ffff:10.0.0.0/104 is 10.0.0.0/8), as the map
// stores them alike; routes read back from a Map or Table carry the
// masked, IPv4 form. An IPv4-mapped next hop likewise counts as IPv4.
type Route struct {
	// Prefix is the destination the route covers.
	Prefix netip.Prefix
	// Flags are the route's kind and FlagTunneled.
	Flags Flags
	// Ifindex is the host-side interface of a FlagLocalWorkload route,
	// and zero for every other kind.
	Ifindex uint32
	// NextHop is the node behind a remote route, of the prefix's
	// family; the zero Addr for local routes.
	NextHop netip.Addr
}

// ErrInvalidRoute is wrapped by every error about a route the map cannot
// or must not hold (Route.Validate).
var ErrInvalidRoute = errors.New("invalid route")

// Validate reports why the datapath could not act on r, in an error
// wrapping ErrInvalidRoute, or nil:
//   - Prefix is the zero or an invalid Prefix;
//   - Flags has unknown bits, no kind, or more than one kind (a prefix is
//     not both local and remote, nor both a workload and a host);
//   - FlagTunneled without a remote kind;
//   - a FlagLocalWorkload route without Ifindex, or another kind with one;
//   - a remote route without NextHop, or with an unspecified, zoned or
//     other-family NextHop; a local route with a NextHop.
func (r Route) Validate() error {
	if err := r.problem(); err != nil {
		return fmt.Errorf("%w %s: %w", ErrInvalidRoute, r.Prefix, err)
	}
	return nil
}

func (r Route) problem() error {
	if !r.Prefix.IsValid() {
		return errors.New("no valid prefix")
	}
	f := r.Flags
	if unknown := f &^ knownFlags; unknown != 0 {
		return fmt.Errorf("unknown flags %#x", uint32(unknown))
	}
	switch kinds := f & kindFlags; {
	case kinds == 0:
		return fmt.Errorf("flags %s name no kind (LOCAL_WORKLOAD, LOCAL_HOST, REMOTE_WORKLOAD or REMOTE_HOST)", f)
	case bits.OnesCount32(uint32(kinds)) > 1:
		return fmt.Errorf("flags %s contradict: a route has one kind", f)
	}
	remote := f&remoteFlags != 0
	if f.Has(FlagTunneled) && !remote {
		return fmt.Errorf("flags %s: tunneled needs a remote kind", f)
	}
	switch local := f.Has(FlagLocalWorkload); {
	case local && r.Ifindex == 0:
		return errors.New("LOCAL_WORKLOAD route without the workload's ifindex")
	case !local && r.Ifindex != 0:
		return fmt.Errorf("%s route with ifindex %d: only local_workload routes have one", f, r.Ifindex)
	}
	if !remote {
		if r.NextHop.IsValid() {
			return fmt.Errorf("%s route with next hop %s: only remote routes have one", f, r.NextHop)
		}
		return nil
	}
	hop := r.NextHop.Unmap()
	switch {
	case !hop.IsValid():
		return fmt.Errorf("%s route without next hop", f)
	case hop.IsUnspecified():
		return fmt.Errorf("next hop %s is unspecified", hop)
	case hop.Zone() != "":
		return fmt.Errorf("next hop %s has a zone, which the map cannot hold", hop)
	case hop.Is4() != normalPrefix(r.Prefix).Addr().Is4():
		return fmt.Errorf("next hop %s is of the other family", hop)
	}
	return nil
}

// normalized returns r with the prefix and next hop in the form a map
// read returns them: masked, IPv4 unmapped.
func (r Route) normalized() Route {
	r.Prefix = normalPrefix(r.Prefix)
	r.NextHop = r.NextHop.Unmap()
	return r
}

// normalPrefix masks p and writes an IPv4-mapped prefix of at least 96
// bits as the IPv4 prefix it maps. Prefixes of fewer bits cannot be
// IPv4-mapped once masked: the mapping's ffff occupies bits 80 to 95.
func normalPrefix(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// String formats the route as "10.0.0.0/24 LOCAL_WORKLOAD if=5" or
// "10.1.0.0/16 REMOTE_WORKLOAD|TUNNELED via 192.168.0.2", without the
// prefix when it is the zero Prefix (a Map.Lookup result).
func (r Route) String() string {
	s := r.Flags.String()
	if r.Prefix != (netip.Prefix{}) {
		s = r.Prefix.String() + " " + s
	}
	if r.Ifindex != 0 {
		s += fmt.Sprintf(" if=%d", r.Ifindex)
	}
	if r.NextHop.IsValid() {
		s += " via " + r.NextHop.String()
	}
	return s
}

// comparePrefixes orders prefixes IPv4 first, then by address, then by
// length: a prefix before the longer ones inside it.
func comparePrefixes(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// compareRoutes orders routes by prefix (comparePrefixes).
func compareRoutes(a, b Route) int { return comparePrefixes(a.Prefix, b.Prefix) }
