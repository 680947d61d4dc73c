package nat

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
)

// This file is the reference model of the datapath's service stage: which
// frontend a new flow meets and which backend it is given. The kernel
// implements exactly this; differential tests hold it to the model.

// Flow is the first packet of a flow as the service stage sees it.
type Flow struct {
	// Client is the packet's source address and port.
	Client netip.AddrPort
	// Dest is the address and port the client sent to: for a NodePort
	// the node address it hit, not the wildcard.
	Dest netip.AddrPort
	// Protocol is the IP protocol (ProtoTCP, ProtoUDP, ProtoSCTP).
	Protocol uint8
	// ToNode says Dest's address is one of this node's, where NodePort
	// frontends answer.
	ToNode bool
}

// Reason says why a flow got the backend it got, or none.
type Reason uint8

// Reasons of a Choice.
const (
	// ReasonNone: the flow meets no frontend; the service stage leaves
	// it alone.
	ReasonNone Reason = iota
	// ReasonHash: the backend at the flow's hash modulo the group's size.
	ReasonHash
	// ReasonMaglev: the backend of the service's Maglev table at the
	// flow's hash.
	ReasonMaglev
	// ReasonAffinity: the client's affinity record, still fresh and still
	// fitting the group.
	ReasonAffinity
	// ReasonNoBackend: the frontend has no backend in the group its
	// traffic policy allows; the datapath rejects the flow.
	ReasonNoBackend
	// ReasonSourceRange: the client is outside the service's source
	// ranges at an external frontend; the datapath refuses the flow.
	ReasonSourceRange
	// ReasonSourceUnknown: at connect time (ChooseConnect), the frontend
	// has source ranges and the socket no bound source to decide them
	// by; the connect is left untranslated, for the TC service stage.
	ReasonSourceUnknown
)

var reasonNames = [...]string{"none", "hash", "maglev", "affinity", "no-backend", "source-range", "source-unknown"}

// String returns the reason's name: none, hash, maglev, affinity,
// no-backend, source-range or source-unknown.
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Choice is what the service stage does with a new flow.
type Choice struct {
	// Service is the name of the service the flow reaches; "" with
	// ReasonNone.
	Service string
	// Frontend is the frontend the flow met.
	Frontend Frontend
	// Backend is the backend chosen; the zero Backend unless Reason is
	// ReasonHash, ReasonMaglev or ReasonAffinity.
	Backend Backend
	// Reason says how the backend was chosen, or why none was.
	Reason Reason
	// LocalOnly says the frontend's traffic policy is Local
	// (ExternalLocal at an External frontend, else InternalLocal): only
	// local backends are chosen.
	LocalOnly bool
	// Terminating says the group chosen from is the terminating backends,
	// because the policy allows no serving one.
	Terminating bool
}

// AffinityRecord is a client's affinity to a backend of a service, as the
// datapath keeps it (bpf.Affinity).
type AffinityRecord struct {
	// Backend is the backend the client last went to.
	Backend netip.AddrPort
	// LastUsed is when: CLOCK_MONOTONIC, as bpf_ktime_get_coarse_ns.
	LastUsed time.Duration
}

