package routes

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/maps"
)

func TestNewMapRejects(t *testing.T) {
	testutil.RequirePrivileged(t)
	if _, err := NewMap(nil); err == nil {
		t.Error("NewMap(nil) succeeded")
	}
	tests := []struct {
		name    string
		spec    ebpf.MapSpec
		wantErr string
	}{
		{"hash map", ebpf.MapSpec{Type: ebpf.Hash, KeySize: uint32(keySize), ValueSize: uint32(valueSize), MaxEntries: 4}, "want LPM trie"},
		{"IPv4-only trie", ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: uint32(valueSize), MaxEntries: 4, Flags: 1}, "map key size is 8"},
		{"other value", ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: uint32(keySize), ValueSize: 4, MaxEntries: 4, Flags: 1}, "map value size is 4"},
	}
	for _, tt := range tests {
		m, err := ebpf.NewMap(&tt.spec)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		_, err = NewMap(m)
		m.Close()
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: NewMap error %v, want one containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestMapPutGetLookupDelete(t *testing.T) {
	m := newTestMap(t, 64)
	for _, r := range fixedRoutes {
		if err := m.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(mustTable(t, fixedRoutes).Routes(), mustRoutes(t, m), netipEqual); diff != "" {
		t.Errorf("Routes after Put (-want +got):\n%s", diff)
	}

	// Lookup is longest prefix match, without the prefix.
	got, err := m.Lookup(addr("10.0.1.8"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Route{Flags: FlagLocalWorkload, Ifindex: 4}, got, netipEqual); diff != "" {
		t.Errorf("Lookup(10.0.1.8) (-want +got):\n%s", diff)
	}

	// Get is exact: a covered prefix the map does not hold is missing,
	// although a lookup of it would find the covering route.
	got, err = m.Get(pfx("10.0.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(localWorkload("10.0.1.0/24", 4), got, netipEqual); diff != "" {
		t.Errorf("Get(10.0.1.0/24) (-want +got):\n%s", diff)
	}
	for _, p := range []string{"10.0.1.0/26", "10.0.0.0/16", "fd00::/65", "::/1"} {
		if _, err := m.Get(pfx(p)); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Errorf("Get(%s) error %v, want ErrKeyNotExist", p, err)
		}
	}

	// Put replaces in place.
	moved := localWorkload("10.0.1.0/24", 9)
	if err := m.Put(moved); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Get(moved.Prefix); err != nil || got != moved {
		t.Errorf("Get after replacing = %s, %v; want %s", got, err, moved)
	}

	// Delete is exact, and leaves the covering route.
	if err := m.Delete(pfx("10.0.1.0/25")); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Delete of a prefix not held: %v, want ErrKeyNotExist", err)
	}
	if err := m.Delete(pfx("10.0.1.7/32")); err != nil {
		t.Fatal(err)
	}
	got, err = m.Lookup(addr("10.0.1.7"))
	if err != nil || got.Ifindex != 9 {
		t.Errorf("Lookup(10.0.1.7) after deleting its /32 = %s, %v; want the /24 route", got, err)
	}
	if _, err := m.Get(pfx("10.0.1.7/32")); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Get of a deleted prefix: %v, want ErrKeyNotExist", err)
	}
}

func TestMapGetEdges(t *testing.T) {
	m := newTestMap(t, 8)
	if _, err := m.Get(pfx("10.0.0.0/8")); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Get on an empty map: %v, want ErrKeyNotExist", err)
	}
	only := localHost("10.0.0.0/8")
	if err := m.Put(only); err != nil {
		t.Fatal(err)
	}
	// The only key is both the first and the last.
	if got, err := m.Get(only.Prefix); err != nil || got != only {
		t.Errorf("Get of the only route = %s, %v", got, err)
	}
	if _, err := m.Get(pfx("10.0.0.0/9")); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Get(10.0.0.0/9) beside the only route: %v, want ErrKeyNotExist", err)
	}
	if _, err := m.Get(pfx("0.0.0.0/0")); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Get(0.0.0.0/0) beside the only route: %v, want ErrKeyNotExist", err)
	}
}

