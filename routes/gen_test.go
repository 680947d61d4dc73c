package routes

import (
	"math/rand/v2"
	"net/netip"
)

// routeGen makes random routes that nest and overlap: every prefix and
// probe address shares a random number of leading bits with one of a few
// base addresses, so routes contain one another, sit side by side, and
// probes land inside, next to and outside them.
type routeGen struct {
	rng   *rand.Rand
	bases []netip.Addr
}

func newRouteGen(rng *rand.Rand) *routeGen {
	g := &routeGen{rng: rng}
	for range 4 {
		g.bases = append(g.bases, g.randomAddr(true))
	}
	for range 3 {
		g.bases = append(g.bases, g.randomAddr(false))
	}
	g.bases = append(g.bases,
		// IPv6 prefixes of ::, and of an IPv4-mapped address, cover
		// IPv4 space (or are IPv4 prefixes, from 96 bits on).
		netip.IPv6Unspecified(),
		netip.AddrFrom16(g.randomAddr(true).As16()),
	)
	return g
}

func (g *routeGen) randomAddr(v4 bool) netip.Addr {
	if v4 {
		var b [4]byte
		fillRandom(g.rng, b[:])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	fillRandom(g.rng, b[:])
	return netip.AddrFrom16(b)
}

// near returns an address that shares a random number of leading bits
// with base, of base's family, the rest random.
func (g *routeGen) near(base netip.Addr) netip.Addr {
	keep := g.rng.IntN(base.BitLen() + 1)
	other := g.randomAddr(base.Is4())
	kept := netip.PrefixFrom(base, keep).Masked().Addr().AsSlice()
	rest := other.AsSlice()
	for i := range kept {
		bitsKept := min(max(keep-8*i, 0), 8)
		mask := byte(0xff << (8 - bitsKept))
		kept[i] = kept[i]&mask | rest[i]&^mask
	}
	a, _ := netip.AddrFromSlice(kept)
	return a
}

func (g *routeGen) base() netip.Addr { return g.bases[g.rng.IntN(len(g.bases))] }

// prefixLen draws a length for an address of bitLen bits: whole-address
// and zero lengths often, any other length otherwise.
func (g *routeGen) prefixLen(bitLen int) int {
	switch n := g.rng.IntN(20); {
	case n < 3:
		return bitLen
	case n < 4:
		return 0
	default:
		return g.rng.IntN(bitLen + 1)
	}
}

// prefix returns a random prefix near a base, host bits sometimes set.
func (g *routeGen) prefix() netip.Prefix {
	a := g.near(g.base())
	p := netip.PrefixFrom(a, g.prefixLen(a.BitLen()))
	if g.rng.IntN(2) == 0 {
		return p.Masked()
	}
	return p
}

// route returns a valid route of a random kind for p. Interfaces come
// from a small range, so that the reverse-path check meets both the
// right and a wrong interface.
func (g *routeGen) route(p netip.Prefix) Route {
	v4 := normalPrefix(p).Addr().Is4()
	hop := func() netip.Addr {
		for {
			if a := g.randomAddr(v4); !a.IsUnspecified() {
				return a
			}
		}
	}
	switch g.rng.IntN(4) {
	case 0:
		return Route{Prefix: p, Flags: FlagLocalWorkload, Ifindex: 1 + g.rng.Uint32N(8)}
	case 1:
		return Route{Prefix: p, Flags: FlagLocalHost}
	case 2:
		r := Route{Prefix: p, Flags: FlagRemoteWorkload, NextHop: hop()}
		if g.rng.IntN(3) == 0 {
			r.Flags |= FlagTunneled
		}
		return r
	default:
		return Route{Prefix: p, Flags: FlagRemoteHost, NextHop: hop()}
	}
}

// routes returns up to n routes of distinct prefixes, each default route
// included with probability one half.
func (g *routeGen) routes(n int) []Route {
	seen := make(map[Key]bool)
	var routes []Route
	add := func(p netip.Prefix) {
		if k := keyOf(p); !seen[k] {
			seen[k] = true
			routes = append(routes, g.route(p))
		}
	}
	if g.rng.IntN(2) == 0 {
		add(pfx("0.0.0.0/0"))
	}
	if g.rng.IntN(2) == 0 {
		add(pfx("::/0"))
	}
	for len(routes) < n {
		add(g.prefix())
	}
	return routes
}

// probe returns an address to look up: inside a route, at or just past
// one of its ends, near a base, or anywhere; IPv4 sometimes in its
// IPv4-mapped IPv6 form.
func (g *routeGen) probe(routes []Route) netip.Addr {
	var a netip.Addr
	switch n := g.rng.IntN(10); {
	case n < 4 && len(routes) > 0:
		p := routes[g.rng.IntN(len(routes))].Prefix
		a = g.near(p.Masked().Addr())
		// Keep the prefix's bits, so that a is inside it.
		a = insidePrefix(p, a)
	case n < 6 && len(routes) > 0:
		p := routes[g.rng.IntN(len(routes))].Prefix.Masked()
		first, last := p.Addr(), lastAddr(p)
		for _, c := range []netip.Addr{first, last, first.Prev(), last.Next()} {
			if c.IsValid() && g.rng.IntN(2) == 0 {
				a = c
				break
			}
		}
		if !a.IsValid() {
			a = last
		}
	case n < 8:
		a = g.near(g.base())
	default:
		a = g.randomAddr(g.rng.IntN(2) == 0)
	}
	if a.Is4() && g.rng.IntN(4) == 0 {
		a = netip.AddrFrom16(a.As16())
	}
	return a
}

// insidePrefix returns a with its first p.Bits() bits replaced by p's.
func insidePrefix(p netip.Prefix, a netip.Addr) netip.Addr {
	pb, ab := p.Masked().Addr().AsSlice(), a.AsSlice()
	for i := range pb {
		kept := min(max(p.Bits()-8*i, 0), 8)
		mask := byte(0xff << (8 - kept))
		pb[i] = pb[i]&mask | ab[i]&^mask
	}
	out, _ := netip.AddrFromSlice(pb)
	return out
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := range b {
		kept := min(max(p.Bits()-8*i, 0), 8)
		b[i] |= ^byte(0xff << (8 - kept))
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
