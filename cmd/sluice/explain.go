package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// explainOut is what explain says of a packet at a hook, step by step as
// the datapath takes it (bpf/datapath.c), and its outcome.
type explainOut struct {
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	// Hook is the TC hook: ingress (packets arriving through the
	// interface) or egress (leaving through it).
	Hook   string    `json:"hook"`
	Packet packetOut `json:"packet"`
	// Record is the interface's record the running programs read: the
	// settled generation's, else the newest.
	Record *recordOut `json:"record"`
	// XDP is the interface's XDP policy's verdict, at an ingress hook of
	// an interface with one: it runs before TC.
	XDP       *verdictOut   `json:"xdp,omitempty"`
	Conntrack conntrackOut  `json:"conntrack"`
	Routes    routesOut     `json:"routes"`
	Service   *choiceOut    `json:"service,omitempty"`
	Policy    *verdictOut   `json:"policy,omitempty"`
	Outcome   outcomeOut    `json:"outcome"`
	Steps     []explainStep `json:"steps"`
}

// packetOut is the packet explained.
type packetOut struct {
	Proto string `json:"proto"`
	Src   string `json:"src"`
	Dst   string `json:"dst"`
}

// conntrackOut is what conntrack holds of the packet's flow: what the
// kernel recorded when it decided the flow.
type conntrackOut struct {
	// Found says the flow has an entry; Entries are the stub (nat_fwd,
	// when the packet's tuple is the one the client sent) and the entry
	// holding the flow's state.
	Found   bool      `json:"found"`
	Entries []ctEntry `json:"entries"`
	// Passes says a packet of the flow other than a TCP SYN passes this
	// hook as established: its leg was approved here, or it is a reply
	// of one approved here the other way.
	Passes bool `json:"passes"`
	// Backend is the backend the kernel translated the flow to, for a
	// NAT flow.
	Backend string `json:"backend,omitempty"`
}

// routesOut are the route facts of the packet.
type routesOut struct {
	Source      *routeOut `json:"source"`
	Destination *routeOut `json:"destination"`
	// ReversePath is "passes", "fails" or "not checked" (no check at this
	// hook of this interface kind).
	ReversePath string `json:"reverse_path"`
	SrcIsHost   bool   `json:"src_is_host"`
	DstIsHost   bool   `json:"dst_is_host"`
}

// choiceOut is the service stage's choice for a new flow.
type choiceOut struct {
	ServiceID   uint32 `json:"service_id"`
	Frontend    string `json:"frontend"`
	Backend     string `json:"backend,omitempty"`
	Reason      string `json:"reason"`
	LocalOnly   bool   `json:"local_only"`
	Terminating bool   `json:"terminating"`
	// Affinity is the client's affinity record, if the service keeps
	// them and the client has one.
	Affinity *affinityOut `json:"affinity,omitempty"`
	// MaglevTable is the backend the kernel's Maglev table holds at the
	// flow's hash (for a Maglev choice); the maps do not keep weights,
	// so this, not the model's table, is what the datapath uses.
	MaglevTable string `json:"maglev_table,omitempty"`
	// Known says the flow's entry already names its backend, Recorded:
	// no new choice is made, and Backend is what the model gives a new
	// flow of the same tuple.
	Known    bool   `json:"known"`
	Recorded string `json:"recorded,omitempty"`
}

// verdictOut is a policy's decision.
type verdictOut struct {
	Verdict    string   `json:"verdict"`
	RuleID     uint64   `json:"rule_id"`
	Hits       []uint64 `json:"hits"`
	Generation uint32   `json:"generation"`
	EntrySlot  uint32   `json:"entry_slot"`
	// Dst and PreNATDst are the destination policy sees, after and
	// before DNAT.
	Dst       string `json:"dst"`
	PreNATDst string `json:"pre_nat_dst,omitempty"`
}