// FlowHash is the service stage's hash of flow: murmur3's 32-bit mixing
// of ten words, from seed 0, finalised as murmur3 is for 40 bytes. The
// words are the client's address as 16 bytes (IPv4-mapped for IPv4) read
// as four big-endian words, the destination address likewise, then
// clientPort<<16 | destPort, then the protocol.
func FlowHash(flow Flow) uint32 {
	var h uint32
	mix := func(k uint32) {
		k *= 0xcc9e2d51
		k = bits.RotateLeft32(k, 15)
		k *= 0x1b873593
		h ^= k
		h = bits.RotateLeft32(h, 13)
		h = h*5 + 0xe6546b64
	}
	for _, a := range []netip.Addr{flow.Client.Addr(), flow.Dest.Addr()} {
		b := a.As16()
		for i := 0; i < 16; i += 4 {
			mix(uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3]))
		}
	}
	mix(uint32(flow.Client.Port())<<16 | uint32(flow.Dest.Port()))
	mix(uint32(flow.Protocol))
	h ^= 40
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// Choose returns what the service stage does with new flow among
// services, which Table.Sync would accept; aff is the client's affinity
// record for the service the flow reaches, if it has one, and now is
// CLOCK_MONOTONIC. It is the model the datapath implements:
//
//  1. The frontend is the one at the flow's destination address, port and
//     protocol; failing that, when the flow is ToNode, the NodePort
//     frontend of that port and protocol (the family's unspecified
//     address). Without one the answer is ReasonNone. So is it for a flow
//     whose addresses are invalid, of two families or IPv4-mapped IPv6,
//     which the datapath drops before the service stage.
//  2. At an External frontend of a service with SourceRanges, a client
//     outside all of them is refused: ReasonSourceRange.
//  3. The group: with a Local policy (LocalOnly), the serving local
//     backends, else the terminating local ones; otherwise the serving
//     backends, else the terminating ones. An empty group is
//     ReasonNoBackend.
//  4. With Affinity, a record younger than Affinity (now - LastUsed in
//     unsigned 64-bit nanoseconds, so a record from the future is stale)
//     whose backend is in the group wins: ReasonAffinity.
//  5. With Maglev, for the serving group without LocalOnly, the service's
//     Maglev table at FlowHash modulo its size: ReasonMaglev.
//  6. Otherwise the group's backend at FlowHash modulo the group's size,
//     in slot order (serving local, serving remote, terminating local,
//     terminating remote; within a group by address and port):
//     ReasonHash.
func Choose(services map[string]Service, flow Flow, aff *AffinityRecord, now time.Duration) Choice {
	name, f, ok := findFrontend(services, flow)
	if !ok {
		return Choice{}
	}
	return choose(name, services[name], f, flow.Client.Addr(), true, FlowHash(flow), aff, now)
}

// flowValid reports whether flow is one the datapath's service stage
// sees: valid addresses without zones, of one family, no IPv4-mapped IPv6.
func flowValid(flow Flow) bool {
	c, d := flow.Client.Addr(), flow.Dest.Addr()
	return c.IsValid() && d.IsValid() && c.Is4() == d.Is4() && !c.Is4In6() && !d.Is4In6() &&
		c.Zone() == "" && d.Zone() == ""
}

// findFrontend returns the service and frontend flow meets (step 1 of
// Choose); the least name wins should two services claim one frontend.
func findFrontend(services map[string]Service, flow Flow) (string, Frontend, bool) {
	if !flowValid(flow) {
		return "", Frontend{}, false
	}
	exact := bpf.SvcKey{Addr: flow.Dest.Addr().As16(), Port: flow.Dest.Port(), Proto: flow.Protocol}
	wild := netip.IPv6Unspecified()
	if flow.Dest.Addr().Is4() {
		wild = netip.IPv4Unspecified()
	}
	node := bpf.SvcKey{Addr: wild.As16(), Port: flow.Dest.Port(), Proto: flow.Protocol}
	var best, bestNode string
	var bestF, bestNodeF Frontend
	found, foundNode := false, false
	for name, s := range services {
		for _, f := range s.Frontends {
			switch f.key() {
			case exact:
				// The wildcard itself is no node address: a NodePort
				// answers only where ToNode says the flow is to one.
				if f.NodePort && !flow.ToNode {
					continue
				}
				if !found || name < best {
					best, bestF, found = name, f, true
				}
			case node:
				if flow.ToNode && f.NodePort && (!foundNode || name < bestNode) {
					bestNode, bestNodeF, foundNode = name, f, true
				}
			}
		}
	}
	if found {
		return best, bestF, true
	}
	return bestNode, bestNodeF, foundNode
}

