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

// IPv6Mode says what an interface does with IPv6.
type IPv6Mode uint8

const (
	// IPv6Enforce parses IPv6 and enforces it as IPv4 is: conntrack,
	// reverse-path checks, host flags and policy (which compares every
	// address with its family), with neighbour discovery passed and
	// counted (bpf.IfaceEnforceIPv6). The default.
	IPv6Enforce IPv6Mode = iota
	// IPv6Drop drops every IPv6 packet, counted as dropped_ipv6.
	IPv6Drop
	// IPv6Pass passes IPv6 unchecked, counted as ipv6_passed
	// (bpf.IfacePassIPv6): for a node whose IPv6 another layer polices.
	IPv6Pass
)

// String returns the mode's name.
func (m IPv6Mode) String() string {
	switch m {
	case IPv6Enforce:
		return "enforce"
	case IPv6Drop:
		return "drop"
	case IPv6Pass:
		return "pass"
	}
	return fmt.Sprintf("ipv6mode(%d)", uint8(m))
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
	// IPv6 says what the interface does with IPv6: by default
	// (IPv6Enforce) it is parsed and enforced as IPv4 is.
	IPv6 IPv6Mode
	// DropND drops ICMPv6 neighbour discovery and multicast listener
	// messages, which pass by default where IPv6 is enforced
	// (bpf.IfaceDropND). Router messages from a workload drop regardless.
	DropND bool
	// DropMidFlow drops TCP that is neither a SYN nor part of a tracked
	// flow instead of running policy on it (bpf.IfaceDropMidFlow).
	DropMidFlow bool
	// PassFragments polices first fragments and passes later ones
	// instead of dropping every fragment (bpf.IfacePassFragments).
	PassFragments bool
	// RedirectLocal sends established packets that arrive here for a
	// local workload (a service's after translation) straight to the
	// workload's interface, past the host's routing and netfilter
	// (bpf.IfaceRedirectLocal). Leave it off where the host's own rules
	// must see that traffic.
	RedirectLocal bool
	// XDP are a host interface's untracked pre-DNAT tiers, decided at its
	// XDP hook (attach Datapath.XDP there) before an skb exists: what they
	// deny is dropped and counted under the interface's ingress counters
	// (bpf.ReasonDroppedByPolicy), what they allow or pass goes on to
	// the TC hooks, whose policy (Ingress) decides it in full. They match
	// the destination the packet carries (no service is translated yet)
	// and never the host flags; IPv6 and first fragments are matched
	// whatever the interface's IPv6 mode, and malformed packets, later
	// fragments and neighbour discovery pass to TC undecided (but with
	// IPv6Pass, which TC would pass unchecked, a malformed IPv6 packet is
	// dropped at XDP, counted with the parser's reason).
	XDP []polprog.Tier
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
		{c.IPv6 == IPv6Pass, bpf.IfacePassIPv6},
		{c.IPv6 == IPv6Enforce, bpf.IfaceEnforceIPv6},
		{c.DropND, bpf.IfaceDropND},
		{c.DropMidFlow, bpf.IfaceDropMidFlow},
		{c.PassFragments, bpf.IfacePassFragments},
		{c.RedirectLocal, bpf.IfaceRedirectLocal},
	} {
		if o.on {
			f |= o.flag
		}
	}
	return f
}

// hookRules returns the rules of the TC ingress and egress hooks.
func (c *Interface) hookRules() (tcIngress, tcEgress polprog.Rules, err error) {
	if c.IPv6 > IPv6Pass {
		return polprog.Rules{}, polprog.Rules{}, fmt.Errorf("IPv6 mode %s", c.IPv6)
	}
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
	// xdp is the XDP policy, if the interface has one.
	xdp hookPolicy
}

// hookPolicy is a TC hook's policy: the rules it was compiled from, so an
// unchanged hook keeps its program, and the program.
type hookPolicy struct {
	rules polprog.Rules
	prog  *polprog.Program
}

