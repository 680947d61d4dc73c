package datapath

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// Found by a review of the fixes for the second attack round
// (attack2_*_test.go).

// TestAttack3EchoRequestsNeverShareTheKey: pod1 (whose Ingress policy
// denies everything) pings pod2 with identifier X. pod2 sees X in the
// request and sends pod1 echo requests whose identifiers it derives from
// X (equal, one off, complemented): with the responder's port the
// complement of X, the complemented request had the key of pod1's own
// request in the reply direction and passed as established. Each must
// meet pod1's Ingress policy.
func TestAttack3EchoRequestsNeverShareTheKey(t *testing.T) {
	n := atk2NewEchoNet(t)
	e := n.e
	for _, id := range []uint16{0x1234, 0, 0xffff} {
		if !n.ping(t, id) {
			t.FailNow()
		}
		for _, other := range []uint16{id, id + 1, id - 1, id + 2, id ^ 0xffff} {
			forged := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod2, n.pod1, other, 7, false))
			e.runAt(progIngress, forged, "atk2p2") // pod2's egress policy allows anything
			e.expect(fmt.Sprintf("after pod1's ping %#x, pod2's echo request %#x reaches pod1", id, other), "atk2p1", bpf.HookEgress, forged, bpf.ReasonDroppedByPolicy)
		}
	}
}

// TestAttack3AsymmetricDoubleCount: a flow from the outside to a pod
// enters through host interface h1 (its ingress leg is bound to h1); a
// later packet of the same direction enters through host interface h2
// (ECMP), whose policy allows it, then passes the pod's TC egress as
// established, where skb->ingress_ifindex (h2) is not the leg's bound
// interface. Each packet must be added to the leg once.
func TestAttack3AsymmetricDoubleCount(t *testing.T) {
	e := atkNewEnv(t, "rvw", "rvh1", "rvh2")
	pod := netip.MustParseAddr("10.95.0.1")
	node := netip.MustParseAddr("10.95.255.1")
	e.route(atkLocal(pod, e.idx("rvw")))
	e.route(atkHostRoute(node))
	e.set("rvw", Interface{Kind: Workload, Egress: atkAllowAll(100), Ingress: atkAllowAll(200)})
	e.set("rvh1", Interface{Kind: Host, Ingress: atkHostRules(atkAllowAll(300)), Egress: atkHostRules(atkAllowAll(310))})
	e.set("rvh2", Interface{Kind: Host, Ingress: atkHostRules(atkAllowAll(400)), Egress: atkHostRules(atkAllowAll(410))})
	client := netip.MustParseAddrPort("198.51.100.7:40000")
	server := netip.AddrPortFrom(pod, 80)
	syn := atkTCP(t, client, server, testpkt.SYN, 0)
	ack := atkTCP(t, client, server, testpkt.ACK, 0)
	if !e.expect("SYN enters h1", "rvh1", bpf.HookIngress, syn, bpf.ReasonAcceptedByPolicy) ||
		!e.expect("SYN reaches the pod", "rvw", bpf.HookEgress, syn, bpf.ReasonAcceptedByPolicy) {
		t.FailNow()
	}
	key, dir := ctKeyOf(testpkt.ProtoTCP, client, server)
	v, _ := e.ctEntry(key)
	t.Logf("after the SYN: %s, client leg packets %d", atkLegs(v), atkLegOf(&v, dir).Packets)
	e.runAt(progIngress, ack, "rvh2")
	e.runAt(progEgress, ack, "rvw")
	v, _ = e.ctEntry(key)
	if got := atkLegOf(&v, dir).Packets; got != 2 {
		t.Errorf("2 packets of the client's leg, each through one ingress and one egress hook: leg counts %d", got)
	}
}

