package polprog

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
)

// Maps are the datapath's maps that policy programs use, by their roles in
// bpf/include/sluice/policy_maps.h.
type Maps struct {
	State       *ebpf.Map // sl_state_map
	IPSets      *ebpf.Map // sl_ipsets
	RuleHits    *ebpf.Map // sl_rule_hits
	PolicyJumps *ebpf.Map // sl_policy_jumps: the parts are installed here
	Conts       *ebpf.Map // sl_conts
}

// Program is a loaded policy: its parts are installed in sl_policy_jumps.
type Program struct {
	parts   []*ebpf.Program
	slots   []uint32
	lookups []*ebpf.Map
	jumps   *ebpf.Map
	entry   uint32
}

// Load creates the lookup maps, loads every part and installs the parts in
// maps.PolicyJumps, the entry last so that it never reaches a missing part.
func (c *Compiled) Load(maps Maps) (*Program, error) {
	byName := map[string]*ebpf.Map{
		bpf.MapState:       maps.State,
		bpf.MapIPSets:      maps.IPSets,
		bpf.MapRuleHits:    maps.RuleHits,
		bpf.MapPolicyJumps: maps.PolicyJumps,
		bpf.MapConts:       maps.Conts,
	}
	if maps.PolicyJumps == nil {
		return nil, errors.New("load policy: no policy jump map")
	}
	if len(c.Parts) == 0 {
		return nil, errors.New("load policy: no parts")
	}
	p := &Program{jumps: maps.PolicyJumps, entry: c.Parts[0].Slot}
	for _, lm := range c.LookupMaps {
		m, err := ebpf.NewMap(lm.Spec)
		if err != nil {
			p.closeAll()
			return nil, fmt.Errorf("create lookup map %s: %w", lm.Name, err)
		}
		p.lookups = append(p.lookups, m)
		byName[lm.Name] = m
	}
	for i, part := range c.Parts {
		insns := slices.Clone(part.Instructions)
		for name := range insns.ReferenceOffsets() {
			m := byName[name]
			if m == nil {
				p.closeAll()
				return nil, fmt.Errorf("load policy part %d: no map for reference %q", i, name)
			}
			if err := insns.AssociateMap(name, m); err != nil {
				p.closeAll()
				return nil, fmt.Errorf("load policy part %d: map %s: %w", i, name, err)
			}
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         fmt.Sprintf("slp_part%d", i),
			Type:         ebpf.SchedCLS,
			License:      "Dual BSD/GPL",
			Instructions: insns,
		})
		if err != nil {
			p.closeAll()
			return nil, fmt.Errorf("load policy part %d: %w", i, err)
		}
		p.parts = append(p.parts, prog)
	}
	for i := len(p.parts) - 1; i >= 0; i-- {
		slot := c.Parts[i].Slot
		if err := maps.PolicyJumps.Put(slot, p.parts[i]); err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("install policy part %d at slot %d: %w", i, slot, err)
		}
		p.slots = append(p.slots, slot)
	}
	return p, nil
}

// EntrySlot is the sl_policy_jumps slot the datapath tail calls.
func (p *Program) EntrySlot() uint32 {
	return p.entry
}

// Programs returns the loaded parts, the entry first.
func (p *Program) Programs() []*ebpf.Program { return p.parts }

// Close removes the parts from sl_policy_jumps (entry first) and releases
// the programs and lookup maps.
func (p *Program) Close() error {
	var errs []error
	for i := len(p.slots) - 1; i >= 0; i-- {
		if err := p.jumps.Delete(p.slots[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("remove policy slot %d: %w", p.slots[i], err))
		}
	}
	p.slots = nil
	p.closeAll()
	return errors.Join(errs...)
}

func (p *Program) closeAll() {
	for _, prog := range p.parts {
		prog.Close()
	}
	for _, m := range p.lookups {
		m.Close()
	}
	p.parts, p.lookups = nil, nil
}
