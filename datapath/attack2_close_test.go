package datapath

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
)

// TestAttack2PoliciesOutliveClose: Close "releases this process's
// programs and handles. With Options.PinDir, attached programs, the
// policies they run and the pinned maps stay in the kernel, so
// enforcement continues until another process takes over". An attached
// program (here a second handle on TCIngress, as a TCX link holds it)
// must therefore go on deciding new flows by the interface's policy
// after Close: a SYN the policy allows passes, one it denies drops. The
// kernel empties a prog array once no descriptor or pin of it is left
// (its policies and continuations included), so keeping them needs more
// than the programs' own references. Without a pin directory new flows
// must fail closed.
func TestAttack2PoliciesOutliveClose(t *testing.T) {
	for _, pinned := range []bool{false, true} {
		t.Run(map[bool]string{false: "unpinned", true: "pinned"}[pinned], func(t *testing.T) {
			opts := Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16}
			if pinned {
				opts.PinDir = atk2PinDir(t)
			}
			d := openSmall(t, opts)
			if err := d.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
				t.Fatal(err)
			}
			if err := d.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowTCPPort(80, 10)}); err != nil {
				t.Fatal(err)
			}
			if err := d.Settle(); err != nil {
				t.Fatal(err)
			}
			attached, err := d.TCIngress().Clone()
			if err != nil {
				t.Fatal(err)
			}
			defer attached.Close()
			syn := func(i int, port uint16) []byte {
				return testpkt.MustBytes(t, testpkt.TCPv4(netip.AddrPortFrom(netip.MustParseAddr("10.94.0.1"), uint16(1000+i)),
					netip.AddrPortFrom(netip.MustParseAddr("10.94.0.2"), port), testpkt.SYN, nil))
			}
			run := func(frame []byte) uint32 {
				ret, err := attached.Run(&ebpf.RunOptions{Data: frame})
				if err != nil {
					t.Fatal(err)
				}
				return ret
			}
			if ret := run(syn(0, 80)); ret != tcActOK {
				t.Fatalf("an allowed SYN before Close: verdict %d", ret)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			// The kernel clears a prog array in deferred work: give it
			// time to have done so, if it does.
			time.Sleep(200 * time.Millisecond)
			// Without a pin nothing keeps the policy slots past Close:
			// new flows then fail closed, as Close documents.
			want := map[bool]uint32{true: tcActOK, false: tcActShot}[pinned]
			for i := 1; i <= 3; i++ {
				if ret := run(syn(i, 80)); ret != want {
					t.Errorf("an allowed SYN %d after Close: verdict %d, want %d", i, ret, want)
				}
			}
			if ret := run(syn(9, 22)); ret != tcActShot {
				t.Errorf("a denied SYN after Close: verdict %d, want TC_ACT_SHOT", ret)
			}
			if pinned {
				// The counters are pinned: a later Open reads what the
				// closed generation's program counted.
				later := openSmall(t, opts)
				c, err := later.Counters(loIfindex)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("lo's egress counters (its TC ingress hook): %v", c.Egress.NonZero())
				if n := c.Egress[bpf.ReasonDroppedNoPolicy]; n != 0 {
					t.Errorf("%d SYNs after Close were dropped as no_policy: the policy slots were emptied", n)
				}
			}
		})
	}
}

// atk2PinDir is a pin directory on a private bpffs.
func atk2PinDir(t *testing.T) string {
	return filepath.Join(testutil.TempBPFFS(t), "sluice")
}
