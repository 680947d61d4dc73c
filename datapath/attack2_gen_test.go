package datapath

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
)

// atk2OpenPinned opens a datapath on pinDir, closed when the test ends.
func atk2OpenPinned(t *testing.T, pinDir string) *Datapath {
	t.Helper()
	d, err := Open(Options{PinDir: pinDir, ConntrackEntries: 1 << 10, MaxInterfaces: 64, PolicySlots: 512})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestAttack2TwoGenerationsCounterSlots: while a restarted agent takes
// over, the old process (generation 1) and the new one (generation 2)
// both configure interfaces on the shared pins, as the takeover design
// allows. Every interface has a counter slot of its own ("one slot per
// interface"; Counters reads an interface's packets from it). Generation
// 1 configures lo, which carries the traffic, and generation 2 another
// interface, both new since generation 2 opened: their entries must have
// distinct counter slots, lo's packets must not appear in the other
// interface's counters, and generation 2's SetInterface must not zero
// lo's counts.
func TestAttack2TwoGenerationsCounterSlots(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	g1 := atk2OpenPinned(t, pinDir)
	if err := g1.Settle(); err != nil {
		t.Fatal(err)
	}
	g2 := atk2OpenPinned(t, pinDir)
	if err := g1.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
		t.Fatal(err)
	}
	if err := g1.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowTCPPort(80, 10)}); err != nil {
		t.Fatal(err)
	}
	syn := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.77.0.1:1000"), netip.MustParseAddrPort("10.77.0.2:80"), testpkt.SYN, nil))
	if ret, err := g1.TCIngress().Run(&ebpf.RunOptions{Data: syn}); err != nil || ret != tcActOK {
		t.Fatalf("lo's SYN: verdict %d, %v", ret, err)
	}
	const other = 4242
	if err := g2.SetInterface(other, Interface{Kind: Workload, Egress: allowTCPPort(80, 20)}); err != nil {
		t.Fatal(err)
	}
	lo, err := g1.InterfaceEntry(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	oth, err := g2.InterfaceEntry(other)
	if err != nil {
		t.Fatal(err)
	}
	if lo.CounterSlot == oth.CounterSlot {
		t.Errorf("lo (configured by generation 1) and interface %d (by generation 2) share counter slot %d", other, lo.CounterSlot)
	}
	loCounts, err := g1.Counters(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if got := loCounts.Egress[bpf.ReasonAcceptedByPolicy]; got != 1 {
		t.Errorf("lo's counters after generation 2 configured interface %d: %d SYNs accepted by policy, want 1", other, got)
	}
	if ret, err := g1.TCIngress().Run(&ebpf.RunOptions{Data: syn}); err != nil || ret != tcActOK {
		t.Fatalf("lo's second SYN: verdict %d, %v", ret, err)
	}
	othCounts, err := g2.Counters(other)
	if err != nil {
		t.Fatal(err)
	}
	if n := othCounts.Egress.Accepted() + othCounts.Egress.Dropped() + othCounts.Ingress.Accepted() + othCounts.Ingress.Dropped(); n != 0 {
		t.Errorf("interface %d saw no packet, but its counters hold %d: %v / %v", other, n, othCounts.Ingress.NonZero(), othCounts.Egress.NonZero())
	}
}

// TestAttack2ConcurrentGenerationsConfigure: two processes on one pin
// directory (an old generation and the one taking over) configure the
// same interfaces at once, each with its own policies, then each a set
// of its own. Every shared interface must end with both generations'
// records, each naming the slots of the policy that generation installed
// last; every interface must have a counter slot no other interface has.
func TestAttack2ConcurrentGenerationsConfigure(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	g1 := atk2OpenPinned(t, pinDir)
	if err := g1.Settle(); err != nil {
		t.Fatal(err)
	}
	g2 := atk2OpenPinned(t, pinDir)
	const shared, rounds = 8, 5
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for gi, d := range []*Datapath{g1, g2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				for i := range shared {
					port := uint16(1000 + 100*gi + 10*r + i)
					if err := d.SetInterface(100+i, Interface{Kind: Workload, Egress: allowTCPPort(port, uint64(port))}); err != nil {
						errs[gi] = err
						return
					}
				}
			}
			// And interfaces of its own.
			for i := range 4 {
				if err := d.SetInterface(200+10*gi+i, Interface{Kind: Workload, Egress: allowAllRules}); err != nil {
					errs[gi] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	slots := map[uint32]uint32{} // counter slot -> ifindex
	var err error
	for idx, entry := range g1.ifaceMap.All(&err) {
		if prev, ok := slots[entry.CounterSlot]; ok {
			t.Errorf("interfaces %d and %d share counter slot %d", prev, idx, entry.CounterSlot)
		}
		slots[entry.CounterSlot] = idx
		if idx >= 200 {
			continue
		}
		for _, d := range []*Datapath{g1, g2} {
			want := d.ifaces[idx].hooks[bpf.HookIngress].prog.EntrySlot()
			found := false
			for _, r := range entry.Records {
				if r.Generation == d.Generation() {
					found = true
					if r.Ingress != want {
						t.Errorf("interface %d: generation %d's record names slot %d, its policy is in %d", idx, d.Generation(), r.Ingress, want)
					}
				}
			}
			if !found {
				t.Errorf("interface %d lost generation %d's record: %+v", idx, d.Generation(), entry.Records)
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(slots) != shared+8 {
		t.Errorf("%d entries with distinct counter slots, want %d", len(slots), shared+8)
	}
	t.Log(fmt.Sprint("counter slots by ifindex: ", slots))
}

// TestAttack2OldGenerationKeepsNewerRecords: generation 1 ran and was
// taken over by generation 2, which settled; generation 3, the next
// restart, has configured lo and is about to move its programs onto it.
// Generation 1's process has not exited yet and makes one more
// SetInterface of lo (an event it was still handling). A generation's
// update must never evict the record of a newer generation, which is
// taking over from it ("Records of a newer generation, a process already
// taking over from this one, stay"): generation 3's record must survive,
// its programs must decide lo's packets by its policy, and after it
// settles lo must still be configured.
func TestAttack2OldGenerationKeepsNewerRecords(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	syn := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.78.0.1:1000"), netip.MustParseAddrPort("10.78.0.2:80"), testpkt.SYN, nil))
	g1 := atk2OpenPinned(t, pinDir)
	if err := g1.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
		t.Fatal(err)
	}
	set := func(d *Datapath, ruleID uint64) {
		t.Helper()
		if err := d.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowTCPPort(80, ruleID)}); err != nil {
			t.Fatal(err)
		}
	}
	set(g1, 10)
	if err := g1.Settle(); err != nil {
		t.Fatal(err)
	}
	g2 := atk2OpenPinned(t, pinDir)
	set(g2, 20)
	if err := g2.Settle(); err != nil {
		t.Fatal(err)
	}
	g3 := atk2OpenPinned(t, pinDir)
	set(g3, 30)
	set(g1, 11) // the old process's late update
	entry, err := g3.InterfaceEntry(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if entry.Records[0].Generation != 3 && entry.Records[1].Generation != 3 {
		t.Errorf("generation 1's update evicted generation 3's record: %+v", entry.Records)
	}
	if ret, err := g3.TCIngress().Run(&ebpf.RunOptions{Data: syn}); err != nil || ret != tcActOK {
		t.Errorf("generation 3's program at lo: verdict %d, %v; want TC_ACT_OK by its policy", ret, err)
	}
	if err := g3.Settle(); err != nil {
		t.Fatal(err)
	}
	if entry, err := g3.InterfaceEntry(loIfindex); err != nil {
		t.Errorf("lo after generation 3 settled: %v", err)
	} else if entry.Records[0].Generation != 3 && entry.Records[1].Generation != 3 {
		t.Errorf("lo after generation 3 settled has no record of it: %+v", entry.Records)
	}
	if n, _ := g3.RuleHits().Get(30); n != 1 {
		t.Errorf("generation 3's rule decided %d packets, want 1", n)
	}
}

// TestAttack2SettleWhileOldGenerationConfigures: generation 2 configures
// eight interfaces and settles while generation 1, the process it takes
// over from, keeps reconfiguring the same interfaces. Settle clears the
// records of older generations; generation 1 may write its own back, but
// no write of either may cost generation 2 a record, and the settled
// generation must end as 2.
func TestAttack2SettleWhileOldGenerationConfigures(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	g1 := atk2OpenPinned(t, pinDir)
	const ifaces = 8
	for i := range ifaces {
		if err := g1.SetInterface(100+i, Interface{Kind: Workload, Egress: allowTCPPort(80, 10)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := g1.Settle(); err != nil {
		t.Fatal(err)
	}
	g2 := atk2OpenPinned(t, pinDir)
	var stop atomic.Bool
	var g1Err error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for r := 0; !stop.Load(); r++ {
			if err := g1.SetInterface(100+r%ifaces, Interface{Kind: Workload, Egress: allowTCPPort(uint16(1000+r%50), 10)}); err != nil {
				g1Err = err
				return
			}
		}
	}()
	for i := range ifaces {
		if err := g2.SetInterface(100+i, Interface{Kind: Workload, Egress: allowTCPPort(80, 20)}); err != nil {
			t.Fatal(err)
		}
	}
	settleErr := g2.Settle()
	// Let generation 1 go on for a while after the Settle.
	for i := range ifaces {
		if _, err := g2.Counters(100 + i); err != nil {
			t.Error(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if settleErr != nil || g1Err != nil {
		t.Fatalf("Settle: %v; generation 1: %v", settleErr, g1Err)
	}
	for i := range ifaces {
		entry, err := g2.InterfaceEntry(100 + i)
		if err != nil {
			t.Errorf("interface %d: %v", 100+i, err)
			continue
		}
		if entry.Records[0].Generation != 2 && entry.Records[1].Generation != 2 {
			t.Errorf("interface %d lost generation 2's record: %+v", 100+i, entry.Records)
		}
	}
	if meta, err := g2.readMeta(); err != nil || meta.SettledGeneration != 2 {
		t.Errorf("settled generation %d (%v), want 2", meta.SettledGeneration, err)
	}
}
