package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
)

// atk2OpenFDs counts this process's open file descriptors, once the
// finalizers of handles earlier tests dropped have run: cilium/ebpf
// closes an unreachable handle's descriptor from a finalizer, which would
// otherwise change the count under a test.
func atk2OpenFDs(t *testing.T) int {
	t.Helper()
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	return len(atk2FDs(t))
}

// atk2FDs returns what each of this process's descriptors refers to.
func atk2FDs(t *testing.T) map[string]string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]string{}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue // the directory's own descriptor, closed by now
		}
		targets[fd.Name()] = target
	}
	return targets
}

// TestAttack2ConntrackMapClosed: a conntrack.Map made from the array of
// tables owns the handle it opens on the live table, and Close releases
// it. After Close the Map must refuse operations (its own error says
// "conntrack map is closed") and hold no descriptor: an operation after
// Close must neither succeed nor open a handle nobody closes.
func TestAttack2ConntrackMapClosed(t *testing.T) {
	h := newHarness(t)
	before := atk2OpenFDs(t)
	m, err := conntrack.NewMap(h.d.objs.SlCtTables)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Count(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if n := atk2OpenFDs(t); n != before {
		t.Errorf("after Close %d descriptors are open, %d before NewMap", n, before)
	}
	k, _ := ctKeyOf(testpkt.ProtoUDP, netip.MustParseAddrPort("10.1.1.1:1"), netip.MustParseAddrPort("10.1.1.2:2"))
	ops := map[string]func() error{
		"Count":  func() error { _, err := m.Count(); return err },
		"Update": func() error { return m.Update(conntrack.Key(k), conntrack.Value{}, ebpf.UpdateAny) },
		"Lookup": func() error { _, err := m.Lookup(conntrack.Key(k)); return err },
	}
	for _, name := range []string{"Count", "Update", "Lookup"} {
		err, panicked := atkCall(ops[name])
		if panicked || err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Errorf("%s after Close: %v (panicked %t), want the closed Map's error", name, err, panicked)
		}
	}
	if n := atk2OpenFDs(t); n != before {
		t.Errorf("after operations on the closed Map %d descriptors are open, %d before NewMap", n, before)
	}
	if _, ok := h.ctEntry(k); ok {
		t.Error("Update on the closed Map wrote the live table")
	}
	// An agent keeps its Map: keep this one reachable until the count, or
	// a finalizer could close what it leaked.
	runtime.KeepAlive(m)
}

