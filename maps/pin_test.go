package maps

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

func flowParams(pinDir string, version, maxEntries uint32) Params {
	return Params{
		Name:       "sl_flows",
		Type:       ebpf.Hash,
		KeySize:    uint32(binary.Size(flowKey{})),
		ValueSize:  uint32(binary.Size(flowValue{})),
		MaxEntries: maxEntries,
		Version:    version,
		PinDir:     pinDir,
	}
}

// openFlows opens p and wraps the result, failing t on error.
func openFlows(t *testing.T, p Params, opts ...Option) (*Map[flowKey, flowValue], OpenReport) {
	t.Helper()
	raw, report, err := OpenOrCreate(p, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	m, err := New[flowKey, flowValue](raw)
	if err != nil {
		t.Fatal(err)
	}
	return m, report
}

// fillFlows stores entries 0..n-1 and returns them.
func fillFlows(t *testing.T, m *Map[flowKey, flowValue], n int) map[flowKey]flowValue {
	t.Helper()
	want := make(map[flowKey]flowValue, n)
	keys := make([]flowKey, 0, n)
	values := make([]flowValue, 0, n)
	for i := range n {
		k, v := flowEntry(i)
		want[k] = v
		keys = append(keys, k)
		values = append(values, v)
	}
	if _, err := m.BatchUpdate(keys, values, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	return want
}

// pinNames lists the pins in dir, leaving out the files bpffs itself
// shows at its root (maps.debug, progs.debug).
func pinNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".debug") {
			continue
		}
		names = append(names, e.Name())
	}
	return names
}

func TestParamsValidation(t *testing.T) {
	valid := flowParams("/sys/fs/bpf/unused", 1, 16)
	tests := []struct {
		name   string
		modify func(*Params)
	}{
		{"kernel name too long", func(p *Params) { p.Name = "sl_long_name_x"; p.Version = 10 }},
		{"bad character", func(p *Params) { p.Name = "sl-flows" }},
		{"version 0", func(p *Params) { p.Version = 0 }},
		{"no pin directory", func(p *Params) { p.PinDir = "" }},
		{"no name", func(p *Params) { p.Name = "" }},
		{"zero max entries", func(p *Params) { p.MaxEntries = 0 }},
	}
	if err := valid.validate(); err != nil {
		t.Fatalf("valid params rejected: %v", err)
	}
	for _, tt := range tests {
		p := valid
		tt.modify(&p)
		if _, _, err := OpenOrCreate(p); err == nil {
			t.Errorf("%s: OpenOrCreate accepted %+v", tt.name, p)
		}
	}
}

