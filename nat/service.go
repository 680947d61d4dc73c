package nat

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/sluicenet/sluice/bpf"
)

// Protocols a frontend may have.
const (
	ProtoTCP  = 6
	ProtoUDP  = 17
	ProtoSCTP = 132
)

// Frontend is one address, port and protocol a service is reached at.
type Frontend struct {
	// Addr is a ClusterIP, ExternalIP or load balancer address. For a
	// NodePort it is the family's unspecified address (0.0.0.0 or ::):
	// the frontend answers on every node address of that family.
	Addr netip.Addr
	// Port is the frontend port.
	Port uint16
	// Protocol is ProtoTCP, ProtoUDP or ProtoSCTP. An SCTP frontend's
	// backends have its port: the datapath does not translate SCTP ports
	// (its CRC32c covers them).
	Protocol uint8
	// NodePort marks a NodePort frontend (Addr unspecified); it is
	// External too.
	NodePort bool
	// External says clients outside the cluster reach the service here
	// (NodePort, ExternalIP, load balancer), so that ExternalLocal rather
	// than InternalLocal applies.
	External bool
}

// Backend is one endpoint of a service.
type Backend struct {
	// Addr and Port are where flows are translated to; Addr has the
	// family of the service's frontends.
	Addr netip.Addr
	Port uint16
	// Local says the backend runs on this node.
	Local bool
	// Terminating says the backend is shutting down: it keeps its flows
	// and gets new ones only while no serving backend is left.
	Terminating bool
	// Weight is the backend's share of a Maglev service's new flows,
	// relative to the other serving backends' weights; 0 means 1. Only
	// Maglev weighs backends, so a service without Maglev refuses weights
	// other than 0 and 1 rather than ignore them.
	Weight uint16
}

// Service is what the datapath needs of a Kubernetes service port.
type Service struct {
	// Frontends are where the service is reached; all of one family.
	Frontends []Frontend
	// Backends are its endpoints, of the frontends' family.
	Backends []Backend
	// ExternalLocal (externalTrafficPolicy Local) sends clients of
	// external frontends to local backends only, keeping their address.
	ExternalLocal bool
	// InternalLocal (internalTrafficPolicy Local) does the same at the
	// other frontends.
	InternalLocal bool
	// Affinity, when not 0, keeps a client on its backend while it sends
	// within this long (sessionAffinity ClientIP); whole seconds.
	Affinity time.Duration
	// Maglev chooses backends by consistent hashing of the flow.
	Maglev bool
	// SourceRanges, when not empty, admit only clients inside them
	// (loadBalancerSourceRanges) at the external frontends.
	SourceRanges []netip.Prefix
}

// ErrInvalidService is wrapped by every error about a Service the maps
// cannot hold.
var ErrInvalidService = errors.New("invalid service")

// maxBackends is the most backends a service may have: its list and the
// one it replaces share the slot space of its ID (slotBases).
const maxBackends = 1 << 15

// maglevSize is the entries of every Maglev table the datapath reads
// (SL_MAGLEV_SIZE).
const maglevSize = len(bpf.MaglevTable{}.BackendIds)

// slotBases are the two halves of a service's slot space; a new backend
// list goes to the half the current one does not use.
var slotBases = [2]uint32{0, 1 << 16}

// validate checks s and returns its family.
func (s *Service) validate() (bpf.Family, error) {
	if len(s.Frontends) == 0 {
		return 0, fmt.Errorf("%w: no frontend", ErrInvalidService)
	}
	if len(s.Backends) > maxBackends {
		return 0, fmt.Errorf("%w: %d backends, at most %d", ErrInvalidService, len(s.Backends), maxBackends)
	}
	if s.Affinity < 0 || s.Affinity%time.Second != 0 || s.Affinity/time.Second > math.MaxUint32 {
		return 0, fmt.Errorf("%w: affinity %v is not whole seconds within a u32", ErrInvalidService, s.Affinity)
	}
	fam := familyOf(s.Frontends[0].Addr)
	for _, f := range s.Frontends {
		if !f.Addr.IsValid() || f.Addr.Is4In6() || f.Addr.Zone() != "" {
			return 0, fmt.Errorf("%w: frontend address %v (IPv4-mapped addresses are written in the IPv4 form, and none has a zone)", ErrInvalidService, f.Addr)
		}
		if f.Port == 0 {
			return 0, fmt.Errorf("%w: frontend %v with port 0", ErrInvalidService, f.Addr)
		}
		if f.NodePort && !f.External {
			return 0, fmt.Errorf("%w: NodePort frontend port %d not External", ErrInvalidService, f.Port)
		}
		if familyOf(f.Addr) != fam {
			return 0, fmt.Errorf("%w: frontends of both families", ErrInvalidService)
		}
		if f.NodePort != f.Addr.IsUnspecified() {
			return 0, fmt.Errorf("%w: frontend %v: NodePort frontends and only they have the unspecified address", ErrInvalidService, f.Addr)
		}
		if f.Protocol != ProtoTCP && f.Protocol != ProtoUDP && f.Protocol != ProtoSCTP {
			return 0, fmt.Errorf("%w: frontend protocol %d", ErrInvalidService, f.Protocol)
		}
	}
	if i := firstRepeat(len(s.Frontends), func(i int) bpf.SvcKey { return s.Frontends[i].key() }); i >= 0 {
		f := s.Frontends[i]
		return 0, fmt.Errorf("%w: frontend %v port %d twice", ErrInvalidService, f.Addr, f.Port)
	}
	serving := 0
	for _, b := range s.Backends {
		if !b.Terminating {
			serving++
		}
		if b.Weight > 1 && !s.Maglev {
			return 0, fmt.Errorf("%w: backend %v has weight %d, but only Maglev weighs backends", ErrInvalidService, b.Addr, b.Weight)
		}
		if !b.Addr.IsValid() || b.Addr.Is4In6() || b.Addr.Zone() != "" || familyOf(b.Addr) != fam {
			return 0, fmt.Errorf("%w: backend %v is not an address of the frontends' family (without zone)", ErrInvalidService, b.Addr)
		}
		if b.Port == 0 {
			return 0, fmt.Errorf("%w: backend %v with port 0", ErrInvalidService, b.Addr)
		}
	}
	// SCTP's CRC32c covers its ports, which the datapath does not
	// recompute: an SCTP frontend's backends listen on its port.
	for _, f := range s.Frontends {
		if f.Protocol != ProtoSCTP {
			continue
		}
		for _, b := range s.Backends {
			if b.Port != f.Port {
				return 0, fmt.Errorf("%w: SCTP frontend port %d to backend %v port %d: SCTP ports are not translated", ErrInvalidService, f.Port, b.Addr, b.Port)
			}
		}
	}
	backend := func(i int) netip.AddrPort { return netip.AddrPortFrom(s.Backends[i].Addr, s.Backends[i].Port) }
	if i := firstRepeat(len(s.Backends), backend); i >= 0 {
		return 0, fmt.Errorf("%w: backend %v twice", ErrInvalidService, backend(i))
	}
	if s.Maglev && serving > maglevSize {
		return 0, fmt.Errorf("%w: %d serving backends, a Maglev table holds at most %d", ErrInvalidService, serving, maglevSize)
	}
	for _, p := range s.SourceRanges {
		if !p.IsValid() || p.Addr().Is4In6() || familyOf(p.Addr()) != fam {
			return 0, fmt.Errorf("%w: source range %v is not of the frontends' family", ErrInvalidService, p)
		}
	}
	return fam, nil
}

