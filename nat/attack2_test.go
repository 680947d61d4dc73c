package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
)

// TestAttackFullMapRecovers: the slots map holds 8 entries; a batched
// Sync that needs more fails midway. The Table must then recover: a Sync
// of services that fit leaves exactly them, with nothing leaked.
func TestAttackFullMapRecovers(t *testing.T) {
	m := newTestMaps(t)
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps[bpf.MapBackendSlots].Copy()
	ms.MaxEntries = 8
	small, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { small.Close() })
	m.Slots = small
	tb, err := NewTable(m)
	if err != nil {
		t.Fatal(err)
	}
	svc := func(i int, n int) Service {
		s := oneFrontendService(fmt.Sprintf("10.96.0.%d", i), 80)
		for j := range n {
			s.Backends = append(s.Backends, Backend{Addr: addr(fmt.Sprintf("10.1.%d.%d", i, j+1)), Port: 8080})
		}
		return s
	}
	fits := map[string]Service{"a": svc(1, 3), "b": svc(2, 2)}
	if err := tb.Sync(fits); err != nil {
		t.Fatal(err)
	}
	// b grows to 4: its new list (4) plus the old ones (5) exceed 8.
	if err := tb.Sync(map[string]Service{"a": svc(1, 3), "b": svc(2, 4)}); err == nil {
		t.Fatal("Sync over a full map succeeded")
	}
	if err := readKernel(t, tb).checkWhole(); err != nil {
		t.Errorf("after the failed Sync: %v", err)
	}
	// a shrinks to 1: a's old 3, its new 1 and b's 2 are 6 slots, which
	// fit. Retried, as an agent would.
	shrunk := map[string]Service{"a": svc(1, 1), "b": svc(2, 2)}
	for attempt := 1; ; attempt++ {
		err := tb.Sync(shrunk)
		if err == nil {
			break
		}
		if attempt == 3 {
			ks := readKernel(t, tb)
			t.Fatalf("Sync after the failure, attempt %d: %v (maps hold %d slots; the services need %d)",
				attempt, err, len(ks.slots), 3)
		}
	}
	if err := readKernel(t, tb).checkExact(t, shrunk); err != nil {
		t.Errorf("after recovering: %v", err)
	}
	// And the Table's memory agrees with the kernel: an unchanged Sync
	// writes nothing.
	writes := 0
	tb.afterWrite = func() { writes++ }
	if err := tb.Sync(shrunk); err != nil {
		t.Fatal(err)
	}
	if writes != 0 {
		t.Errorf("an unchanged Sync after recovery wrote %d times", writes)
	}
}

// TestAttackBatchDeleteSkipsMissing: a slot vanished behind the Table's
// back; a batched Delete must pass over it and delete the rest.
func TestAttackBatchDeleteSkipsMissing(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4")
	if err := tb.Upsert("s", s); err != nil {
		t.Fatal(err)
	}
	v := readKernel(t, tb).svcs[s.Frontends[0].key()]
	if err := tb.slots.Delete(bpf.BackendSlotKey{SvcID: v.ID, Slot: v.SlotBase + 1}); err != nil {
		t.Fatal(err)
	}
	if err := tb.Delete("s"); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, tb).checkExact(t, nil); err != nil {
		t.Error(err)
	}
}

// TestAttackZeroTable: a zero or nil Table answers with an error, never a
// panic.
func TestAttackZeroTable(t *testing.T) {
	var zero Table
	var null *Table
	for _, tb := range []*Table{&zero, null} {
		if err := tb.Upsert("a", Service{}); err == nil {
			t.Error("Upsert on an unmade Table succeeded")
		}
		if err := tb.Delete("a"); err == nil {
			t.Error("Delete on an unmade Table succeeded")
		}
		if err := tb.Sync(nil); err == nil {
			t.Error("Sync on an unmade Table succeeded")
		}
		if tb.Services() != nil {
			t.Error("Services on an unmade Table")
		}
		if _, ok := tb.BackendID(netip.AddrPort{}); ok {
			t.Error("BackendID on an unmade Table")
		}
	}
}

