package datapath

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// TestAttack2RemoveInterfaceUnderTraffic removes and re-adds lo 200 times
// while test runs send new flows (SYNs its policy allows, from distinct
// clients) at its TC ingress hook. RemoveInterface promises that "from
// then on the datapath drops its packets (bpf.ReasonDroppedNoIface,
// counted in slot 0)" and make-before-break that a configured interface
// never runs without its policy: so every packet either passes or is
// dropped as no_iface in slot 0, none is dropped for a missing policy or
// a bad hand-off, and every call succeeds.
func TestAttack2RemoveInterfaceUnderTraffic(t *testing.T) {
	d := openSmall(t, Options{ConntrackEntries: 1 << 16, MaxInterfaces: 4, PolicySlots: 16})
	if err := d.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
		t.Fatal(err)
	}
	cfg := Interface{Kind: Workload, Egress: allowTCPPort(80, 10)}
	if err := d.SetInterface(loIfindex, cfg); err != nil {
		t.Fatal(err)
	}
	slot0In, _, err := d.UnconfiguredCounters()
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var passed, dropped atomic.Uint64
	var wg sync.WaitGroup
	runErrs := make([]error, 3)
	for w := range runErrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 70 + byte(w), byte(i >> 8), byte(i)}), uint16(1024+i%60000))
				frame := testpkt.MustBytes(t, testpkt.TCPv4(src, netip.MustParseAddrPort("10.79.0.1:80"), testpkt.SYN, nil))
				ret, err := d.TCIngress().Run(&ebpf.RunOptions{Data: frame})
				if err != nil {
					runErrs[w] = err
					return
				}
				if ret == tcActOK {
					passed.Add(1)
				} else {
					dropped.Add(1)
				}
			}
		}()
	}
	var apiErr error
	for i := range 200 {
		if apiErr = d.RemoveInterface(loIfindex); apiErr != nil {
			apiErr = fmt.Errorf("remove #%d: %w", i, apiErr)
			break
		}
		if apiErr = d.SetInterface(loIfindex, cfg); apiErr != nil {
			apiErr = fmt.Errorf("set #%d: %w", i, apiErr)
			break
		}
		// Let some packets meet the configured interface before the next
		// removal (bounded, so a datapath that drops them all still ends).
		for p, deadline := passed.Load(), time.Now().Add(time.Second); passed.Load() < p+20 && time.Now().Before(deadline); {
			runtime.Gosched()
		}
	}
	stop.Store(true)
	wg.Wait()
	for _, err := range append(runErrs, apiErr) {
		if err != nil {
			t.Fatal(err)
		}
	}
	slot0After, _, err := d.UnconfiguredCounters()
	if err != nil {
		t.Fatal(err)
	}
	delta := reasonDelta(slot0In, slot0After)
	noIface := delta[bpf.ReasonDroppedNoIface]
	delete(delta, bpf.ReasonDroppedNoIface)
	if len(delta) != 0 {
		t.Errorf("slot 0 counted other reasons: %v", delta)
	}
	if noIface != dropped.Load() {
		t.Errorf("%d packets dropped, %d of them counted as no_iface in slot 0: the rest were dropped for another reason", dropped.Load(), noIface)
	}
	if passed.Load() == 0 || dropped.Load() == 0 {
		t.Logf("only %d passed and %d dropped: the race was not exercised both ways", passed.Load(), dropped.Load())
	}
	t.Logf("%d packets passed, %d dropped as no_iface", passed.Load(), dropped.Load())
}

// TestAttack2SetInterfacesFailsWhole: batches that run out of counter
// slots or of policy slots part-way through fail before any entry
// switches, and leave the datapath exactly as it was: the same entries,
// the same programs in the same policy slots, and every slot they took
// given back, so that a smaller batch then fits.
func TestAttack2SetInterfacesFailsWhole(t *testing.T) {
	for _, c := range []struct {
		name        string
		policySlots uint32
		batch       map[int]Interface
		want        string
	}{
		{"five interfaces, room for four", 64, map[int]Interface{
			11: {Kind: Workload, Ingress: allowTCPPort(81, 30)},
			13: {Kind: Workload, Egress: allowAllRules},
			14: {Kind: Workload, Egress: allowAllRules},
			15: {Kind: Workload, Egress: allowAllRules},
			16: {Kind: Workload, Egress: allowAllRules},
		}, "counter slots"},
		{"more policy parts than free slots", 8, map[int]Interface{
			12: {Kind: Host, Ingress: allowTCPPort(23, 40)},
			13: {Kind: Workload, Ingress: allowTCPPort(82, 50), Egress: allowTCPPort(83, 60)},
			14: {Kind: Workload, Ingress: allowTCPPort(84, 70), Egress: allowTCPPort(85, 80)},
		}, "policy slots"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := openSmall(t, Options{PolicySlots: c.policySlots, MaxInterfaces: 4})
			base := map[int]Interface{
				11: {Kind: Workload, Ingress: allowTCPPort(80, 10), Egress: allowAllRules},
				12: {Kind: Host, Ingress: allowTCPPort(22, 20), Egress: allowAllRules},
			}
			if err := d.SetInterfaces(base); err != nil {
				t.Fatal(err)
			}
			snapshot := func() string {
				entries := map[int]string{}
				for _, idx := range []int{11, 12, 13, 14, 15, 16} {
					if e, err := d.InterfaceEntry(idx); err == nil {
						entries[idx] = fmt.Sprintf("%+v", e)
					}
				}
				return fmt.Sprintf("entries %v, %d programs in slots, %d policy and %d counter slots free",
					entries, usedPolicySlots(t, d), d.policySlots.free, d.counterSlots.free)
			}
			before := snapshot()
			err := d.SetInterfaces(c.batch)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("the batch: %v, want an error about %s", err, c.want)
			}
			if after := snapshot(); after != before {
				t.Errorf("the failed batch changed the datapath:\n%s\nwas\n%s", after, before)
			}
			if err := d.SetInterfaces(map[int]Interface{13: {Kind: Workload, Egress: allowAllRules}, 14: {Kind: Workload, Egress: allowAllRules}}); err != nil {
				t.Errorf("a batch that fits after the failure: %v", err)
			}
		})
	}
}