// outcomeOut is what the datapath does with the packet.
type outcomeOut struct {
	// Reason is the counter the packet counts under (bpf.Reason).
	Reason string `json:"reason"`
	// Passes says the packet goes on.
	Passes bool `json:"passes"`
	// DNAT is the backend the packet is sent to, if it is translated.
	DNAT string `json:"dnat,omitempty"`
	// Tracked says the packet creates or follows a conntrack entry.
	Tracked bool `json:"tracked"`
	// ReplyFrom is the source a NAT flow's reply is given: the frontend.
	ReplyFrom string `json:"reply_from,omitempty"`
}

// explainStep is one line of the explanation.
type explainStep struct {
	Step string `json:"step"`
	Say  string `json:"say"`
}

func (c *cli) explain(args []string) error {
	fs := c.subFlags("explain")
	iface := fs.String("iface", "", "the interface, by name or index")
	dir := fs.String("dir", "", "the TC hook: ingress (arriving through the interface) or egress (leaving through it)")
	protoFlag := fs.String("proto", "tcp", "the protocol: tcp, udp or sctp")
	srcFlag := fs.String("src", "", "the source, address:port")
	dstFlag := fs.String("dst", "", "the destination, address:port")
	if err := parse(fs, args); err != nil {
		return err
	}
	var hook bpf.Hook
	switch *dir {
	case "ingress":
		hook = bpf.HookIngress
	case "egress":
		hook = bpf.HookEgress
	default:
		return fmt.Errorf("-dir %q: want ingress or egress", *dir)
	}
	proto, err := parseProto(*protoFlag)
	if err != nil {
		return err
	}
	if proto != conntrack.ProtoTCP && proto != conntrack.ProtoUDP && proto != conntrack.ProtoSCTP {
		return fmt.Errorf("-proto %s: explain knows tcp, udp and sctp", *protoFlag)
	}
	src, err := netip.ParseAddrPort(*srcFlag)
	if err != nil {
		return fmt.Errorf("-src: %w", err)
	}
	dst, err := netip.ParseAddrPort(*dstFlag)
	if err != nil {
		return fmt.Errorf("-dst: %w", err)
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if src.Addr().Is4() != dst.Addr().Is4() {
		return errors.New("-src and -dst are of two families")
	}
	ifindex, name, err := c.resolveIface(*iface)
	if err != nil {
		return err
	}
	e := &explainer{cli: c, out: explainOut{Interface: name, Ifindex: ifindex, Hook: hook.String(),
		Packet: packetOut{Proto: conntrack.ProtoName(proto), Src: src.String(), Dst: dst.String()}, Steps: []explainStep{}},
		hook: hook, proto: proto, src: src, dst: dst}
	if err := e.run(); err != nil {
		return err
	}
	var rows [][]string
	for _, s := range e.out.Steps {
		rows = append(rows, []string{s.Step, s.Say})
	}
	return c.emit(e.out, []string{"STEP", "WHAT"}, rows)
}

// explainer walks one packet through the datapath's steps.
type explainer struct {
	*cli
	out      explainOut
	hook     bpf.Hook
	proto    uint8
	src, dst netip.AddrPort
}

func (e *explainer) say(step, format string, args ...any) {
	e.out.Steps = append(e.out.Steps, explainStep{step, fmt.Sprintf(format, args...)})
}

func (e *explainer) finish(reason bpf.Reason, dnat string, tracked bool) {
	e.out.Outcome = outcomeOut{Reason: reason.String(), Passes: reason < bpf.ReasonFirstDrop, DNAT: dnat, Tracked: tracked,
		ReplyFrom: e.out.Outcome.ReplyFrom}
	switch {
	case dnat != "":
		e.say("verdict", "%s: DNAT to %s", reason, dnat)
	default:
		e.say("verdict", "%s", reason)
	}
}

func (e *explainer) run() error {
	// The interface's record (sl_tc_main).
	entries, err := e.ifaceEntries()
	if err != nil {
		return err
	}
	meta, err := e.meta()
	if err != nil {
		return err
	}
	entry, ok := entries[uint32(e.out.Ifindex)]
	if !ok {
		e.say("interface", "ifindex %d has no entry in %s: the datapath drops its packets", e.out.Ifindex, bpf.MapIfaces)
		e.finish(bpf.ReasonDroppedNoIface, "", false)
		return nil
	}
	rec, ok := runningRecord(entry, meta)
	if !ok {
		e.say("interface", "ifindex %d has no record of a generation", e.out.Ifindex)
		e.finish(bpf.ReasonDroppedNoIface, "", false)
		return nil
	}
	r := recordsOf(bpf.Iface{Records: [2]bpf.IfaceRecord{rec}}, meta.SettledGeneration)[0]
	e.out.Record = &r
	e.say("interface", "%s (ifindex %d), TC %s, generation %d record: %s", dash(e.out.Interface), e.out.Ifindex, e.hook, rec.Generation, rec.Flags)
	if rec.Flags&bpf.IfaceReady == 0 {
		e.finish(bpf.ReasonDroppedNotReady, "", false)
		return nil
	}
	if e.hook == bpf.HookIngress {
		denied, err := e.xdp(meta)
		if err != nil || denied {
			return err
		}
	}

	// Conntrack (sl_tc_parsed).
	ct, err := e.conntrackTable()
	if err != nil {
		return err
	}
	defer ct.Close()
	flow, err := lookupFlow(ct, e.proto, e.src, e.dst)
	if err != nil {
		return err
	}
	now := monotonic()
	known := false
	if flow.found {
		e.out.Conntrack.Found = true
		for _, en := range flow.entries {
			e.out.Conntrack.Entries = append(e.out.Conntrack.Entries, entryOf(en.Key, en.Value, now))
		}
		last := e.out.Conntrack.Entries[len(e.out.Conntrack.Entries)-1]
		e.out.Conntrack.Backend = last.Backend
		e.out.Conntrack.Passes = flow.passes(uint32(e.out.Ifindex), e.hook)
		known = flow.viaStub && flow.fromClient()
		state := fmt.Sprintf("%s %s, %s", last.Type, last.Proto+" "+last.A+" <-> "+last.B, last.State)
		if last.Backend != "" {
			state += ", translated to backend " + last.Backend
			if last.Flags != "0" {
				state += " (flags " + last.Flags + ")"
			}
		}
		if e.out.Conntrack.Passes {
			e.say("conntrack", "%s: the flow passes this hook as established (a TCP SYN would go to policy again)", state)
		} else {
			e.say("conntrack", "%s: the flow was not approved at this hook; its packets here go to policy", state)
		}
	} else {
		e.say("conntrack", "no entry: a new flow")
	}
	if e.out.Conntrack.Entries == nil {
		e.out.Conntrack.Entries = []ctEntry{}
	}

	// Routes and the reverse-path check (sl_source_ok).
	rt, _, err := e.routeTable()
	if err != nil {
		return err
	}
	fromWorkload := rec.Flags&bpf.IfaceWorkload != 0 && e.hook == bpf.HookIngress
	host := rec.Flags&bpf.IfaceHost != 0
	var srcRoute, dstRoute *routes.Route
	lookup := func(a netip.Addr) *routes.Route {
		if r, ok := rt.Lookup(a); ok {
			return &r
		}
		return nil
	}
	e.out.Routes.ReversePath = "not checked"
	if fromWorkload || host {
		srcRoute = lookup(e.src.Addr())
		e.out.Routes.Source = routeOutOf(srcRoute)
	}
	if host || e.hook == bpf.HookIngress {
		dstRoute = lookup(e.dst.Addr())
		e.out.Routes.Destination = routeOutOf(dstRoute)
	}
	if e.out.Conntrack.Passes {
		// Established: no source check, policy or new choice; for a NAT
		// flow's client, what a new flow of this tuple would be given
		// beside what the kernel recorded.
		dnat := ""
		if known {
			dnat = e.out.Conntrack.Backend
			if _, _, err := e.service(flow, known, dstRoute, now); err != nil {
				return err
			}
		}
		if rev := flow.reverse(); rev.EntryType() == conntrack.NATReverse && !flow.fromClient() {
			// The backend's reply: sl_nat_translate gives it the
			// frontend's address as its source.
			e.out.Outcome.ReplyFrom = rev.Orig().String()
			e.say("nat", "a reply of the NAT flow: its source becomes the frontend %s", rev.Orig())
		}
		e.finish(bpf.ReasonAcceptedEstablished, dnat, true)
		return nil
	}
	rpfOK := true
	switch {
	case fromWorkload:
		rpfOK = routes.RPFAllows(rt, e.src.Addr(), uint32(e.out.Ifindex))
	case host && e.hook == bpf.HookIngress:
		rpfOK = routes.HostSourceAllowed(rt, e.src.Addr())
	}
	if fromWorkload || (host && e.hook == bpf.HookIngress) {
		e.out.Routes.ReversePath = map[bool]string{true: "passes", false: "fails"}[rpfOK]
		e.say("routes", "source %s: %s; reverse-path check %s", e.src.Addr(), describeRoute(srcRoute), e.out.Routes.ReversePath)
	}
	if !rpfOK {
		e.finish(bpf.ReasonDroppedRPF, "", false)
		return nil
	}
	e.out.Routes.SrcIsHost = srcRoute != nil && srcRoute.Flags.Has(routes.FlagLocalHost)
	e.out.Routes.DstIsHost = dstRoute != nil && dstRoute.Flags.Has(routes.FlagLocalHost)
	if host || e.hook == bpf.HookIngress {
		e.say("routes", "destination %s: %s", e.dst.Addr(), describeRoute(dstRoute))
	}

	// The service stage (sl_service), at ingress hooks.
	pkt := polprog.Packet{Src: e.src.Addr(), Dst: e.dst.Addr(), SrcPort: e.src.Port(), DstPort: e.dst.Port(), Protocol: e.proto,
		SrcIsHost: e.out.Routes.SrcIsHost, DstIsHost: e.out.Routes.DstIsHost}
	dnat := ""
	if flow.found && flow.reverse().EntryType() == conntrack.NATReverse && flow.fromClient() && !flow.viaStub {
		// The backend's side of a NAT flow: policy sees the frontend.
		orig := flow.reverse().Orig()
		pkt.PreNATDst, pkt.PreNATDstPort = orig.Addr().Unmap(), orig.Port()
	}
	if e.hook == bpf.HookIngress && (!flow.found || known) {
		reason, backend, err := e.service(flow, known, dstRoute, now)
		if err != nil {
			return err
		}
		if reason != 0 {
			e.finish(reason, "", false)
			return nil
		}
		if backend.IsValid() {
			dnat = backend.String()
			pkt.PreNATDst, pkt.PreNATDstPort = pkt.Dst, pkt.DstPort
			pkt.Dst, pkt.DstPort = backend.Addr(), backend.Port()
		}
	}

	// Policy (sl_to_policy, then the hook's program).
	p, err := e.hookPolicy(e.out.Ifindex, e.hook.String())
	if err != nil {
		return err
	}
	if err := checkCurrent(p, rec); err != nil {
		return err
	}
	d, err := e.evaluate(p, pkt)
	if err != nil {
		return err
	}
	e.out.Policy = d
	if d.Verdict != polprog.VerdictAllow.String() {
		e.finish(bpf.ReasonDroppedByPolicy, "", false)
		return nil
	}
	e.finish(bpf.ReasonAcceptedByPolicy, dnat, true)
	return nil
}

// runningRecord is the record of the generation whose programs run the
// interface's hooks: the settled generation's, else the newest.
func runningRecord(entry bpf.Iface, meta bpf.Meta) (bpf.IfaceRecord, bool) {
	var newest bpf.IfaceRecord
	for _, r := range entry.Records {
		if r.Generation != 0 && r.Generation == meta.SettledGeneration {
			return r, true
		}
		if r.Generation > newest.Generation {
			newest = r
		}
	}
	return newest, newest.Generation != 0
}

// checkCurrent refuses a debug file that does not describe the program the
// running record names.
func checkCurrent(p policyOut, rec bpf.IfaceRecord) error {
	if p.Stale != "" {
		return fmt.Errorf("policy debug file of interface %d, hook %s, is stale: %s", p.Ifindex, p.Hook, p.Stale)
	}
	if p.Generation != rec.Generation {
		return fmt.Errorf("policy debug file of interface %d, hook %s, is stale: it is generation %d's, the running record generation %d's",
			p.Ifindex, p.Hook, p.Generation, rec.Generation)
	}
	return nil
}

// evaluate decides pkt by the policy of a debug file over the IP set
// map's members, as the program does.
func (e *explainer) evaluate(p policyOut, pkt polprog.Packet) (*verdictOut, error) {
	sets, err := e.ipsetMembers()
	if err != nil {
		return nil, err
	}
	d, err := polprog.Evaluate(p.Rules, sets, pkt)
	if err != nil {
		return nil, fmt.Errorf("evaluate the %s policy of interface %d: %w", p.Hook, p.Ifindex, err)
	}
	v := &verdictOut{Verdict: d.Verdict.String(), RuleID: d.RuleID, Hits: d.Hits, Generation: p.Generation, EntrySlot: p.EntrySlot,
		Dst: netip.AddrPortFrom(pkt.Dst, pkt.DstPort).String()}
	if v.Hits == nil {
		v.Hits = []uint64{}
	}
	if pkt.PreNATDst.IsValid() {
		v.PreNATDst = netip.AddrPortFrom(pkt.PreNATDst, pkt.PreNATDstPort).String()
	}
	rule := "no rule (allowed by host policy)"
	if d.Verdict == polprog.VerdictDeny {
		rule = "no rule ID (a tier's end or the default, without one)"
	}
	if d.RuleID != 0 {
		rule = fmt.Sprintf("rule %d", d.RuleID)
	}
	e.say("policy", "%s %s by %s (%s policy file: generation %d, entry slot %d)", d.Verdict, v.Dst, rule, p.Hook, p.Generation, p.EntrySlot)
	return v, nil
}

// xdp decides the packet by the interface's XDP policy, if it has one;
// denied says the XDP hook drops it.
func (e *explainer) xdp(meta bpf.Meta) (denied bool, err error) {
	m, err := typed[uint32, bpf.Iface](e.cli, bpf.MapXDPIfaces)
	if err != nil {
		return false, err
	}
	entry, err := m.Lookup(uint32(e.out.Ifindex))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	rec, ok := runningRecord(entry, meta)
	if !ok || rec.Ingress == 0 {
		return false, nil
	}
	p, err := e.hookPolicy(e.out.Ifindex, datapath.DebugHookXDP)
	if err != nil {
		return false, err
	}
	if err := checkCurrent(p, rec); err != nil {
		return false, err
	}
	e.say("xdp", "the interface's XDP policy runs first (pre-DNAT, untracked)")
	d, err := e.evaluate(p, polprog.Packet{Src: e.src.Addr(), Dst: e.dst.Addr(), SrcPort: e.src.Port(), DstPort: e.dst.Port(), Protocol: e.proto})
	if err != nil {
		return false, err
	}
	e.out.XDP = d
	if d.Verdict != polprog.VerdictAllow.String() {
		e.finish(bpf.ReasonDroppedByPolicy, "", false)
		return true, nil
	}
	return false, nil
}

// service runs the service stage: the backend of a new flow to a
// frontend, or of a known NAT flow, or the reason the stage ends the
// packet (not 0).
func (e *explainer) service(flow flowEntries, known bool, dstRoute *routes.Route, now time.Duration) (bpf.Reason, netip.AddrPort, error) {
	t, err := e.natTable()
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	adopted, err := t.Adopted()
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	services, byName := kernelServices(adopted)
	f := nat.Flow{Client: e.src, Dest: e.dst, Protocol: e.proto, ToNode: dstRoute != nil && dstRoute.Flags.Has(routes.FlagLocalHost)}
	choice := nat.Choose(services, f, nil, now)
	if known {
		// The entry decides; the model says what a new flow of this
		// tuple would be given, which is what the kernel gave this one
		// unless the services changed since.
		b := e.out.Conntrack.Backend
		out := &choiceOut{Recorded: b, Known: true, Reason: choice.Reason.String()}
		if ks, ok := byName[choice.Service]; ok {
			out.ServiceID = ks.ID
			out.Frontend = netip.AddrPortFrom(choice.Frontend.Addr, choice.Frontend.Port).String() + "/" + conntrack.ProtoName(e.proto)
		}
		e.out.Service = out
		model, err := e.modelBackend(byName, services, f, &choice, now)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		if model.IsValid() {
			out.Backend = model.String()
		}
		e.say("service", "the flow's entry names backend %s: no new choice (a new flow of this tuple: %s by %s)", b, dash(out.Backend), choice.Reason)
		ap, err := netip.ParseAddrPort(b)
		return 0, ap, err
	}
	if choice.Reason == nat.ReasonNone {
		e.say("service", "%s/%s is no frontend: no translation", e.dst, conntrack.ProtoName(e.proto))
		return 0, netip.AddrPort{}, nil
	}
	ks := byName[choice.Service]
	out := &choiceOut{ServiceID: ks.ID, Frontend: netip.AddrPortFrom(choice.Frontend.Addr, choice.Frontend.Port).String() + "/" + conntrack.ProtoName(e.proto)}
	e.out.Service = out
	backend, err := e.modelBackend(byName, services, f, &choice, now)
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	out.Reason, out.LocalOnly, out.Terminating = choice.Reason.String(), choice.LocalOnly, choice.Terminating
	switch choice.Reason {
	case nat.ReasonSourceRange:
		e.say("service", "service %d at %s: the client is outside its source ranges %v", ks.ID, out.Frontend, ks.Service.SourceRanges)
		return bpf.ReasonDroppedSvcSourceRange, netip.AddrPort{}, nil
	case nat.ReasonNoBackend:
		e.say("service", "service %d at %s has no backend its traffic policy allows (local only: %v): refused", ks.ID, out.Frontend, choice.LocalOnly)
		return bpf.ReasonRejectedNoBackend, netip.AddrPort{}, nil
	}
	out.Backend = backend.String()
	why := choice.Reason.String()
	if choice.LocalOnly {
		why += ", local backends only"
	}
	if choice.Terminating {
		why += ", from the terminating backends (no serving one)"
	}
	e.say("service", "service %d at %s: backend %s by %s", ks.ID, out.Frontend, backend, why)
	return 0, backend, nil
}

// modelBackend completes a choice the way the datapath makes it: with the
// client's affinity record, for a service that keeps them (*choice is
// chosen again with it), and with the kernel's Maglev table for a Maglev
// choice (the maps keep no weights to rebuild it from). It returns the
// backend, or the zero AddrPort where the choice has none.
func (e *explainer) modelBackend(byName map[string]nat.KernelService, services map[string]nat.Service, f nat.Flow, choice *nat.Choice, now time.Duration) (netip.AddrPort, error) {
	ks, ok := byName[choice.Service]
	if !ok {
		return netip.AddrPort{}, nil
	}
	out := e.out.Service
	if ks.Service.Affinity > 0 {
		aff, rec, err := e.affinityOf(ks.ID, f.Client.Addr())
		if err != nil {
			return netip.AddrPort{}, err
		}
		if rec != nil {
			out.Affinity = aff
			*choice = nat.Choose(services, f, rec, now)
		}
	}
	switch choice.Reason {
	case nat.ReasonHash, nat.ReasonAffinity:
		return netip.AddrPortFrom(choice.Backend.Addr, choice.Backend.Port), nil
	case nat.ReasonMaglev:
		kb, err := e.maglevBackend(ks, choice.Frontend, f)
		if err != nil {
			return netip.AddrPort{}, err
		}
		out.MaglevTable = kb.String()
		return kb, nil
	}
	return netip.AddrPort{}, nil
}

// affinityOf reads a client's affinity record for a service.
func (e *explainer) affinityOf(svcID uint32, client netip.Addr) (*affinityOut, *nat.AffinityRecord, error) {
	aff, err := typed[bpf.AffinityKey, bpf.Affinity](e.cli, bpf.MapAffinity)
	if err != nil {
		return nil, nil, err
	}
	v, err := aff.Lookup(bpf.AffinityKey{SvcID: svcID, Client: client.As16()})
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	backends, err := typed[uint32, bpf.Backend](e.cli, bpf.MapBackends)
	if err != nil {
		return nil, nil, err
	}
	b, err := backends.Lookup(v.BackendID)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil, nil // a record naming no backend is no record
	}
	if err != nil {
		return nil, nil, err
	}
	ap := netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), b.Port)
	out := &affinityOut{ServiceID: svcID, Client: client.String(), BackendID: v.BackendID, Backend: ap.String(),
		IdleSeconds: time.Duration(uint64(monotonic()) - v.LastUsedNs).Seconds()}
	return out, &nat.AffinityRecord{Backend: ap, LastUsed: time.Duration(v.LastUsedNs)}, nil
}

