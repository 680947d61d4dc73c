package polprog

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// updateCounts are what updateRounds saw: updates applied, refused with
// ErrNeedsReload, taken by the map-only path (patchRows), and those after
// which some packet was decided otherwise than before (which a no-op
// Update would fail).
type updateCounts struct {
	applied, reloads, patched, seen int
}

// updateRounds makes updates changes to p, a Program loaded from rules
// with g's IP sets: each time change edits a clone of the rules in force,
// given their evaluator, and returns the packets aimed at what it changed
// (random ones are added up to packets); Update applies it or asks for a
// reload (the rules stay); and the kernel is held to Evaluate of the rules
// in force on every packet.
func updateRounds(t *testing.T, k *kernel, p *Program, g *gen, rules Rules, updates, packets int,
	change func(before *Evaluator, next *Rules) []Packet) updateCounts {
	t.Helper()
	var n updateCounts
	for u := range updates {
		before, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		next := cloneRules(rules)
		pkts := change(before, &next)
		for len(pkts) < packets {
			pkts = append(pkts, g.packet())
		}
		np, err := validateWith(next, validator{noWhere: true})
		if err != nil {
			t.Fatalf("update %d: %v", u, err)
		}
		if _, _, ok := p.class.patchRows(np); ok {
			n.patched++
		}
		switch err := p.Update(next); {
		case err == nil:
			rules = next
			n.applied++
		case errors.Is(err, ErrNeedsReload):
			n.reloads++
		default:
			t.Fatalf("update %d: %v", u, err)
		}
		ev, err := NewEvaluator(rules)
		if err != nil {
			t.Fatal(err)
		}
		differs := false
		for _, pkt := range pkts {
			want := ev.Evaluate(g.sets, pkt)
			differs = differs || cmp.Diff(want, before.Evaluate(g.sets, pkt), decisionCmp) != ""
			if diff := cmp.Diff(want, k.run(t, p, pkt), decisionCmp); diff != "" {
				t.Fatalf("after update %d, packet %+v (-evaluate +kernel):\n%s", u, pkt, diff)
			}
		}
		if differs {
			n.seen++
		}
	}
	return n
}

// loadLarge loads a 10,000-rule random policy of g (for a host endpoint
// or not) with g's IP sets.
func (k *kernel) loadLarge(t *testing.T, g *gen, forHost bool) (*Program, Rules) {
	t.Helper()
	rules := g.largeRules(10000, forHost)
	k.setIPSets(t, g.sets)
	c, err := Compile(rules, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return k.loadCompiled(t, c), rules
}
