package polprog

import "testing"

func TestAttackUpdateAfterClose(t *testing.T) {
	k := newKernel(t)
	rules := benchPolicy(300, benchShapes[2])
	c, err := Compile(rules, Options{ClassifierRules: 1})
	if err != nil {
		t.Fatal(err)
	}
	slots, free := k.allocSlots(t, len(c.Parts))
	defer free()
	p, err := c.Load(k.maps, slots)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	next := cloneRules(rules)
	next.Tiers[0].Policies[0].Rules[3].ID = 4242
	t.Logf("update after close: %v", p.Update(next))
}
