package datapath

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// Layout versions of the maps in the registry. Bump one whenever the C
// layout or meaning of that map's entries changes, and give openState an
// upgrade from the previous version (maps.WithUpgrade).
const (
	ifacesVersion   = 1 // struct sl_iface
	countersVersion = 4 // struct sl_reason_counts; 2: the IPv6 reasons (upgradeCountersV1); 3: the service reasons (upgradeCountersV2); 4: the FIB step's reasons (upgradeCountersV3)
	ruleHitsVersion = 1 // rule ID to hits
	ipsetsVersion   = 2 // struct sl_ipset_key; 2: with the family (upgradeIPSetKey)
	ipsetmVersion   = 1 // struct sl_ipsetm_key to struct sl_ipsetm_value, and sl_ipsetgen
	routesVersion   = 1 // struct sl_route_key to struct sl_route
	ctVersion       = 1 // struct sl_ct_key to struct sl_ct_value
	metaVersion     = 1 // struct sl_meta
	lbVersion       = 1 // the load-balancing maps (nat.h)
	sockNATVersion  = 1 // struct sl_sock_nat (sock.h)
)

// ctName is the conntrack table's name in the registry; the object only
// holds its template, inside sl_ct_tables.
const ctName = "sl_ct"

// state holds the maps that carry state across restarts: pinned in the
// registry under Options.PinDir, or, without one, this process's own.
type state struct {
	pinDir                                           string
	ifaces, counters, ruleHits, ipsets, routes, meta *ebpf.Map
	// ipsetMembers and ipsetGen are the IP set membership map, written
	// with ipsets, and its generation (package ipsets).
	ipsetMembers, ipsetGen *ebpf.Map
	// xdpIfaces is the XDP object's interface map (bpf.MapXDPIfaces).
	xdpIfaces *ebpf.Map
	// The load-balancing maps (nat.h).
	svcs, lbSlots, backends, affinity, lbRanges, lbMembers, maglev, snat *ebpf.Map
	// sockNAT is connect-time balancing's socket storage (sock.h):
	// shared by every generation's sock programs, so a socket balanced
	// before a restart still shows its frontend after it.
	sockNAT *ebpf.Map
	// ct is the live conntrack table. draining, when not nil, is a table
	// an interrupted resize left to be emptied into ct.
	ct, draining *ebpf.Map
	// ctSpec is the tables' template, sized; ctParams its registry entry.
	ctSpec   *ebpf.MapSpec
	ctParams maps.Params
	// byName holds the maps above that openState opened from the
	// registry, by their names in the object: the programs' replacements,
	// and what close closes.
	byName map[string]*ebpf.Map
	// dir is PinDir, open for flock: processes sharing the pinned maps
	// take turns at the interface entries and the generations.
	dir *os.File
}

// registryMap is a map of the registry and the layout version it is
// opened at.
type registryMap struct {
	spec    *ebpf.MapSpec
	version uint32
}

// registryMaps pairs every map the registry opens with its layout version
// (conntrack's tables aside: openConntrack names them): the one list
// openState and PinnedParams read the versions from. xdp may be nil.
func registryMaps(specs *bpf.Specs, sock *bpf.SockSpecs, xdp *bpf.XDPSpecs) []registryMap {
	out := []registryMap{
		{specs.SlIfaces, ifacesVersion},
		{specs.SlCounters, countersVersion},
		{specs.SlRuleHits, ruleHitsVersion},
		{specs.SlIpsets, ipsetsVersion},
		{specs.SlIpsetm, ipsetmVersion},
		{specs.SlIpsetgen, ipsetmVersion},
		{specs.SlRoutes, routesVersion},
		{specs.SlMeta, metaVersion},
		{specs.SlSvcs, lbVersion},
		{specs.SlLbSlots, lbVersion},
		{specs.SlBackends, lbVersion},
		{specs.SlAffinity, lbVersion},
		{specs.SlLbRanges, lbVersion},
		{specs.SlMembers, lbVersion},
		{specs.SlMaglev, lbVersion},
		{specs.SlSnat, lbVersion},
		{sock.SlSockNat, sockNATVersion},
	}
	if xdp != nil {
		out = append(out, registryMap{xdp.SlXdpifaces, xdpIfacesVersion})
	}
	return out
}

