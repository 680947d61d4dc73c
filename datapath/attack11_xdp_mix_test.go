package datapath

import (
	"testing"

	"github.com/sluicenet/sluice/polprog"
)

// TestAttack11XDPHookMix: a policy compiled for one hook loaded into the
// other hook's jump map and continuations is an error, and leaves both
// jump maps' slots empty: a prog array takes programs of its owner's type
// only, and a TC part in the XDP jump map would run on an xdp_md.
func TestAttack11XDPHookMix(t *testing.T) {
	d := openXDP(t)
	rules := polprog.Rules{ForHost: true, PreDNATTiers: xdpTiers}
	for _, tc := range []struct {
		name string
		hook polprog.Hook
		maps polprog.Maps
	}{
		{"TC policy into the XDP maps", polprog.HookTC, d.xdpMaps()},
		{"XDP policy into the TC maps", polprog.HookXDP, d.polprogMaps()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := d.opts.Policy
			opts.Hook = tc.hook
			c, err := polprog.Compile(rules, opts)
			if err != nil {
				t.Fatal(err)
			}
			slots := []uint32{200}
			for len(slots) < len(c.Parts) {
				slots = append(slots, slots[len(slots)-1]+1)
			}
			p, err := c.Load(tc.maps, slots)
			if err == nil {
				p.Close()
				t.Fatal("loaded")
			}
			t.Logf("refused: %v", err)
			for _, m := range []polprog.Maps{d.xdpMaps(), d.polprogMaps()} {
				for _, s := range slots {
					var id uint32
					if err := m.PolicyJumps.Lookup(s, &id); err == nil {
						t.Errorf("slot %d of %s holds program %d", s, m.PolicyJumps, id)
					}
				}
			}
		})
	}
}
