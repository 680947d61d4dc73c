package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/ipsets"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// parseProto reads a protocol name conntrack.ProtoName gives, or a number.
func parseProto(s string) (uint8, error) {
	for _, p := range []uint8{conntrack.ProtoICMP, conntrack.ProtoTCP, conntrack.ProtoUDP, conntrack.ProtoICMPv6, conntrack.ProtoSCTP} {
		if conntrack.ProtoName(p) == s {
			return p, nil
		}
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("protocol %q: want tcp, udp, icmp, icmpv6, sctp or a number", s)
	}
	return uint8(n), nil
}

// ctLeg is one direction of a conntrack entry.
type ctLeg struct {
	Packets       uint32 `json:"packets"`
	Bytes         uint64 `json:"bytes"`
	Seen          string `json:"seen"`
	Ifindex       uint32 `json:"ifindex"`
	EgressIfindex uint32 `json:"egress_ifindex"`
}

// ctEntry is a conntrack entry as the CLI prints it.
type ctEntry struct {
	Proto string `json:"proto"`
	A     string `json:"a"`
	B     string `json:"b"`
	// Type is normal, nat_fwd (the stub under the tuple the client sent)
	// or nat_rev (the flow's state under the translated tuple).
	Type  string `json:"type"`
	State string `json:"state"`
	Flags string `json:"flags"`
	AToB  ctLeg  `json:"a_to_b"`
	BToA  ctLeg  `json:"b_to_a"`
	// Orig is a nat_rev entry's destination before DNAT (the frontend).
	Orig string `json:"orig,omitempty"`
	// Peer is the other entry of a NAT flow.
	Peer string `json:"peer,omitempty"`
	// Backend and Client are a nat_rev entry's ends: where the flow was
	// translated to, and the client (the node's address when
	// source-NATed, flag snat).
	Backend string `json:"backend,omitempty"`
	Client  string `json:"client,omitempty"`
	// IdleSeconds is how long ago the flow's last packet was.
	IdleSeconds float64 `json:"idle_seconds"`
}

func legOf(l conntrack.Leg) ctLeg {
	return ctLeg{Packets: l.Packets, Bytes: l.Bytes, Seen: l.Seen().String(), Ifindex: l.Ifindex, EgressIfindex: l.EgressIfindex}
}

// monotonic is CLOCK_MONOTONIC_COARSE, the clock of the datapath's times.
func monotonic() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func entryOf(k conntrack.Key, v conntrack.Value, now time.Duration) ctEntry {
	e := ctEntry{Proto: conntrack.ProtoName(k.Proto), A: k.A().String(), B: k.B().String(),
		Type: v.EntryType().String(), State: conntrack.StateOf(k, v).String(), Flags: bpf.CTFlags(v.Flags).String(),
		AToB: legOf(v.LegAToB()), BToA: legOf(v.LegBToA()), IdleSeconds: v.Idle(now).Seconds()}
	switch v.EntryType() {
	case conntrack.NATReverse:
		e.Orig, e.Peer = v.Orig().String(), v.Peer().String()
		backend, client := k.B(), k.A()
		if bpf.CTFlags(v.Flags)&bpf.CTFClientIsB != 0 {
			backend, client = k.A(), k.B()
		}
		e.Backend, e.Client = backend.String(), client.String()
	case conntrack.NATForward:
		e.Peer = v.Peer().String()
	}
	return e
}

func (e ctEntry) row() []string {
	leg := func(l ctLeg) string {
		return fmt.Sprintf("%d pkts %s if %d/%d", l.Packets, l.Seen, l.Ifindex, l.EgressIfindex)
	}
	return []string{e.Proto, e.A, e.B, e.Type, e.State, e.Flags, leg(e.AToB), leg(e.BToA), dash(e.Orig), dash(e.Backend)}
}

var ctHeader = []string{"PROTO", "A", "B", "TYPE", "STATE", "FLAGS", "A->B", "B->A", "ORIG", "BACKEND"}

