package datapath

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
)

// TestServiceMapsFromAllocating opens a pin directory whose backend slots
// and backends maps allocate each entry (BPF_F_NO_PREALLOC), as releases
// before they were preallocated pinned them, with a service programmed:
// the registry migrates both into preallocated maps, entries and all, and
// a new flow to the service is translated to its backend.
func TestServiceMapsFromAllocating(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	opts := Options{PinDir: pinDir, ConntrackEntries: 1 << 12, BackendEntries: 256}
	const frontend, backend = "10.96.0.10:80", "10.1.0.9:8080"

	first := newHarnessWith(t, opts)
	if err := first.d.Services().Sync(map[string]nat.Service{"web": oneBackend(frontend, backend, nat.ProtoTCP)}); err != nil {
		t.Fatal(err)
	}
	first.d.Close()

	// Rewrite both pins as an earlier release left them.
	for _, name := range []string{bpf.MapBackendSlots, bpf.MapBackends} {
		path := filepath.Join(pinDir, name+"_v1")
		pinned, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if pinned.Flags()&unix.BPF_F_NO_PREALLOC != 0 {
			t.Fatalf("%s: pinned with BPF_F_NO_PREALLOC by this release", name)
		}
		var keys, vals [][]byte
		var k, v []byte
		for it := pinned.Iterate(); it.Next(&k, &v); {
			keys, vals = append(keys, k), append(vals, v)
			k, v = nil, nil
		}
		if len(keys) == 0 {
			t.Fatalf("%s: no entries after a Sync", name)
		}
		old, err := ebpf.NewMap(&ebpf.MapSpec{Name: name + "_v1", Type: pinned.Type(), KeySize: pinned.KeySize(),
			ValueSize: pinned.ValueSize(), MaxEntries: pinned.MaxEntries(), Flags: unix.BPF_F_NO_PREALLOC})
		if err != nil {
			t.Fatal(err)
		}
		for i := range keys {
			if err := old.Put(keys[i], vals[i]); err != nil {
				t.Fatal(err)
			}
		}
		pinned.Close()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := old.Pin(path); err != nil {
			t.Fatal(err)
		}
		old.Close()
	}

	h := &lbHarness{harness: newHarnessWith(t, opts), t: t}
	slots := stubSlots{h.setPolicy(allowDstPorts(lbPorts...)), h.setPolicy(allowDstPorts(lbPorts...))}
	h.lo = slots
	h.setIface(loIfindex, bpf.IfaceWorkload|bpf.IfaceReady, slots, loCounterSlot)
	for _, name := range []string{bpf.MapBackendSlots, bpf.MapBackends} {
		m := h.d.state.byName[name]
		if m.Flags()&unix.BPF_F_NO_PREALLOC != 0 {
			t.Errorf("%s: still allocating after the upgrade", name)
		}
	}
	const client = "10.200.0.7:40100"
	got := h.counted(bpf.HookIngress, tcpSeg(client, frontend, testpkt.SYN, 100, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	wantEndpoints(t, "client's SYN", got, client, backend)
}
