package datapath

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/maps"
)

// resizeServer is the server of the flows the resize tests open.
var resizeServer = netip.MustParseAddrPort("10.12.0.1:80")

// resizeClient is the client of flow i.
func resizeClient(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 13, byte(i >> 8), byte(i)}), uint16(20000+i%40000))
}

// openFlows runs a SYN of n flows at lo's ingress hook, which allows them,
// then makes lo's egress hook deny everything: from then on a reply passes
// only if conntrack finds its flow.
func (h *harness) openFlows(n int) {
	h.t.Helper()
	for i := range n {
		frame := testpkt.MustBytes(h.t, testpkt.TCPv4(resizeClient(i), resizeServer, testpkt.SYN, nil))
		if ret := h.run(progIngress, frame); ret != tcActOK {
			h.t.Fatalf("SYN %d: verdict %d", i, ret)
		}
	}
	h.putPolicy(h.lo.egress, allowDstPorts())
}

// replyFrames are the server's replies of the first n flows.
func replyFrames(tb testing.TB, n int) [][]byte {
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = testpkt.MustBytes(tb, testpkt.TCPv4(resizeServer, resizeClient(i), testpkt.ACK, nil))
	}
	return frames
}

// replyLoad sends replies of the flows at lo's egress hook until stop is
// closed, and reports how many it sent and the first failure.
func (h *harness) replyLoad(frames [][]byte, stop <-chan struct{}) (sent *int, wait func() error) {
	var n int
	var err error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ret, rerr := h.program(progEgress).Run(&ebpf.RunOptions{Data: frames[i%len(frames)]})
			n++
			if rerr != nil || ret != tcActOK {
				err = errors.Join(rerr, errors.New("a reply of an established flow was dropped"))
				return
			}
		}
	}()
	return &n, func() error { wg.Wait(); return err }
}

// TestResizeConntrackKeepsFlows grows the conntrack table from 64k to
// 256k entries while replies of 20,000 established flows, which lo's
// egress policy would deny, keep arriving: every reply passes as
// established, none reaches policy, and every flow is in the new table.
func TestResizeConntrackKeepsFlows(t *testing.T) {
	for _, pinned := range []bool{false, true} {
		name := map[bool]string{false: "unpinned", true: "pinned"}[pinned]
		t.Run(name, func(t *testing.T) {
			opts := Options{ConntrackEntries: 1 << 16}
			if pinned {
				opts.PinDir = filepath.Join(testutil.TempBPFFS(t), "sluice")
			}
			h := newHarnessWith(t, opts)
			const flows = 20000
			h.openFlows(flows)
			before := h.counters(loIfindex, bpf.HookEgress)

			stop := make(chan struct{})
			sent, wait := h.replyLoad(replyFrames(t, flows), stop)
			if err := h.d.ResizeConntrack(1 << 18); err != nil {
				t.Fatal(err)
			}
			close(stop)
			if err := wait(); err != nil {
				t.Fatal(err)
			}

			got := reasonDelta(before, h.counters(loIfindex, bpf.HookEgress))
			if got[bpf.ReasonAcceptedEstablished] != uint64(*sent) || len(got) != 1 {
				t.Errorf("egress counters while resizing %v, want only %d established", got, *sent)
			}
			ct := h.d.Conntrack()
			if n, err := ct.Count(); err != nil || n != flows {
				t.Errorf("new table holds %d entries (%v), want %d", n, err, flows)
			}
			if ct.MaxEntries() != 1<<18 {
				t.Errorf("new table has room for %d, want %d", ct.MaxEntries(), 1<<18)
			}
			var id uint32
			if err := h.d.objs.SlCtTables.Lookup(uint32(bpf.CTTableDraining), &id); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Errorf("draining slot after the resize: id %d, %v", id, err)
			}
			t.Logf("%d replies during the resize", *sent)
			if pinned {
				entries, err := os.ReadDir(opts.PinDir)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range entries {
					if strings.HasSuffix(e.Name(), "_draining") || strings.HasSuffix(e.Name(), "_old") {
						t.Errorf("pin %s left behind", e.Name())
					}
				}
				pin, err := ebpf.LoadPinnedMap(filepath.Join(opts.PinDir, "sl_ct_v1"), nil)
				if err != nil {
					t.Fatal(err)
				}
				defer pin.Close()
				if pin.MaxEntries() != 1<<18 {
					t.Errorf("pinned table has room for %d, want %d", pin.MaxEntries(), 1<<18)
				}
			}
		})
	}
}

// TestOpenKeepsTableSizeUntilSettle reopens pinned state with a bigger
// conntrack size: Open keeps the table at its size, since the previous
// process's programs may still write it, and Settle grows it with every
// entry.
func TestOpenKeepsTableSizeUntilSettle(t *testing.T) {
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	a := newHarnessWith(t, Options{PinDir: pinDir, ConntrackEntries: 1 << 12})
	const flows = 500
	a.openFlows(flows)
	if err := a.d.Close(); err != nil {
		t.Fatal(err)
	}

	b := newHarnessWith(t, Options{PinDir: pinDir, ConntrackEntries: 1 << 14})
	if got := b.d.Conntrack().MaxEntries(); got != 1<<12 {
		t.Errorf("after Open the table has room for %d, want the pinned %d", got, 1<<12)
	}
	b.putPolicy(b.lo.egress, allowDstPorts())
	for i, frame := range replyFrames(t, flows) {
		if ret := b.run(progEgress, frame); ret != tcActOK {
			t.Fatalf("reply %d through the new programs: verdict %d", i, ret)
		}
	}
	if err := b.d.Settle(); err != nil {
		t.Fatal(err)
	}
	ct := b.d.Conntrack()
	if n, err := ct.Count(); err != nil || n != flows || ct.MaxEntries() != 1<<14 {
		t.Errorf("after Settle: %d entries (%v) in room for %d; want %d in %d", n, err, ct.MaxEntries(), flows, 1<<14)
	}
}