// conntrackTable opens the live conntrack table.
func (c *cli) conntrackTable() (*conntrack.Map, error) {
	m, err := c.open(datapath.RegistryConntrack)
	if err != nil {
		return nil, err
	}
	return conntrack.NewMap(m)
}

func (c *cli) conntrack(args []string) error {
	fs := c.subFlags("conntrack")
	addrFlag := fs.String("addr", "", "only entries with this address at either end (or as a NAT flow's frontend)")
	port := fs.Int("port", 0, "only entries with this port at either end (or as a NAT flow's frontend)")
	protoFlag := fs.String("proto", "", "only entries of this protocol (tcp, udp, icmp, icmpv6, sctp, or a number)")
	if err := parse(fs, args); err != nil {
		return err
	}
	var addr netip.Addr
	if *addrFlag != "" {
		var err error
		if addr, err = netip.ParseAddr(*addrFlag); err != nil {
			return fmt.Errorf("-addr: %w", err)
		}
	}
	var proto uint8
	if *protoFlag != "" {
		var err error
		if proto, err = parseProto(*protoFlag); err != nil {
			return err
		}
	}
	if *port < 0 || *port > 65535 {
		return fmt.Errorf("-port %d out of range", *port)
	}
	ct, err := c.conntrackTable()
	if err != nil {
		return err
	}
	defer ct.Close()
	entries, err := ct.Entries()
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b conntrack.Entry) int { return a.Key.Compare(b.Key) })
	now := monotonic()
	out := []ctEntry{}
	var rows [][]string
	for _, en := range entries {
		k, v := en.Key, en.Value
		ends := []netip.AddrPort{k.A(), k.B()}
		if v.EntryType() == conntrack.NATReverse {
			ends = append(ends, v.Orig())
		}
		match := func(f func(netip.AddrPort) bool) bool { return slices.ContainsFunc(ends, f) }
		if addr.IsValid() && !match(func(ap netip.AddrPort) bool { return ap.Addr() == addr.Unmap() }) {
			continue
		}
		if *port != 0 && !match(func(ap netip.AddrPort) bool { return int(ap.Port()) == *port }) {
			continue
		}
		if *protoFlag != "" && k.Proto != proto {
			continue
		}
		e := entryOf(k, v, now)
		out = append(out, e)
		rows = append(rows, e.row())
	}
	return c.emit(out, ctHeader, rows)
}

