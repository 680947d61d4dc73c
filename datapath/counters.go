package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// HookCounters are the packets one TC hook of an interface counted, by
// reason (index with a bpf.Reason), summed over CPUs. Every packet is
// counted under exactly one reason, at the hook that decided it.
type HookCounters [bpf.ReasonCount]uint64

// Accepted is the number of packets passed.
func (c HookCounters) Accepted() uint64 { return c.sum(0, bpf.ReasonFirstDrop) }

// Dropped is the number of packets dropped.
func (c HookCounters) Dropped() uint64 { return c.sum(bpf.ReasonFirstDrop, bpf.ReasonCount) }

func (c HookCounters) sum(from, to bpf.Reason) uint64 {
	var n uint64
	for r := from; r < to; r++ {
		n += c[r]
	}
	return n
}

// NonZero returns the reasons with packets, for printing and tests.
func (c HookCounters) NonZero() map[bpf.Reason]uint64 {
	m := map[bpf.Reason]uint64{}
	for r, n := range c {
		if n != 0 {
			m[bpf.Reason(r)] = n
		}
	}
	return m
}

// Counters are an interface's counters in its endpoint's terms, as
// Interface states policies: Ingress counts what was sent to the endpoint,
// Egress what it sent. (For a workload, Egress is its host-side
// interface's TC ingress hook.)
type Counters struct {
	// Ingress counts the packets sent to the endpoint.
	Ingress HookCounters
	// Egress counts the packets the endpoint sent.
	Egress HookCounters
}

// Counters returns the counters of a configured interface.
func (d *Datapath) Counters(ifindex int) (Counters, error) {
	if err := d.opened(); err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	c, err := d.interfaceCounters(ifindex)
	if err != nil {
		return Counters{}, fmt.Errorf("read counters of interface %d: %w", ifindex, err)
	}
	return c, nil
}

func (d *Datapath) interfaceCounters(ifindex int) (Counters, error) {
	entry, err := d.interfaceEntry(ifindex)
	if err != nil {
		return Counters{}, err
	}
	tcIn, tcOut, err := d.slotCounters(entry.CounterSlot)
	if err != nil {
		return Counters{}, err
	}
	// Any generation's record says the kind: it is the interface's.
	for _, r := range entry.Records {
		if r.Generation != 0 && r.Flags&bpf.IfaceWorkload != 0 {
			return Counters{Ingress: tcOut, Egress: tcIn}, nil
		}
	}
	return Counters{Ingress: tcIn, Egress: tcOut}, nil
}

// UnconfiguredCounters returns the packets the programs saw at interfaces
// without an entry (counter slot 0), by TC hook: what arrived at their
// TC ingress hooks, and what left through their TC egress hooks.
func (d *Datapath) UnconfiguredCounters() (tcIngress, tcEgress HookCounters, err error) {
	if err := d.opened(); err != nil {
		return HookCounters{}, HookCounters{}, fmt.Errorf("read counters of unconfigured interfaces: %w", err)
	}
	tcIngress, tcEgress, err = d.slotCounters(0)
	if err != nil {
		return HookCounters{}, HookCounters{}, fmt.Errorf("read counters of unconfigured interfaces: %w", err)
	}
	return tcIngress, tcEgress, nil
}

// slotCounters sums a counter slot's two hooks over CPUs.
func (d *Datapath) slotCounters(slot uint32) (tcIngress, tcEgress HookCounters, err error) {
	read := func(hook bpf.Hook) (HookCounters, error) {
		var sum HookCounters
		perCPU, err := d.counters.Lookup(bpf.CounterIndex(slot, hook))
		if err != nil {
			return sum, err
		}
		for _, c := range perCPU {
			for r, n := range c.Packets {
				sum[r] += n
			}
		}
		return sum, nil
	}
	if tcIngress, err = read(bpf.HookIngress); err != nil {
		return
	}
	tcEgress, err = read(bpf.HookEgress)
	return
}

// zeroCounters clears a counter slot before an interface gets it.
func (d *Datapath) zeroCounters(slot uint32) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("zero counter slot %d: %w", slot, err)
	}
	zeros := make([]bpf.ReasonCounts, cpus)
	for _, hook := range []bpf.Hook{bpf.HookIngress, bpf.HookEgress} {
		if err := d.counters.Update(bpf.CounterIndex(slot, hook), zeros, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("zero counter slot %d: %w", slot, err)
		}
	}
	return nil
}

// RuleHits reads the per-rule hit counters policy programs keep: how
// often each rule decided a packet (or logged it), by rule ID.
type RuleHits struct {
	m *maps.PerCPUMap[uint64, uint64]
}

// Get returns the hits of the rule with ID id, summed over CPUs: 0 for a
// rule that never decided.
func (r *RuleHits) Get(id uint64) (uint64, error) {
	if r == nil || r.m == nil {
		return 0, errors.New("read rule hits: RuleHits not made by a Datapath")
	}
	perCPU, err := r.m.Lookup(id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read hits of rule %d: %w", id, err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// All returns the hits of every rule that decided at least once.
func (r *RuleHits) All() (map[uint64]uint64, error) {
	if r == nil || r.m == nil {
		return nil, errors.New("read rule hits: RuleHits not made by a Datapath")
	}
	hits := map[uint64]uint64{}
	var err error
	for id, perCPU := range r.m.All(&err) {
		for _, v := range perCPU {
			hits[id] += v
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read rule hits: %w", err)
	}
	return hits, nil
}
