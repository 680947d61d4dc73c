package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/ipsets"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// State is the desired-state file: everything the agent programs. Field
// names are matched case-insensitively, as encoding/json does; a field the
// schema does not have is an error, so a typo is reported rather than
// ignored.
type State struct {
	// Interfaces are the interfaces the datapath polices, by name in the
	// agent's network namespace.
	Interfaces map[string]InterfaceState `json:"interfaces"`
	// Endpoints are the workloads behind Interfaces: their addresses
	// become FlagLocalWorkload routes, which the reverse-path check of
	// their interface is decided by.
	Endpoints []Endpoint `json:"endpoints"`
	// Routes are the other prefixes the datapath must know: this node's
	// addresses, and workloads and nodes elsewhere.
	Routes []Route `json:"routes"`
	// Services are load-balanced by the datapath's service stage, by name.
	Services map[string]Service `json:"services"`
	// IPSets are the IP sets policies match, by name. A rule names a set
	// by its ID, ipsets.NameID(name), which the agent logs for every set.
	IPSets map[string]IPSet `json:"ipsets"`
	// SNAT is how flows whose replies would bypass the node are source
	// NATed (nat.SNAT); nil leaves the setting alone.
	SNAT *SNAT `json:"snat,omitempty"`
}

// InterfaceState is one interface's configuration (datapath.Interface).
type InterfaceState struct {
	// Kind is "workload" (the host side of a workload's veth) or "host".
	Kind string `json:"kind"`
	// Ingress is the policy of what reaches the endpoint, in polprog's
	// JSON form: its Go field names, which match case-insensitively
	// ("tiers", "endRuleID"), actions and end actions by name, port
	// ranges as "80" or "8000-8080", IP sets by ID.
	Ingress polprog.Rules `json:"ingress"`
	// Egress is the policy of what the endpoint sends.
	Egress polprog.Rules `json:"egress"`
}

// Endpoint is a workload's addresses and the interface it sits behind.
type Endpoint struct {
	// Interface names the host side of the workload's interface; it must
	// be one of State.Interfaces.
	Interface string `json:"interface"`
	// Addrs are the workload's addresses, IPv4 or IPv6.
	Addrs []netip.Addr `json:"addrs"`
}

// Route is a prefix that is not a local workload's (routes.Route).
type Route struct {
	// Prefix is the destination the route covers.
	Prefix netip.Prefix `json:"prefix"`
	// Kind is "local-host" (an address of this node), "remote-workload"
	// or "remote-host".
	Kind string `json:"kind"`
	// NextHop is the node behind a remote route.
	NextHop netip.Addr `json:"nextHop"`
	// Tunneled says a remote route is reached through a tunnel.
	Tunneled bool `json:"tunneled"`
}

// Service is a service (nat.Service), with protocols by name and affinity
// in seconds.
type Service struct {
	// Frontends are where the service is reached.
	Frontends []Frontend `json:"frontends"`
	// Backends are its endpoints.
	Backends []Backend `json:"backends"`
	// ExternalLocal is externalTrafficPolicy Local.
	ExternalLocal bool `json:"externalLocal"`
	// InternalLocal is internalTrafficPolicy Local.
	InternalLocal bool `json:"internalLocal"`
	// AffinitySeconds, when not 0, is sessionAffinity ClientIP's timeout.
	AffinitySeconds uint32 `json:"affinitySeconds"`
	// Maglev chooses backends by consistent hashing.
	Maglev bool `json:"maglev"`
	// SourceRanges are loadBalancerSourceRanges.
	SourceRanges []netip.Prefix `json:"sourceRanges"`
}

// Frontend is one address, port and protocol of a service (nat.Frontend).
type Frontend struct {
	// Addr is the frontend address; the unspecified address of a NodePort.
	Addr netip.Addr `json:"addr"`
	// Port is the frontend port.
	Port uint16 `json:"port"`
	// Protocol is "tcp", "udp" or "sctp".
	Protocol string `json:"protocol"`
	// NodePort marks a NodePort frontend.
	NodePort bool `json:"nodePort"`
	// External marks a frontend clients outside the cluster reach.
	External bool `json:"external"`
}