// frontendOut is one frontend of a service.
type frontendOut struct {
	Addr     string `json:"addr"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	// Kind is node-port, external (its flags say so: source ranges) or
	// cluster-ip (the maps cannot tell an ExternalIP without source
	// ranges from a ClusterIP; its local flag still decides).
	Kind string `json:"kind"`
	// Flags are the frontend's bpf.SvcFlags.
	Flags string `json:"flags"`
}

// backendOut is one backend of a service's current list.
type backendOut struct {
	ID          uint32 `json:"id"`
	Addr        string `json:"addr"`
	Port        uint16 `json:"port"`
	Local       bool   `json:"local"`
	Terminating bool   `json:"terminating"`
}

// serviceOut is a service as the maps hold it.
type serviceOut struct {
	ID              uint32        `json:"id"`
	Frontends       []frontendOut `json:"frontends"`
	Backends        []backendOut  `json:"backends"`
	AffinitySeconds int           `json:"affinity_seconds"`
	Maglev          bool          `json:"maglev"`
	ExternalLocal   bool          `json:"external_local"`
	InternalLocal   bool          `json:"internal_local"`
	SourceRanges    []string      `json:"source_ranges"`
}

func (c *cli) services(args []string) error {
	if err := parse(c.subFlags("services"), args); err != nil {
		return err
	}
	t, err := c.natTable()
	if err != nil {
		return err
	}
	adopted, err := t.Adopted()
	if err != nil {
		return err
	}
	out := []serviceOut{}
	var rows [][]string
	for _, ks := range adopted {
		s := ks.Service
		so := serviceOut{ID: ks.ID, AffinitySeconds: int(s.Affinity / time.Second), Maglev: s.Maglev,
			ExternalLocal: s.ExternalLocal, InternalLocal: s.InternalLocal, SourceRanges: []string{}}
		for _, p := range s.SourceRanges {
			so.SourceRanges = append(so.SourceRanges, p.String())
		}
		var bes []string
		for _, b := range s.Backends {
			id, _ := t.BackendID(netip.AddrPortFrom(b.Addr, b.Port))
			so.Backends = append(so.Backends, backendOut{ID: id, Addr: b.Addr.String(), Port: b.Port, Local: b.Local, Terminating: b.Terminating})
			be := netip.AddrPortFrom(b.Addr, b.Port).String()
			var tags []string
			if b.Local {
				tags = append(tags, "local")
			}
			if b.Terminating {
				tags = append(tags, "terminating")
			}
			if len(tags) > 0 {
				be += " (" + strings.Join(tags, ",") + ")"
			}
			bes = append(bes, be)
		}
		for i, f := range s.Frontends {
			kind := "cluster-ip"
			switch {
			case f.NodePort:
				kind = "node-port"
			case ks.Frontends[i].Flags&bpf.SvcSourceRanges != 0:
				kind = "external"
			}
			fo := frontendOut{Addr: f.Addr.String(), Port: f.Port, Protocol: conntrack.ProtoName(f.Protocol), Kind: kind,
				Flags: ks.Frontends[i].Flags.String()}
			so.Frontends = append(so.Frontends, fo)
			aff := "-"
			if s.Affinity > 0 {
				aff = s.Affinity.String()
			}
			rows = append(rows, []string{strconv.Itoa(int(ks.ID)), fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.Addr, f.Port), fo.Protocol),
				kind, fo.Flags, aff, yesNo(s.Maglev), dash(strings.Join(so.SourceRanges, ",")), dash(strings.Join(bes, " "))})
		}
		out = append(out, so)
	}
	return c.emit(out, []string{"ID", "FRONTEND", "KIND", "FLAGS", "AFFINITY", "MAGLEV", "SOURCE RANGES", "BACKENDS"}, rows)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// affinityOut is a client's affinity to a backend of a service.
type affinityOut struct {
	ServiceID   uint32  `json:"service_id"`
	Client      string  `json:"client"`
	BackendID   uint32  `json:"backend_id"`
	Backend     string  `json:"backend"`
	IdleSeconds float64 `json:"idle_seconds"`
}

func (c *cli) affinity(args []string) error {
	if err := parse(c.subFlags("affinity"), args); err != nil {
		return err
	}
	aff, err := typed[bpf.AffinityKey, bpf.Affinity](c, bpf.MapAffinity)
	if err != nil {
		return err
	}
	backends, err := typed[uint32, bpf.Backend](c, bpf.MapBackends)
	if err != nil {
		return err
	}
	now := monotonic()
	out := []affinityOut{}
	var iterErr error
	for k, v := range aff.All(&iterErr) {
		a := affinityOut{ServiceID: k.SvcID, Client: netip.AddrFrom16(k.Client).Unmap().String(), BackendID: v.BackendID,
			IdleSeconds: time.Duration(uint64(now) - v.LastUsedNs).Seconds()}
		if b, err := backends.Lookup(v.BackendID); err == nil {
			a.Backend = netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), b.Port).String()
		}
		out = append(out, a)
	}
	if iterErr != nil {
		return iterErr
	}
	slices.SortFunc(out, func(a, b affinityOut) int {
		if a.ServiceID != b.ServiceID {
			return int(a.ServiceID) - int(b.ServiceID)
		}
		return strings.Compare(a.Client, b.Client)
	})
	var rows [][]string
	for _, a := range out {
		rows = append(rows, []string{strconv.Itoa(int(a.ServiceID)), a.Client, fmt.Sprintf("%s (id %d)", dash(a.Backend), a.BackendID),
			fmt.Sprintf("%.0fs", a.IdleSeconds)})
	}
	return c.emit(out, []string{"SERVICE", "CLIENT", "BACKEND", "IDLE"}, rows)
}

// ipsetOut is one IP set.
type ipsetOut struct {
	ID         string   `json:"id"`
	Nets       []string `json:"nets"`
	NamedPorts []string `json:"named_ports"`
}

func (c *cli) ipsets(args []string) error {
	if err := parse(c.subFlags("ipsets"), args); err != nil {
		return err
	}
	members, err := c.ipsetMembers()
	if err != nil {
		return err
	}
	ids := make([]uint64, 0, len(members))
	for id := range members {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := []ipsetOut{}
	var rows [][]string
	for _, id := range ids {
		set := members[id]
		o := ipsetOut{ID: fmt.Sprintf("%#x", id), Nets: []string{}, NamedPorts: []string{}}
		for _, n := range set.Nets {
			o.Nets = append(o.Nets, n.String())
			rows = append(rows, []string{o.ID, n.String()})
		}
		for _, np := range set.NamedPorts {
			s := fmt.Sprintf("%s %s/%d", np.Addr, conntrack.ProtoName(np.Protocol), np.Port)
			o.NamedPorts = append(o.NamedPorts, s)
			rows = append(rows, []string{o.ID, s})
		}
		out = append(out, o)
	}
	return c.emit(out, []string{"SET", "MEMBER"}, rows)
}

// ipsetMembers reads the IP set map.
func (c *cli) ipsetMembers() (ipsets.Members, error) {
	var ms ipsets.Maps
	for _, o := range []struct {
		name string
		m    **ebpf.Map
	}{{bpf.MapIPSets, &ms.Sets}, {bpf.MapIPSetMembers, &ms.Members}, {bpf.MapIPSetGen, &ms.Gen}} {
		m, err := c.open(o.name)
		if err != nil {
			return nil, err
		}
		*o.m = m
	}
	im, err := ipsets.NewMap(ms)
	if err != nil {
		return nil, err
	}
	return im.Read()
}

// routeOut is one route.
type routeOut struct {
	Prefix  string `json:"prefix"`
	Flags   string `json:"flags"`
	Ifindex uint32 `json:"ifindex"`
	NextHop string `json:"next_hop,omitempty"`
}

// routeTable reads the routes map into the reference model.
func (c *cli) routeTable() (*routes.Table, []routes.Route, error) {
	m, err := c.open(bpf.MapRoutes)
	if err != nil {
		return nil, nil, err
	}
	rm, err := routes.NewMap(m)
	if err != nil {
		return nil, nil, err
	}
	all, err := rm.Routes()
	if err != nil {
		return nil, nil, err
	}
	t, err := routes.NewTable(all)
	if err != nil {
		return nil, nil, err
	}
	return t, all, nil
}

func (c *cli) routes(args []string) error {
	if err := parse(c.subFlags("routes"), args); err != nil {
		return err
	}
	_, all, err := c.routeTable()
	if err != nil {
		return err
	}
	out := []routeOut{}
	var rows [][]string
	for _, r := range all {
		o := routeOut{Prefix: r.Prefix.String(), Flags: r.Flags.String(), Ifindex: r.Ifindex}
		if r.NextHop.IsValid() {
			o.NextHop = r.NextHop.String()
		}
		out = append(out, o)
		rows = append(rows, []string{o.Prefix, o.Flags, strconv.Itoa(int(o.Ifindex)), dash(o.NextHop)})
	}
	return c.emit(out, []string{"PREFIX", "FLAGS", "IFINDEX", "NEXT HOP"}, rows)
}

// recordOut is one generation's record of an interface.
type recordOut struct {
	Generation uint32 `json:"generation"`
	// Settled says the generation is the one whose programs run (the
	// last to Settle).
	Settled bool   `json:"settled"`
	Flags   string `json:"flags"`
	// IngressSlot and EgressSlot are the policy entry slots of the TC
	// hooks.
	IngressSlot uint32 `json:"ingress_slot"`
	EgressSlot  uint32 `json:"egress_slot"`
}

// ifaceOut is an interface's entry.
type ifaceOut struct {
	Ifindex     int         `json:"ifindex"`
	Name        string      `json:"name,omitempty"`
	CounterSlot uint32      `json:"counter_slot"`
	Records     []recordOut `json:"records"`
	// XDP are the records of the XDP interface map: Ingress is the XDP
	// policy's slot.
	XDP []recordOut `json:"xdp"`
}

func recordsOf(e bpf.Iface, settled uint32) []recordOut {
	out := []recordOut{}
	for _, r := range e.Records {
		if r.Generation == 0 {
			continue
		}
		out = append(out, recordOut{Generation: r.Generation, Settled: r.Generation == settled, Flags: r.Flags.String(),
			IngressSlot: r.Ingress, EgressSlot: r.Egress})
	}
	return out
}

func (c *cli) ifaces(args []string) error {
	if err := parse(c.subFlags("ifaces"), args); err != nil {
		return err
	}
	entries, err := c.ifaceEntries()
	if err != nil {
		return err
	}
	meta, err := c.meta()
	if err != nil {
		return err
	}
	xdp, err := typed[uint32, bpf.Iface](c, bpf.MapXDPIfaces)
	if err != nil {
		return err
	}
	names := c.ifaceNames()
	idxs := make([]uint32, 0, len(entries))
	for idx := range entries {
		idxs = append(idxs, idx)
	}
	slices.Sort(idxs)
	out := []ifaceOut{}
	var rows [][]string
	for _, idx := range idxs {
		e := entries[idx]
		o := ifaceOut{Ifindex: int(idx), Name: names[int(idx)], CounterSlot: e.CounterSlot, Records: recordsOf(e, meta.SettledGeneration), XDP: []recordOut{}}
		if xe, err := xdp.Lookup(idx); err == nil {
			o.XDP = recordsOf(xe, meta.SettledGeneration)
		}
		out = append(out, o)
		for _, r := range o.Records {
			xdpSlot := "-"
			for _, x := range o.XDP {
				if x.Generation == r.Generation && x.IngressSlot != 0 {
					xdpSlot = strconv.Itoa(int(x.IngressSlot))
				}
			}
			gen := strconv.Itoa(int(r.Generation))
			if r.Settled {
				gen += " (settled)"
			}
			rows = append(rows, []string{strconv.Itoa(o.Ifindex), dash(o.Name), strconv.Itoa(int(o.CounterSlot)), gen, r.Flags,
				strconv.Itoa(int(r.IngressSlot)), strconv.Itoa(int(r.EgressSlot)), xdpSlot})
		}
	}
	return c.emit(out, []string{"IFINDEX", "NAME", "COUNTERS", "GENERATION", "FLAGS", "INGRESS SLOT", "EGRESS SLOT", "XDP SLOT"}, rows)
}

// ifaceEntries reads the interface map.
func (c *cli) ifaceEntries() (map[uint32]bpf.Iface, error) {
	m, err := typed[uint32, bpf.Iface](c, bpf.MapIfaces)
	if err != nil {
		return nil, err
	}
	out := map[uint32]bpf.Iface{}
	var iterErr error
	for k, v := range m.All(&iterErr) {
		out[k] = v
	}
	return out, iterErr
}

// counterOut is one interface hook's count of one reason.
type counterOut struct {
	// Ifindex is 0 for the packets of interfaces without an entry.
	Ifindex int    `json:"ifindex"`
	Name    string `json:"name,omitempty"`
	// Hook is the TC hook, ingress or egress (XDP drops count at
	// ingress).
	Hook    string `json:"hook"`
	Reason  string `json:"reason"`
	Packets uint64 `json:"packets"`
}

func (c *cli) counters(args []string) error {
	if err := parse(c.subFlags("counters"), args); err != nil {
		return err
	}
	entries, err := c.ifaceEntries()
	if err != nil {
		return err
	}
	counters, err := perCPU[uint32, bpf.ReasonCounts](c, bpf.MapCounters)
	if err != nil {
		return err
	}
	names := c.ifaceNames()
	slots := map[uint32]int{0: 0}
	for idx, e := range entries {
		slots[e.CounterSlot] = int(idx)
	}
	slotList := make([]uint32, 0, len(slots))
	for s := range slots {
		slotList = append(slotList, s)
	}
	slices.SortFunc(slotList, func(a, b uint32) int { return slots[a] - slots[b] })
	out := []counterOut{}
	var rows [][]string
	for _, slot := range slotList {
		idx := slots[slot]
		for _, hook := range []bpf.Hook{bpf.HookIngress, bpf.HookEgress} {
			perCPU, err := counters.Lookup(bpf.CounterIndex(slot, hook))
			if err != nil {
				return fmt.Errorf("counters of slot %d: %w", slot, err)
			}
			var sum [bpf.ReasonCount]uint64
			for _, pc := range perCPU {
				for r := range sum {
					sum[r] += pc.Packets[r]
				}
			}
			for r, n := range sum {
				if n == 0 {
					continue
				}
				o := counterOut{Ifindex: idx, Name: names[idx], Hook: hook.String(), Reason: bpf.Reason(r).String(), Packets: n}
				out = append(out, o)
				rows = append(rows, []string{strconv.Itoa(idx), dash(o.Name), o.Hook, o.Reason, strconv.FormatUint(n, 10)})
			}
		}
	}
	return c.emit(out, []string{"IFINDEX", "NAME", "HOOK", "REASON", "PACKETS"}, rows)
}

// hitOut is one rule's hits.
type hitOut struct {
	RuleID uint64 `json:"rule_id"`
	Hits   uint64 `json:"hits"`
}

// ruleHits sums the rule hit map over CPUs.
func (c *cli) ruleHits() (map[uint64]uint64, error) {
	m, err := perCPU[uint64, uint64](c, bpf.MapRuleHits)
	if err != nil {
		return nil, err
	}
	out := map[uint64]uint64{}
	var iterErr error
	for id, perCPU := range m.All(&iterErr) {
		for _, n := range perCPU {
			out[id] += n
		}
	}
	return out, iterErr
}

func (c *cli) hits(args []string) error {
	if err := parse(c.subFlags("hits"), args); err != nil {
		return err
	}
	hits, err := c.ruleHits()
	if err != nil {
		return err
	}
	out := []hitOut{}
	for id, n := range hits {
		out = append(out, hitOut{RuleID: id, Hits: n})
	}
	slices.SortFunc(out, func(a, b hitOut) int {
		if a.RuleID < b.RuleID {
			return -1
		}
		if a.RuleID > b.RuleID {
			return 1
		}
		return 0
	})
	var rows [][]string
	for _, h := range out {
		rows = append(rows, []string{strconv.FormatUint(h.RuleID, 10), strconv.FormatUint(h.Hits, 10)})
	}
	return c.emit(out, []string{"RULE", "HITS"}, rows)
}

// kernelServices are the services read back from the maps, by name
// "svc-<ID>" for nat.Choose, and by ID.
func kernelServices(adopted []nat.KernelService) (map[string]nat.Service, map[string]nat.KernelService) {
	svcs := map[string]nat.Service{}
	byName := map[string]nat.KernelService{}
	for _, ks := range adopted {
		name := "svc-" + strconv.Itoa(int(ks.ID))
		svcs[name] = ks.Service
		byName[name] = ks
	}
	return svcs, byName
}