// TestAttack2ConntrackMapAcrossResizes uses the Datapath's conntrack.Map
// from several goroutines while the table is resized back and forth:
// every Update, Lookup and Count must succeed (Lookups of the keys the
// goroutine wrote find them once a resize is over: they may miss only
// while their entry sits in the draining table), and once the Map has
// caught up with the last table, the process holds no more descriptors
// than before.
func TestAttack2ConntrackMapAcrossResizes(t *testing.T) {
	h := newHarnessWith(t, Options{ConntrackEntries: 1 << 10})
	ct := h.d.Conntrack()
	if _, err := ct.Count(); err != nil {
		t.Fatal(err)
	}
	before := atk2OpenFDs(t)
	var stop atomic.Bool
	var wg sync.WaitGroup
	const workers = 6
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				k, _ := ctKeyOf(testpkt.ProtoUDP, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 60, byte(w), byte(i % 200)}), 1000), netip.MustParseAddrPort("10.61.0.1:53"))
				var err error
				switch i % 3 {
				case 0:
					err = ct.Update(conntrack.Key(k), conntrack.Value{Type: bpf.CTNormal, Created: uint64(i)}, ebpf.UpdateAny)
				case 1:
					_, err = ct.Lookup(conntrack.Key(k))
					if errors.Is(err, ebpf.ErrKeyNotExist) {
						err = nil
					}
				case 2:
					_, err = ct.Count()
				}
				if err != nil {
					errs[w] = fmt.Errorf("operation %d: %w", i, err)
					return
				}
			}
		}()
	}
	var resizeErr error
	for i := range 60 {
		if resizeErr = h.d.ResizeConntrack(uint32(1<<10 + (i%2)*1<<11)); resizeErr != nil {
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	if resizeErr != nil {
		t.Fatal(resizeErr)
	}
	for w, err := range errs {
		if err != nil {
			t.Errorf("worker %d: %v", w, err)
		}
	}
	if _, err := ct.Count(); err != nil {
		t.Fatal(err)
	}
	// The Map writes the table the programs use.
	k, _ := ctKeyOf(testpkt.ProtoUDP, netip.MustParseAddrPort("10.62.0.1:1"), netip.MustParseAddrPort("10.62.0.2:2"))
	if err := ct.Update(conntrack.Key(k), conntrack.Value{Type: bpf.CTNormal}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.ctEntry(k); !ok {
		t.Error("an Update after the resizes did not reach the live table")
	}
	if ct.MaxEntries() != int(h.d.state.ct.MaxEntries()) {
		t.Errorf("the Map follows a table of %d entries, the live one has %d", ct.MaxEntries(), h.d.state.ct.MaxEntries())
	}
	if n := atk2OpenFDs(t); n != before {
		t.Errorf("after the resizes %d descriptors are open, %d before", n, before)
	}
}

// TestAttack2DeleteDuringDrain: the conntrack table is mid-resize (a
// crash between pinning the new table and draining the old one, resumed
// by the next Open until Settle). A flow's packet moves its entry into
// the live table, where lookups find it; the agent then deletes the flow
// through Conntrack().Delete, which succeeds. A deleted flow must stay
// deleted: after Settle finishes the drain, the entry must not be back,
// and the flow's next reply must meet policy again (which denies it),
// not pass as established.
func TestAttack2DeleteDuringDrain(t *testing.T) {
	b := interruptedResize(t, 50)
	b.putPolicy(b.lo.egress, allowDstPorts())
	victim := replyFrames(t, 1)[0]
	if ret := b.run(progEgress, victim); ret != tcActOK {
		t.Fatalf("the victim flow's reply during the drain: verdict %d", ret)
	}
	key, _ := ctKeyOf(testpkt.ProtoTCP, resizeClient(0), resizeServer)
	if _, err := b.d.Conntrack().Lookup(conntrack.Key(key)); err != nil {
		t.Fatalf("the moved entry is not in the live table: %v", err)
	}
	if err := b.d.Conntrack().Delete(conntrack.Key(key)); err != nil {
		t.Fatalf("delete the victim flow: %v", err)
	}
	if err := b.d.Settle(); err != nil {
		t.Fatal(err)
	}
	if v, err := b.d.Conntrack().Lookup(conntrack.Key(key)); err == nil {
		t.Errorf("the deleted flow is back after the drain: %+v", v)
	}
	before := b.counters(loIfindex, bpf.HookEgress)
	ret := b.run(progEgress, victim)
	if got := reasonDelta(before, b.counters(loIfindex, bpf.HookEgress)); ret != tcActShot || got[bpf.ReasonDroppedByPolicy] != 1 {
		t.Errorf("the deleted flow's reply after the drain: verdict %d, counted %v; want TC_ACT_SHOT by policy", ret, got)
	}
}

// TestAttack2CloseReleasesEverything opens a datapath, configures
// interfaces (replacing and removing some), resizes its conntrack table,
// reads through every handle, and closes it, several times: Close must
// give back every descriptor the Datapath opened, so that an agent that
// reopens its datapath (after a configuration error, say) does not run
// out of them. Policies stay installed only through the prog array,
// which Close releases too.
func TestAttack2CloseReleasesEverything(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, pinned := range []bool{false, true} {
		t.Run(map[bool]string{false: "unpinned", true: "pinned"}[pinned], func(t *testing.T) {
			opts := Options{ConntrackEntries: 1 << 10, MaxInterfaces: 8, PolicySlots: 64}
			if pinned {
				opts.PinDir = filepath.Join(testutil.TempBPFFS(t), "sluice")
			}
			cycle := func() {
				d, err := Open(opts)
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					if err := d.Close(); err != nil {
						t.Error(err)
					}
				}()
				for i := range 4 {
					if err := d.SetInterface(100+i, Interface{Kind: Workload, Egress: allowTCPPort(80, 10), Ingress: allowAllRules}); err != nil {
						t.Fatal(err)
					}
				}
				if err := d.SetInterface(100, Interface{Kind: Host, Ingress: allowTCPPort(22, 11)}); err != nil {
					t.Fatal(err)
				}
				if err := d.RemoveInterface(101); err != nil {
					t.Fatal(err)
				}
				if err := d.ResizeConntrack(1 << 11); err != nil {
					t.Fatal(err)
				}
				if err := d.Settle(); err != nil {
					t.Fatal(err)
				}
				if _, err := d.Conntrack().Count(); err != nil {
					t.Fatal(err)
				}
				if _, err := d.Counters(100); err != nil {
					t.Fatal(err)
				}
				if _, err := d.RuleHits().All(); err != nil {
					t.Fatal(err)
				}
			}
			cycle() // the first Open creates the pins; later ones reuse them
			before := atk2OpenFDs(t)
			for range 3 {
				cycle()
			}
			if n := atk2OpenFDs(t); n != before {
				t.Errorf("after 3 more Open/Close cycles %d descriptors are open, %d before", n, before)
			}
		})
	}
}
