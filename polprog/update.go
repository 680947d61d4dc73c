package polprog

import (
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/grace"
)

// ErrNeedsReload is wrapped by Program.Update's error when the new rules
// need other code than the loaded program's: compile and load them, and
// switch to the new Program, instead.
var ErrNeedsReload = errors.New("the new rules need a program reload")

// classState is what a Program keeps to update its classified runs.
type classState struct {
	compiled *Compiled
	// prog is the validated rules the program decides by now; posOf[k]
	// are the classified run and positions of its k-th rule (see
	// program.eachRule), run -1 for a rule of the linear code.
	prog  *program
	posOf []rulePositions
	// lookups are the lookup maps by name; memory the mappings of the
	// mmapable arrays among them (mapMemory; all but the generation map),
	// unmapped by unmap (Program.Close and Release), or, for a Program
	// dropped without either, by unmapLost once the classState is
	// unreachable.
	lookups  map[string]*ebpf.Map
	memory   map[string][]byte
	unmapped runtime.Cleanup
	// gen is the generation in use; written[g] what each map holds in
	// generation g. epoch is the generation map's value, gen in its
	// genMask bits: each switch writes a new one, which keys the outcome
	// cache.
	gen     int
	epoch   uint32
	written [generations]map[string]*mapContents
	// left[g], after a switch away from generation g, is the grace period
	// (grace.Wait) until which packets may still read g. It runs in the
	// background, and an update writes the generation left two switches
	// ago, so one that comes later than a grace period after the update
	// before the previous one does not wait.
	left [generations]grace.Pending
	// broken: a write of the idle generation failed, so what it holds is
	// not known; only a reload can go on (the generation in use is
	// untouched).
	broken bool
	// switches counts generation switches; its atomic increment is the
	// barrier between writes to memory and the switch.
	switches uint32
}

type rulePositions struct {
	run int
	pos []int
}

// ruleList returns every rule in eachRule's order.
func (p *program) ruleList() []*rule {
	out := make([]*rule, 0, p.ruleCount)
	p.eachRule(func(_ int, r *rule) { out = append(out, r) })
	return out
}

// eachRule calls f with every rule in a fixed order and its index in it.
func (p *program) eachRule(f func(k int, r *rule)) {
	k := 0
	list := func(rs []rule) {
		for i := range rs {
			f(k, &rs[i])
			k++
		}
	}
	for _, ts := range [][]tier{p.preDNAT, p.tiers, p.forward} {
		for i := range ts {
			list(ts[i].rules)
		}
	}
	list(p.profiles)
}

// index sets prog and posOf for c.
func (s *classState) index(c *Compiled) {
	s.compiled, s.prog, s.posOf = c, c.prog, nil
	if c.prog == nil {
		return // not made by Compile: Update refuses
	}
	byRule := map[*rule]rulePositions{}
	for ci, cc := range c.classes {
		for i, p := range cc.cl.pos {
			if p.r == &padRule {
				continue
			}
			rp := byRule[p.r]
			rp.run = ci
			rp.pos = append(rp.pos, i)
			byRule[p.r] = rp
		}
	}
	s.posOf = make([]rulePositions, c.prog.ruleCount)
	c.prog.eachRule(func(k int, r *rule) {
		if rp, ok := byRule[r]; ok {
			s.posOf[k] = rp
		} else {
			s.posOf[k] = rulePositions{run: -1}
		}
	})
}

// fillClasses writes c's classified runs into their maps.
func (p *Program) fillClasses(c *Compiled, byName map[string]*ebpf.Map) error {
	s := &classState{lookups: map[string]*ebpf.Map{}, memory: map[string][]byte{}}
	p.class = s // for closeAll, should this fail
	for _, lm := range c.LookupMaps {
		s.lookups[lm.Name] = byName[lm.Name]
		if lm.Spec.Type == ebpf.Array && lm.Spec.Flags&unix.BPF_F_MMAPABLE != 0 {
			mem, err := mapMemory(byName[lm.Name])
			if err != nil {
				return fmt.Errorf("lookup map %s: %w", lm.Name, err)
			}
			s.memory[lm.Name] = mem
		}
	}
	s.unmapped = runtime.AddCleanup(s, unmapLost, slices.Collect(maps.Values(s.memory)))
	s.index(c)
	all := map[string]*mapContents{}
	for _, cc := range c.classes {
		maps.Copy(all, cc.contents())
	}
	// Every generation, so that an update writes only what changes.
	for g := range generations {
		for _, name := range slices.Sorted(maps.Keys(all)) {
			if err := writeContents(byName[name], s.memory[name], g, nil, all[name]); err != nil {
				return fmt.Errorf("fill lookup map %s: %w", name, err)
			}
		}
		s.written[g] = all
	}
	return nil
}

// unmap unmaps the array maps' memory.
func (s *classState) unmap() {
	s.unmapped.Stop()
	unmapLost(slices.Collect(maps.Values(s.memory)))
	clear(s.memory)
}

// unmapLost unmaps mems: the mappings of a classState, which keep their
// maps alive.
func unmapLost(mems [][]byte) {
	for _, mem := range mems {
		_ = unix.Munmap(mem)
	}
}