func TestMapBadInput(t *testing.T) {
	m := newTestMap(t, 8)
	if err := m.Put(localWorkload("10.0.0.1/32", 0)); !errors.Is(err, ErrInvalidRoute) {
		t.Errorf("Put of an invalid route: %v, want ErrInvalidRoute", err)
	}
	if err := m.Put(Route{}); !errors.Is(err, ErrInvalidRoute) {
		t.Errorf("Put of the zero Route: %v, want ErrInvalidRoute", err)
	}
	if _, err := m.Lookup(netip.Addr{}); err == nil {
		t.Error("Lookup of the zero Addr succeeded")
	}
	if _, err := m.Get(netip.Prefix{}); !errors.Is(err, ErrInvalidRoute) {
		t.Errorf("Get of the zero Prefix: %v, want ErrInvalidRoute", err)
	}
	if err := m.Delete(netip.Prefix{}); !errors.Is(err, ErrInvalidRoute) {
		t.Errorf("Delete of the zero Prefix: %v, want ErrInvalidRoute", err)
	}
	if _, err := m.Lookup(addr("10.0.0.1")); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Lookup in an empty map: %v, want ErrKeyNotExist", err)
	}
	if got := mustRoutes(t, m); len(got) != 0 {
		t.Errorf("bad input left routes: %v", got)
	}
}

func TestMapAll(t *testing.T) {
	m := newTestMap(t, 64)
	if _, err := m.Sync(fixedRoutes); err != nil {
		t.Fatal(err)
	}
	var err error
	byPrefix := make(map[netip.Prefix]Route)
	for p, r := range m.All(&err) {
		if p != r.Prefix {
			t.Errorf("All yielded prefix %s with route %s", p, r)
		}
		byPrefix[p] = r
	}
	if err != nil {
		t.Fatal(err)
	}
	table := mustTable(t, fixedRoutes)
	if len(byPrefix) != table.Len() {
		t.Errorf("All yielded %d routes, want %d", len(byPrefix), table.Len())
	}
	for p, r := range byPrefix {
		want, ok := table.Get(p)
		if !ok || want != r {
			t.Errorf("All yielded %s, table holds %s (%v)", r, want, ok)
		}
	}
	n := 0
	for range m.All(&err) {
		n++
		if n == 3 {
			break
		}
	}
	if n != 3 || err != nil {
		t.Errorf("breaking off after 3: saw %d, err %v", n, err)
	}
	for range m.All(nil) { // a nil errOut is allowed
	}
}

// syncStep is one Sync and what it must report.
type syncStep struct {
	name    string
	desired []Route
	want    maps.SyncStats
}

func TestSync(t *testing.T) {
	m := newTestMap(t, 64)
	base := fixedRoutes[:6]
	changed := append([]Route{}, base...)
	changed[2] = localWorkload("10.0.1.0/24", 8) // value changes
	changed = changed[:5]                        // 192.168.0.2/32 goes
	changed = append(changed, remote("10.0.2.0/24", FlagRemoteWorkload, "192.168.0.5"))
	// The same routes written another way: host bits, IPv4-mapped forms.
	respelled := []Route{
		remote("0.0.0.0/0", FlagRemoteHost, "::ffff:192.168.0.254"),
		remote("::ffff:10.0.0.0/104", FlagRemoteWorkload|FlagTunneled, "192.168.0.3"),
		localWorkload("10.0.1.99/24", 8),
		localWorkload("::ffff:10.0.1.7/128", 5),
		remote("10.0.2.7/24", FlagRemoteWorkload, "192.168.0.5"),
		remote("10.0.1.128/25", FlagRemoteWorkload, "192.168.0.4"),
	}
	steps := []syncStep{
		{"fill", base, maps.SyncStats{Added: 6}},
		{"again", base, maps.SyncStats{Unchanged: 6}},
		{"add, change, delete", changed, maps.SyncStats{Added: 1, Changed: 1, Deleted: 1, Unchanged: 4}},
		{"same routes respelled", respelled, maps.SyncStats{Unchanged: 6}},
		{"everything", fixedRoutes, maps.SyncStats{Added: 7, Changed: 1, Deleted: 1, Unchanged: 4}},
		{"empty", nil, maps.SyncStats{Deleted: len(fixedRoutes)}},
		{"empty again", nil, maps.SyncStats{}},
	}
	for _, step := range steps {
		got, err := m.Sync(step.desired)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if diff := cmp.Diff(step.want, got); diff != "" {
			t.Errorf("%s: stats (-want +got):\n%s", step.name, diff)
		}
		if diff := cmp.Diff(mustTable(t, step.desired).Routes(), mustRoutes(t, m), netipEqual); diff != "" {
			t.Errorf("%s: map (-want +got):\n%s", step.name, diff)
		}
	}
}