// Backend is one endpoint of a service (nat.Backend).
type Backend struct {
	// Addr and Port are where flows are translated to.
	Addr netip.Addr `json:"addr"`
	// Port is the backend port.
	Port uint16 `json:"port"`
	// Local says the backend runs on this node.
	Local bool `json:"local"`
	// Terminating says the backend gets no new flows while a serving one
	// is left.
	Terminating bool `json:"terminating"`
	// Weight is a Maglev service's share; 0 means 1.
	Weight uint16 `json:"weight"`
}

// IPSet is the content of one IP set (ipsets.Set).
type IPSet struct {
	// Nets are CIDR members.
	Nets []netip.Prefix `json:"nets"`
	// NamedPorts are (address, protocol, port) members.
	NamedPorts []NamedPort `json:"namedPorts"`
}

// NamedPort is a named-port member of an IP set (ipsets.NamedPort).
type NamedPort struct {
	// Addr is the endpoint's address.
	Addr netip.Addr `json:"addr"`
	// Protocol is "tcp", "udp", "sctp" or a number.
	Protocol string `json:"protocol"`
	// Port is the port.
	Port uint16 `json:"port"`
}

// SNAT is the node's source-NAT setting (nat.SNAT).
type SNAT struct {
	// IPv4 and IPv6 are the node's addresses; a zero one is not NATed.
	IPv4 netip.Addr `json:"ipv4"`
	// IPv6 is the node's IPv6 address.
	IPv6 netip.Addr `json:"ipv6"`
	// PortMin and PortMax bound the source ports (0: the defaults).
	PortMin uint16 `json:"portMin"`
	// PortMax is the highest source port.
	PortMax uint16 `json:"portMax"`
}

// desired is a State checked and turned into the library's types: what
// one apply programs.
type desired struct {
	ifaces   map[string]datapath.Interface
	routes   map[netip.Prefix]routes.Route // ifindex 0 for local workloads until resolved
	endpoint map[netip.Prefix]string       // local workload route's interface name
	services map[string]nat.Service
	sets     ipsets.Members
	setNames map[uint64]string
	snat     *nat.SNAT
}

// parseState decodes and checks a state file. Every error names the field
// that is wrong, as a JSON path.
func parseState(data []byte) (*desired, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s State
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode: data after the state object")
	}
	// encoding/json keeps the last of two equal keys without a word; a
	// name given twice is more likely a bad merge than intent.
	if err := checkDuplicates(data); err != nil {
		return nil, err
	}
	return s.check()
}

// maxStateSize bounds the state file the agent reads, so that a runaway
// writer cannot make it allocate without limit.
const maxStateSize = 64 << 20

// readState reads a state file of at most maxStateSize bytes.
func readState(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxStateSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxStateSize {
		return nil, fmt.Errorf("larger than %d bytes", maxStateSize)
	}
	return data, nil
}

// checkDuplicates returns an error naming, as a JSON path, the first key
// given twice in one object of a document that decodes. The values of the
// top-level interfaces, services and ipsets are maps by name, whose keys
// are compared exactly (interface names are case-sensitive); every other
// object is a struct, whose fields encoding/json matches case-insensitively.
func checkDuplicates(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func(path string, isMap bool) error
	walk = func(path string, isMap bool) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				key := kt.(string)
				var sub string
				switch {
				case isMap:
					sub = fmt.Sprintf("%s[%q]", path, key)
				case path == "":
					sub = strings.ToLower(key)
				default:
					sub = path + "." + key
				}
				norm := key
				if !isMap {
					norm = strings.ToLower(key)
				}
				if seen[norm] {
					return fmt.Errorf("%s: given twice", sub)
				}
				seen[norm] = true
				childMap := path == "" && (norm == "interfaces" || norm == "services" || norm == "ipsets")
				if err := walk(sub, childMap); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d]", path, i), false); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return nil
	}
	return walk("", false)
}