// openState opens or creates every state map of both objects (specs, the
// TC datapath's; sock, connect-time balancing's) with the sizes of opts.
func openState(specs *bpf.Specs, sock *bpf.SockSpecs, opts Options) (*state, error) {
	s := &state{pinDir: opts.PinDir}
	if opts.PinDir != "" {
		if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
			return nil, fmt.Errorf("pin directory: %w", err)
		}
		dir, err := os.Open(opts.PinDir)
		if err != nil {
			return nil, fmt.Errorf("pin directory: %w", err)
		}
		s.dir = dir
	}
	unlock, err := s.lock()
	if err != nil {
		s.close()
		return nil, err
	}
	defer unlock()
	versions := map[*ebpf.MapSpec]uint32{}
	for _, r := range registryMaps(specs, sock, nil) {
		versions[r.spec] = r.version
	}
	entries := []struct {
		m        **ebpf.Map
		spec     *ebpf.MapSpec
		size     uint32
		upgrades []maps.Option
	}{
		{&s.ifaces, specs.SlIfaces, opts.MaxInterfaces, nil},
		{&s.counters, specs.SlCounters, 2 * (opts.MaxInterfaces + 1), []maps.Option{maps.WithUpgrade(1, upgradeCountersV1), maps.WithUpgrade(2, upgradeCountersV2), maps.WithUpgrade(3, upgradeCountersV3)}},
		{&s.ruleHits, specs.SlRuleHits, opts.RuleHitEntries, nil},
		{&s.ipsets, specs.SlIpsets, opts.IPSetEntries, []maps.Option{maps.WithUpgrade(1, upgradeIPSetKey)}},
		// An entry per distinct member, in each of two generations.
		{&s.ipsetMembers, specs.SlIpsetm, 2 * opts.IPSetEntries, nil},
		{&s.ipsetGen, specs.SlIpsetgen, 1, nil},
		{&s.routes, specs.SlRoutes, opts.RouteEntries, nil},
		{&s.meta, specs.SlMeta, 1, nil},
		{&s.svcs, specs.SlSvcs, opts.ServiceEntries, nil},
		// Two lists per service while one replaces the other.
		{&s.lbSlots, specs.SlLbSlots, 2 * opts.BackendEntries, nil},
		{&s.backends, specs.SlBackends, opts.BackendEntries, nil},
		{&s.affinity, specs.SlAffinity, opts.AffinityEntries, nil},
		{&s.lbRanges, specs.SlLbRanges, opts.ServiceEntries, nil},
		// A member per slot: two lists per service while one replaces the other.
		{&s.lbMembers, specs.SlMembers, 2 * opts.BackendEntries, nil},
		// Two tables per Maglev service while one replaces the other.
		{&s.maglev, specs.SlMaglev, 2 * opts.MaglevServices, nil},
		{&s.snat, specs.SlSnat, 1, nil},
		// Socket storage has no size: it lives in the sockets.
		{&s.sockNAT, sock.SlSockNat, 0, nil},
	}
	s.byName = make(map[string]*ebpf.Map, len(entries))
	for _, e := range entries {
		version, ok := versions[e.spec]
		if !ok {
			s.close()
			return nil, fmt.Errorf("registry: map %s has no layout version", e.spec.Name)
		}
		e.spec.MaxEntries = e.size
		m, err := s.open(e.spec, version, e.upgrades...)
		if err != nil {
			s.close()
			return nil, err
		}
		*e.m = m
		s.byName[e.spec.Name] = m
	}
	if err := s.openConntrack(specs.SlCtTables.InnerMap, opts.ConntrackEntries); err != nil {
		s.close()
		return nil, err
	}
	if err := s.openXDPIfaces(opts.MaxInterfaces); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// open returns the map spec describes, from the registry when pinning,
// upgraded from earlier versions by upgrades.
func (s *state) open(spec *ebpf.MapSpec, version uint32, upgrades ...maps.Option) (*ebpf.Map, error) {
	if s.pinDir == "" {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w", spec.Name, err)
		}
		return m, nil
	}
	m, _, err := maps.OpenOrCreate(maps.ParamsFromSpec(spec, version, s.pinDir), upgrades...)
	return m, err
}

// Counter layout version 1: 26 reasons, and the first drop reason at 7,
// where version 2 put SL_REASON_ND_PASSED; version 2 appends the other
// IPv6 reasons after the 26, 31 in all, its first drop at 8. Version 3
// puts SL_REASON_REFUSAL_PASSED at 8, one more accepting reason, and
// appends the service reasons, 36 in all; version 4 appends the FIB
// step's drop reasons after them.
const (
	countersV1Reasons   = 26
	countersV1FirstDrop = 7
	countersV2Reasons   = 31
	countersV2FirstDrop = 8
	countersV3Reasons   = 36
)