// TestAttack3FailedOpenUnpinsSettled: generation 1 settles and exits;
// its attached programs keep enforcing through the gen-1 pins. The next
// Open fails after taking its generation (here a leftover object where
// it pins; PolicySlots too large for the kernel does the same). Its
// cleanup must remove only its own pins: the running programs' policies
// stay, and new flows they allow pass.
func TestAttack3FailedOpenUnpinsSettled(t *testing.T) {
	for _, how := range []string{"leftover pin path", "PolicySlots too large"} {
		t.Run(how, func(t *testing.T) {
			opts := Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16, PinDir: atk2PinDir(t)}
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
			gen := d.Generation()
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			syn := func(i int) []byte {
				return testpkt.MustBytes(t, testpkt.TCPv4(netip.AddrPortFrom(netip.MustParseAddr("10.94.0.1"), uint16(1000+i)),
					netip.AddrPortFrom(netip.MustParseAddr("10.94.0.2"), 80), testpkt.SYN, nil))
			}
			run := func(frame []byte) uint32 {
				ret, err := attached.Run(&ebpf.RunOptions{Data: frame})
				if err != nil {
					t.Fatal(err)
				}
				return ret
			}
			time.Sleep(100 * time.Millisecond)
			if ret := run(syn(1)); ret != tcActOK {
				t.Fatalf("allowed SYN after Close, before the failed Open: %d", ret)
			}
			bad := opts
			if how == "leftover pin path" {
				if err := os.Mkdir(generationPin(opts.PinDir, bpf.MapConts, gen+1), 0o700); err != nil {
					t.Fatal(err)
				}
			} else {
				bad.PolicySlots = 0xffffffff // 32 GiB of prog array: more than this machine has, vmalloc refuses at once
			}
			if d2, err := Open(bad); err == nil {
				d2.Close()
				t.Skip("the second Open did not fail")
			} else {
				t.Logf("second Open fails as intended: %v", err)
			}
			ents, _ := os.ReadDir(opts.PinDir)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Logf("pins after the failed Open: %s", strings.Join(names, " "))
			time.Sleep(200 * time.Millisecond)
			for i := 2; i <= 3; i++ {
				if ret := run(syn(i)); ret != tcActOK {
					t.Errorf("allowed SYN %d after a later Open failed: verdict %d (settled generation %d's pins were removed)", i, ret, gen)
				}
			}
		})
	}
}

// TestAttack3UnsettledOpensLeakPins: every Open pins its generation's
// prog arrays (each PolicySlots entries, holding its continuation and
// policy programs). An Open that configures nothing (a reader, a retry
// after a configuration error) removes its pins when it closes; one that
// configured interfaces keeps them, since its programs may be attached,
// until a newer generation settles.
func TestAttack3UnsettledOpensLeakPins(t *testing.T) {
	opts := Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16, PinDir: atk2PinDir(t)}
	genPins := func() []string {
		m, err := filepath.Glob(filepath.Join(opts.PinDir, "*_gen*"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for range 10 {
		openSmall(t, opts).Close()
	}
	if m := genPins(); len(m) != 0 {
		t.Errorf("10 Open/Close cycles that configured nothing left %d generation pins: %v", len(m), m)
	}
	for range 5 {
		d := openSmall(t, opts)
		if err := d.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowTCPPort(80, 10)}); err != nil {
			t.Fatal(err)
		}
		d.Close()
	}
	// Each generation pins four arrays: the TC and the XDP object's
	// jump map and continuations.
	if m := genPins(); len(m) != 5*4 {
		t.Errorf("5 cycles that configured lo and did not settle: %d generation pins, want their 20: %v", len(m), m)
	}
	d := openSmall(t, opts)
	if err := d.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowTCPPort(80, 10)}); err != nil {
		t.Fatal(err)
	}
	if err := d.Settle(); err != nil {
		t.Fatal(err)
	}
	want := []string{generationPin(opts.PinDir, bpf.MapConts, d.Generation()), generationPin(opts.PinDir, bpf.MapPolicyJumps, d.Generation()),
		generationPin(opts.PinDir, bpf.MapXDPConts, d.Generation()), generationPin(opts.PinDir, bpf.MapXDPPolicyJumps, d.Generation())}
	if diff := cmp.Diff(want, genPins()); diff != "" {
		t.Errorf("generation pins after a Settle (-want +got):\n%s", diff)
	}
}

