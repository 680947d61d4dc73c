package datapath

import (
	"net/netip"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
)

// openPinned opens a datapath on pinDir with lo routed as a workload.
func openPinned(t *testing.T, pinDir string) *Datapath {
	t.Helper()
	d, err := Open(Options{PinDir: pinDir, ConntrackEntries: 1 << 10, MaxInterfaces: 8, PolicySlots: 32})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestCrashedTakeoverKeepsSettledGeneration: generation 1 runs (settled);
// generation 2 configures lo and dies before moving any link; generation
// 3 then configures lo too. Generation 1's programs, still the attached
// ones, must keep their record and go on deciding packets by their
// policy, and generation 3 must have its own.
func TestCrashedTakeoverKeepsSettledGeneration(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	syn := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.31.0.1:1000"), netip.MustParseAddrPort("10.31.0.2:80"), testpkt.SYN, nil))

	g1 := openPinned(t, pinDir)
	if err := g1.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
		t.Fatal(err)
	}
	if err := g1.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowTCPPort(80, 10)}); err != nil {
		t.Fatal(err)
	}
	if err := g1.Settle(); err != nil {
		t.Fatal(err)
	}
	g2 := openPinned(t, pinDir)
	if err := g2.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowTCPPort(80, 20)}); err != nil {
		t.Fatal(err)
	}
	g2.Close() // the crash: its programs were never attached
	g3 := openPinned(t, pinDir)
	if err := g3.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowTCPPort(80, 30)}); err != nil {
		t.Fatal(err)
	}
	if g1.Generation() != 1 || g2.Generation() != 2 || g3.Generation() != 3 {
		t.Fatalf("generations %d, %d, %d; want 1, 2, 3", g1.Generation(), g2.Generation(), g3.Generation())
	}
	entry, err := g3.InterfaceEntry(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	gens := map[uint32]bool{entry.Records[0].Generation: true, entry.Records[1].Generation: true}
	if !gens[1] || !gens[3] {
		t.Fatalf("records %+v: want generation 1's (settled, attached) and 3's", entry.Records)
	}
	// Generation 1's programs still decide, with generation 1's rule.
	for _, d := range []*Datapath{g1, g3} {
		if ret, err := d.TCIngress().Run(&ebpf.RunOptions{Data: syn}); err != nil || ret != tcActOK {
			t.Errorf("generation %d's program: verdict %d, %v; want TC_ACT_OK", d.Generation(), ret, err)
		}
	}
	if n, _ := g1.RuleHits().Get(10); n != 1 {
		t.Errorf("generation 1's rule decided %d packets, want 1", n)
	}
	if n, _ := g3.RuleHits().Get(30); n != 1 {
		t.Errorf("generation 3's rule decided %d packets, want 1", n)
	}
	// Once generation 3 settles, generation 1's record goes.
	if err := g3.Settle(); err != nil {
		t.Fatal(err)
	}
	entry, err = g3.InterfaceEntry(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if entry.Records[0].Generation+entry.Records[1].Generation != 3 {
		t.Errorf("records after generation 3 settled: %+v", entry.Records)
	}
	if ret, err := g1.TCIngress().Run(&ebpf.RunOptions{Data: syn}); err != nil || ret != tcActShot {
		t.Errorf("generation 1's program after the takeover settled: verdict %d, %v; want TC_ACT_SHOT", ret, err)
	}
}

// TestConcurrentOpensTakeDistinctGenerations opens the same pinned state
// from many goroutines at once: each Open gets its own generation.
func TestConcurrentOpensTakeDistinctGenerations(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	openPinned(t, pinDir).Close() // create the registry first
	const n = 6
	gens := make([]uint32, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := Open(Options{PinDir: pinDir, ConntrackEntries: 1 << 10, MaxInterfaces: 8, PolicySlots: 32})
			if err != nil {
				errs[i] = err
				return
			}
			gens[i] = d.Generation()
			d.Close()
		}()
	}
	wg.Wait()
	seen := map[uint32]bool{}
	for i, g := range gens {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if seen[g] {
			t.Errorf("generation %d handed out twice: %v", g, gens)
		}
		seen[g] = true
	}
}

// TestSetInterfacesBatch: a batch switches every interface, keeps the
// program of a hook whose rules did not change, and frees each replaced
// policy once.
func TestSetInterfacesBatch(t *testing.T) {
	d := openSmall(t, Options{PolicySlots: 16, MaxInterfaces: 4})
	first := map[int]Interface{
		11: {Kind: Workload, Ingress: allowTCPPort(80, 10), Egress: allowAllRules},
		12: {Kind: Workload, Ingress: allowTCPPort(81, 20), Egress: allowAllRules},
	}
	if err := d.SetInterfaces(first); err != nil {
		t.Fatal(err)
	}
	progID := func(ifindex uint32, hook bpf.Hook) ebpf.ProgramID {
		info, err := d.ifaces[ifindex].hooks[hook].prog.Programs()[0].Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	keptBefore := progID(11, bpf.HookIngress) // interface 11's egress rules stay: its TC ingress program
	second := map[int]Interface{
		11: {Kind: Workload, Ingress: allowTCPPort(82, 30), Egress: allowAllRules},
		12: {Kind: Workload, Ingress: allowTCPPort(83, 40), Egress: allowAllRules},
	}
	if err := d.SetInterfaces(second); err != nil {
		t.Fatal(err)
	}
	if got := progID(11, bpf.HookIngress); got != keptBefore {
		t.Errorf("interface 11's unchanged hook got a new program (%d, was %d)", got, keptBefore)
	}
	if n := usedPolicySlots(t, d); n != 4 || d.policySlots.free != 12 {
		t.Errorf("after the batch %d slots hold programs and %d are free, want 4 and 12", n, d.policySlots.free)
	}
	// A batch whose second interface cannot compile changes nothing.
	bad := map[int]Interface{
		11: {Kind: Workload, Ingress: allowTCPPort(84, 50)},
		13: {Kind: 7},
	}
	before, _ := d.InterfaceEntry(11)
	if err := d.SetInterfaces(bad); err == nil {
		t.Fatal("a batch with an invalid interface was accepted")
	}
	if after, _ := d.InterfaceEntry(11); after != before {
		t.Errorf("a refused batch changed interface 11: %+v, was %+v", after, before)
	}
}
