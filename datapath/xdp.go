package datapath

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/polprog"
)

// xdpIfacesVersion is the layout version of the XDP interface map in the
// registry: struct sl_iface, as in the interface map, whose records name
// the XDP policy's slot in Ingress.
const xdpIfacesVersion = 1

// xdpRecordFlags are the flags of every XDP record, which the XDP program
// does not read: they say what the record is to someone reading the map.
// It reads bpf.IfacePassIPv6, which xdpFlags adds.
const xdpRecordFlags = bpf.IfaceReady | bpf.IfaceHost

// xdpFlags are the flags of an interface's XDP record: with
// bpf.IfacePassIPv6 where its TC passes IPv6 unchecked, so that the XDP
// program drops the IPv6 packets it cannot parse, which would otherwise
// pass both hooks undecided by the XDP tiers.
func (c *Interface) xdpFlags() bpf.IfaceFlags {
	return xdpRecordFlags | c.flags()&bpf.IfacePassIPv6
}

// loadXDP loads this generation's XDP object: its counters are the
// datapath's, its interface map the registry's, its jump map and
// continuations its own.
func (d *Datapath) loadXDP() error {
	spec, err := bpf.LoadXDPSpec()
	if err != nil {
		return err
	}
	var specs bpf.XDPSpecs
	if err := spec.Assign(&specs); err != nil {
		return fmt.Errorf("assign xdp specs: %w", err)
	}
	specs.SlXdpPolicyJumps.MaxEntries = d.opts.PolicySlots
	// Replacements must match their specs.
	specs.SlCounters.MaxEntries = d.state.counters.MaxEntries()
	specs.SlXdpifaces.MaxEntries = d.state.xdpIfaces.MaxEntries()
	if err := specs.SlGeneration.Set(d.generation); err != nil {
		return fmt.Errorf("set xdp generation: %w", err)
	}
	err = spec.LoadAndAssign(&d.xdp, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		bpf.MapCounters:  d.state.counters,
		bpf.MapXDPIfaces: d.state.xdpIfaces,
	}})
	if err != nil {
		return fmt.Errorf("load xdp programs: %w", err)
	}
	for slot, prog := range map[bpf.ContSlot]*ebpf.Program{bpf.ContAllow: d.xdp.SlXdpAllow, bpf.ContDeny: d.xdp.SlXdpDeny} {
		if err := d.xdp.SlXdpConts.Put(uint32(slot), prog); err != nil {
			return fmt.Errorf("install xdp continuation %d: %w", slot, err)
		}
	}
	// Slot 0 is never handed out: a record naming it has no policy, and
	// the XDP program passes the interface's packets to TC.
	d.xdpSlots = newSlotPool("xdp policy slots", 1, d.opts.PolicySlots-1)
	return nil
}

// XDP is the program to attach to the XDP hook of host interfaces whose
// Interface.XDP tiers should drop before an skb exists (see
// attach.AttachXDP); it passes everything else, and every packet of
// other interfaces, to the TC programs, which must be attached too (nil
// for a nil Datapath).
func (d *Datapath) XDP() *ebpf.Program {
	if d == nil {
		return nil
	}
	return d.xdp.SlXdp
}

// xdpMaps are the maps XDP policy programs use.
func (d *Datapath) xdpMaps() polprog.Maps {
	return polprog.Maps{
		State:        d.xdp.SlXdpState,
		IPSets:       d.state.ipsets,
		IPSetMembers: d.state.ipsetMembers,
		IPSetGen:     d.state.ipsetGen,
		RuleHits:     d.state.ruleHits,
		PolicyJumps:  d.xdp.SlXdpPolicyJumps,
		Conts:        d.xdp.SlXdpConts,
	}
}

// xdpRules are the rules of an interface's XDP policy: its XDP tiers as a
// host endpoint's pre-DNAT tiers. Nothing after them runs at XDP (the
// program sets no host flags, and there are no apply-on-forward tiers), so
// a packet they do not deny is allowed: passed to TC.
func (c *Interface) xdpRules() (polprog.Rules, error) {
	if len(c.XDP) == 0 {
		return polprog.Rules{}, nil
	}
	if c.Kind != Host {
		return polprog.Rules{}, fmt.Errorf("XDP tiers on a %s interface: they apply to host interfaces", c.Kind)
	}
	return polprog.Rules{ForHost: true, PreDNATTiers: c.XDP}, nil
}

// compileXDP compiles the change's XDP policy unless the interface runs
// those rules already.
func (d *Datapath) compileXDP(c *change, prev *ifaceState) error {
	rules, err := c.cfg.xdpRules()
	if err != nil {
		return err
	}
	if len(c.cfg.XDP) == 0 {
		return nil
	}
	if prev != nil && prev.xdp.prog != nil && reflect.DeepEqual(prev.xdp.rules, rules) {
		c.next.xdp = prev.xdp
		return nil
	}
	opts := d.opts.Policy
	opts.Hook = polprog.HookXDP
	if c.compileXDP, err = polprog.Compile(rules, opts); err != nil {
		return fmt.Errorf("XDP policy: %w", err)
	}
	c.next.xdp.rules = rules
	return nil
}

