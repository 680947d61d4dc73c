package datapath

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"

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
	// hooks are the policies of the TC ingress and egress hooks.
	hooks [2]hookPolicy
}

// hookPolicy is a TC hook's policy: the rules it was compiled from, so an
// unchanged hook keeps its program, and the program.
type hookPolicy struct {
	rules polprog.Rules
	prog  *polprog.Program
}

// release closes the policies' handles and leaves them installed.
func (s *ifaceState) release() error {
	return errors.Join(s.hooks[0].prog.Release(), s.hooks[1].prog.Release())
}

// SetInterface configures the interface with index ifindex, or changes
// its configuration, make-before-break: a hook whose policy changed gets
// it compiled and loaded into fresh policy slots, the interface's entry
// switches to the new configuration in one map update, and the previous
// policies are removed only after no packet can still be running them. A
// packet sees the old configuration or the new one, never a mix, and
// never none. An error before the switch leaves everything as it was; an
// error removing the old policies after it says so, and the new
// configuration is in place.
func (d *Datapath) SetInterface(ifindex int, cfg Interface) error {
	if d == nil {
		return errors.New("set interface: nil Datapath")
	}
	return d.SetInterfaces(map[int]Interface{ifindex: cfg})
}

// SetInterfaces is SetInterface for many interfaces at once: each one
// switches make-before-break as SetInterface does, and the old policies
// of all of them are removed after a single wait for running packets,
// which is what makes configuring hundreds of interfaces quick. Either
// every entry switches, or, on an error before the first switch, none.
func (d *Datapath) SetInterfaces(cfgs map[int]Interface) error {
	if d == nil {
		return errors.New("set interfaces: nil Datapath")
	}
	if err := d.setInterfaces(cfgs); err != nil {
		return fmt.Errorf("set interfaces: %w", err)
	}
	return nil
}

// change is one interface's part of a SetInterfaces call.
type change struct {
	ifindex uint32
	cfg     Interface
	rules   [2]polprog.Rules     // by TC hook
	compile [2]*polprog.Compiled // nil where the hook keeps its program
	next    ifaceState
	entry   bpf.Iface
	fresh   bool // entry got a new counter slot
}

func (d *Datapath) setInterfaces(cfgs map[int]Interface) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(); err != nil {
		return err
	}
	changes, err := d.compileChanges(cfgs)
	if err != nil {
		return err
	}
	unlock, err := d.state.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := d.prepare(changes); err != nil {
		return err
	}
	meta, err := d.readMeta()
	if err != nil {
		d.abandon(changes)
		return err
	}
	var retired []*polprog.Program
	for i, c := range changes {
		c.entry.Records[recordIndex(c.entry, d.generation, meta.SettledGeneration)] = c.record(d.generation)
		if err := d.ifaceMap.Update(c.ifindex, c.entry, ebpf.UpdateAny); err != nil {
			d.abandon(changes[i:])
			if i == 0 {
				return fmt.Errorf("interface %d: %w", c.ifindex, err)
			}
			err = fmt.Errorf("interface %d (after switching %d others): %w", c.ifindex, i, err)
			return errors.Join(err, d.retire(retired...))
		}
		if prev := d.ifaces[c.ifindex]; prev != nil {
			for h := range prev.hooks {
				if prev.hooks[h].prog != c.next.hooks[h].prog {
					retired = append(retired, prev.hooks[h].prog)
				}
			}
		}
		d.ifaces[c.ifindex] = &c.next
	}
	return d.retire(retired...)
}

// compileChanges validates and compiles every configuration; a hook whose
// rules equal those it runs keeps its program.
func (d *Datapath) compileChanges(cfgs map[int]Interface) ([]*change, error) {
	changes := make([]*change, 0, len(cfgs))
	for ifindex, cfg := range cfgs {
		idx, err := checkIfindex(ifindex)
		if err != nil {
			return nil, fmt.Errorf("interface %d: %w", ifindex, err)
		}
		c := &change{ifindex: idx, cfg: cfg, next: ifaceState{kind: cfg.Kind}}
		if c.rules[bpf.HookIngress], c.rules[bpf.HookEgress], err = cfg.hookRules(); err != nil {
			return nil, fmt.Errorf("interface %d: %w", ifindex, err)
		}
		prev := d.ifaces[idx]
		for h, rules := range c.rules {
			if prev != nil && reflect.DeepEqual(prev.hooks[h].rules, rules) {
				c.next.hooks[h] = prev.hooks[h]
				continue
			}
			if c.compile[h], err = polprog.Compile(rules, d.opts.Policy); err != nil {
				return nil, fmt.Errorf("interface %d: TC %s policy: %w", ifindex, bpf.Hook(h), err)
			}
			c.next.hooks[h].rules = rules
		}
		changes = append(changes, c)
	}
	slices.SortFunc(changes, func(a, b *change) int { return int(a.ifindex) - int(b.ifindex) })
	return changes, nil
}

