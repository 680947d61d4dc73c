package datapath

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/ipsets"
	"github.com/sluicenet/sluice/maps"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// Defaults for Options fields left zero.
const (
	DefaultConntrackEntries = 1 << 18
	DefaultMaxInterfaces    = 1024
	DefaultPolicySlots      = 16384
	DefaultIPSetEntries     = 1 << 20
	DefaultRouteEntries     = 1 << 16
	DefaultRuleHitEntries   = 1 << 16
	DefaultServiceEntries   = 1 << 16
	DefaultBackendEntries   = 1 << 17
	DefaultAffinityEntries  = 1 << 16
	DefaultMaglevServices   = 256
)

// Options configure Open. Zero values take the defaults.
type Options struct {
	// PinDir is a directory on a bpffs where the maps that carry state
	// across restarts are pinned, and found again by the next Open. Empty
	// pins nothing: the state lives as long as this process's handles and
	// attached programs.
	PinDir string
	// ConntrackEntries sizes the conntrack table. A pinned table of
	// another size is taken over at its size and grown or shrunk by
	// Settle, once the old process's programs are gone.
	ConntrackEntries uint32
	// MaxInterfaces is the most interfaces SetInterface configures; it
	// sizes the interface map and the counters (one slot per interface).
	MaxInterfaces uint32
	// PolicySlots sizes the prog array of policy programs; a policy takes
	// one slot per part, and a replaced policy keeps its slots until its
	// replacement is in place.
	PolicySlots uint32
	// IPSetEntries, RouteEntries and RuleHitEntries size the IP set,
	// route and rule hit maps (the IP set membership map takes twice
	// IPSetEntries: two generations).
	IPSetEntries, RouteEntries, RuleHitEntries uint32
	// ServiceEntries sizes the frontends and their source ranges,
	// BackendEntries the backends (and twice as many backend slots,
	// both preallocated: about 256 bytes of kernel memory per backend
	// from the start), and AffinityEntries the client affinities.
	ServiceEntries, BackendEntries, AffinityEntries uint32
	// MaglevServices is how many services may use Maglev at once; each
	// holds a table of 64 KiB (two while its backends change).
	MaglevServices uint32
	// Policy are the compiler options of every policy SetInterface
	// compiles. Leave Hook zero: XDP policies get HookXDP.
	Policy polprog.Options
	// DebugDir, when set, is where the policy debug files go: after an
	// interface's entry switches to a new policy, its rules and listing
	// are written to <DebugDir>/policy/<ifindex>-<hook>.json
	// (PolicyDebug), and RemoveInterface removes them. The maps hold
	// only bytecode; these files let a debugging tool explain verdicts.
	// Empty writes none.
	DebugDir string
}

func (o *Options) setDefaults() {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.ConntrackEntries, DefaultConntrackEntries)
	def(&o.MaxInterfaces, DefaultMaxInterfaces)
	def(&o.PolicySlots, DefaultPolicySlots)
	def(&o.IPSetEntries, DefaultIPSetEntries)
	def(&o.RouteEntries, DefaultRouteEntries)
	def(&o.RuleHitEntries, DefaultRuleHitEntries)
	def(&o.ServiceEntries, DefaultServiceEntries)
	def(&o.BackendEntries, DefaultBackendEntries)
	def(&o.AffinityEntries, DefaultAffinityEntries)
	def(&o.MaglevServices, DefaultMaglevServices)
}

// maxInterfaces bounds MaxInterfaces so that the counter array's size,
// two entries per slot and one slot more, cannot wrap.
const maxInterfaces = 1 << 24

// maxBackendEntries bounds BackendEntries so that the slot map's size,
// twice it, cannot wrap.
const maxBackendEntries = 1 << 30

// Datapath is a loaded datapath: this process's programs and its handles
// on the shared maps. Its methods are safe for concurrent use.
type Datapath struct {
	mu     sync.Mutex
	closed bool
	opts   Options

	// generation numbers this Open among all that shared the pinned
	// maps (struct sl_iface_policy).
	generation uint32
	objs       bpf.Objects
	// sock are connect-time balancing's programs (SockPrograms), and
	// sockDestroy its socket iterator, loaded on first use
	// (DestroyStaleSockets).
	sock        bpf.SockObjects
	sockDestroy bpf.SockDestroyObjects
	state       *state

	policySlots  *slotPool
	xdpSlots     *slotPool
	counterSlots *slotPool
	// ifaces are the interfaces this process configured.
	ifaces map[uint32]*ifaceState
	// configured says this generation wrote an interface record: its
	// programs may run a hook, so its pinned policies outlive Close.
	configured bool

	ifaceMap  *maps.Map[uint32, bpf.Iface]
	meta      *maps.Map[uint32, bpf.Meta]
	counters  *maps.PerCPUMap[uint32, bpf.ReasonCounts]
	ruleHits  *RuleHits
	ipsets    *ipsets.Map
	routes    *routes.Map
	services  *nat.Table
	snat      *nat.SNATMap
	conntrack *conntrack.Map

	// fibMark says the FIB step's lookup takes the skb mark
	// (setFIBMark).
	fibMark bool

	// xdp is the generation's XDP object (loadXDP), xdpIfaceMap its
	// interface map (bpf.MapXDPIfaces).
	xdp         bpf.XDPObjects
	xdpIfaceMap *maps.Map[uint32, bpf.Iface]
}

