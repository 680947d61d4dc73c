package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// LoadOptions configure Load. Zero values keep the sizes compiled into the
// object.
type LoadOptions struct {
	// ConntrackEntries sizes MapConntrack.
	ConntrackEntries uint32
	// IPSetEntries sizes MapIPSets.
	IPSetEntries uint32
	// RuleHitEntries sizes MapRuleHits.
	RuleHitEntries uint32
	// PolicySlots sizes MapPolicyJumps.
	PolicySlots uint32
	// IfaceEntries sizes MapIfaces.
	IfaceEntries uint32
	// CounterEntries sizes MapCounters: two per counter slot (one per
	// hook), so the highest Iface.CounterSlot is CounterEntries/2 - 1.
	CounterEntries uint32

	// PinPath, if set, is a directory on a BPF filesystem where every map
	// is pinned by name, or reused if a compatible pin already exists, so
	// that a restarted agent and other loaders share them.
	PinPath string

	// MapReplacements maps names (MapConntrack, ...) to existing maps used
	// instead of creating them, for example those of a datapath loaded
	// earlier.
	MapReplacements map[string]*ebpf.Map
}

// Datapath is a loaded datapath collection.
type Datapath struct {
	// Collection holds every program and map by name (ProgTCIngress,
	// MapConntrack, ...). Close releases it.
	Collection *ebpf.Collection
	// Ingress and Egress are the programs to attach at TC ingress and
	// egress hooks.
	Ingress, Egress *ebpf.Program
}

// LoadSpec returns a fresh CollectionSpec of the datapath. Each call parses
// the embedded object anew, so callers may modify the result (map sizes,
// pinning) without affecting others.
func LoadSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	return spec, nil
}

// apply sets the options' sizes and pinning on spec.
func (o *LoadOptions) apply(spec *ebpf.CollectionSpec) error {
	sizes := map[string]uint32{
		MapConntrack:   o.ConntrackEntries,
		MapIPSets:      o.IPSetEntries,
		MapRuleHits:    o.RuleHitEntries,
		MapPolicyJumps: o.PolicySlots,
		MapIfaces:      o.IfaceEntries,
		MapCounters:    o.CounterEntries,
	}
	for name, size := range sizes {
		if size == 0 {
			continue
		}
		m, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("size map %s: not in the datapath object", name)
		}
		m.MaxEntries = size
	}
	if o.PinPath != "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
	}
	return nil
}

// Load loads the datapath into the kernel and installs ProgTCAllow and
// ProgTCDeny in MapConts. The caller fills MapIfaces and MapPolicyJumps,
// attaches Ingress and Egress, and closes the Datapath when done (pinned
// maps and attached programs stay in the kernel).
func Load(opts LoadOptions) (*Datapath, error) {
	if err := CheckKernel(); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	spec, err := LoadSpec()
	if err != nil {
		return nil, err
	}
	if err := opts.apply(spec); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: opts.PinPath},
		MapReplacements: opts.MapReplacements,
	})
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	dp := &Datapath{
		Collection: coll,
		Ingress:    coll.Programs[ProgTCIngress],
		Egress:     coll.Programs[ProgTCEgress],
	}
	conts := coll.Maps[MapConts]
	for slot, prog := range map[ContSlot]string{ContAllow: ProgTCAllow, ContDeny: ProgTCDeny} {
		if err := conts.Update(slot, coll.Programs[prog], ebpf.UpdateAny); err != nil {
			coll.Close()
			return nil, fmt.Errorf("load datapath: install %s in %s: %w", prog, MapConts, err)
		}
	}
	return dp, nil
}

// Close releases the programs and maps. Pinned maps and attached programs
// stay in the kernel.
func (d *Datapath) Close() error {
	if d == nil || d.Collection == nil {
		return nil
	}
	d.Collection.Close()
	return nil
}

// Counters returns the verdict counters of an interface's hook summed over
// CPUs, indexed by Reason: those of its Iface.CounterSlot, or of slot 0,
// shared by all interfaces without state, when it has no MapIfaces entry.
func (d *Datapath) Counters(ifindex uint32, hook Hook) ([ReasonCount]uint64, error) {
	var iface Iface
	err := d.Collection.Maps[MapIfaces].Lookup(ifindex, &iface)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return [ReasonCount]uint64{}, fmt.Errorf("read counters of ifindex %d: %w", ifindex, err)
	}
	return d.CountersAt(CounterIndex(iface.CounterSlot, hook))
}

// CountersAt returns the verdict counters at a MapCounters index summed
// over CPUs, indexed by Reason.
func (d *Datapath) CountersAt(index uint32) ([ReasonCount]uint64, error) {
	var sum [ReasonCount]uint64
	var perCPU []ReasonCounts
	if err := d.Collection.Maps[MapCounters].Lookup(index, &perCPU); err != nil {
		return sum, fmt.Errorf("read counters at index %d: %w", index, err)
	}
	for _, c := range perCPU {
		for r, n := range c.Packets {
			sum[r] += n
		}
	}
	return sum, nil
}