// release closes the policies' handles and leaves them installed.
func (s *ifaceState) release() error {
	var errXDP error
	if s.xdp.prog != nil {
		errXDP = s.xdp.prog.Release()
	}
	return errors.Join(s.hooks[0].prog.Release(), s.hooks[1].prog.Release(), errXDP)
}

// SetInterface configures the interface with index ifindex, or changes
// its configuration, make-before-break: a hook whose policy changed gets
// it compiled and loaded into fresh policy slots, the interface's entry
// switches to the new configuration in one map update, and the previous
// policies are removed only after no packet can still be running them. A
// packet sees the old configuration or the new one, never a mix, and
// never none. An error before the switch leaves everything as it was; an
// error removing the old policies after it says so, and the new
// configuration is in place. A new interface (an index without an entry)
// starts without flows: conntrack entries an earlier interface of its
// index left are deleted before its entry is written.
//
// A Datapath whose generation was taken over (an older generation than
// the settled one) may still configure interfaces, but never evicts the
// records of the settled generation and of one taking over from it: where
// both records belong to those, its change to that interface is dropped,
// since no hook runs its programs any more.
func (d *Datapath) SetInterface(ifindex int, cfg Interface) error {
	if err := d.opened(); err != nil {
		return fmt.Errorf("set interface: %w", err)
	}
	return d.SetInterfaces(map[int]Interface{ifindex: cfg})
}

// SetInterfaces is SetInterface for many interfaces at once: each one
// switches make-before-break as SetInterface does, and the old policies
// of all of them are removed after a single wait for running packets,
// which is what makes configuring hundreds of interfaces quick. Either
// every entry switches, or, on an error before the first switch, none.
func (d *Datapath) SetInterfaces(cfgs map[int]Interface) error {
	if err := d.opened(); err != nil {
		return fmt.Errorf("set interfaces: %w", err)
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
	created bool // there was no entry: the interface is new

	// compileXDP is the XDP policy's, as compile is the TC hooks'.
	compileXDP *polprog.Compiled
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
	var errDebug error
	switched := 0
	for i, c := range changes {
		rec, ok := recordIndex(c.entry, d.generation, meta.SettledGeneration)
		if !ok && d.generation < meta.SettledGeneration {
			// Both records belong to the settled generation and one
			// taking over from it: this one was taken over, and its
			// programs run on no hook, so its record would matter to no
			// packet. The change is dropped, not an error: the process
			// is on its way out.
			d.abandon([]*change{c})
			continue
		}
		var err error
		if !ok {
			err = fmt.Errorf("both records belong to generations this one (%d) must not evict: %d and %d",
				d.generation, c.entry.Records[0].Generation, c.entry.Records[1].Generation)
		} else {
			err = d.switchEntries(c, meta.SettledGeneration, rec)
		}
		if err != nil {
			d.abandon(changes[i:])
			if switched > 0 {
				err = fmt.Errorf("interface %d (after switching %d others): %w", c.ifindex, switched, err)
			} else {
				err = fmt.Errorf("interface %d: %w", c.ifindex, err)
			}
			return errors.Join(err, d.retire(retired...))
		}
		switched++
		d.configured = true
		if prev := d.ifaces[c.ifindex]; prev != nil {
			for h := range prev.hooks {
				if prev.hooks[h].prog != c.next.hooks[h].prog {
					retired = append(retired, prev.hooks[h].prog)
				}
			}
			if prev.xdp.prog != nil && prev.xdp.prog != c.next.xdp.prog {
				retired = append(retired, prev.xdp.prog)
			}
		}
		d.ifaces[c.ifindex] = &c.next
		errDebug = errors.Join(errDebug, d.writeDebugInfo(c))
	}
	return errors.Join(d.retire(retired...), errDebug)
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
		if err := d.compileXDP(c, prev); err != nil {
			return nil, fmt.Errorf("interface %d: %w", ifindex, err)
		}
		changes = append(changes, c)
	}
	slices.SortFunc(changes, func(a, b *change) int { return int(a.ifindex) - int(b.ifindex) })
	return changes, nil
}