// Open loads the datapath: it probes the kernel, opens (or creates) the
// pinned maps, and loads the programs bound to them. The programs are not
// attached; attach TCIngress and TCEgress to the TC hooks of the
// interfaces SetInterface describes, and XDP to the XDP hook of host
// interfaces with Interface.XDP tiers.
func Open(opts Options) (*Datapath, error) {
	d, err := open(opts)
	if err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	return d, nil
}

func open(opts Options) (*Datapath, error) {
	opts.setDefaults()
	if opts.MaxInterfaces > maxInterfaces {
		return nil, fmt.Errorf("MaxInterfaces %d is above %d", opts.MaxInterfaces, maxInterfaces)
	}
	if opts.BackendEntries > maxBackendEntries {
		return nil, fmt.Errorf("BackendEntries %d is above %d", opts.BackendEntries, maxBackendEntries)
	}
	if opts.MaglevServices > maxBackendEntries {
		return nil, fmt.Errorf("MaglevServices %d is above %d", opts.MaglevServices, maxBackendEntries)
	}
	if opts.Policy.Hook != polprog.HookTC {
		return nil, fmt.Errorf("Options.Policy.Hook is %s: the datapath sets each policy's hook itself", opts.Policy.Hook)
	}
	if err := CheckKernel(); err != nil {
		return nil, err
	}
	spec, err := bpf.LoadSpec()
	if err != nil {
		return nil, err
	}
	var specs bpf.Specs
	if err := spec.Assign(&specs); err != nil {
		return nil, fmt.Errorf("assign specs: %w", err)
	}
	specs.SlPolicyJumps.MaxEntries = opts.PolicySlots
	sockSpec, err := bpf.LoadSockSpec()
	if err != nil {
		return nil, err
	}
	var sockSpecs bpf.SockSpecs
	if err := sockSpec.Assign(&sockSpecs); err != nil {
		return nil, fmt.Errorf("assign sock specs: %w", err)
	}

	st, err := openState(&specs, &sockSpecs, opts)
	if err != nil {
		return nil, err
	}
	d := &Datapath{opts: opts, state: st, ifaces: map[uint32]*ifaceState{}}
	if err := d.load(spec, &specs, sockSpec); err != nil {
		if d.generation != 0 {
			d.unpinOwn()
		}
		d.closeAll()
		return nil, err
	}
	return d, nil
}

// load loads the programs of a new generation, the TC object's (spec) and
// connect-time balancing's (sockSpec), against the state maps and builds
// the handles.
func (d *Datapath) load(spec *ebpf.CollectionSpec, specs *bpf.Specs, sockSpec *ebpf.CollectionSpec) error {
	var err error
	if d.ifaceMap, err = maps.New[uint32, bpf.Iface](d.state.ifaces); err != nil {
		return err
	}
	if d.meta, err = maps.New[uint32, bpf.Meta](d.state.meta); err != nil {
		return err
	}
	if d.xdpIfaceMap, err = maps.New[uint32, bpf.Iface](d.state.xdpIfaces); err != nil {
		return err
	}
	if d.generation, err = d.takeGeneration(); err != nil {
		return err
	}
	if err := specs.SlGeneration.Set(d.generation); err != nil {
		return fmt.Errorf("set generation: %w", err)
	}
	if err := d.setFIBMark(specs); err != nil {
		return err
	}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{MapReplacements: d.state.replacements(spec)})
	if err != nil {
		return fmt.Errorf("load programs: %w", err)
	}
	err = sockSpec.LoadAndAssign(&d.sock, &ebpf.CollectionOptions{MapReplacements: d.state.replacements(sockSpec)})
	if err != nil {
		return fmt.Errorf("load sock programs: %w", err)
	}
	for slot, prog := range map[bpf.ContSlot]*ebpf.Program{bpf.ContAllow: d.objs.SlTcAllow, bpf.ContDeny: d.objs.SlTcDeny} {
		if err := d.objs.SlConts.Put(uint32(slot), prog); err != nil {
			return fmt.Errorf("install continuation %d: %w", slot, err)
		}
	}
	if err := d.objs.SlCtTables.Put(uint32(bpf.CTTableLive), d.state.ct); err != nil {
		return fmt.Errorf("install conntrack table: %w", err)
	}
	if err := d.loadXDP(); err != nil {
		return err
	}
	if d.state.draining != nil {
		if err := d.objs.SlCtTables.Put(uint32(bpf.CTTableDraining), d.state.draining); err != nil {
			return fmt.Errorf("install draining conntrack table: %w", err)
		}
	}
	if err := d.pinGeneration(); err != nil {
		return err
	}
	d.policySlots = newSlotPool("policy slots", 0, d.opts.PolicySlots)
	d.counterSlots = newSlotPool("counter slots", 1, d.opts.MaxInterfaces)
	for _, iface := range d.ifaceMap.All(&err) {
		d.counterSlots.mark(iface.CounterSlot)
	}
	if err != nil {
		return fmt.Errorf("read interfaces: %w", err)
	}
	return d.handles()
}

