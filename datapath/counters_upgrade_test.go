package datapath

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/maps"
)

// TestCountersUpgrade opens pin directories whose counters are of each
// earlier layout version: each count moves to its reason's new number,
// the reasons added since start at zero, and the old map, which a running
// older datapath's programs still hold, is not written (its counts stay
// as they were). Each version's step refuses a value of the new size.
func TestCountersUpgrade(t *testing.T) {
	for _, tc := range []struct {
		version, reasons int
		// old are counts of CPU 0 by the version's reason numbers.
		old  map[int]uint64
		want map[bpf.Reason]uint64
		step func(key, value []byte) ([]byte, []byte, bool, error)
	}{
		{
			// 26 reasons, the first drop at 7.
			version: 1, reasons: countersV1Reasons, step: upgradeCountersV1,
			old:  map[int]uint64{1: 5, 7: 3, 25: 2}, // accepted_established, dropped_by_policy, dropped_bad_handoff
			want: map[bpf.Reason]uint64{bpf.ReasonAcceptedEstablished: 5, bpf.ReasonDroppedByPolicy: 3, bpf.ReasonDroppedBadHandoff: 2},
		},
		{
			// 31 reasons, the first drop at 8.
			version: 2, reasons: countersV2Reasons, step: upgradeCountersV2,
			old: map[int]uint64{1: 5, 7: 6, 8: 3, 30: 4}, // accepted_established, nd_passed, dropped_by_policy, dropped_nd
			want: map[bpf.Reason]uint64{bpf.ReasonAcceptedEstablished: 5, bpf.ReasonNDPassed: 6,
				bpf.ReasonDroppedByPolicy: 3, bpf.ReasonDroppedND: 4},
		},
		{
			// 36 reasons, before the FIB step's.
			version: 3, reasons: countersV3Reasons, step: upgradeCountersV3,
			old: map[int]uint64{1: 5, 8: 6, 9: 3, 35: 4}, // accepted_established, refusal_passed, dropped_by_policy, dropped_nat_failed
			want: map[bpf.Reason]uint64{bpf.ReasonAcceptedEstablished: 5, bpf.ReasonRefusalPassed: 6,
				bpf.ReasonDroppedByPolicy: 3, bpf.ReasonDroppedNATFailed: 4},
		},
	} {
		t.Run(fmt.Sprintf("v%d", tc.version), func(t *testing.T) {
			if _, _, _, err := tc.step(make([]byte, 4), make([]byte, 8*bpf.ReasonCount)); err == nil {
				t.Errorf("a value of the new size upgraded as version %d", tc.version)
			}
			testCountersUpgrade(t, tc.version, tc.reasons, tc.old, tc.want)
		})
	}
}

func testCountersUpgrade(t *testing.T, version, reasons int, counts map[int]uint64, want map[bpf.Reason]uint64) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	const maxIfaces = 8
	old, _, err := maps.OpenOrCreate(maps.Params{
		Name: "sl_counters", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: uint32(8 * reasons),
		MaxEntries: 2 * (maxIfaces + 1), Version: uint32(version), PinDir: pinDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	values := make([][]uint64, cpus)
	for c := range values {
		values[c] = make([]uint64, reasons)
	}
	for r, n := range counts {
		values[0][r] = n
	}
	key := uint32(bpf.CounterIndex(0, bpf.HookIngress))
	if err := old.Update(key, values, ebpf.UpdateAny); err != nil {
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
	still, err := old.LookupBytes(key)
	if err != nil {
		t.Fatal(err)
	}
	for c := range cpus {
		for r := range reasons {
			got := binary.NativeEndian.Uint64(still[8*(c*reasons+r):])
			if got != values[c][r] {
				t.Fatalf("the version-%d map after the upgrade: CPU %d, reason %d: %d, want %d", version, c, r, got, values[c][r])
			}
		}
	}
}
