package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicenet/sluice/bpf"
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

// TestServicesMembersAndMaglev: the Table the datapath makes keeps its
// members (a service with affinity has them) and Maglev tables in the
// datapath's maps, and a restart's Sync keeps them where they were.
func TestServicesMembersAndMaglev(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	opts := Options{PinDir: pinDir, ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16,
		ServiceEntries: 64, BackendEntries: 64, AffinityEntries: 64, MaglevServices: 2}
	svc := nat.Service{
		Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: nat.ProtoTCP}},
		Backends: []nat.Backend{{Addr: netip.MustParseAddr("10.1.0.5"), Port: 80, Weight: 3},
			{Addr: netip.MustParseAddr("10.1.0.6"), Port: 80, Local: true, Terminating: true}},
		Maglev:   true,
		Affinity: time.Minute,
	}
	contents := func(d *Datapath) (members map[bpf.LBMemberKey]bpf.LBMember, tables []bpf.MaglevKey) {
		t.Helper()
		members = map[bpf.LBMemberKey]bpf.LBMember{}
		var k bpf.LBMemberKey
		var v bpf.LBMember
		it := d.state.lbMembers.Iterate()
		for it.Next(&k, &v) {
			members[k] = v
		}
		var mk bpf.MaglevKey
		var tbl bpf.MaglevTable
		mit := d.state.maglev.Iterate()
		for mit.Next(&mk, &tbl) {
			tables = append(tables, mk)
		}
		if err := errors.Join(it.Err(), mit.Err()); err != nil {
			t.Fatal(err)
		}
		return members, tables
	}
	first, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Services().Sync(map[string]nat.Service{"mg": svc}); err != nil {
		t.Fatal(err)
	}
	members, tables := contents(first)
	if len(members) != 2 || len(tables) != 1 {
		t.Fatalf("%d members and %d Maglev tables, want 2 and 1", len(members), len(tables))
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := second.Services().Sync(map[string]nat.Service{"mg": svc}); err != nil {
		t.Fatal(err)
	}
	members2, tables2 := contents(second)
	if fmt.Sprint(members2) != fmt.Sprint(members) || fmt.Sprint(tables2) != fmt.Sprint(tables) {
		t.Errorf("after a restart's Sync: members %v, tables %v; want %v, %v", members2, tables2, members, tables)
	}
}