// Update makes the loaded program decide by rules, through map updates
// only, when the rules' code is the loaded program's: the rules outside
// classified runs, the runs' bounds, fields and IP sets are unchanged and
// each run fits its maps (they leave room). A write that fails half-way
// (a map full) leaves packets on the rules in force and the Program
// needing a reload: that Update and every later one return errors wrapping
// ErrNeedsReload. Rules, IDs, actions, CIDRs,
// ports and protocols inside classified runs may change. Otherwise Update
// changes nothing and returns an error wrapping ErrNeedsReload; so it does
// when the changed runs lie in more than one part, since a packet reads
// the generation once per part. A change of classified rules that keep
// their positions (the same port and named-port alternatives) and use only
// fields and sets their run already tells apart is found without
// compiling: it writes the rows, keys and table entries it changes (see
// patchRows); other changes compile the rules with the loaded layout.
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
	if s.prog == nil {
		return errors.New("the loaded Compiled was not made by Compile")
	}
	if s.broken {
		return fmt.Errorf("%w: an earlier update failed half-way", ErrNeedsReload)
	}
	// Validated once for the paths that change maps without compiling;
	// the rules that did not change are taken from the program in force.
	if np, err := validateWith(rules, validator{max: s.compiled.opts.MaxRules, noWhere: true, prev: s.prog}); err == nil && sameShape(s.prog, np) {
		if want, nc, ok := s.patchRows(np); ok {
			return s.apply(want, nc, np)
		}
	}
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
	want := map[string]*mapContents{}
	for _, cc := range nc.classes {
		maps.Copy(want, cc.contents())
	}
	return s.apply(want, nc, nil)
}

// apply switches to want (every map's contents), with nc the Compiled it
// came from, np the rules when only table entries changed, or both when
// the rules' positions are those of the program (posOf holds).
func (s *classState) apply(want map[string]*mapContents, nc *Compiled, np *program) error {
	cur, next := s.gen, (s.gen+1)%generations
	changedParts := map[int]bool{}
	for _, cc := range s.compiled.classes {
		for _, name := range cc.names {
			if name != "" && !sameContents(s.written[cur][name], want[name]) {
				changedParts[cc.part] = true
			}
		}
	}
	if len(changedParts) > 1 {
		return fmt.Errorf("%w: classified runs change in parts %v", ErrNeedsReload, slices.Sorted(maps.Keys(changedParts)))
	}
	if len(changedParts) == 1 {
		if err := s.left[next].Wait(); err != nil {
			return err
		}
		for _, name := range slices.Sorted(maps.Keys(want)) {
			if s.written[next][name] == want[name] {
				continue // the same contents: nothing to write
			}
			if err := writeContents(s.lookups[name], s.memory[name], next, s.written[next][name], want[name]); err != nil {
				// What the idle generation holds is no longer known
				// (a full trie keeps stale entries): packets go on
				// with the generation in use, and only a reload
				// changes the rules.
				s.broken = true
				return fmt.Errorf("%w: write generation %d of %s: %w", ErrNeedsReload, next, name, err)
			}
		}
		// The values copied into mapped memory must be seen before the
		// switch. On x86 stores are ordered anyway; on arm64 with LSE
		// atomics Go's atomic add (LDADDAL) is fully ordered. On arm64
		// without them (an LDAXR/STLXR loop, which a store before and an
		// access after may pass) the order still holds because the
		// switch's bpf() call takes a reference on the map's file, a fully
		// ordered atomic, before the kernel writes the generation. Packets
		// read the generation, then index by it: an address dependency.
		atomic.AddUint32(&s.switches, 1)
		epoch := (s.epoch&^genMask + genMask + 1) | uint32(next)
		if err := s.lookups[genMapName].Put(uint32(0), epoch); err != nil {
			s.broken = true
			return fmt.Errorf("%w: switch to generation %d: %w", ErrNeedsReload, next, err)
		}
		s.written[next] = want
		s.gen, s.epoch = next, epoch
		s.left[cur].Start()
	}
	switch {
	case np == nil:
		s.index(nc)
	case nc != nil:
		s.compiled, s.prog = nc, np
	default:
		s.prog = np
	}
	return nil
}

// sameShape reports whether a and b have the same tiers (names, ends,
// rule counts) and profiles, and host settings.
func sameShape(a, b *program) bool {
	if a.forHost != b.forHost || a.noMatchID != b.noMatchID || a.ruleCount != b.ruleCount || len(a.profiles) != len(b.profiles) {
		return false
	}
	for _, ts := range [][2][]tier{{a.tiers, b.tiers}, {a.preDNAT, b.preDNAT}, {a.forward, b.forward}} {
		if len(ts[0]) != len(ts[1]) {
			return false
		}
		for i := range ts[0] {
			x, y := &ts[0][i], &ts[1][i]
			if x.name != y.name || x.end != y.end || x.endID != y.endID || len(x.rules) != len(y.rules) {
				return false
			}
		}
	}
	return true
}

// sameMatch reports whether a and b, validated rules, match the same
// packets.
func sameMatch(a, b *rule) bool { return a.match == b.match }

// sameICMP reports whether x and y are both nil or equal.
func sameICMP(x, y *ICMPMatch) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }

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
	if a == b {
		return true
	}
	if a == nil || b == nil {
		return false
	}
	if changed, ok := b.changedSince(a); ok {
		for _, k := range changed {
			v, in := b.entries[k]
			w, was := a.entries[k]
			if in != was || v != w {
				return false
			}
		}
		return len(a.entries) == len(b.entries)
	}
	return maps.Equal(a.entries, b.entries)
}