// TestAttackZonedAddresses: the maps hold no IPv6 zone, so two backends
// that differ only in zone are one backend twice; a zoned address must be
// refused rather than silently stripped.
func TestAttackZonedAddresses(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	s := Service{Frontends: []Frontend{{Addr: addr("fd00::1"), Port: 80, Protocol: ProtoTCP}},
		Backends: []Backend{{Addr: addr("fe80::1%eth0"), Port: 80}, {Addr: addr("fe80::1%eth1"), Port: 80}}}
	if err := tb.Upsert("z", s); !errors.Is(err, ErrInvalidService) {
		ks := readKernel(t, tb)
		t.Errorf("backends differing only in zone: %v, want ErrInvalidService (maps hold %d backends for one address)", err, len(ks.backends))
	}
	f := Service{Frontends: []Frontend{{Addr: addr("fe80::2%eth0"), Port: 80, Protocol: ProtoTCP}}}
	if err := tb.Upsert("f", f); !errors.Is(err, ErrInvalidService) {
		t.Errorf("zoned frontend: %v, want ErrInvalidService", err)
	}
}

// TestAttackConcurrent: goroutines upsert, delete and sync at once (run
// with -race); the maps end whole and exactly as the last Sync says.
func TestAttackConcurrent(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				name := fmt.Sprintf("g%d", g)
				s := oneFrontendService(fmt.Sprintf("10.96.%d.1", g), 80, fmt.Sprintf("10.1.0.%d", i%5+1), "10.1.9.9")
				var err error
				switch i % 3 {
				case 0:
					err = tb.Upsert(name, s)
				case 1:
					err = tb.Delete(name)
				default:
					_ = tb.Services()
					err = tb.Upsert(name, s)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	final := map[string]Service{"x": oneFrontendService("10.96.9.1", 80, "10.1.9.9")}
	if err := tb.Sync(final); err != nil {
		t.Fatal(err)
	}
	if err := readKernel(t, tb).checkExact(t, final); err != nil {
		t.Error(err)
	}
}

// TestAttackFlagsOnlyAndWrap: a backend that changes only its Local or
// Terminating flag moves slot groups; every instant shows a whole list
// and the frontend never empty. Service IDs wrap past 2^32-1 to 1,
// skipping IDs in use.
func TestAttackFlagsOnlyAndWrap(t *testing.T) {
	tb, err := NewTable(newTestMaps(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Upsert("first", oneFrontendService("10.96.1.1", 80, "10.1.1.1")); err != nil {
		t.Fatal(err)
	}
	tb.nextSvcID = ^uint32(0)
	s := oneFrontendService("10.96.0.1", 80, "10.1.0.1", "10.1.0.2")
	if err := tb.Upsert("s", s); err != nil {
		t.Fatal(err)
	}
	k := s.Frontends[0].key()
	for _, flip := range []func(*Backend){
		func(b *Backend) { b.Local = true },
		func(b *Backend) { b.Terminating = true },
		func(b *Backend) { b.Local = false },
	} {
		flip(&s.Backends[1])
		tb.afterWrite = func() {
			ks := readKernel(t, tb)
			if err := ks.checkWhole(); err != nil {
				t.Fatal(err)
			}
			if got, ok := ks.backendsOf(k); !ok || len(got) != 2 {
				t.Fatalf("frontend mid-change: %v", got)
			}
		}
		if err := tb.Upsert("s", s); err != nil {
			t.Fatal(err)
		}
		tb.afterWrite = nil
	}
	if err := tb.Upsert("third", oneFrontendService("10.96.2.1", 80, "10.1.2.1")); err != nil {
		t.Fatal(err)
	}
	ks := readKernel(t, tb)
	ids := []uint32{ks.svcs[oneFrontendService("10.96.1.1", 80).Frontends[0].key()].ID, ks.svcs[k].ID,
		ks.svcs[oneFrontendService("10.96.2.1", 80).Frontends[0].key()].ID}
	if ids[0] != 1 || ids[1] != ^uint32(0) || ids[2] != 2 {
		t.Errorf("service IDs %v, want [1 %d 2]", ids, ^uint32(0))
	}
	if err := ks.checkExact(t, map[string]Service{"first": oneFrontendService("10.96.1.1", 80, "10.1.1.1"), "s": s,
		"third": oneFrontendService("10.96.2.1", 80, "10.1.2.1")}); err != nil {
		t.Error(err)
	}
}