func TestSyncRejects(t *testing.T) {
	m := newTestMap(t, 8)
	initial := fixedRoutes[:4]
	if _, err := m.Sync(initial); err != nil {
		t.Fatal(err)
	}
	tooMany := fixedRoutes[:9]
	tests := []struct {
		name    string
		desired []Route
		invalid bool // the error wraps ErrInvalidRoute
	}{
		{"invalid route", append([]Route{localHost("10.9.0.0/16")}, localWorkload("10.0.0.1/32", 0)), true},
		{"duplicate prefix", []Route{localHost("10.9.0.0/16"), localHost("10.9.1.1/16")}, true},
		{"more than the map holds", tooMany, false},
	}
	for _, tt := range tests {
		stats, err := m.Sync(tt.desired)
		if err == nil {
			t.Fatalf("%s: Sync succeeded", tt.name)
		}
		if errors.Is(err, ErrInvalidRoute) != tt.invalid {
			t.Errorf("%s: error %v wraps ErrInvalidRoute: %v, want %v", tt.name, err, !tt.invalid, tt.invalid)
		}
		if diff := cmp.Diff(maps.SyncStats{}, stats); diff != "" {
			t.Errorf("%s: stats (-want +got):\n%s", tt.name, diff)
		}
		if diff := cmp.Diff(mustTable(t, initial).Routes(), mustRoutes(t, m), netipEqual); diff != "" {
			t.Errorf("%s: map changed (-want +got):\n%s", tt.name, diff)
		}
	}
}

// TestSyncCleansForeignKeys writes entries as another writer might, with
// bits set past the prefix length, and checks that Sync takes them for
// the routes they are: rewritten in place when desired, deleted when not.
func TestSyncCleansForeignKeys(t *testing.T) {
	m := newTestMap(t, 8)
	dirty := func(plen uint32, a string, r Route) {
		t.Helper()
		_, v, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		k, err := NewKey(r.Prefix)
		if err != nil {
			t.Fatal(err)
		}
		k.Prefixlen, k.Addr = plen, addr(a).As16()
		if err := m.EBPF().Update(&k, &v, ebpf.UpdateNoExist); err != nil {
			t.Fatal(err)
		}
	}
	kept := localHost("10.0.0.0/8")
	changed := localWorkload("fd00::/64", 3)
	dirty(32+104, "10.1.2.3", kept)
	dirty(32+64, "fd00::1:2:3:4", localWorkload("fd00::/64", 2))
	dirty(32+120, "10.9.9.9", localHost("10.9.9.0/24")) // not desired

	desired := []Route{kept, changed}
	stats, err := m.Sync(desired)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(maps.SyncStats{Changed: 2, Deleted: 1}, stats); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(mustTable(t, desired).Routes(), mustRoutes(t, m), netipEqual); diff != "" {
		t.Errorf("map (-want +got):\n%s", diff)
	}
	var err2 error
	for k := range m.typed.All(&err2) {
		if k != k.canonical() {
			t.Errorf("key %v still has bits past its length", k)
		}
	}
	if err2 != nil {
		t.Fatal(err2)
	}
	stats, err = m.Sync(desired)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(maps.SyncStats{Unchanged: 2}, stats); diff != "" {
		t.Errorf("second Sync stats (-want +got):\n%s", diff)
	}
}

// TestMapLayoutMatchesDatapath checks that a map created from the
// datapath's spec is what NewMap wants, flags included.
func TestMapLayoutMatchesDatapath(t *testing.T) {
	m := newTestMap(t, 0)
	if m.EBPF().Flags()&1 == 0 { // BPF_F_NO_PREALLOC
		t.Errorf("map flags %#x lack BPF_F_NO_PREALLOC", m.EBPF().Flags())
	}
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.MaxEntries(), int(spec.Maps[bpf.MapRoutes].MaxEntries); got != want {
		t.Errorf("MaxEntries %d, want the spec's %d", got, want)
	}
}
