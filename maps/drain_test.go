package maps

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/sluicenet/sluice/internal/testutil"
)

// ignoreDraining compares OpenReports without their open map.
var ignoreDraining = cmpopts.IgnoreFields(OpenReport{}, "Draining")

// openDrain opens p like openFlows and also closes the report's draining
// map when t ends.
func openDrain(t *testing.T, p Params, opts ...Option) (*Map[flowKey, flowValue], OpenReport) {
	t.Helper()
	m, report := openFlows(t, p, opts...)
	if report.Draining != nil {
		t.Cleanup(func() { report.Draining.Close() })
	}
	return m, report
}

// loadFlows loads the flow map pinned under name in dir.
func loadFlows(t *testing.T, dir, name string) *Map[flowKey, flowValue] {
	t.Helper()
	raw, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	m, err := New[flowKey, flowValue](raw)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// pinnedFlows is the union of the entries of every flow map pinned in dir:
// what survives a crash. A key pinned twice must hold one value.
func pinnedFlows(t *testing.T, dir string) map[flowKey]flowValue {
	t.Helper()
	union := make(map[flowKey]flowValue)
	for _, name := range pinNames(t, dir) {
		for k, v := range dumpMap(t, loadFlows(t, dir, name)) {
			if prev, dup := union[k]; dup && prev != v {
				t.Errorf("key %v holds %v in one pin and %v in %s", k, prev, v, name)
			}
			union[k] = v
		}
	}
	return union
}

func sameKernelMap(t *testing.T, a, b *ebpf.Map) bool {
	t.Helper()
	same, err := sameMap(a, b)
	if err != nil {
		t.Fatal(err)
	}
	return same
}

// TestLiveResize walks the protocol through: OpenOrCreate repins the old
// map as _draining and pins an empty larger one, the datapath writes new
// and promoted entries into the new map, Drain moves the rest without
// overwriting them, and FinishDrain removes the draining pin.
func TestLiveResize(t *testing.T) {
	dir := testutil.TempBPFFS(t)
	old, _ := openFlows(t, flowParams(dir, 1, 64))
	want := fillFlows(t, old, 50)

	big := flowParams(dir, 1, 256)
	live, report := openDrain(t, big, WithLiveResize())
	if diff := cmp.Diff(OpenReport{Action: Resized}, report, ignoreDraining); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if report.Draining == nil || !sameKernelMap(t, report.Draining, old.EBPF()) {
		t.Fatalf("report's draining map %v is not the old map %v", report.Draining, old.EBPF())
	}
	if got := live.EBPF().MaxEntries(); got != 256 {
		t.Errorf("new map's capacity %d, want 256", got)
	}
	if n := len(dumpMap(t, live)); n != 0 {
		t.Errorf("new map holds %d entries, want none", n)
	}
	if diff := cmp.Diff([]string{"sl_flows_v1", "sl_flows_v1_draining"}, pinNames(t, dir)); diff != "" {
		t.Errorf("pins (-want +got):\n%s", diff)
	}

	// The datapath creates a flow, and promotes one from the old map with
	// newer counters.
	created, createdValue := flowEntry(1000)
	promoted, _ := flowEntry(7)
	promotedValue := flowValue{Packets: 1 << 40, Backend: 3}
	for k, v := range map[flowKey]flowValue{created: createdValue, promoted: promotedValue} {
		if err := live.Update(k, v, ebpf.UpdateNoExist); err != nil {
			t.Fatal(err)
		}
		want[k] = v
	}
	moved, err := Drain(report.Draining, live.EBPF())
	if err != nil {
		t.Fatal(err)
	}
	if moved != 49 {
		t.Errorf("Drain moved %d entries, want 49 (50 less the promoted one)", moved)
	}
	if diff := diffEntries(want, dumpMap(t, live)); diff != "" {
		t.Errorf("new map after the drain (-want +got):\n%s", diff)
	}
	if n := len(dumpMap(t, old)); n != 0 {
		t.Errorf("draining map holds %d entries after the drain, want none", n)
	}
	if err := FinishDrain(big); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"sl_flows_v1"}, pinNames(t, dir)); diff != "" {
		t.Errorf("pins after FinishDrain (-want +got):\n%s", diff)
	}
	if err := FinishDrain(big); err != nil {
		t.Errorf("second FinishDrain: %v", err)
	}
	if _, report := openDrain(t, big, WithLiveResize()); report.Action != Reused || report.Draining != nil {
		t.Errorf("open after the resize: %+v, want reused", report)
	}
}