func (s *State) check() (*desired, error) {
	d := &desired{
		ifaces:   map[string]datapath.Interface{},
		routes:   map[netip.Prefix]routes.Route{},
		endpoint: map[netip.Prefix]string{},
		services: map[string]nat.Service{},
		setNames: map[uint64]string{},
	}
	var names ipsets.Names
	named := map[string]ipsets.Set{}
	for _, name := range sortedKeys(s.IPSets) {
		set, field := s.IPSets[name], fmt.Sprintf("ipsets[%q]", name)
		var out ipsets.Set
		for i, n := range set.Nets {
			if !n.IsValid() {
				return nil, fmt.Errorf("%s.nets[%d]: not a prefix", field, i)
			}
			out.Nets = append(out.Nets, n)
		}
		for i, np := range set.NamedPorts {
			proto, err := polprog.ParseProtocol(np.Protocol)
			if err != nil || proto == 0 || !np.Addr.IsValid() {
				return nil, fmt.Errorf("%s.namedPorts[%d]: want an address and a protocol other than 0", field, i)
			}
			out.NamedPorts = append(out.NamedPorts, ipsets.NamedPort{Addr: np.Addr, Protocol: proto, Port: np.Port})
		}
		named[name] = out
		d.setNames[ipsets.NameID(name)] = name
	}
	sets, err := names.Members(named)
	if err != nil {
		return nil, fmt.Errorf("ipsets: %w", err)
	}
	if _, err := sets.Keys(); err != nil {
		return nil, fmt.Errorf("ipsets: %w", err)
	}
	d.sets = sets

	for _, name := range sortedKeys(s.Interfaces) {
		st, field := s.Interfaces[name], fmt.Sprintf("interfaces[%q]", name)
		var cfg datapath.Interface
		switch st.Kind {
		case "workload":
			cfg.Kind = datapath.Workload
		case "host":
			cfg.Kind = datapath.Host
		default:
			return nil, fmt.Errorf("%s.kind: %q is neither workload nor host", field, st.Kind)
		}
		for _, dir := range []struct {
			name  string
			rules polprog.Rules
		}{{"ingress", st.Ingress}, {"egress", st.Egress}} {
			if _, err := polprog.NewEvaluator(dir.rules); err != nil {
				return nil, fmt.Errorf("%s.%s: %w", field, dir.name, err)
			}
			for _, id := range setIDs(dir.rules) {
				if _, ok := d.setNames[id]; !ok {
					return nil, fmt.Errorf("%s.%s: IP set ID %d is none of ipsets' (ipsets.NameID of the set's name)", field, dir.name, id)
				}
			}
		}
		cfg.Ingress, cfg.Egress = st.Ingress, st.Egress
		d.ifaces[name] = cfg
	}

	for i, ep := range s.Endpoints {
		field := fmt.Sprintf("endpoints[%d]", i)
		if _, ok := d.ifaces[ep.Interface]; !ok {
			return nil, fmt.Errorf("%s.interface: %q is none of interfaces", field, ep.Interface)
		}
		for j, a := range ep.Addrs {
			if !a.IsValid() {
				return nil, fmt.Errorf("%s.addrs[%d]: not an address", field, j)
			}
			p := netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			if _, dup := d.routes[p]; dup {
				return nil, fmt.Errorf("%s.addrs[%d]: %s given twice", field, j, a)
			}
			// Ifindex 1 stands for the interface's until apply resolves it,
			// so that Validate sees a complete local workload route.
			r := routes.Route{Prefix: p, Flags: routes.FlagLocalWorkload, Ifindex: 1}
			if err := r.Validate(); err != nil {
				return nil, fmt.Errorf("%s.addrs[%d]: %w", field, j, err)
			}
			d.routes[p], d.endpoint[p] = r, ep.Interface
		}
	}
	for i, rt := range s.Routes {
		field := fmt.Sprintf("routes[%d]", i)
		var flags routes.Flags
		switch rt.Kind {
		case "local-host":
			flags = routes.FlagLocalHost
		case "remote-workload":
			flags = routes.FlagRemoteWorkload
		case "remote-host":
			flags = routes.FlagRemoteHost
		default:
			return nil, fmt.Errorf("%s.kind: %q is none of local-host, remote-workload, remote-host", field, rt.Kind)
		}
		if rt.Tunneled {
			flags |= routes.FlagTunneled
		}
		r := routes.Route{Prefix: rt.Prefix.Masked(), Flags: flags, NextHop: rt.NextHop}
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		if _, dup := d.routes[r.Prefix]; dup {
			return nil, fmt.Errorf("%s.prefix: %s given twice", field, r.Prefix)
		}
		d.routes[r.Prefix] = r
	}

	for _, name := range sortedKeys(s.Services) {
		svc, err := s.Services[name].toNAT()
		if err != nil {
			return nil, fmt.Errorf("services[%q].%w", name, err)
		}
		d.services[name] = svc
	}
	if s.SNAT != nil {
		d.snat = &nat.SNAT{IPv4: s.SNAT.IPv4, IPv6: s.SNAT.IPv6, PortMin: s.SNAT.PortMin, PortMax: s.SNAT.PortMax}
	}
	return d, nil
}

