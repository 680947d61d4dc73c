package routes

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// netipEqual lets go-cmp compare netip values, whose fields are
// unexported, by ==.
var netipEqual = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// Route constructors for tests.
func localWorkload(p string, ifindex uint32) Route {
	return Route{Prefix: pfx(p), Flags: FlagLocalWorkload, Ifindex: ifindex}
}

func localHost(p string) Route { return Route{Prefix: pfx(p), Flags: FlagLocalHost} }

func remote(p string, flags Flags, hop string) Route {
	return Route{Prefix: pfx(p), Flags: flags, NextHop: addr(hop)}
}

// newTestMap creates a private routes map from the datapath's map spec,
// with room for maxEntries (the spec's size when 0).
func newTestMap(t *testing.T, maxEntries uint32) *Map {
	t.Helper()
	testutil.RequirePrivileged(t)
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	mapSpec := spec.Maps[bpf.MapRoutes].Copy()
	if maxEntries != 0 {
		mapSpec.MaxEntries = maxEntries
	}
	kernelMap, err := ebpf.NewMap(mapSpec)
	if err != nil {
		t.Fatalf("create %s: %v", bpf.MapRoutes, err)
	}
	t.Cleanup(func() { kernelMap.Close() })
	m, err := NewMap(kernelMap)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustTable(t *testing.T, routes []Route) *Table {
	t.Helper()
	table, err := NewTable(routes)
	if err != nil {
		t.Fatal(err)
	}
	return table
}

// mustRoutes reads every route of m.
func mustRoutes(t *testing.T, m *Map) []Route {
	t.Helper()
	got, err := m.Routes()
	if err != nil {
		t.Fatal(err)
	}
	return got
}