// choose is Choose's steps 2 to 6 for service s, met at frontend f, by
// a flow whose client is client (known: its real address, else what
// stands for an unbound socket, see ChooseConnect) and whose hash is
// hash.
func choose(name string, s Service, f Frontend, client netip.Addr, known bool, hash uint32, aff *AffinityRecord, now time.Duration) Choice {
	local := (f.External && s.ExternalLocal) || (!f.External && s.InternalLocal)
	c := Choice{Service: name, Frontend: f, LocalOnly: local}
	if f.External && len(s.SourceRanges) > 0 {
		if !known {
			c.Reason = ReasonSourceUnknown
			return c
		}
		in := false
		for _, p := range s.SourceRanges {
			in = in || p.Contains(client)
		}
		if !in {
			c.Reason = ReasonSourceRange
			return c
		}
	}
	list := s.ordered()
	v := s.value(f, 0, 0)
	serving, servingLocal := int(v.Serving), int(v.ServingLocal)
	var start, n int
	switch {
	case local && servingLocal > 0:
		n = servingLocal
	case !local && serving > 0:
		n = serving
	case local && v.TerminatingLocal > 0:
		start, n, c.Terminating = serving, int(v.TerminatingLocal), true
	case !local && v.Terminating > 0:
		start, n, c.Terminating = serving, int(v.Terminating), true
	default:
		c.Reason = ReasonNoBackend
		return c
	}
	if s.Affinity > 0 && aff != nil && uint64(now)-uint64(aff.LastUsed) < uint64(s.Affinity) {
		for _, b := range list {
			if netip.AddrPortFrom(b.Addr, b.Port) == aff.Backend && b.Terminating == c.Terminating && (b.Local || !local) {
				c.Backend, c.Reason = b, ReasonAffinity
				return c
			}
		}
	}
	h := hash
	if s.Maglev && !c.Terminating && !local {
		if idx, err := Maglev(maglevBackends(list), maglevSize); err == nil {
			c.Backend, c.Reason = list[idx[h%uint32(maglevSize)]], ReasonMaglev
			return c
		}
	}
	c.Backend, c.Reason = list[start+int(h%uint32(n))], ReasonHash
	return c
}

// Explain returns what the datapath's service stage does with new flow
// at time now (CLOCK_MONOTONIC, as bpf_ktime_get_coarse_ns), by Choose
// over the services the Table programmed and the client's affinity record
// in the affinity map. A record naming a backend ID the Table does not
// know is no record.
func (t *Table) Explain(flow Flow, now time.Duration) (Choice, error) {
	return t.explain(flow, flow.Client.Addr(), true, flow.Client.Addr(), FlowHash(flow), now)
}

// explain is Explain and ExplainConnect: flow finds the frontend, client
// (known or not, see choose) the affinity record, and hash the backend.
// explain is Explain and ExplainConnect: client is whom source ranges are
// decided for (known: the flow's real source), affClient whom affinity is
// kept for.
func (t *Table) explain(flow Flow, client netip.Addr, known bool, affClient netip.Addr, hash uint32, now time.Duration) (Choice, error) {
	if err := t.made(); err != nil {
		return Choice{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	services := make(map[string]Service, len(t.services))
	for name, p := range t.services {
		services[name] = p.svc
	}
	name, f, ok := findFrontend(services, flow)
	if !ok {
		return Choice{}, nil
	}
	p := t.services[name]
	var aff *AffinityRecord
	if p.svc.Affinity > 0 {
		v, err := t.affinity.Lookup(bpf.AffinityKey{SvcID: p.id, Client: affClient.As16()})
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
		case err != nil:
			return Choice{}, fmt.Errorf("explain flow: read affinity: %w", err)
		default:
			if b, ok := t.backendByID[v.BackendID]; ok {
				aff = &AffinityRecord{Backend: backendAddr(b), LastUsed: time.Duration(v.LastUsedNs)}
			}
		}
	}
	return choose(name, p.svc, f, client, known, hash, aff, now), nil
}