// firstRepeat returns the first i whose key(i) equals that of an earlier
// index below n, or -1: by comparing each pair for the few frontends and
// backends most services have (a Sync validates every changed service,
// and a map per service costs more than the pairs), by a map beyond.
func firstRepeat[T comparable](n int, key func(int) T) int {
	if n <= 16 {
		for i := 1; i < n; i++ {
			ki := key(i)
			for j := range i {
				if key(j) == ki {
					return i
				}
			}
		}
		return -1
	}
	seen := make(map[T]struct{}, n)
	for i := range n {
		k := key(i)
		if _, ok := seen[k]; ok {
			return i
		}
		seen[k] = struct{}{}
	}
	return -1
}

func familyOf(a netip.Addr) bpf.Family {
	if a.Is4() {
		return bpf.FamilyIPv4
	}
	return bpf.FamilyIPv6
}

// key is the frontend's sl_svcs key.
func (f Frontend) key() bpf.SvcKey {
	return bpf.SvcKey{Addr: f.Addr.As16(), Port: f.Port, Proto: f.Protocol}
}

// ordered returns s's backends in slot order: serving local, serving
// remote, terminating local, terminating remote; within a group by
// address and port, so that a list is written the same way every time.
func (s *Service) ordered() []Backend {
	return s.orderedTo(nil)
}

// orderedTo appends s's backends to out in slot order (ordered) and
// returns the result.
func (s *Service) orderedTo(out []Backend) []Backend {
	start := len(out)
	out = append(out, s.Backends...)
	rank := func(b Backend) int {
		r := 0
		if b.Terminating {
			r += 2
		}
		if !b.Local {
			r++
		}
		return r
	}
	slices.SortFunc(out[start:], func(a, b Backend) int {
		if c := cmp.Compare(rank(a), rank(b)); c != 0 {
			return c
		}
		return netip.AddrPortFrom(a.Addr, a.Port).Compare(netip.AddrPortFrom(b.Addr, b.Port))
	})
	return out
}

// value is the sl_svcs value of frontend f of s, with its list at base.
func (s *Service) value(f Frontend, id, base uint32) bpf.Svc {
	v := bpf.Svc{ID: id, SlotBase: base, AffinityTimeout: uint32(s.Affinity / time.Second)}
	for _, b := range s.Backends {
		switch {
		case !b.Terminating:
			v.Serving++
			if b.Local {
				v.ServingLocal++
			}
		default:
			v.Terminating++
			if b.Local {
				v.TerminatingLocal++
			}
		}
	}
	if f.NodePort {
		v.Flags |= bpf.SvcNodePort
	}
	if (f.External && s.ExternalLocal) || (!f.External && s.InternalLocal) {
		v.Flags |= bpf.SvcLocalOnly
	}
	if s.Affinity > 0 {
		v.Flags |= bpf.SvcAffinity
	}
	if s.Maglev {
		v.Flags |= bpf.SvcMaglev
	}
	if len(s.SourceRanges) > 0 && f.External {
		v.Flags |= bpf.SvcSourceRanges
	}
	return v
}

// rangeKey is the sl_lb_ranges key of source range p of service id.
func rangeKey(id uint32, p netip.Prefix) bpf.SvcRangeKey {
	p = p.Masked()
	k := bpf.SvcRangeKey{SvcID: id, Family: familyOf(p.Addr()), Addr: p.Addr().As16(), Prefixlen: 64 + uint32(p.Bits())}
	if p.Addr().Is4() {
		k.Prefixlen += 96
	}
	return k
}