// toNAT converts a service; its errors start with the field's name within
// the service.
func (s Service) toNAT() (nat.Service, error) {
	out := nat.Service{
		ExternalLocal: s.ExternalLocal, InternalLocal: s.InternalLocal, Maglev: s.Maglev,
		Affinity: time.Duration(s.AffinitySeconds) * time.Second, SourceRanges: s.SourceRanges,
	}
	if len(s.Frontends) == 0 {
		return nat.Service{}, errors.New("frontends: a service needs one")
	}
	for i, f := range s.Frontends {
		var proto uint8
		switch f.Protocol {
		case "tcp":
			proto = nat.ProtoTCP
		case "udp":
			proto = nat.ProtoUDP
		case "sctp":
			proto = nat.ProtoSCTP
		default:
			return nat.Service{}, fmt.Errorf("frontends[%d].protocol: %q is none of tcp, udp, sctp", i, f.Protocol)
		}
		if !f.Addr.IsValid() {
			return nat.Service{}, fmt.Errorf("frontends[%d].addr: not an address", i)
		}
		out.Frontends = append(out.Frontends, nat.Frontend{Addr: f.Addr, Port: f.Port, Protocol: proto, NodePort: f.NodePort, External: f.External})
	}
	for i, b := range s.Backends {
		if !b.Addr.IsValid() {
			return nat.Service{}, fmt.Errorf("backends[%d].addr: not an address", i)
		}
		out.Backends = append(out.Backends, nat.Backend{Addr: b.Addr, Port: b.Port, Local: b.Local, Terminating: b.Terminating, Weight: b.Weight})
	}
	return out, nil
}

// setIDs returns the IP set IDs rules match on, in every tier and field.
func setIDs(r polprog.Rules) []uint64 {
	var ids []uint64
	policies := slices.Clone(r.Profiles)
	for _, tiers := range [][]polprog.Tier{r.Tiers, r.PreDNATTiers, r.ApplyOnForwardTiers} {
		for _, t := range tiers {
			policies = append(policies, t.Policies...)
		}
	}
	for _, p := range policies {
		for _, rule := range p.Rules {
			for _, l := range [][]uint64{rule.SrcIPSets, rule.NotSrcIPSets, rule.DstIPSets, rule.NotDstIPSets,
				rule.SrcNamedPorts, rule.NotSrcNamedPorts, rule.DstNamedPorts, rule.NotDstNamedPorts} {
				ids = append(ids, l...)
			}
		}
	}
	return ids
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