// loadXDPPolicy loads a compiled XDP policy into fresh slots of the XDP
// jump map.
func (d *Datapath) loadXDPPolicy(c *polprog.Compiled) (*polprog.Program, error) {
	slots, err := d.xdpSlots.take(len(c.Parts))
	if err != nil {
		return nil, err
	}
	p, err := c.Load(d.xdpMaps(), slots)
	if err != nil {
		d.xdpSlots.release(slots...)
		return nil, err
	}
	return p, nil
}

// poolOf is the slot pool a loaded policy took its slots from.
func (d *Datapath) poolOf(p *polprog.Program) *slotPool {
	if progs := p.Programs(); len(progs) > 0 && progs[0].Type() == ebpf.XDP {
		return d.xdpSlots
	}
	return d.policySlots
}

// writeXDP writes this generation's XDP record of the change's interface,
// when it has an XDP policy or had one, and returns the entry it replaced
// (for undoXDP) and whether it wrote one. The caller holds the state lock.
func (d *Datapath) writeXDP(c *change, prev *ifaceState, settled uint32) (old bpf.Iface, existed, wrote bool, err error) {
	had := prev != nil && prev.xdp.prog != nil
	if c.next.xdp.prog == nil && !had {
		return bpf.Iface{}, false, false, nil
	}
	xm := d.xdpIfaceMap
	old, err = xm.Lookup(c.ifindex)
	existed = err == nil
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return bpf.Iface{}, false, false, err
	}
	entry := old
	entry.CounterSlot = c.entry.CounterSlot
	rec, ok := recordIndex(entry, d.generation, settled)
	if !ok {
		return bpf.Iface{}, false, false, fmt.Errorf("both XDP records belong to generations this one (%d) must not evict: %d and %d",
			d.generation, entry.Records[0].Generation, entry.Records[1].Generation)
	}
	entry.Records[rec] = bpf.IfaceRecord{Generation: d.generation, Flags: c.cfg.xdpFlags(), Ingress: c.next.xdp.prog.EntrySlot()}
	if err := xm.Update(c.ifindex, entry, ebpf.UpdateAny); err != nil {
		return bpf.Iface{}, false, false, err
	}
	return old, existed, true, nil
}

// undoXDP puts back the XDP entry writeXDP replaced, when the interface's
// TC entry could not follow it.
func (d *Datapath) undoXDP(ifindex uint32, old bpf.Iface, existed bool) error {
	if existed {
		return d.xdpIfaceMap.Update(ifindex, old, ebpf.UpdateAny)
	}
	if err := d.xdpIfaceMap.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// removeXDP deletes an interface's XDP entry (RemoveInterface): from then
// on its XDP hook passes everything to TC.
func (d *Datapath) removeXDP(ifindex uint32) error {
	if err := d.xdpIfaceMap.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove XDP entry: %w", err)
	}
	return nil
}

// XDPEntry returns the interface's entry in the XDP interface map: its
// counter slot and each generation's record, whose Ingress is the XDP
// policy's slot (0: none).
func (d *Datapath) XDPEntry(ifindex int) (bpf.Iface, error) {
	if err := d.opened(); err != nil {
		return bpf.Iface{}, fmt.Errorf("read XDP entry: %w", err)
	}
	idx, err := checkIfindex(ifindex)
	if err == nil {
		var e bpf.Iface
		if e, err = d.xdpIfaceMap.Lookup(idx); err == nil {
			return e, nil
		}
	}
	return bpf.Iface{}, fmt.Errorf("read XDP entry %d: %w", ifindex, err)
}

// openXDPIfaces opens or creates the XDP interface map, sized as the
// interface map. The caller holds the state lock.
func (s *state) openXDPIfaces(size uint32) error {
	spec, err := bpf.LoadXDPSpec()
	if err != nil {
		return err
	}
	ms := spec.Maps[bpf.MapXDPIfaces]
	ms.MaxEntries = size
	s.xdpIfaces, err = s.open(ms, xdpIfacesVersion)
	return err
}

// switchEntries writes the change's XDP record, then its TC record rec:
// each switch is one map update, and a failed TC update puts the XDP
// entry back, so that on error the interface runs its old configuration.
// The caller holds the state lock.
func (d *Datapath) switchEntries(c *change, settled uint32, rec int) error {
	old, existed, wrote, err := d.writeXDP(c, d.ifaces[c.ifindex], settled)
	if err != nil {
		return fmt.Errorf("XDP entry: %w", err)
	}
	c.entry.Records[rec] = c.record(d.generation)
	err = d.ifaceMap.Update(c.ifindex, c.entry, ebpf.UpdateAny)
	if err != nil && wrote {
		err = errors.Join(err, d.undoXDP(c.ifindex, old, existed))
	}
	return err
}

// clearOlderXDPRecords is clearOlderRecords for the XDP interface map, at
// Settle: older generations' records go, and an entry left with none. An
// older generation's XDP program, which read those records, is detached
// or replaced by then (attach.AttachXDP replaces it in place).
func (d *Datapath) clearOlderXDPRecords() error {
	updates, err := d.withoutOlderRecords(d.xdpIfaceMap)
	if err != nil {
		return fmt.Errorf("read XDP interfaces: %w", err)
	}
	for idx, entry := range updates {
		if entry.Records[0].Generation == 0 && entry.Records[1].Generation == 0 {
			err = d.xdpIfaceMap.Delete(idx)
		} else {
			err = d.xdpIfaceMap.Update(idx, entry, ebpf.UpdateExist)
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear XDP records: %w", err)
		}
	}
	return nil
}