// upgradeCountersV1 moves a version-1 counter entry to version 2: each
// reason keeps its count under its new number, and the new reasons start
// at zero.
func upgradeCountersV1(key, value []byte) ([]byte, []byte, bool, error) {
	if len(value) != 8*countersV1Reasons {
		return nil, nil, false, fmt.Errorf("counters version 1: value of %d bytes, want %d", len(value), 8*countersV1Reasons)
	}
	out := make([]byte, 8*countersV2Reasons)
	copy(out, value[:8*countersV1FirstDrop])
	copy(out[8*countersV2FirstDrop:], value[8*countersV1FirstDrop:])
	return key, out, true, nil
}

// upgradeCountersV2 moves a version-2 counter entry to version 3: each
// reason keeps its count under its new number (the drops move up one,
// past SL_REASON_REFUSAL_PASSED), and the new reasons start at zero.
func upgradeCountersV2(key, value []byte) ([]byte, []byte, bool, error) {
	if len(value) != 8*countersV2Reasons {
		return nil, nil, false, fmt.Errorf("counters version 2: value of %d bytes, want %d", len(value), 8*countersV2Reasons)
	}
	out := make([]byte, 8*countersV3Reasons)
	copy(out, value[:8*countersV2FirstDrop])
	copy(out[8*(countersV2FirstDrop+1):], value[8*countersV2FirstDrop:])
	return key, out, true, nil
}

// upgradeCountersV3 moves a version-3 counter entry to version 4: every
// reason keeps its number, and the FIB step's reasons, appended, start at
// zero.
func upgradeCountersV3(key, value []byte) ([]byte, []byte, bool, error) {
	if len(value) != 8*countersV3Reasons {
		return nil, nil, false, fmt.Errorf("counters version 3: value of %d bytes, want %d", len(value), 8*countersV3Reasons)
	}
	out := make([]byte, 8*bpf.ReasonCount)
	copy(out, value)
	return key, out, true, nil
}

// openConntrack opens the conntrack table. A pinned table of another size
// is kept at its size: the previous process's programs still write it,
// and moving entries while they do could send a flow back to policy.
// Settle resizes it once they are gone.
func (s *state) openConntrack(template *ebpf.MapSpec, entries uint32) error {
	spec := template.Copy()
	spec.Name = ctName
	spec.MaxEntries = entries
	s.ctSpec = spec
	if s.pinDir == "" {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			return fmt.Errorf("create conntrack table: %w", err)
		}
		s.ct = m
		return nil
	}
	s.ctParams = maps.ParamsFromSpec(spec, ctVersion, s.pinDir)
	if pinned, err := ebpf.LoadPinnedMap(s.ctParams.PinPath(), nil); err == nil {
		s.ctParams.MaxEntries = pinned.MaxEntries()
		pinned.Close()
	}
	m, report, err := maps.OpenOrCreate(s.ctParams, maps.WithLiveResize())
	if err != nil {
		return err
	}
	s.ct, s.draining = m, report.Draining
	return nil
}

// replacements are the state maps spec (either object's) names, by those
// names: the maps openState opened from the registry, but the conntrack
// table, which the TC object holds inside sl_ct_tables. A map of the
// other object only is left out, as the loader wants, and spec's maps
// take the sizes of their replacements (the registry's, which a pinned
// map may have kept), as the loader checks.
func (s *state) replacements(spec *ebpf.CollectionSpec) map[string]*ebpf.Map {
	out := make(map[string]*ebpf.Map, len(s.byName))
	for name, m := range s.byName {
		if ms, ok := spec.Maps[name]; ok {
			ms.MaxEntries = m.MaxEntries()
			out[name] = m
		}
	}
	return out
}

// lock takes PinDir's lock, held by one process at a time, and returns
// its release. Without PinDir nothing is shared and there is no lock.
func (s *state) lock() (unlock func(), err error) {
	if s.dir == nil {
		return func() {}, nil
	}
	if err := unix.Flock(int(s.dir.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock pin directory: %w", err)
	}
	return func() { unix.Flock(int(s.dir.Fd()), unix.LOCK_UN) }, nil
}

func (s *state) close() error {
	var errs []error
	for _, m := range s.byName {
		errs = append(errs, m.Close())
	}
	for _, m := range []*ebpf.Map{s.ct, s.draining, s.xdpIfaces} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	if s.dir != nil {
		errs = append(errs, s.dir.Close())
	}
	return errors.Join(errs...)
}