func TestOpenOrCreateCreatesThenReuses(t *testing.T) {
	dir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	p := flowParams(dir, 1, 64)
	m, report := openFlows(t, p)
	if report.Action != Created {
		t.Fatalf("first open: %v, want created", report.Action)
	}
	info, err := m.EBPF().Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "sl_flows_v1" {
		t.Errorf("kernel map name %q, want sl_flows_v1", info.Name)
	}
	want := fillFlows(t, m, 10)

	again, report := openFlows(t, p)
	if report.Action != Reused {
		t.Fatalf("second open: %v, want reused", report.Action)
	}
	if diff := diffEntries(want, dumpMap(t, again)); diff != "" {
		t.Errorf("reused map (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"sl_flows_v1"}, pinNames(t, dir)); diff != "" {
		t.Errorf("pins (-want +got):\n%s", diff)
	}
}

func TestOpenOrCreateResizeKeeps10000Entries(t *testing.T) {
	dir := testutil.TempBPFFS(t)
	const n = 10000
	small, _ := openFlows(t, flowParams(dir, 1, n))
	want := fillFlows(t, small, n)

	bigger := flowParams(dir, 1, 2*n)
	big, report := openFlows(t, bigger)
	if diff := cmp.Diff(OpenReport{Action: Migrated, FromVersion: 1, Copied: n}, report); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if got := big.EBPF().MaxEntries(); got != 2*n {
		t.Errorf("max entries %d, want %d", got, 2*n)
	}
	if diff := diffEntries(want, dumpMap(t, big)); diff != "" {
		t.Errorf("resized map (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"sl_flows_v1"}, pinNames(t, dir)); diff != "" {
		t.Errorf("pins (-want +got):\n%s", diff)
	}
	// The old map is still open here: the resized one is a new map, so a
	// write to the old one must not show.
	k0, v0 := flowEntry(0)
	if err := small.Update(k0, flowValue{Packets: 99}, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	got, err := big.Lookup(k0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v0, got, ignoreLayoutMarkers); diff != "" {
		t.Errorf("resized map shares storage with the old one (-want +got):\n%s", diff)
	}
}

func TestOpenOrCreateRefusesUnsafeChanges(t *testing.T) {
	dir := testutil.TempBPFFS(t)
	openFlows(t, flowParams(dir, 2, 16))
	tests := []struct {
		name string
		p    Params
	}{
		{"downgrade", flowParams(dir, 1, 16)},
		{"key size change without a version bump", func() Params {
			p := flowParams(dir, 2, 16)
			p.KeySize = 16
			return p
		}()},
		{"upgrade without a registered step", flowParams(dir, 3, 16)},
	}
	for _, tt := range tests {
		if _, _, err := OpenOrCreate(tt.p); err == nil {
			t.Errorf("%s: OpenOrCreate succeeded", tt.name)
		}
		if diff := cmp.Diff([]string{"sl_flows_v2"}, pinNames(t, dir)); diff != "" {
			t.Errorf("%s: refused open moved pins (-want +got):\n%s", tt.name, diff)
		}
	}
}

// Version history of a test map, to exercise a two-step upgrade:
// v1: key uint32 address, value uint32 packet count.
// v2: value grows a flags word: {count, flags=1}.
// v3: key grows a port: {addr, port=80, pad}, and entries with a zero
// count are dropped.
type (
	v2Value struct{ Count, Flags uint32 }
	v3Key   struct {
		Addr uint32
		Port uint16
		Pad  uint16
	}
)

func upgradeV1toV2(key, value []byte) ([]byte, []byte, bool, error) {
	if len(value) != 4 {
		return nil, nil, false, errors.New("v1 value is 4 bytes")
	}
	return key, binary.NativeEndian.AppendUint32(value[:4:4], 1), true, nil
}

func upgradeV2toV3(key, value []byte) ([]byte, []byte, bool, error) {
	if binary.NativeEndian.Uint32(value) == 0 {
		return nil, nil, false, nil
	}
	newKey := binary.NativeEndian.AppendUint16(key[:4:4], 80)
	return append(newKey, 0, 0), value, true, nil
}

func versionedParams(dir string, version uint32) Params {
	p := Params{Name: "sl_hist", Type: ebpf.Hash, MaxEntries: 4096, Version: version, PinDir: dir}
	switch version {
	case 1:
		p.KeySize, p.ValueSize = 4, 4
	case 2:
		p.KeySize, p.ValueSize = 4, 8
	default:
		p.KeySize, p.ValueSize = 8, 8
	}
	return p
}

func TestOpenOrCreateTwoStepUpgrade(t *testing.T) {
	dir := testutil.TempBPFFS(t)
	raw, _, err := OpenOrCreate(versionedParams(dir, 1))
	if err != nil {
		t.Fatal(err)
	}
	v1, err := New[uint32, uint32](raw)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	want := make(map[v3Key]v2Value)
	for i := range uint32(n) {
		count := i % 10 // every tenth entry has count 0 and is dropped
		if err := v1.Update(i, count, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		if count != 0 {
			want[v3Key{Addr: i, Port: 80}] = v2Value{Count: count, Flags: 1}
		}
	}
	raw.Close()

	raw, report, err := OpenOrCreate(versionedParams(dir, 3),
		WithUpgrade(1, upgradeV1toV2), WithUpgrade(2, upgradeV2toV3))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	wantReport := OpenReport{Action: Migrated, FromVersion: 1, Copied: len(want), Dropped: n - len(want)}
	if diff := cmp.Diff(wantReport, report); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	v3, err := New[v3Key, v2Value](raw)
	if err != nil {
		t.Fatal(err)
	}
	if diff := diffEntries(want, dumpMap(t, v3)); diff != "" {
		t.Errorf("upgraded entries (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"sl_hist_v3"}, pinNames(t, dir)); diff != "" {
		t.Errorf("pins (-want +got):\n%s", diff)
	}
}

func TestOpenOrCreateRecoversInterruptedMigration(t *testing.T) {
	const n = 5000
	tests := []struct {
		name      string
		from, to  Params
		opts      []Option
		wantPins  []string // after the interruption
		wantAfter []string
	}{
		{
			name:      "resize",
			from:      flowParams("", 1, n),
			to:        flowParams("", 1, 2*n),
			wantPins:  []string{"sl_flows_v1_old"},
			wantAfter: []string{"sl_flows_v1"},
		},
		{
			name: "version upgrade",
			from: flowParams("", 1, n),
			to:   flowParams("", 2, n),
			opts: []Option{WithUpgrade(1, func(k, v []byte) ([]byte, []byte, bool, error) {
				return k, v, true, nil
			})},
			wantPins:  []string{"sl_flows_v1_old"},
			wantAfter: []string{"sl_flows_v2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testutil.TempBPFFS(t)
			tt.from.PinDir, tt.to.PinDir = dir, dir
			old, _ := openFlows(t, tt.from)
			want := fillFlows(t, old, n)

			interrupted := append([]Option{withFailAfter(n / 2)}, tt.opts...)
			if _, _, err := OpenOrCreate(tt.to, interrupted...); !errors.Is(err, errInjected) {
				t.Fatalf("interrupted OpenOrCreate: %v, want the injected failure", err)
			}
			if diff := cmp.Diff(tt.wantPins, pinNames(t, dir)); diff != "" {
				t.Fatalf("pins after interruption (-want +got):\n%s", diff)
			}

			m, report := openFlows(t, tt.to, tt.opts...)
			wantReport := OpenReport{Action: Migrated, FromVersion: 1, Copied: n, Recovered: true}
			if diff := cmp.Diff(wantReport, report); diff != "" {
				t.Errorf("recovery report (-want +got):\n%s", diff)
			}
			if diff := diffEntries(want, dumpMap(t, m)); diff != "" {
				t.Errorf("entries after recovery (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantAfter, pinNames(t, dir)); diff != "" {
				t.Errorf("pins after recovery (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOpenOrCreateFinishesCompletedMigration covers a crash between
// pinning the new map and removing the old pin: the copy is complete, so
// the new map is kept and only the old pin goes.
func TestOpenOrCreateFinishesCompletedMigration(t *testing.T) {
	dir := testutil.TempBPFFS(t)
	p := flowParams(dir, 2, 64)
	m, _ := openFlows(t, p)
	want := fillFlows(t, m, 20)
	stale, err := ebpf.NewMap(flowParams(dir, 1, 64).spec())
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	if err := stale.Pin(filepath.Join(dir, "sl_flows_v1_old")); err != nil {
		t.Fatal(err)
	}

	again, report := openFlows(t, p)
	if report.Action != Reused {
		t.Errorf("action %v, want reused", report.Action)
	}
	if diff := diffEntries(want, dumpMap(t, again)); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"sl_flows_v2"}, pinNames(t, dir)); diff != "" {
		t.Errorf("pins (-want +got):\n%s", diff)
	}
}

func TestOpenOrCreateLPMTrie(t *testing.T) {
	dir := testutil.TempBPFFS(t)
	p := Params{Name: "sl_ipsets", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4,
		MaxEntries: 64, Flags: unix.BPF_F_NO_PREALLOC, Version: 1, PinDir: dir}
	raw, _, err := OpenOrCreate(p)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	type lpmKey struct{ Prefixlen, Addr uint32 }
	m, err := New[lpmKey, uint32](raw)
	if err != nil {
		t.Fatal(err)
	}
	want := map[lpmKey]uint32{{24, 0x000a0a0a}: 1, {32, 0x010a0a0a}: 2, {8, 0x0000000a}: 3}
	for k, v := range want {
		if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	p.MaxEntries = 128
	resized, report, err := OpenOrCreate(p)
	if err != nil {
		t.Fatal(err)
	}
	defer resized.Close()
	if report.Action != Migrated || report.Copied != len(want) {
		t.Errorf("report %+v, want %d entries migrated", report, len(want))
	}
	m2, err := New[lpmKey, uint32](resized)
	if err != nil {
		t.Fatal(err)
	}
	if diff := diffEntries(want, dumpMap(t, m2)); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
}
