package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
)

// xdpMD is struct xdp_md as a test run's context: the ingress interface
// and the frame's end (the kernel takes a DataEnd of 0 and gives the
// program an empty frame).
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// TestAttack11XDPCounterSlotReuse: an interface removed with its XDP
// tiers, whose counter slot another interface with XDP tiers takes, no
// longer drops at XDP and counts nothing into the other's slot, whether
// it lost its tiers before it went or not; put back, it counts in its
// own slot again.
func TestAttack11XDPCounterSlotReuse(t *testing.T) {
	testutil.RequirePrivileged(t)
	// One interface at a time: b must take a's counter slot.
	d, err := Open(Options{ConntrackEntries: 1 << 10, PolicySlots: 64, IPSetEntries: 16, MaxInterfaces: 1, RouteEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ns := testutil.NewNetNS(t)
	a, b := testutil.ConnectVeth(t, ns, "atk11a", netip.Prefix{}, ns, "atk11b", netip.Prefix{})
	denied := testpkt.MustBytes(t, testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:22"), testpkt.SYN, nil))
	run := func(idx int) uint32 {
		t.Helper()
		var ret uint32
		err := atkInNS(t, ns.Name, func() error {
			var err error
			ret, err = d.XDP().Run(&ebpf.RunOptions{Data: denied, Context: xdpMD{DataEnd: uint32(len(denied)), IngressIfindex: uint32(idx)}})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	counts := func(idx int) map[bpf.Reason]uint64 {
		t.Helper()
		c, err := d.Counters(idx)
		if err != nil {
			return nil
		}
		return c.Ingress.NonZero()
	}
	set := func(idx int, cfg Interface) {
		t.Helper()
		if err := d.SetInterface(idx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	remove := func(idx int) {
		t.Helper()
		if err := d.RemoveInterface(idx); err != nil {
			t.Fatal(err)
		}
	}
	withXDP := Interface{Kind: Host, XDP: xdpTiers}
	for _, dropTiersFirst := range []bool{false, true} {
		set(a.Index, withXDP)
		if got := run(a.Index); got != xdpDrop {
			t.Fatalf("a with XDP tiers: xdp returned %d", got)
		}
		slotA, err := d.XDPEntry(a.Index)
		if err != nil {
			t.Fatal(err)
		}
		if dropTiersFirst {
			set(a.Index, Interface{Kind: Host})
		}
		remove(a.Index)
		set(b.Index, withXDP)
		slotB, err := d.XDPEntry(b.Index)
		if err != nil {
			t.Fatal(err)
		}
		if slotB.CounterSlot != slotA.CounterSlot {
			t.Fatalf("b took counter slot %d, a had %d", slotB.CounterSlot, slotA.CounterSlot)
		}
		if got := run(a.Index); got != xdpPass {
			t.Errorf("removed a: xdp returned %d, want pass", got)
		}
		if diff := cmp.Diff(map[bpf.Reason]uint64{}, counts(b.Index)); diff != "" {
			t.Errorf("b's counters after a removed a's packet ran (-want +got):\n%s", diff)
		}
		if got := run(b.Index); got != xdpDrop {
			t.Errorf("b: xdp returned %d, want drop", got)
		}
		remove(b.Index)
		set(a.Index, withXDP)
		if got := run(a.Index); got != xdpDrop {
			t.Errorf("a again: xdp returned %d, want drop", got)
		}
		want := map[bpf.Reason]uint64{bpf.ReasonDroppedByPolicy: 1}
		if diff := cmp.Diff(want, counts(a.Index)); diff != "" {
			t.Errorf("a's counters (-want +got):\n%s", diff)
		}
		remove(a.Index)
	}
}