func (d *Datapath) handles() error {
	var err error
	if d.counters, err = maps.NewPerCPU[uint32, bpf.ReasonCounts](d.state.counters); err != nil {
		return err
	}
	hits, err := maps.NewPerCPU[uint64, uint64](d.state.ruleHits)
	if err != nil {
		return err
	}
	d.ruleHits = &RuleHits{m: hits}
	if d.ipsets, err = ipsets.NewMap(ipsets.Maps{Sets: d.state.ipsets, Members: d.state.ipsetMembers,
		Gen: d.state.ipsetGen}); err != nil {
		return err
	}
	// Maps pinned before the membership map existed have members and no
	// memberships.
	if err := d.ipsets.Rebuild(); err != nil {
		return err
	}
	if d.services, err = nat.NewTable(nat.Maps{Services: d.state.svcs, Slots: d.state.lbSlots,
		Backends: d.state.backends, Ranges: d.state.lbRanges, Members: d.state.lbMembers,
		Maglev: d.state.maglev, Affinity: d.state.affinity}); err != nil {
		return err
	}
	if d.snat, err = nat.NewSNATMap(d.state.snat); err != nil {
		return err
	}
	if d.routes, err = routes.NewMap(d.state.routes); err != nil {
		return err
	}
	d.conntrack, err = conntrack.NewMap(d.objs.SlCtTables)
	return err
}

// setFIBMark tells the FIB step (sl_fib_mark) whether the kernel's
// bpf_fib_lookup takes the skb mark (HaveFIBLookupMark), and records it
// for FIBLookupMark.
func (d *Datapath) setFIBMark(specs *bpf.Specs) error {
	err := HaveFIBLookupMark()
	if err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	d.fibMark = err == nil
	var v uint32
	if d.fibMark {
		v = 1
	}
	if err := specs.SlFibMark.Set(v); err != nil {
		return fmt.Errorf("set sl_fib_mark: %w", err)
	}
	return nil
}

// FIBLookupMark says whether this Open's programs pass a packet's skb
// mark to the FIB step's lookup, so that ip rules with fwmark choose the
// route of a translated packet from the node's address: true when the
// kernel takes BPF_FIB_LOOKUP_MARK (HaveFIBLookupMark).
func (d *Datapath) FIBLookupMark() bool { return d != nil && d.fibMark }

