package polprog

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// ErrNeedsReload is wrapped by Program.Update's error when the new rules
// need other code than the loaded program's: compile and load them, and
// switch to the new Program, instead.
var ErrNeedsReload = errors.New("the new rules need a program reload")

// updateGrace is how long Update waits after a switch before it rewrites
// the generation that packets used until then: far longer than a policy
// program runs, so no packet still reads it.
const updateGrace = 2 * time.Millisecond

// classState is what a Program keeps to update its classified runs.
type classState struct {
	compiled *Compiled
	// lookups are the lookup maps by name.
	lookups map[string]*ebpf.Map
	// gen is the generation in use; written[g] what each map holds in
	// generation g.
	gen        int
	written    [generations]map[string]*mapContents
	lastSwitch time.Time
}

// fillClasses writes c's classified runs into their maps.
func (p *Program) fillClasses(c *Compiled, byName map[string]*ebpf.Map) error {
	p.class = &classState{compiled: c, lookups: map[string]*ebpf.Map{}}
	for _, lm := range c.LookupMaps {
		p.class.lookups[lm.Name] = byName[lm.Name]
	}
	for g := range p.class.written {
		p.class.written[g] = map[string]*mapContents{}
	}
	// Both generations, so that an update writes only what changes.
	for g := range generations {
		for _, cc := range c.classes {
			for name, want := range cc.contents(g) {
				if err := writeContents(byName[name], nil, want); err != nil {
					return fmt.Errorf("fill lookup map %s: %w", name, err)
				}
				p.class.written[g][name] = want
			}
		}
	}
	return nil
}

// Update makes the loaded program decide by rules, through map updates
// only, when the rules' code is the loaded program's: the rules outside
// classified runs, the runs' bounds, fields and IP sets are unchanged and
// each run fits its maps (they leave room). Rules, IDs, actions, CIDRs,
// ports and protocols inside classified runs may change. Otherwise Update
// changes nothing and returns an error wrapping ErrNeedsReload; so it does
// when the changed runs lie in more than one part, since a packet reads
// the generation once per part.
//
// Update writes the generation of the maps that packets do not use, then
// switches to it with one map write: a packet sees the old rules or the new
// ones, never a mix. Updates of one Program must not run concurrently.
func (p *Program) Update(rules Rules) error {
	if err := p.update(rules); err != nil {
		return fmt.Errorf("update policy: %w", err)
	}
	return nil
}

func (p *Program) update(rules Rules) error {
	if p == nil || p.class == nil || p.class.compiled == nil {
		return errors.New("Program not loaded")
	}
	s := p.class
	old := s.compiled
	hints := make([]*classLayout, len(old.classes))
	for i, cc := range old.classes {
		hints[i] = cc.layout
	}
	nc, err := compile(rules, old.opts, hints)
	if err != nil {
		return err
	}
	if err := sameCode(old, nc); err != nil {
		return fmt.Errorf("%w: %w", ErrNeedsReload, err)
	}
	next := 1 - s.gen
	want := map[string]*mapContents{}
	changedParts := map[int]bool{}
	for _, cc := range nc.classes {
		now := cc.contents(s.gen)
		for name, m := range now {
			if !sameContents(s.written[s.gen][name], m) {
				changedParts[cc.part] = true
			}
		}
		maps.Copy(want, cc.contents(next))
	}
	if len(changedParts) == 0 {
		s.compiled = nc
		return nil
	}
	if len(changedParts) > 1 {
		return fmt.Errorf("%w: classified runs change in parts %v", ErrNeedsReload, slices.Sorted(maps.Keys(changedParts)))
	}
	if d := updateGrace - time.Since(s.lastSwitch); d > 0 {
		time.Sleep(d)
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if err := writeContents(s.lookups[name], s.written[next][name], want[name]); err != nil {
			// The idle generation is partly written: what it holds is
			// no longer known, so start it afresh next time.
			s.written[next] = map[string]*mapContents{}
			return fmt.Errorf("write generation %d of %s: %w", next, name, err)
		}
		s.written[next][name] = want[name]
	}
	if err := s.lookups[genMapName].Put(uint32(0), uint32(next)); err != nil {
		return fmt.Errorf("switch to generation %d: %w", next, err)
	}
	s.gen, s.compiled, s.lastSwitch = next, nc, time.Now()
	return nil
}

// sameCode reports, as an error, how b's code differs from a's: its
// instructions, its maps' specs, or the contents of maps that are not a
// classified run's.
func sameCode(a, b *Compiled) error {
	if len(a.Parts) != len(b.Parts) {
		return fmt.Errorf("%d parts, not %d", len(b.Parts), len(a.Parts))
	}
	for i := range a.Parts {
		x, y := a.Parts[i].Instructions, b.Parts[i].Instructions
		if len(x) != len(y) {
			return fmt.Errorf("part %d: %d instructions, not %d", i, len(y), len(x))
		}
		for j := range x {
			if x[j].OpCode != y[j].OpCode || x[j].Dst != y[j].Dst || x[j].Src != y[j].Src ||
				x[j].Offset != y[j].Offset || x[j].Constant != y[j].Constant || x[j].Reference() != y[j].Reference() {
				return fmt.Errorf("part %d: instruction %d differs", i, j)
			}
		}
	}
	if len(a.LookupMaps) != len(b.LookupMaps) {
		return fmt.Errorf("%d lookup maps, not %d", len(b.LookupMaps), len(a.LookupMaps))
	}
	for i := range a.LookupMaps {
		x, y := a.LookupMaps[i], b.LookupMaps[i]
		if x.Name != y.Name || x.Spec.Type != y.Spec.Type || x.Spec.KeySize != y.Spec.KeySize ||
			x.Spec.ValueSize != y.Spec.ValueSize || x.Spec.MaxEntries != y.Spec.MaxEntries || x.Spec.Flags != y.Spec.Flags {
			return fmt.Errorf("lookup map %s differs", x.Name)
		}
		if !sameSpecContents(x.Spec.Contents, y.Spec.Contents) {
			return fmt.Errorf("merged rules of %s differ", x.Name)
		}
	}
	return nil
}

// sameSpecContents compares map contents as sets of byte-slice entries.
func sameSpecContents(a, b []ebpf.MapKV) bool {
	if len(a) != len(b) {
		return false
	}
	set := map[string]string{}
	for _, kv := range a {
		k, kok := kv.Key.([]byte)
		v, vok := kv.Value.([]byte)
		if !kok || !vok {
			return false
		}
		set[string(k)] = string(v)
	}
	for _, kv := range b {
		k, kok := kv.Key.([]byte)
		v, vok := kv.Value.([]byte)
		if !kok || !vok || set[string(k)] != string(v) {
			return false
		}
	}
	return true
}

func sameContents(a, b *mapContents) bool {
	return a != nil && b != nil && maps.Equal(a.entries, b.entries)
}
