package bpf

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/internal/testutil"
)

func TestLoadSizesAndPins(t *testing.T) {
	testutil.RequirePrivileged(t)
	pin := testutil.TempBPFFS(t)
	opts := LoadOptions{ConntrackEntries: 1000, IfaceEntries: 32, CounterEntries: 64, PolicySlots: 8, IPSetEntries: 16, RuleHitEntries: 16, PinPath: pin}
	first, err := Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	for name, want := range map[string]uint32{MapConntrack: 1000, MapIfaces: 32, MapCounters: 64, MapPolicyJumps: 8, MapIPSets: 16, MapRuleHits: 16} {
		if got := first.Collection.Maps[name].MaxEntries(); got != want {
			t.Errorf("%s: max entries %d, want %d", name, got, want)
		}
		if _, err := os.Stat(filepath.Join(pin, name)); err != nil {
			t.Errorf("%s not pinned: %v", name, err)
		}
	}
	for slot, prog := range map[ContSlot]string{ContAllow: ProgTCAllow, ContDeny: ProgTCDeny} {
		var id ebpf.ProgramID
		if err := first.Collection.Maps[MapConts].Lookup(slot, &id); err != nil {
			t.Fatalf("conts slot %d: %v", slot, err)
		}
		info, err := first.Collection.Programs[prog].Info()
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := info.ID(); id != want {
			t.Errorf("conts slot %d holds program %d, want %s (%d)", slot, id, prog, want)
		}
	}

	// A second load reuses the pinned maps.
	if err := first.Collection.Maps[MapIfaces].Put(uint32(7), Iface{Flags: IfaceReady}); err != nil {
		t.Fatal(err)
	}
	second, err := Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	var got Iface
	if err := second.Collection.Maps[MapIfaces].Lookup(uint32(7), &got); err != nil || got.Flags != IfaceReady {
		t.Errorf("second load does not share %s: %+v, %v", MapIfaces, got, err)
	}

	// A pinned map of another size is an error, not a silent replacement.
	opts.ConntrackEntries = 2000
	if dp, err := Load(opts); err == nil {
		dp.Close()
		t.Error("load with a conflicting pinned conntrack size succeeded")
	}
}

func TestLoadMapReplacements(t *testing.T) {
	testutil.RequirePrivileged(t)
	first, err := Load(LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := Load(LoadOptions{MapReplacements: map[string]*ebpf.Map{MapConntrack: first.Collection.Maps[MapConntrack]}})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	a, _ := first.Collection.Maps[MapConntrack].Info()
	b, _ := second.Collection.Maps[MapConntrack].Info()
	aID, _ := a.ID()
	bID, _ := b.ID()
	if aID != bID {
		t.Errorf("replaced conntrack map has ID %d, want %d", bID, aID)
	}
}