// prepare reads each interface's entry, takes counter slots for new ones,
// and loads the new policies into fresh slots. On error it undoes all of
// it.
func (d *Datapath) prepare(changes []*change) error {
	for i, c := range changes {
		var err error
		if c.entry, c.fresh, err = d.entry(c.ifindex); err != nil {
			d.abandon(changes[:i])
			return fmt.Errorf("interface %d: %w", c.ifindex, err)
		}
		for h, compiled := range c.compile {
			if compiled == nil {
				continue
			}
			if c.next.hooks[h].prog, err = d.loadPolicy(compiled); err != nil {
				d.abandon(changes[:i+1])
				return fmt.Errorf("interface %d: TC %s policy: %w", c.ifindex, bpf.Hook(h), err)
			}
		}
	}
	return nil
}

// abandon undoes prepare for changes whose entries were not written: their
// new policies go, and new interfaces give their counter slots back.
func (d *Datapath) abandon(changes []*change) {
	for _, c := range changes {
		for h, compiled := range c.compile {
			if compiled != nil && c.next.hooks[h].prog != nil {
				d.unloadPolicy(c.next.hooks[h].prog)
			}
		}
		if c.fresh {
			d.counterSlots.release(c.entry.CounterSlot)
		}
	}
}

// record is this generation's record of the change's configuration.
func (c *change) record(generation uint32) bpf.IfaceRecord {
	return bpf.IfaceRecord{
		Generation: generation,
		Flags:      c.cfg.flags(),
		Ingress:    c.next.hooks[bpf.HookIngress].prog.EntrySlot(),
		Egress:     c.next.hooks[bpf.HookEgress].prog.EntrySlot(),
	}
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

// recordIndex says which of an entry's two records generation gen writes:
// its own, or else the one that does not belong to the settled generation
// (whose programs run the hooks until this one takes over), or else the
// older. So a process whose predecessor crashed before settling never
// evicts the generation still attached.
func recordIndex(entry bpf.Iface, gen, settled uint32) int {
	r := entry.Records
	switch {
	case r[0].Generation == gen:
		return 0
	case r[1].Generation == gen:
		return 1
	case r[0].Generation == settled && settled != 0:
		return 1
	case r[1].Generation == settled && settled != 0:
		return 0
	case r[1].Generation < r[0].Generation:
		return 1
	}
	return 0
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
	if len(progs) == 0 {
		return nil
	}
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
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove replaced policies: %w", err)
	}
	return nil
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
	unlock, err := d.state.lock()
	if err != nil {
		return err
	}
	defer unlock()
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
		progs = append(progs, prev.hooks[0].prog, prev.hooks[1].prog)
	}
	if err := d.retire(progs...); err != nil {
		return err
	}
	d.counterSlots.release(entry.CounterSlot)
	return nil
}

// InterfaceEntry returns the interface's entry in the interface map, as
// the datapath reads it: its counter slot and each generation's record.
func (d *Datapath) InterfaceEntry(ifindex int) (bpf.Iface, error) {
	if d == nil {
		return bpf.Iface{}, errors.New("read interface entry: nil Datapath")
	}
	entry, err := d.interfaceEntry(ifindex)
	if err != nil {
		return bpf.Iface{}, fmt.Errorf("read interface entry %d: %w", ifindex, err)
	}
	return entry, nil
}

func (d *Datapath) interfaceEntry(ifindex int) (bpf.Iface, error) {
	idx, err := checkIfindex(ifindex)
	if err != nil {
		return bpf.Iface{}, err
	}
	return d.ifaceMap.Lookup(idx)
}
