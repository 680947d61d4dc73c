package nat

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// SNAT says how the service stage source-NATs the flows whose replies
// would otherwise bypass this node: a client from outside the node sent
// to a backend on another node, and a workload whose backend is itself
// (hairpin). Their source becomes this node's address of the flow's
// family and a port of [PortMin, PortMax] that no other flow to the same
// backend uses. A family whose address is left invalid is not
// source-NATed.
type SNAT struct {
	// IPv4 is this node's IPv4 address, or the zero Addr.
	IPv4 netip.Addr
	// IPv6 is this node's IPv6 address, or the zero Addr.
	IPv6 netip.Addr
	// PortMin and PortMax bound the source ports; keep them outside the
	// host's ip_local_port_range, so that no socket of the host shares a
	// tuple with a translated flow.
	PortMin, PortMax uint16
}

// ErrInvalidSNAT is wrapped by every error about an SNAT setting the
// datapath cannot use.
var ErrInvalidSNAT = errors.New("invalid SNAT setting")

// DefaultSNATPortMin and DefaultSNATPortMax are the ports SNAT uses unless told otherwise: above
// Linux's default ip_local_port_range (32768-60999).
const (
	DefaultSNATPortMin = 61000
	DefaultSNATPortMax = 65535
)

// SNATMap is the service stage's source-NAT setting (bpf.SNAT, the
// datapath's sl_snat).
type SNATMap struct {
	m *maps.Map[uint32, bpf.SNAT]
}

// NewSNATMap wraps the one-entry array of the datapath's source-NAT
// setting.
func NewSNATMap(m *ebpf.Map) (*SNATMap, error) {
	if m == nil || m.Type() != ebpf.Array || m.MaxEntries() != 1 {
		return nil, fmt.Errorf("snat map: want a one-entry array")
	}
	typed, err := maps.New[uint32, bpf.SNAT](m)
	if err != nil {
		return nil, fmt.Errorf("snat map: %w", err)
	}
	return &SNATMap{m: typed}, nil
}

// Set writes s; ports left 0 take the defaults.
func (m *SNATMap) Set(s SNAT) error {
	v, err := s.value()
	if err != nil {
		return err
	}
	if err := m.m.Update(0, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write snat: %w", err)
	}
	return nil
}

// Get reads the setting.
func (m *SNATMap) Get() (SNAT, error) {
	v, err := m.m.Lookup(0)
	if err != nil {
		return SNAT{}, fmt.Errorf("read snat: %w", err)
	}
	var s SNAT
	if v.Addr4 != ([16]byte{}) {
		s.IPv4 = netip.AddrFrom16(v.Addr4).Unmap()
	}
	if v.Addr6 != ([16]byte{}) {
		s.IPv6 = netip.AddrFrom16(v.Addr6)
	}
	s.PortMin, s.PortMax = v.PortMin, v.PortMax
	return s, nil
}

// value is s as the datapath reads it.
func (s SNAT) value() (bpf.SNAT, error) {
	var v bpf.SNAT
	if s.PortMin == 0 && s.PortMax == 0 {
		s.PortMin, s.PortMax = DefaultSNATPortMin, DefaultSNATPortMax
	}
	if s.PortMin == 0 || s.PortMax < s.PortMin {
		return v, fmt.Errorf("%w: SNAT ports %d-%d", ErrInvalidSNAT, s.PortMin, s.PortMax)
	}
	if s.IPv4.IsValid() {
		if !s.IPv4.Is4() || s.IPv4.IsUnspecified() {
			return v, fmt.Errorf("%w: SNAT IPv4 address %v", ErrInvalidSNAT, s.IPv4)
		}
		v.Addr4 = s.IPv4.As16()
	}
	if s.IPv6.IsValid() {
		if !s.IPv6.Is6() || s.IPv6.Is4In6() || s.IPv6.IsUnspecified() || s.IPv6.Zone() != "" {
			return v, fmt.Errorf("%w: SNAT IPv6 address %v", ErrInvalidSNAT, s.IPv6)
		}
		v.Addr6 = s.IPv6.As16()
	}
	v.PortMin, v.PortMax = s.PortMin, s.PortMax
	return v, nil
}
