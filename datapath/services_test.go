package datapath

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
)

// TestServicesSurviveRestart: the load-balancing maps are in the
// registry. A second Open of the same PinDir finds the services the first
// programmed, and its Table adopts their backend IDs.
func TestServicesSurviveRestart(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	opts := Options{PinDir: pinDir, ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16,
		ServiceEntries: 64, BackendEntries: 64, AffinityEntries: 64}
	svc := nat.Service{
		Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("10.96.0.10"), Port: 53, Protocol: nat.ProtoUDP}},
		Backends:  []nat.Backend{{Addr: netip.MustParseAddr("10.1.0.5"), Port: 53, Local: true}},
	}
	be := netip.MustParseAddrPort("10.1.0.5:53")
	first, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Services().Sync(map[string]nat.Service{"dns": svc}); err != nil {
		t.Fatal(err)
	}
	id, ok := first.Services().BackendID(be)
	if !ok {
		t.Fatal("no backend ID after Sync")
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if got, ok := second.Services().BackendID(be); !ok || got != id {
		t.Errorf("after a restart backend %v has ID %d (%v), want %d", be, got, ok, id)
	}
	if err := second.Services().Sync(map[string]nat.Service{"dns": svc}); err != nil {
		t.Fatal(err)
	}
	if got, _ := second.Services().BackendID(be); got != id {
		t.Errorf("after the restart's Sync backend ID %d, want %d", got, id)
	}
	var nilDP *Datapath
	if nilDP.Services() != nil {
		t.Error("Services of a nil Datapath is not nil")
	}
}
