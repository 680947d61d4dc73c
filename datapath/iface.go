package datapath

import (
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/polprog"
)

// Kind is what an interface connects the node to.
type Kind uint8

// Interface kinds.
const (
	// Workload is the host side of a workload's interface (a veth whose
	// peer is in the workload's network namespace). Packets from the
	// workload are reverse-path checked against the routes map.
	Workload Kind = iota + 1
	// Host is one of the node's own interfaces: a host endpoint.
	Host
)

// String returns "workload", "host" or "kind(N)".
func (k Kind) String() string {
	switch k {
	case Workload:
		return "workload"
	case Host:
		return "host"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Interface describes how the datapath treats one interface. Policies are
// in the endpoint's own terms: Ingress is what reaches the endpoint,
// Egress what it sends. SetInterface puts each on the right TC hook: for a
// workload, the packets it sends arrive at the TC ingress hook of its
// host-side interface, so its Egress policy runs there.
type Interface struct {
	// Kind is Workload or Host.
	Kind Kind
	// Ingress is the policy of traffic to the endpoint: into the
	// workload, or into the host through this interface (a host
	// endpoint's pre-DNAT tiers belong here).
	Ingress polprog.Rules
	// Egress is the policy of traffic from the endpoint.
	Egress polprog.Rules
	// DropNonIP drops ARP and the other link protocols that pass by
	// default (bpf.IfaceDropNonIP).
	DropNonIP bool
	// PassIPv6 passes IPv6 unchecked instead of dropping it
	// (bpf.IfacePassIPv6).
	PassIPv6 bool
	// DropMidFlow drops TCP that is neither a SYN nor part of a tracked
	// flow instead of running policy on it (bpf.IfaceDropMidFlow).
	DropMidFlow bool
	// PassFragments polices first fragments and passes later ones
	// instead of dropping every fragment (bpf.IfacePassFragments).
	PassFragments bool
}

// flags are the interface's bpf.IfaceFlags.
func (c *Interface) flags() bpf.IfaceFlags {
	f := bpf.IfaceReady
	if c.Kind == Workload {
		f |= bpf.IfaceWorkload
	} else {
		f |= bpf.IfaceHost
	}
	for _, o := range []struct {
		on   bool
		flag bpf.IfaceFlags
	}{
		{c.DropNonIP, bpf.IfaceDropNonIP},
		{c.PassIPv6, bpf.IfacePassIPv6},
		{c.DropMidFlow, bpf.IfaceDropMidFlow},
		{c.PassFragments, bpf.IfacePassFragments},
	} {
		if o.on {
			f |= o.flag
		}
	}
	return f
}

// hookRules returns the rules of the TC ingress and egress hooks.
func (c *Interface) hookRules() (tcIngress, tcEgress polprog.Rules, err error) {
	switch c.Kind {
	case Workload:
		return c.Egress, c.Ingress, nil
	case Host:
		if len(c.Egress.PreDNATTiers) > 0 {
			return polprog.Rules{}, polprog.Rules{}, errors.New("pre-DNAT tiers apply to traffic into the host only: put them in Ingress")
		}
		in, out := c.Ingress, c.Egress
		in.ForHost, out.ForHost = true, true
		return in, out, nil
	}
	return polprog.Rules{}, polprog.Rules{}, fmt.Errorf("interface kind %s", c.Kind)
}

// ifaceState is what this process loaded for one interface.
type ifaceState struct {
	kind Kind
	// tcIngress and tcEgress are the policies of the two TC hooks.
	tcIngress, tcEgress *polprog.Program
}

// release closes the policies' handles and leaves them installed.
func (s *ifaceState) release() error {
	return errors.Join(s.tcIngress.Release(), s.tcEgress.Release())
}

// SetInterface configures the interface with index ifindex, or changes
// its configuration, make-before-break: both policies are compiled and
// loaded into fresh policy slots, the interface's entry switches to them
// in one map update, and the previous policies are removed only after no
// packet can still be running them. A packet sees the old configuration
// or the new one, never a mix, and never none. On error nothing changed.
func (d *Datapath) SetInterface(ifindex int, cfg Interface) error {
	if d == nil {
		return errors.New("set interface: nil Datapath")
	}
	if err := d.setInterface(ifindex, cfg); err != nil {
		return fmt.Errorf("set interface %d: %w", ifindex, err)
	}
	return nil
}

func (d *Datapath) setInterface(ifindex int, cfg Interface) error {
	idx, err := checkIfindex(ifindex)
	if err != nil {
		return err
	}
	tcIn, tcOut, err := cfg.hookRules()
	if err != nil {
		return err
	}
	compiledIn, err := polprog.Compile(tcIn, d.opts.Policy)
	if err != nil {
		return fmt.Errorf("TC ingress policy: %w", err)
	}
	compiledOut, err := polprog.Compile(tcOut, d.opts.Policy)
	if err != nil {
		return fmt.Errorf("TC egress policy: %w", err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(); err != nil {
		return err
	}
	entry, fresh, err := d.entry(idx)
	if err != nil {
		return err
	}
	in, err := d.loadPolicy(compiledIn)
	if err != nil {
		d.releaseFresh(fresh, entry)
		return fmt.Errorf("TC ingress policy: %w", err)
	}
	out, err := d.loadPolicy(compiledOut)
	if err != nil {
		d.unloadPolicy(in)
		d.releaseFresh(fresh, entry)
		return fmt.Errorf("TC egress policy: %w", err)
	}
	entry.Flags = cfg.flags()
	d.setRecord(&entry, bpf.IfacePolicy{Generation: d.generation, Ingress: in.EntrySlot(), Egress: out.EntrySlot()})
	if err := d.ifaceMap.Update(idx, entry, ebpf.UpdateAny); err != nil {
		d.unloadPolicy(in)
		d.unloadPolicy(out)
		d.releaseFresh(fresh, entry)
		return err
	}
	prev := d.ifaces[idx]
	d.ifaces[idx] = &ifaceState{kind: cfg.Kind, tcIngress: in, tcEgress: out}
	if prev == nil {
		return nil
	}
	return d.retire(prev.tcIngress, prev.tcEgress)
}

func checkIfindex(ifindex int) (uint32, error) {
	if ifindex <= 0 || ifindex > math.MaxInt32 {
		return 0, fmt.Errorf("ifindex %d out of range", ifindex)
	}
	return uint32(ifindex), nil
}

// entry returns the interface's current entry, or a new one with a fresh
// counter slot (reported by fresh) whose counters are zeroed.
func (d *Datapath) entry(ifindex uint32) (entry bpf.Iface, fresh bool, err error) {
	entry, err = d.ifaceMap.Lookup(ifindex)
	if err == nil && d.counterSlots.mark(entry.CounterSlot) {
		return entry, false, nil
	}
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return bpf.Iface{}, false, err
	}
	// No entry, or one whose counter slot this Open cannot hand out (the
	// interface map was shared with a larger MaxInterfaces): a new slot.
	slots, err := d.counterSlots.take(1)
	if err != nil {
		return bpf.Iface{}, false, err
	}
	entry.CounterSlot = slots[0]
	if err := d.zeroCounters(entry.CounterSlot); err != nil {
		d.counterSlots.release(entry.CounterSlot)
		return bpf.Iface{}, false, err
	}
	return entry, true, nil
}

// releaseFresh returns the counter slot entry gave a new interface.
func (d *Datapath) releaseFresh(fresh bool, entry bpf.Iface) {
	if fresh {
		d.counterSlots.release(entry.CounterSlot)
	}
}

// setRecord puts rec in the entry's record of this generation, or else in
// place of the older of the two records: the newer one belongs to the
// process this one takes over from, whose programs may still be attached.
func (d *Datapath) setRecord(entry *bpf.Iface, rec bpf.IfacePolicy) {
	i := 0
	switch {
	case entry.Policy[0].Generation == d.generation:
	case entry.Policy[1].Generation == d.generation:
		i = 1
	case entry.Policy[1].Generation < entry.Policy[0].Generation:
		i = 1
	}
	entry.Policy[i] = rec
}

// loadPolicy loads a compiled policy into fresh slots.
func (d *Datapath) loadPolicy(c *polprog.Compiled) (*polprog.Program, error) {
	slots, err := d.policySlots.take(len(c.Parts))
	if err != nil {
		return nil, err
	}
	p, err := c.Load(d.polprogMaps(), slots)
	if err != nil {
		d.policySlots.release(slots...)
		return nil, err
	}
	return p, nil
}

// unloadPolicy removes a policy that no interface entry ever named.
func (d *Datapath) unloadPolicy(p *polprog.Program) {
	slots := p.Slots()
	if p.Close() == nil {
		d.policySlots.release(slots...)
	}
}

// retire removes policies an interface entry named until its last update:
// it waits until no packet can still be running them, then deletes them
// from their slots and frees the slots. A slot whose deletion fails stays
// allocated, so it is never handed out while it may hold a program.
func (d *Datapath) retire(progs ...*polprog.Program) error {
	if err := d.quiesce(); err != nil {
		return err
	}
	var errs []error
	for _, p := range progs {
		slots := p.Slots()
		if err := p.Close(); err != nil {
			errs = append(errs, err)
			continue
		}
		d.policySlots.release(slots...)
	}
	return errors.Join(errs...)
}

// RemoveInterface removes the interface's entry: from then on the
// datapath drops its packets (bpf.ReasonDroppedNoIface, counted in slot
// 0), then its policies and its counter slot are freed. Detach the
// programs from the interface before or after; the order does not matter
// for safety.
func (d *Datapath) RemoveInterface(ifindex int) error {
	if d == nil {
		return errors.New("remove interface: nil Datapath")
	}
	if err := d.removeInterface(ifindex); err != nil {
		return fmt.Errorf("remove interface %d: %w", ifindex, err)
	}
	return nil
}

func (d *Datapath) removeInterface(ifindex int) error {
	idx, err := checkIfindex(ifindex)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(); err != nil {
		return err
	}
	entry, err := d.ifaceMap.Lookup(idx)
	if err != nil {
		return err
	}
	if err := d.ifaceMap.Delete(idx); err != nil {
		return err
	}
	prev := d.ifaces[idx]
	delete(d.ifaces, idx)
	var progs []*polprog.Program
	if prev != nil {
		progs = append(progs, prev.tcIngress, prev.tcEgress)
	}
	if err := d.retire(progs...); err != nil {
		return err
	}
	d.counterSlots.release(entry.CounterSlot)
	return nil
}

// Interface returns the interface's entry in the interface map, as the
// datapath reads it.
func (d *Datapath) Interface(ifindex int) (bpf.Iface, error) {
	idx, err := checkIfindex(ifindex)
	if err != nil {
		return bpf.Iface{}, fmt.Errorf("read interface: %w", err)
	}
	entry, err := d.ifaceMap.Lookup(idx)
	if err != nil {
		return bpf.Iface{}, fmt.Errorf("read interface %d: %w", ifindex, err)
	}
	return entry, nil
}