// TestAttack3LateSettleOfTakenOverGeneration: generation 2 takes over
// from generation 1 and settles. Generation 1, still running (the old
// agent on its way out), configures lo again (recordIndex hands it the
// record Settle emptied) and calls Settle: nothing stops an older
// generation from settling, so SettledGeneration goes back to 1. The next
// generation then treats the running generation 2 as a crashed
// predecessor and evicts its record: generation 2's attached programs
// drop lo's packets as not ready.
func TestAttack3LateSettleOfTakenOverGeneration(t *testing.T) {
	opts := Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 64, PinDir: atk2PinDir(t)}
	cfg := Interface{Kind: Workload, Egress: atkAllowAll(10), Ingress: atkAllowAll(20)}
	d1 := openSmall(t, opts)
	if err := d1.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
		t.Fatal(err)
	}
	if err := d1.SetInterface(loIfindex, cfg); err != nil {
		t.Fatal(err)
	}
	if err := d1.Settle(); err != nil {
		t.Fatal(err)
	}
	d2 := openSmall(t, opts)
	if err := d2.SetInterface(loIfindex, cfg); err != nil {
		t.Fatal(err)
	}
	if err := d2.Settle(); err != nil {
		t.Fatal(err)
	}
	if err := d1.SetInterface(loIfindex, Interface{Kind: Workload, Egress: atkAllowAll(30), Ingress: atkAllowAll(20)}); err != nil {
		t.Fatal(err)
	}
	if err := d1.Settle(); err == nil {
		t.Error("generation 1 settled after generation 2 had")
	}
	if meta, err := d2.readMeta(); err != nil || meta.SettledGeneration != d2.Generation() {
		t.Errorf("settled generation after the late Settle: %d (%v), want %d", meta.SettledGeneration, err, d2.Generation())
	}
	d3 := openSmall(t, opts)
	if err := d3.SetInterface(loIfindex, cfg); err != nil {
		t.Fatal(err)
	}
	entry, _ := d3.InterfaceEntry(loIfindex)
	t.Logf("lo's records: %d and %d", entry.Records[0].Generation, entry.Records[1].Generation)
	syn := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.94.0.1:1000"), netip.MustParseAddrPort("10.94.0.2:80"), testpkt.SYN, nil))
	ret, err := d2.TCIngress().Run(&ebpf.RunOptions{Data: syn})
	if err != nil {
		t.Fatal(err)
	}
	if ret != tcActOK {
		t.Errorf("generation 2 (attached, settled) drops lo's SYN after generation 3's SetInterface: verdict %d", ret)
	}
}

// TestAttack3DeleteDuringDrainResurrects: Conntrack().Delete during a
// drain (ResizeConntrack, or Settle finishing one) deletes k from the
// draining table and then the live one, while maps.Drain may have read
// k's chunk already and write it into the live table afterwards. A flow
// deleted during the drain must stay deleted.
func TestAttack3DeleteDuringDrainResurrects(t *testing.T) {
	d := openSmall(t, Options{ConntrackEntries: 1 << 16, MaxInterfaces: 4, PolicySlots: 16})
	ct := d.Conntrack()
	const n = 40000
	keys := make([]conntrack.Key, n)
	for i := range keys {
		k, _, err := conntrack.NewKey(testpkt.ProtoUDP, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 1000),
			netip.MustParseAddrPort("10.2.0.1:53"))
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
		if err := ct.Update(k, conntrack.Value{}, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- d.ResizeConntrack(1 << 17) }()
	var deleted []conntrack.Key
	for i := n - 1; i >= 0; i-- {
		if err := ct.Delete(keys[i]); err == nil {
			deleted = append(deleted, keys[i])
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	back := 0
	for _, k := range deleted {
		if _, err := ct.Lookup(k); err == nil {
			back++
		}
	}
	if back > 0 {
		t.Errorf("%d of %d flows deleted during the drain are back in the live table", back, len(deleted))
	}
}