// maglevBackend is the backend the kernel's Maglev table of the service's
// current list gives the flow.
func (e *explainer) maglevBackend(ks nat.KernelService, fe nat.Frontend, f nat.Flow) (netip.AddrPort, error) {
	var base uint32
	for i, sf := range ks.Service.Frontends {
		if sf.Addr == fe.Addr && sf.Port == fe.Port && sf.Protocol == fe.Protocol {
			base = ks.Frontends[i].SlotBase
		}
	}
	tables, err := typed[bpf.MaglevKey, bpf.MaglevTable](e.cli, "sl_maglev")
	if err != nil {
		return netip.AddrPort{}, err
	}
	table, err := tables.Lookup(bpf.MaglevKey{SvcID: ks.ID, SlotBase: base})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("maglev table of service %d: %w", ks.ID, err)
	}
	id := table.BackendIds[nat.FlowHash(f)%uint32(len(table.BackendIds))]
	backends, err := typed[uint32, bpf.Backend](e.cli, bpf.MapBackends)
	if err != nil {
		return netip.AddrPort{}, err
	}
	b, err := backends.Lookup(id)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("maglev table of service %d: backend %d: %w", ks.ID, id, err)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), b.Port), nil
}

func routeOutOf(r *routes.Route) *routeOut {
	if r == nil {
		return nil
	}
	o := &routeOut{Prefix: r.Prefix.String(), Flags: r.Flags.String(), Ifindex: r.Ifindex}
	if r.NextHop.IsValid() {
		o.NextHop = r.NextHop.String()
	}
	return o
}

func describeRoute(r *routes.Route) string {
	if r == nil {
		return "no route"
	}
	s := r.Prefix.String() + " " + r.Flags.String()
	if r.Ifindex != 0 {
		s += fmt.Sprintf(" ifindex %d", r.Ifindex)
	}
	if r.NextHop.IsValid() {
		s += " via " + r.NextHop.String()
	}
	return s
}