// interruptedResize opens flows TCP flows on a pinned datapath of 4096
// conntrack entries, then crashes a resize to 8192 halfway: the registry
// has repinned the table as draining and pinned an empty one, and nothing
// more happened. It returns the next Open, which found the draining table.
func interruptedResize(t *testing.T, flows int) *harness {
	t.Helper()
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	a := newHarnessWith(t, Options{PinDir: pinDir, ConntrackEntries: 1 << 12})
	a.openFlows(flows)
	p := a.d.state.ctParams
	p.MaxEntries = 1 << 13
	live, report, err := maps.OpenOrCreate(p, maps.WithLiveResize())
	if err != nil {
		t.Fatal(err)
	}
	if report.Draining == nil {
		t.Fatal("no draining table")
	}
	live.Close()
	report.Draining.Close()
	if err := a.d.Close(); err != nil {
		t.Fatal(err)
	}
	b := newHarnessWith(t, Options{PinDir: pinDir, ConntrackEntries: 1 << 13})
	if b.d.state.draining == nil {
		t.Fatal("Open did not find the draining table")
	}
	return b
}

// TestOpenResumesInterruptedResize leaves a resize half done, as a crash
// between pinning the new table and draining the old one would: the next
// Open looks the old table up on a miss, so established flows keep
// passing, and Settle finishes the drain.
func TestOpenResumesInterruptedResize(t *testing.T) {
	const flows = 300
	b := interruptedResize(t, flows)
	b.putPolicy(b.lo.egress, allowDstPorts())
	for i, frame := range replyFrames(t, flows) {
		if ret := b.run(progEgress, frame); ret != tcActOK {
			t.Fatalf("reply %d during the interrupted resize: verdict %d", i, ret)
		}
	}
	if err := b.d.Settle(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.d.Conntrack().Count(); err != nil || n != flows {
		t.Errorf("after Settle the table holds %d entries (%v), want %d", n, err, flows)
	}
	if _, err := os.Stat(filepath.Join(b.d.state.pinDir, "sl_ct_v1_draining")); !os.IsNotExist(err) {
		t.Errorf("draining pin after Settle: %v", err)
	}
}

// TestResizeClientsDistinct guards the tests' arithmetic: resizeClient
// gives distinct flows for the counts the tests use.
func TestResizeClientsDistinct(t *testing.T) {
	seen := map[netip.AddrPort]bool{}
	for i := range 20000 {
		c := resizeClient(i)
		if seen[c] {
			t.Fatalf("client %d repeats %v", i, c)
		}
		seen[c] = true
	}
}

// TestResizeConntrackRealStream grows the conntrack table from 64k to 256k
// entries under a real TCP stream whose replies the server's egress
// policy would deny: the stream loses no byte and sees no reset, and
// nothing at the server's hooks reaches policy while the table moves.
func TestResizeConntrackRealStream(t *testing.T) {
	node, client, server := nodePair(t, "10.71.0.1", "10.71.0.2")
	d, err := Open(Options{ConntrackEntries: 1 << 16, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.SetInterfaces(map[int]Interface{
		client.HostIfindex: {Kind: Workload, Egress: allowAllRules, Ingress: denyAllRules},
		server.HostIfindex: {Kind: Workload, Ingress: allowTCPPort(80, 10), Egress: denyAllRules},
	})
	if err != nil {
		t.Fatal(err)
	}
	attachWorkload(t, node, d, client)
	attachWorkload(t, node, d, server)
	// Load the table with flows of other clients, so that the drain has
	// entries to move while the stream runs.
	for i := range 30000 {
		k, _ := ctKeyOf(testpkt.ProtoUDP, resizeClient(i), netip.MustParseAddrPort("10.71.9.9:53"))
		if err := d.Conntrack().Update(conntrack.Key(k), conntrack.Value{Type: bpf.CTNormal}, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	stream := startEchoStream(t, client, server, "10.71.0.2:80")
	time.Sleep(50 * time.Millisecond)
	before, err := d.Counters(server.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ResizeConntrack(1 << 18); err != nil {
		t.Fatal(err)
	}
	after, err := d.Counters(server.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	got := stream.Stop()
	for name, c := range map[string][2]HookCounters{"ingress": {before.Ingress, after.Ingress}, "egress": {before.Egress, after.Egress}} {
		delta := reasonDelta(c[0], c[1])
		for r, n := range delta {
			// The namespaces' own IPv6 (neighbour discovery) passes and counts too.
			if r != bpf.ReasonAcceptedEstablished && r != bpf.ReasonNDPassed {
				t.Errorf("server %s counted %d packets as %v during the resize", name, n, r)
			}
		}
		if delta[bpf.ReasonAcceptedEstablished] == 0 {
			t.Errorf("server %s saw no packet of the stream during the resize", name)
		}
	}
	if n, err := d.Conntrack().Count(); err != nil || n < 30001 || d.Conntrack().MaxEntries() != 1<<18 {
		t.Errorf("after the resize: %d entries (%v) in room for %d", n, err, d.Conntrack().MaxEntries())
	}
	t.Logf("stream %d bytes each way across the resize", got)
}