// prepare reads each interface's entry, takes counter slots for new ones,
// forgets the flows an earlier interface of a new one's index left, and
// loads the new policies into fresh slots. On error it undoes all of it.
func (d *Datapath) prepare(changes []*change) error {
	created := map[uint32]bool{}
	marked := false
	for i, c := range changes {
		var err error
		if c.entry, c.fresh, c.created, err = d.entry(c.ifindex, &marked); err != nil {
			d.abandon(changes[:i])
			return fmt.Errorf("interface %d: %w", c.ifindex, err)
		}
		if c.created {
			created[c.ifindex] = true
		}
	}
	// No entry names a new interface yet, and none has since the one that
	// was deleted last (RemoveInterface and Settle wait for running
	// packets after deleting one), so no packet binds a flow to it while
	// its old flows go.
	if err := d.forgetFlows(created); err != nil {
		d.abandon(changes)
		return err
	}
	for i, c := range changes {
		var err error
		for h, compiled := range c.compile {
			if compiled == nil {
				continue
			}
			if c.next.hooks[h].prog, err = d.loadPolicy(compiled); err != nil {
				d.abandon(changes[:i+1])
				return fmt.Errorf("interface %d: TC %s policy: %w", c.ifindex, bpf.Hook(h), err)
			}
		}
		if c.compileXDP != nil {
			if c.next.xdp.prog, err = d.loadXDPPolicy(c.compileXDP); err != nil {
				d.abandon(changes[:i+1])
				return fmt.Errorf("interface %d: XDP policy: %w", c.ifindex, err)
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
		if c.compileXDP != nil && c.next.xdp.prog != nil {
			d.unloadPolicy(c.next.xdp.prog)
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

// entry returns the interface's current entry, or a new one (created)
// with a fresh counter slot (fresh) whose counters are zeroed; an entry
// whose counter slot this Open cannot hand out gets a fresh one too. The
// caller holds the state lock. Before the first slot a batch takes (*marked
// false), the slots other processes sharing the pins took since this one
// last looked are marked used.
func (d *Datapath) entry(ifindex uint32, marked *bool) (entry bpf.Iface, fresh, created bool, err error) {
	entry, err = d.ifaceMap.Lookup(ifindex)
	if err == nil && d.counterSlots.mark(entry.CounterSlot) {
		return entry, false, false, nil
	}
	created = errors.Is(err, ebpf.ErrKeyNotExist)
	if err != nil && !created {
		return bpf.Iface{}, false, false, err
	}
	if !*marked {
		if err := d.markCounterSlots(); err != nil {
			return bpf.Iface{}, false, false, err
		}
		*marked = true
	}
	// No entry, or one whose counter slot this Open cannot hand out (the
	// interface map was shared with a larger MaxInterfaces): a new slot.
	slots, err := d.counterSlots.take(1)
	if err != nil {
		return bpf.Iface{}, false, false, err
	}
	entry.CounterSlot = slots[0]
	if err := d.zeroCounters(entry.CounterSlot); err != nil {
		d.counterSlots.release(entry.CounterSlot)
		return bpf.Iface{}, false, false, err
	}
	return entry, true, created, nil
}

// markCounterSlots marks used the counter slots of every entry in the
// interface map, which other processes sharing the pins may have taken
// since this one opened. The caller holds the state lock.
func (d *Datapath) markCounterSlots() error {
	var err error
	for _, entry := range d.ifaceMap.All(&err) {
		d.counterSlots.mark(entry.CounterSlot)
	}
	if err != nil {
		return fmt.Errorf("read interfaces: %w", err)
	}
	return nil
}

// recordIndex says which of an entry's two records generation gen writes,
// or false when it may write neither: its own; else an empty one; else
// the older of those of older generations other than the settled one.
// The settled generation's programs run the hooks until gen takes over,
// and a newer generation is a process taking over from gen: evicting
// either would leave running programs without a record. So a process
// whose predecessor crashed before settling evicts that predecessor's
// record, never the settled one's, and an old process's late update
// never undoes a takeover.
func recordIndex(entry bpf.Iface, gen, settled uint32) (int, bool) {
	r := entry.Records
	for i := range r {
		if r[i].Generation == gen {
			return i, true
		}
	}
	for i := range r {
		if r[i].Generation == 0 {
			return i, true
		}
	}
	evict := -1
	for i := range r {
		g := r[i].Generation
		if g > gen || g == settled {
			continue
		}
		if evict < 0 || g < r[evict].Generation {
			evict = i
		}
	}
	return evict, evict >= 0
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
	slots, pool := p.Slots(), d.poolOf(p)
	if p.Close() == nil {
		pool.release(slots...)
	}
}

// retire removes policies an interface entry named until its last update:
// it waits until no packet can still be running them, then deletes them
// from their slots and frees the slots (removePolicies).
func (d *Datapath) retire(progs ...*polprog.Program) error {
	if len(progs) == 0 {
		return nil
	}
	if err := d.quiesce(); err != nil {
		return err
	}
	return d.removePolicies(progs)
}

// removePolicies deletes policies no packet can be running from their
// slots and frees the slots. A slot whose deletion fails stays allocated,
// so it is never handed out while it may hold a program.
func (d *Datapath) removePolicies(progs []*polprog.Program) error {
	var errs []error
	for _, p := range progs {
		slots, pool := p.Slots(), d.poolOf(p)
		if err := p.Close(); err != nil {
			errs = append(errs, err)
			continue
		}
		pool.release(slots...)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove replaced policies: %w", err)
	}
	return nil
}

// RemoveInterface removes the interface's entry: from then on the
// datapath drops its packets (bpf.ReasonDroppedNoIface, counted in slot
// 0). Then the conntrack entries of flows approved at it go, since the
// kernel hands its index to the next interface it makes, which must not
// inherit them; and its policies and its counter slot are freed. Remove
// an interface that is gone before configuring one that may reuse its
// index: SetInterface forgets the old flows only for an index without an
// entry. Detach the
// programs from the interface before or after; the order does not matter
// for safety.
func (d *Datapath) RemoveInterface(ifindex int) error {
	if err := d.opened(); err != nil {
		return fmt.Errorf("remove interface: %w", err)
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
	if err := d.removeXDP(idx); err != nil {
		return err
	}
	if err := d.ifaceMap.Delete(idx); err != nil {
		return err
	}
	prev := d.ifaces[idx]
	delete(d.ifaces, idx)
	// After the wait no packet still runs the old policies, counts in the
	// old slot, or binds a flow to the interface from the entry it read.
	if err := d.quiesce(); err != nil {
		return err
	}
	d.counterSlots.release(entry.CounterSlot)
	errFlows := errors.Join(d.forgetFlows(map[uint32]bool{idx: true}), d.removeDebugInfo(idx))
	var errPolicies error
	if prev != nil {
		progs := []*polprog.Program{prev.hooks[0].prog, prev.hooks[1].prog}
		if prev.xdp.prog != nil {
			progs = append(progs, prev.xdp.prog)
		}
		errPolicies = d.removePolicies(progs)
	}
	return errors.Join(errFlows, errPolicies)
}

// InterfaceEntry returns the interface's entry in the interface map, as
// the datapath reads it: its counter slot and each generation's record.
func (d *Datapath) InterfaceEntry(ifindex int) (bpf.Iface, error) {
	if err := d.opened(); err != nil {
		return bpf.Iface{}, fmt.Errorf("read interface entry: %w", err)
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
