package datapath

import (
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/maps"
)

// TestCountersUpgradeFromV1 opens a pin directory whose counters are of
// layout version 1 (26 reasons, the first drop at 7): each count moves to
// its reason's new number, and the new IPv6 reasons start at zero.
func TestCountersUpgradeFromV1(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	const maxIfaces = 8
	v1, _, err := maps.OpenOrCreate(maps.Params{
		Name: "sl_counters", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8 * countersV1Reasons,
		MaxEntries: 2 * (maxIfaces + 1), Version: 1, PinDir: pinDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	old := make([][countersV1Reasons]uint64, cpus)
	old[0][1] = 5  // accepted_established
	old[0][7] = 3  // dropped_by_policy in version 1
	old[0][25] = 2 // dropped_bad_handoff in version 1
	if err := v1.Update(uint32(bpf.CounterIndex(0, bpf.HookIngress)), old, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	v1.Close()

	d, err := Open(Options{PinDir: pinDir, MaxInterfaces: maxIfaces, ConntrackEntries: 1 << 10, PolicySlots: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	in, _, err := d.UnconfiguredCounters()
	if err != nil {
		t.Fatal(err)
	}
	want := map[bpf.Reason]uint64{bpf.ReasonAcceptedEstablished: 5, bpf.ReasonDroppedByPolicy: 3, bpf.ReasonDroppedBadHandoff: 2}
	if diff := cmp.Diff(want, in.NonZero()); diff != "" {
		t.Errorf("upgraded counters (-want +got):\n%s", diff)
	}
}

// TestUpgradeCountersV1RefusesOtherSizes checks the step's one guard.
func TestUpgradeCountersV1RefusesOtherSizes(t *testing.T) {
	if _, _, _, err := upgradeCountersV1(make([]byte, 4), make([]byte, 8*bpf.ReasonCount)); err == nil {
		t.Error("a value of the new size upgraded as version 1")
	}
}

// TestCountersUpgradeFromV2 opens a pin directory whose counters are of
// layout version 2 (31 reasons, the first drop at 8): each count moves
// to its reason's new number, and the new reasons start at zero.
func TestCountersUpgradeFromV2(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	const maxIfaces = 8
	v2, _, err := maps.OpenOrCreate(maps.Params{
		Name: "sl_counters", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8 * countersV2Reasons,
		MaxEntries: 2 * (maxIfaces + 1), Version: 2, PinDir: pinDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	old := make([][countersV2Reasons]uint64, cpus)
	old[0][1] = 5  // accepted_established
	old[0][7] = 6  // nd_passed
	old[0][8] = 3  // dropped_by_policy in version 2
	old[0][30] = 4 // dropped_nd in version 2
	if err := v2.Update(uint32(bpf.CounterIndex(0, bpf.HookIngress)), old, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	v2.Close()

	d, err := Open(Options{PinDir: pinDir, MaxInterfaces: maxIfaces, ConntrackEntries: 1 << 10, PolicySlots: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	in, _, err := d.UnconfiguredCounters()
	if err != nil {
		t.Fatal(err)
	}
	want := map[bpf.Reason]uint64{bpf.ReasonAcceptedEstablished: 5, bpf.ReasonNDPassed: 6, bpf.ReasonDroppedByPolicy: 3, bpf.ReasonDroppedND: 4}
	if diff := cmp.Diff(want, in.NonZero()); diff != "" {
		t.Errorf("upgraded counters (-want +got):\n%s", diff)
	}
	if _, _, _, err := upgradeCountersV2(make([]byte, 4), make([]byte, 8*bpf.ReasonCount)); err == nil {
		t.Error("a value of the new size upgraded as version 2")
	}
}

// TestCountersUpgradeFromV3 opens a pin directory whose counters are of
// layout version 3 (36 reasons, before the FIB step's): every count keeps
// its reason's number, the FIB step's reasons start at zero, and the
// version-3 map, which a running older datapath's programs still hold, is
// not written: its counts stay as they were.
func TestCountersUpgradeFromV3(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	const maxIfaces = 8
	v3, _, err := maps.OpenOrCreate(maps.Params{
		Name: "sl_counters", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8 * countersV3Reasons,
		MaxEntries: 2 * (maxIfaces + 1), Version: 3, PinDir: pinDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	old := make([][countersV3Reasons]uint64, cpus)
	old[0][1] = 5  // accepted_established
	old[0][8] = 6  // refusal_passed
	old[0][9] = 3  // dropped_by_policy
	old[0][35] = 4 // dropped_nat_failed, the last reason of version 3
	key := uint32(bpf.CounterIndex(0, bpf.HookIngress))
	if err := v3.Update(key, old, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}

	d, err := Open(Options{PinDir: pinDir, MaxInterfaces: maxIfaces, ConntrackEntries: 1 << 10, PolicySlots: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	in, _, err := d.UnconfiguredCounters()
	if err != nil {
		t.Fatal(err)
	}
	want := map[bpf.Reason]uint64{bpf.ReasonAcceptedEstablished: 5, bpf.ReasonRefusalPassed: 6,
		bpf.ReasonDroppedByPolicy: 3, bpf.ReasonDroppedNATFailed: 4}
	if diff := cmp.Diff(want, in.NonZero()); diff != "" {
		t.Errorf("upgraded counters (-want +got):\n%s", diff)
	}
	if d.state.counters.ValueSize() != 8*uint32(bpf.ReasonCount) {
		t.Errorf("counters value of %d bytes, want %d", d.state.counters.ValueSize(), 8*bpf.ReasonCount)
	}
	// The new programs count into the new map only.
	if err := d.counters.Update(key, make([]bpf.ReasonCounts, cpus), ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	var still [][countersV3Reasons]uint64
	if err := v3.Lookup(key, &still); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(old, still); diff != "" {
		t.Errorf("the version-3 map after the upgrade (-want +got):\n%s", diff)
	}
	if _, _, _, err := upgradeCountersV3(make([]byte, 4), make([]byte, 8*bpf.ReasonCount)); err == nil {
		t.Error("a value of the new size upgraded as version 3")
	}
}