// TestLiveResizeCrashPoints stops a live resize at every step, as a crash
// would, and checks what the pins hold then (every entry, in one pinned
// map or the other) and that the next OpenOrCreate resumes the resize to
// the same end. After the crash the datapath writes once into each pinned
// map, as old and new programs would; those entries must survive too.
func TestLiveResizeCrashPoints(t *testing.T) {
	const n = 50
	tests := []struct {
		name string
		// crash runs the resize to big until the crash.
		crash      func(t *testing.T, big Params)
		wantPins   []string
		wantReport OpenReport // of the next OpenOrCreate, Draining aside
	}{
		{
			name: "after repinning the old map",
			crash: func(t *testing.T, big Params) {
				_, _, err := OpenOrCreate(big, WithLiveResize(), withCrashAt(crashAfterDrainRepin))
				if !errors.Is(err, errInjected) {
					t.Fatalf("OpenOrCreate: %v, want the injected crash", err)
				}
			},
			wantPins:   []string{"sl_flows_v1_draining"},
			wantReport: OpenReport{Action: Resized, Recovered: true},
		},
		{
			name: "after pinning the new map",
			crash: func(t *testing.T, big Params) {
				_, _, err := OpenOrCreate(big, WithLiveResize(), withCrashAt(crashAfterDrainPin))
				if !errors.Is(err, errInjected) {
					t.Fatalf("OpenOrCreate: %v, want the injected crash", err)
				}
			},
			wantPins:   []string{"sl_flows_v1", "sl_flows_v1_draining"},
			wantReport: OpenReport{Action: Resized, Recovered: true},
		},
		{
			name: "in the middle of the drain",
			crash: func(t *testing.T, big Params) {
				live, report := openDrain(t, big, WithLiveResize())
				// Chunks of 8: 20 entries are moved, the 21st is
				// written but still in the old map when the crash
				// comes.
				_, err := drain(report.Draining, live.EBPF(), drainOptions{failAfter: 20, chunk: 8})
				if !errors.Is(err, errInjected) {
					t.Fatalf("drain: %v, want the injected crash", err)
				}
			},
			wantPins:   []string{"sl_flows_v1", "sl_flows_v1_draining"},
			wantReport: OpenReport{Action: Resized, Recovered: true},
		},
		{
			name: "after the drain, before FinishDrain",
			crash: func(t *testing.T, big Params) {
				live, report := openDrain(t, big, WithLiveResize())
				if _, err := Drain(report.Draining, live.EBPF()); err != nil {
					t.Fatal(err)
				}
			},
			wantPins:   []string{"sl_flows_v1", "sl_flows_v1_draining"},
			wantReport: OpenReport{Action: Resized, Recovered: true},
		},
		{
			name: "after FinishDrain",
			crash: func(t *testing.T, big Params) {
				live, report := openDrain(t, big, WithLiveResize())
				if _, err := Drain(report.Draining, live.EBPF()); err != nil {
					t.Fatal(err)
				}
				if err := FinishDrain(big); err != nil {
					t.Fatal(err)
				}
			},
			wantPins:   []string{"sl_flows_v1"},
			wantReport: OpenReport{Action: Reused},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testutil.TempBPFFS(t)
			old, _ := openFlows(t, flowParams(dir, 1, 64))
			want := fillFlows(t, old, n)
			big := flowParams(dir, 1, 256)

			tt.crash(t, big)
			pins := pinNames(t, dir)
			if diff := cmp.Diff(tt.wantPins, pins); diff != "" {
				t.Fatalf("pins after the crash (-want +got):\n%s", diff)
			}
			if diff := diffEntries(want, pinnedFlows(t, dir)); diff != "" {
				t.Errorf("entries of the pinned maps after the crash (-want +got):\n%s", diff)
			}
			for i, name := range pins {
				k, v := flowEntry(2000 + i)
				if err := loadFlows(t, dir, name).Update(k, v, ebpf.UpdateNoExist); err != nil {
					t.Fatal(err)
				}
				want[k] = v
			}

			live, report := openDrain(t, big, WithLiveResize())
			if diff := cmp.Diff(tt.wantReport, report, ignoreDraining); diff != "" {
				t.Errorf("report of the next open (-want +got):\n%s", diff)
			}
			if (report.Draining != nil) != (tt.wantReport.Action == Resized) {
				t.Fatalf("draining map %v with action %v", report.Draining, report.Action)
			}
			if report.Draining != nil {
				if _, err := Drain(report.Draining, live.EBPF()); err != nil {
					t.Fatal(err)
				}
				if err := FinishDrain(big); err != nil {
					t.Fatal(err)
				}
			}
			if got := live.EBPF().MaxEntries(); got != 256 {
				t.Errorf("capacity %d, want 256", got)
			}
			if diff := diffEntries(want, dumpMap(t, live)); diff != "" {
				t.Errorf("entries after the resumed resize (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"sl_flows_v1"}, pinNames(t, dir)); diff != "" {
				t.Errorf("pins at the end (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOpenFinishesPendingDrain leaves a drain pinned (a crash after the
// new map was pinned) and opens again in other ways: without
// WithLiveResize OpenOrCreate drains the map itself, and when the capacity
// has changed once more the pending drain is finished before the next
// resize or migration starts.
func TestOpenFinishesPendingDrain(t *testing.T) {
	const n = 50
	tests := []struct {
		name       string
		reopen     uint32 // capacity
		opts       []Option
		wantReport OpenReport
		// wantDraining is how many entries the report's draining map
		// holds (-1: no draining map).
		wantDraining int
	}{
		{"same capacity, without the option", 256, nil,
			OpenReport{Action: Reused, Copied: n, Recovered: true}, -1},
		{"capacity changed back, without the option", 64, nil,
			OpenReport{Action: Migrated, FromVersion: 1, Copied: n, Recovered: true}, -1},
		{"capacity changed again, with the option", 512, []Option{WithLiveResize()},
			OpenReport{Action: Resized, Recovered: true}, n},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testutil.TempBPFFS(t)
			old, _ := openFlows(t, flowParams(dir, 1, 64))
			want := fillFlows(t, old, n)
			_, _, err := OpenOrCreate(flowParams(dir, 1, 256), WithLiveResize(), withCrashAt(crashAfterDrainPin))
			if !errors.Is(err, errInjected) {
				t.Fatalf("OpenOrCreate: %v, want the injected crash", err)
			}

			p := flowParams(dir, 1, tt.reopen)
			live, report := openDrain(t, p, tt.opts...)
			if diff := cmp.Diff(tt.wantReport, report, ignoreDraining); diff != "" {
				t.Errorf("report (-want +got):\n%s", diff)
			}
			if got := live.EBPF().MaxEntries(); got != tt.reopen {
				t.Errorf("capacity %d, want %d", got, tt.reopen)
			}
			wantPins := []string{"sl_flows_v1"}
			if tt.wantDraining < 0 {
				if report.Draining != nil {
					t.Fatalf("unexpected draining map %v", report.Draining)
				}
			} else {
				wantPins = append(wantPins, "sl_flows_v1_draining")
				if report.Draining == nil {
					t.Fatal("no draining map")
				}
				draining, err := New[flowKey, flowValue](report.Draining)
				if err != nil {
					t.Fatal(err)
				}
				if got := len(dumpMap(t, draining)); got != tt.wantDraining {
					t.Errorf("draining map holds %d entries, want %d", got, tt.wantDraining)
				}
			}
			if diff := cmp.Diff(wantPins, pinNames(t, dir)); diff != "" {
				t.Errorf("pins (-want +got):\n%s", diff)
			}
			if diff := diffEntries(want, pinnedFlows(t, dir)); diff != "" {
				t.Errorf("entries of the pinned maps (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLiveResizeFallsBackToCopy: a version change, or an array, is
// migrated by copying even with WithLiveResize, a pending drain of the old
// version first.
func TestLiveResizeFallsBackToCopy(t *testing.T) {
	identity := WithUpgrade(1, func(k, v []byte) ([]byte, []byte, bool, error) { return k, v, true, nil })
	t.Run("version change", func(t *testing.T) {
		dir := testutil.TempBPFFS(t)
		old, _ := openFlows(t, flowParams(dir, 1, 64))
		want := fillFlows(t, old, 50)
		m, report := openDrain(t, flowParams(dir, 2, 128), WithLiveResize(), identity)
		if diff := cmp.Diff(OpenReport{Action: Migrated, FromVersion: 1, Copied: 50}, report); diff != "" {
			t.Errorf("report (-want +got):\n%s", diff)
		}
		if diff := diffEntries(want, dumpMap(t, m)); diff != "" {
			t.Errorf("entries (-want +got):\n%s", diff)
		}
	})
	t.Run("version change with a drain pending", func(t *testing.T) {
		dir := testutil.TempBPFFS(t)
		old, _ := openFlows(t, flowParams(dir, 1, 64))
		want := fillFlows(t, old, 50)
		_, _, err := OpenOrCreate(flowParams(dir, 1, 128), WithLiveResize(), withCrashAt(crashAfterDrainPin))
		if !errors.Is(err, errInjected) {
			t.Fatalf("OpenOrCreate: %v, want the injected crash", err)
		}
		m, report := openDrain(t, flowParams(dir, 2, 128), WithLiveResize(), identity)
		wantReport := OpenReport{Action: Migrated, FromVersion: 1, Copied: 50, Recovered: true}
		if diff := cmp.Diff(wantReport, report); diff != "" {
			t.Errorf("report (-want +got):\n%s", diff)
		}
		if diff := diffEntries(want, dumpMap(t, m)); diff != "" {
			t.Errorf("entries (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"sl_flows_v2"}, pinNames(t, dir)); diff != "" {
			t.Errorf("pins (-want +got):\n%s", diff)
		}
	})
	t.Run("array", func(t *testing.T) {
		dir := testutil.TempBPFFS(t)
		old, _, err := OpenOrCreate(hitParams(dir, ebpf.Array, 16))
		if err != nil {
			t.Fatal(err)
		}
		old.Close()
		m, report, err := OpenOrCreate(hitParams(dir, ebpf.Array, 32), WithLiveResize())
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if diff := cmp.Diff(OpenReport{Action: Migrated, FromVersion: 1, Copied: 16}, report); diff != "" {
			t.Errorf("report (-want +got):\n%s", diff)
		}
	})
}

// TestDrainConcurrentWriter drains while a writer, standing in for the
// datapath, stores newer values under a third of the keys into the new
// map: some before the drain starts, some while it runs, some after it
// ends. Whatever the interleaving, the writer's values must win, the old
// map must end empty, and the count of moved entries must fit.
func TestDrainConcurrentWriter(t *testing.T) {
	const n = 20000
	from := newFlowHash(t, n)
	to := newFlowHash(t, 2*n)
	want := fill(t, from, flowEntry, n)
	var written []flowKey
	for k := range want {
		if k.Port%3 == 0 {
			written = append(written, k)
		}
	}
	newer := func(k flowKey) flowValue { return flowValue{Packets: uint64(k.Port) << 32, Flags: 2} }
	write := func(keys []flowKey) error {
		for _, k := range keys {
			if err := to.Update(k, newer(k), ebpf.UpdateAny); err != nil {
				return err
			}
		}
		return nil
	}
	third := len(written) / 3
	before, during, after := written[:third], written[third:2*third], written[2*third:]
	if err := write(before); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	var writeErr error
	start := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-start
		writeErr = write(during)
	}()
	close(start)
	moved, err := Drain(from.EBPF(), to.EBPF())
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	if err := write(after); err != nil {
		t.Fatal(err)
	}

	for _, k := range written {
		want[k] = newer(k)
	}
	if diff := diffEntries(want, dumpMap(t, to)); diff != "" {
		t.Errorf("new map (-want +got):\n%s", diff)
	}
	if left := len(dumpMap(t, from)); left != 0 {
		t.Errorf("old map holds %d entries after the drain", left)
	}
	// Keys written before the drain are skipped; those written during it
	// may go either way; all others are moved.
	if lo, hi := n-len(before)-len(during), n-len(before); moved < lo || moved > hi {
		t.Errorf("Drain moved %d entries, want between %d and %d", moved, lo, hi)
	}
}

// TestDrainPaths drains maps down the reader's other paths: iteration
// with a chunk smaller than the map, a per-CPU hash (every CPU's value
// moves), and a devmap, which has neither batch lookup nor batch delete.
func TestDrainPaths(t *testing.T) {
	t.Run("hash, iteration", func(t *testing.T) {
		from, to := newFlowHash(t, 100), newFlowHash(t, 200)
		want := fill(t, from, flowEntry, 100)
		moved, err := drain(from.EBPF(), to.EBPF(), drainOptions{chunk: 7, noBatch: true})
		if err != nil || moved != 100 {
			t.Fatalf("drain = %d, %v; want 100", moved, err)
		}
		if diff := diffEntries(want, dumpMap(t, to)); diff != "" {
			t.Errorf("new map (-want +got):\n%s", diff)
		}
		if left := len(dumpMap(t, from)); left != 0 {
			t.Errorf("old map holds %d entries", left)
		}
	})
	t.Run("per-CPU hash", func(t *testing.T) {
		from, to := newPerCPU[hitValue](t, ebpf.PerCPUHash, 100), newPerCPU[hitValue](t, ebpf.PerCPUHash, 200)
		want := make(map[uint32][]hitValue)
		for i := range 100 {
			want[uint32(i)] = hitValues(i, from.cpus)
			if err := from.Update(uint32(i), want[uint32(i)], ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
		}
		if moved, err := Drain(from.EBPF(), to.EBPF()); err != nil || moved != 100 {
			t.Fatalf("Drain = %d, %v; want 100", moved, err)
		}
		if diff := diffEntries(want, perCPUDump(t, to)); diff != "" {
			t.Errorf("new map (-want +got):\n%s", diff)
		}
		if left := len(perCPUDump(t, from)); left != 0 {
			t.Errorf("old map holds %d entries", left)
		}
	})
	t.Run("devmap hash, no batch commands", func(t *testing.T) {
		from, to := newDevMapHash(t, 50), newDevMapHash(t, 100)
		want := fill(t, from, devEntry, 50)
		if moved, err := Drain(from.EBPF(), to.EBPF()); err != nil || moved != 50 {
			t.Fatalf("Drain = %d, %v; want 50", moved, err)
		}
		if diff := diffEntries(want, dumpMap(t, to)); diff != "" {
			t.Errorf("new map (-want +got):\n%s", diff)
		}
		if left := len(dumpMap(t, from)); left != 0 {
			t.Errorf("old map holds %d entries", left)
		}
	})
}

func TestDrainRefuses(t *testing.T) {
	hash := newFlowHash(t, 8)
	other := newFlowHash(t, 8)
	fill(t, hash, flowEntry, 4)
	sameAgain, err := hash.EBPF().Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer sameAgain.Close()
	perCPU := newPerCPU[uint64](t, ebpf.PerCPUHash, 8)
	hash4 := newDevMapHash(t, 8) // 4-byte keys and values
	array, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer array.Close()
	tests := []struct {
		name     string
		from, to *ebpf.Map
	}{
		{"nil map", hash.EBPF(), nil},
		{"other sizes", hash.EBPF(), hash4.EBPF()},
		{"per-CPU into shared", perCPU.EBPF(), other.EBPF()},
		{"into an array", hash4.EBPF(), array},
		{"into itself", hash.EBPF(), sameAgain},
	}
	for _, tt := range tests {
		if _, err := Drain(tt.from, tt.to); err == nil {
			t.Errorf("%s: Drain succeeded", tt.name)
		}
	}
	if n := len(dumpMap(t, hash)); n != 4 {
		t.Errorf("refused drains left %d of 4 entries", n)
	}
}

func TestFinishDrainRefuses(t *testing.T) {
	t.Run("entries left", func(t *testing.T) {
		dir := testutil.TempBPFFS(t)
		old, _ := openFlows(t, flowParams(dir, 1, 64))
		fillFlows(t, old, 5)
		big := flowParams(dir, 1, 128)
		openDrain(t, big, WithLiveResize())
		if err := FinishDrain(big); err == nil {
			t.Error("FinishDrain removed a draining map that still holds entries")
		}
		if diff := cmp.Diff([]string{"sl_flows_v1", "sl_flows_v1_draining"}, pinNames(t, dir)); diff != "" {
			t.Errorf("pins (-want +got):\n%s", diff)
		}
	})
	t.Run("no live map", func(t *testing.T) {
		dir := testutil.TempBPFFS(t)
		openFlows(t, flowParams(dir, 1, 64))
		big := flowParams(dir, 1, 128)
		if _, _, err := OpenOrCreate(big, WithLiveResize(), withCrashAt(crashAfterDrainRepin)); !errors.Is(err, errInjected) {
			t.Fatalf("OpenOrCreate: %v, want the injected crash", err)
		}
		if err := FinishDrain(big); err == nil {
			t.Error("FinishDrain removed the only pinned map")
		}
		if diff := cmp.Diff([]string{"sl_flows_v1_draining"}, pinNames(t, dir)); diff != "" {
			t.Errorf("pins (-want +got):\n%s", diff)
		}
	})
	t.Run("nothing pinned", func(t *testing.T) {
		if err := FinishDrain(flowParams(testutil.TempBPFFS(t), 1, 64)); err != nil {
			t.Errorf("FinishDrain without a drain: %v", err)
		}
	})
	t.Run("bad params", func(t *testing.T) {
		if err := FinishDrain(flowParams("", 1, 64)); err == nil {
			t.Error("FinishDrain accepted params without a pin directory")
		}
	})
}
