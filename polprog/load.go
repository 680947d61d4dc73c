package polprog

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	ebpfasm "github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
)

// Maps are the datapath's maps that policy programs use, by their roles in
// bpf/include/sluice/policy_maps.h. A HookXDP policy takes the XDP
// object's jump map and continuations (prog arrays of XDP programs) in
// PolicyJumps and Conts.
type Maps struct {
	State  *ebpf.Map // sl_state_map
	IPSets *ebpf.Map // sl_ipsets
	// IPSetMembers and IPSetGen are the IP set membership map and its
	// generation (package ipsets), which classified runs with IP sets
	// or named ports look up.
	IPSetMembers *ebpf.Map // sl_ipsetm
	IPSetGen     *ebpf.Map // sl_ipsetgen
	RuleHits     *ebpf.Map // sl_rule_hits
	PolicyJumps  *ebpf.Map // sl_policy_jumps: the parts are installed here
	Conts        *ebpf.Map // sl_conts
}

// Program is a loaded policy: its parts are installed in sl_policy_jumps.
// It holds its own handle (a clone) of the jump map, so the maps' owner may
// close them before Program.Close.
type Program struct {
	parts []*ebpf.Program
	// ids are the parts' program IDs, which a prog array lookup from
	// user space yields.
	ids []ebpf.ProgramID
	// slots[i] is part i's slot; installed[i] is set while Close has
	// yet to remove it.
	slots     []uint32
	installed []bool
	lookups   []*ebpf.Map
	jumps     *ebpf.Map
	// class is what Update needs.
	class *classState
}

// Load creates the lookup maps, loads every part and installs part i in
// maps.PolicyJumps at slots[i], the entry (part 0) last so that it never
// reaches a missing part. Each part's tail call to the next goes to the
// next part's slot, so the same Compiled can be loaded again into other
// slots (as a runtime that switches policies make-before-break does).
//
// slots must hold one distinct slot per part, each below
// maps.PolicyJumps.MaxEntries(). Load overwrites what those slots held;
// choosing free ones is the caller's.
func (c *Compiled) Load(maps Maps, slots []uint32) (*Program, error) {
	p, err := c.load(maps, slots)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	return p, nil
}

func (c *Compiled) load(maps Maps, slots []uint32) (*Program, error) {
	if c == nil {
		return nil, errors.New("nil Compiled")
	}
	if len(c.Parts) == 0 {
		return nil, errors.New("no parts")
	}
	if maps.PolicyJumps == nil {
		return nil, errors.New("no policy jump map")
	}
	if t := maps.PolicyJumps.Type(); t != ebpf.ProgramArray {
		return nil, fmt.Errorf("policy jump map is a %s, not a prog array", t)
	}
	if err := checkSlots(slots, len(c.Parts), maps.PolicyJumps.MaxEntries()); err != nil {
		return nil, err
	}
	byName := map[string]*ebpf.Map{
		bpf.MapState:        maps.State,
		bpf.MapIPSets:       maps.IPSets,
		bpf.MapIPSetMembers: maps.IPSetMembers,
		bpf.MapIPSetGen:     maps.IPSetGen,
		bpf.MapRuleHits:     maps.RuleHits,
		bpf.MapPolicyJumps:  maps.PolicyJumps,
		bpf.MapConts:        maps.Conts,
	}
	lookupNames := map[string]bool{}
	for _, lm := range c.LookupMaps {
		if lm.Spec == nil {
			return nil, fmt.Errorf("lookup map %s has no spec", lm.Name)
		}
		lookupNames[lm.Name] = true
	}
	for i, part := range c.Parts {
		for name := range part.Instructions.ReferenceOffsets() {
			if byName[name] == nil && !lookupNames[name] {
				return nil, fmt.Errorf("part %d: no map for reference %q", i, name)
			}
		}
	}

	jumps, err := maps.PolicyJumps.Clone()
	if err != nil {
		return nil, fmt.Errorf("clone policy jump map: %w", err)
	}
	p := &Program{jumps: jumps, slots: slices.Clone(slots), installed: make([]bool, len(slots))}
	for _, lm := range c.LookupMaps {
		m, err := ebpf.NewMap(lm.Spec)
		if err != nil {
			p.closeAll()
			return nil, fmt.Errorf("create lookup map %s: %w", lm.Name, err)
		}
		p.lookups = append(p.lookups, m)
		byName[lm.Name] = m

	}
	if err := p.fillClasses(c, byName); err != nil {
		p.closeAll()
		return nil, err
	}
	for i, part := range c.Parts {
		prog, id, err := loadPart(part.Instructions, c.opts.Hook, i, slots, byName)
		if err != nil {
			p.closeAll()
			return nil, err
		}
		p.parts = append(p.parts, prog)
		p.ids = append(p.ids, id)
	}
	for i := len(p.parts) - 1; i >= 0; i-- {
		if err := maps.PolicyJumps.Put(slots[i], p.parts[i]); err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("install part %d at slot %d: %w", i, slots[i], err)
		}
		p.installed[i] = true
	}
	return p, nil
}

// checkSlots checks that there is one distinct slot per part, each below
// max.
func checkSlots(slots []uint32, parts int, max uint32) error {
	if len(slots) != parts {
		return fmt.Errorf("%d slots for %d parts", len(slots), parts)
	}
	seen := make(map[uint32]int, len(slots))
	for i, s := range slots {
		if s >= max {
			return fmt.Errorf("slot %d of part %d is past the policy jump map's %d entries", s, i, max)
		}
		if j, ok := seen[s]; ok {
			return fmt.Errorf("slot %d given to parts %d and %d", s, j, i)
		}
		seen[s] = i
	}
	return nil
}