// takeGeneration hands this Open a generation no other Open of the
// pinned maps has: one more than the newest recorded in sl_meta or named
// by an interface entry, recorded under the pin directory's lock.
func (d *Datapath) takeGeneration() (uint32, error) {
	unlock, err := d.state.lock()
	if err != nil {
		return 0, err
	}
	defer unlock()
	meta, err := d.readMeta()
	if err != nil {
		return 0, err
	}
	newest := meta.LastGeneration
	for _, iface := range d.ifaceMap.All(&err) {
		for _, r := range iface.Records {
			newest = max(newest, r.Generation)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("read interfaces: %w", err)
	}
	if newest == ^uint32(0) {
		return 0, errors.New("every generation number is taken")
	}
	meta.LastGeneration = newest + 1
	if err := d.meta.Update(0, meta, ebpf.UpdateAny); err != nil {
		return 0, err
	}
	return meta.LastGeneration, nil
}

// readMeta returns the runtime's record of generations.
func (d *Datapath) readMeta() (bpf.Meta, error) {
	return d.meta.Lookup(0)
}

// Generation returns this Open's generation (0 for a nil Datapath).
func (d *Datapath) Generation() uint32 {
	if d == nil {
		return 0
	}
	return d.generation
}

// TCIngress is the program to attach to the TC ingress hook of every
// interface SetInterface describes (nil for a nil Datapath).
func (d *Datapath) TCIngress() *ebpf.Program {
	if d == nil {
		return nil
	}
	return d.objs.SlTcIngress
}

// TCEgress is the program to attach to the TC egress hook of every
// interface SetInterface describes (nil for a nil Datapath).
func (d *Datapath) TCEgress() *ebpf.Program {
	if d == nil {
		return nil
	}
	return d.objs.SlTcEgress
}

// Conntrack returns the conntrack table. It follows the live table, so it
// stays valid across ResizeConntrack and Settle; it is closed with the
// Datapath. (Nil for a nil Datapath, as every handle.)
func (d *Datapath) Conntrack() *conntrack.Map {
	if d == nil {
		return nil
	}
	return d.conntrack
}

// IPSets returns the IP set members map that policy programs look up.
func (d *Datapath) IPSets() *ipsets.Map {
	if d == nil {
		return nil
	}
	return d.ipsets
}

// SNAT returns the service stage's source-NAT setting. Until it is set,
// no flow is source-NATed: a client from outside the node sent to a
// backend elsewhere, or a workload to itself, then gets no answer.
func (d *Datapath) SNAT() *nat.SNATMap {
	if d == nil {
		return nil
	}
	return d.snat
}

// Services returns the table of services the datapath's service stage
// load-balances by: frontends, backends and source ranges, programmed
// make-before-break. It adopts what a previous process left in the pinned
// maps.
func (d *Datapath) Services() *nat.Table {
	if d == nil {
		return nil
	}
	return d.services
}

// Routes returns the routes map the datapath decides reverse-path checks
// and host flags from.
func (d *Datapath) Routes() *routes.Map {
	if d == nil {
		return nil
	}
	return d.routes
}

// RuleHits returns the reader of per-rule hit counters.
func (d *Datapath) RuleHits() *RuleHits {
	if d == nil {
		return nil
	}
	return d.ruleHits
}

// Close releases this process's programs and handles. With
// Options.PinDir, attached programs, the policies they run and the pinned
// maps stay in the kernel, so enforcement continues until another process
// takes over or the programs are detached. Without it the kernel empties
// this process's policy slots once its last handle goes: attached
// programs keep passing tracked flows, and drop every new one as
// bpf.ReasonDroppedNoPolicy (failing closed) until they are replaced.
func (d *Datapath) Close() error {
	if err := d.opened(); err != nil {
		return fmt.Errorf("close datapath: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, s := range d.ifaces {
		errs = append(errs, s.release())
	}
	if !d.configured {
		errs = append(errs, d.unpinOwn())
	}
	errs = append(errs, d.closeAll())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close datapath: %w", err)
	}
	return nil
}

func (d *Datapath) closeAll() error {
	var errs []error
	errs = append(errs, d.xdp.Close())
	if d.conntrack != nil {
		errs = append(errs, d.conntrack.Close())
	}
	errs = append(errs, d.objs.Close(), d.sock.Close(), d.sockDestroy.Close(), d.state.close())
	return errors.Join(errs...)
}

// opened returns an error unless d was made by Open: a nil or zero
// Datapath has nothing to act on.
func (d *Datapath) opened() error {
	switch {
	case d == nil:
		return errors.New("nil Datapath")
	case d.state == nil:
		return errors.New("Datapath not made by Open")
	}
	return nil
}

// check returns an error when d cannot be used; the caller holds d.mu.
func (d *Datapath) check() error {
	if d.closed {
		return errors.New("datapath is closed")
	}
	return nil
}

// polprogMaps are the maps policy programs use.
func (d *Datapath) polprogMaps() polprog.Maps {
	return polprog.Maps{
		State:        d.objs.SlStateMap,
		IPSets:       d.state.ipsets,
		IPSetMembers: d.state.ipsetMembers,
		IPSetGen:     d.state.ipsetGen,
		RuleHits:     d.state.ruleHits,
		PolicyJumps:  d.objs.SlPolicyJumps,
		Conts:        d.objs.SlConts,
	}
}

// quiesce returns once no datapath program that may have read the maps
// before the call is still running. Updating an array of maps waits for
// an RCU grace period before it returns (kernel/bpf/syscall.c,
// maybe_wait_bpf_programs), and TC programs run inside RCU read-side
// sections, so rewriting the live conntrack table with itself is such a
// wait, and changes nothing.
func (d *Datapath) quiesce() error {
	if err := d.objs.SlCtTables.Update(uint32(bpf.CTTableLive), d.state.ct, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	return nil
}
