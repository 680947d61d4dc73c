package nat

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"

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
	// PortMin and PortMax bound the source ports. SNATMap.Set refuses
	// ports the host's own sockets may pick: inside the calling
	// namespace's net.ipv4.ip_local_port_range (which IPv6 shares) and
	// not in its ip_local_reserved_ports, so that no socket of the host
	// shares a tuple with a translated flow.
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

// Set writes s; ports left 0 take the defaults. Ports the host's sockets
// may take (see SNAT.PortMin) are an error wrapping ErrInvalidSNAT.
func (m *SNATMap) Set(s SNAT) error {
	v, err := s.value()
	if err != nil {
		return err
	}
	if err := checkHostPorts(v.PortMin, v.PortMax); err != nil {
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

// The files where Linux says which ports its sockets pick on their own
// and which of those it never picks; variables for tests.
var (
	localPortRangeFile    = "/proc/sys/net/ipv4/ip_local_port_range"
	localReservedPortFile = "/proc/sys/net/ipv4/ip_local_reserved_ports"
)

// checkHostPorts returns an error wrapping ErrInvalidSNAT when a port of
// [lo, hi] is one the host may give its own sockets: in its local port
// range and not reserved. A host without the files (not Linux, no /proc)
// is not checked.
func checkHostPorts(lo, hi uint16) error {
	raw, err := os.ReadFile(localPortRangeFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the host's local port range: %w", err)
	}
	var first, last int
	if _, err := fmt.Sscan(string(raw), &first, &last); err != nil {
		return fmt.Errorf("parse %s %q: %w", localPortRangeFile, raw, err)
	}
	reserved, err := os.ReadFile(localReservedPortFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read the host's reserved ports: %w", err)
	}
	isReserved, err := parsePortList(strings.TrimSpace(string(reserved)))
	if err != nil {
		return fmt.Errorf("parse %s: %w", localReservedPortFile, err)
	}
	for p := max(int(lo), first); p <= min(int(hi), last); p++ {
		if !isReserved(p) {
			return fmt.Errorf("%w: SNAT port %d (of %d-%d) is in the host's ip_local_port_range %d-%d and not in ip_local_reserved_ports: a host socket may take it",
				ErrInvalidSNAT, p, lo, hi, first, last)
		}
	}
	return nil
}

// parsePortList parses ip_local_reserved_ports' format, "" or ports and
// ranges separated by commas ("8080,61000-61999"), into a membership
// test.
func parsePortList(list string) (func(int) bool, error) {
	type span struct{ lo, hi int }
	var spans []span
	for part := range strings.SplitSeq(list, ",") {
		if part == "" {
			continue
		}
		loText, hiText, isRange := strings.Cut(part, "-")
		lo, err := strconv.ParseUint(loText, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", part, err)
		}
		hi := lo
		if isRange {
			if hi, err = strconv.ParseUint(hiText, 10, 16); err != nil {
				return nil, fmt.Errorf("port range %q: %w", part, err)
			}
		}
		spans = append(spans, span{int(lo), int(hi)})
	}
	return func(p int) bool {
		for _, s := range spans {
			if s.lo <= p && p <= s.hi {
				return true
			}
		}
		return false
	}, nil
}