// loadPart sets the next part's slot and the maps in a copy of part i's
// instructions, loads it as a program of hook's type and returns it with
// its program ID.
func loadPart(insns ebpfasm.Instructions, hook Hook, i int, slots []uint32, byName map[string]*ebpf.Map) (*ebpf.Program, ebpf.ProgramID, error) {
	insns = slices.Clone(insns)
	if err := setNextSlot(insns, i, slots); err != nil {
		return nil, 0, fmt.Errorf("part %d: %w", i, err)
	}
	for name := range insns.ReferenceOffsets() {
		if err := insns.AssociateMap(name, byName[name]); err != nil {
			return nil, 0, fmt.Errorf("part %d: map %s: %w", i, name, err)
		}
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         fmt.Sprintf("slp_part%d", i),
		Type:         hook.programType(),
		AttachType:   hook.attachType(),
		License:      "Dual BSD/GPL",
		Instructions: insns,
	})
	if errors.Is(err, unix.E2BIG) {
		return nil, 0, fmt.Errorf("part %d: %w: %w", i, ErrTooLarge, err)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("part %d: %w", i, err)
	}
	info, err := prog.Info()
	if err != nil {
		prog.Close()
		return nil, 0, fmt.Errorf("part %d: program info: %w", i, err)
	}
	id, ok := info.ID()
	if !ok {
		prog.Close()
		return nil, 0, fmt.Errorf("part %d: the kernel reports no program ID", i)
	}
	return prog, id, nil
}

// setNextSlot replaces, in part i's instructions, the placeholder of the
// next part's slot. Every load of sl_policy_jumps must be followed by the
// placeholder, and only a part with a successor may have one.
func setNextSlot(insns ebpfasm.Instructions, i int, slots []uint32) error {
	for j := range insns {
		if insns[j].Reference() != bpf.MapPolicyJumps {
			continue
		}
		if j+1 >= len(insns) || insns[j+1].Metadata.Get(nextSlotMeta{}) == nil {
			return fmt.Errorf("instruction %d loads %s without the next slot's placeholder after it", j, bpf.MapPolicyJumps)
		}
		if i+1 >= len(slots) {
			return fmt.Errorf("the last part tail calls a next part")
		}
		insns[j+1].Constant = int64(slots[i+1])
	}
	return nil
}

// EntrySlot is the sl_policy_jumps slot the datapath tail calls: that of
// part 0. It is 0 for a nil Program.
func (p *Program) EntrySlot() uint32 {
	if p == nil || len(p.slots) == 0 {
		return 0
	}
	return p.slots[0]
}

// Slots returns the sl_policy_jumps slots given to Load: part i's at index
// i, the entry first.
func (p *Program) Slots() []uint32 {
	if p == nil {
		return nil
	}
	return slices.Clone(p.slots)
}

// Programs returns the loaded parts, the entry first; none after Close.
func (p *Program) Programs() []*ebpf.Program {
	if p == nil {
		return nil
	}
	return p.parts
}

// Close removes the parts from sl_policy_jumps (entry first) and releases
// the programs, the lookup maps and the jump map's clone. It removes a
// slot only while it still holds that part: one that someone has since
// filled with another program (a policy loaded into a freed slot) is left
// alone. Looking a slot up and deleting it are two system calls, not one
// atomic step, so writers of one jump map must be serialised by the
// caller. It unmaps the memory Update writes classified runs through, so
// it must not run while an Update does. Closing twice is fine; a nil
// Program is an error.
func (p *Program) Close() error {
	if p == nil {
		return errors.New("close policy: nil Program")
	}
	var errs []error
	for i, in := range p.installed {
		if !in {
			continue
		}
		if err := p.removePart(i); err != nil {
			errs = append(errs, err)
		}
	}
	p.installed = nil
	p.closeAll()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close policy: %w", err)
	}
	return nil
}

// Release closes the Program's handles (programs, lookup maps, the jump
// map's clone) and leaves its parts installed, so that the policy keeps
// deciding packets after the process that loaded it lets go: a prog array
// holds its programs, and they their maps. It unmaps the memory Update
// writes through (the maps stay, held by the parts), so it must not run
// while an Update does. Releasing twice, or after Close, is fine; a nil
// Program is an error.
func (p *Program) Release() error {
	if p == nil {
		return errors.New("release policy: nil Program")
	}
	p.installed = nil
	p.closeAll()
	return nil
}

// removePart deletes part i's slot if the slot still holds part i.
func (p *Program) removePart(i int) error {
	slot := p.slots[i]
	var id uint32
	err := p.jumps.Lookup(slot, &id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up slot %d: %w", slot, err)
	}
	if ebpf.ProgramID(id) != p.ids[i] {
		return nil
	}
	if err := p.jumps.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove slot %d: %w", slot, err)
	}
	return nil
}

func (p *Program) closeAll() {
	for _, prog := range p.parts {
		prog.Close()
	}
	for _, m := range p.lookups {
		m.Close()
	}
	if p.jumps != nil {
		p.jumps.Close()
	}
	if p.class != nil {
		p.class.unmap()
	}
	p.parts, p.ids, p.lookups, p.jumps, p.class = nil, nil, nil, nil, nil
}
