package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestSockDestroyStale: a pod's connected UDP sockets to a ClusterIP are
// spread over both backends; once a Sync removes b1, DestroyStaleSockets
// in the pod's namespace aborts exactly the sockets sent to b1 (their
// next receive fails with ECONNABORTED), while those on b2 go on
// being answered by it. In the node's namespace, which holds none of
// them, it aborts nothing, and a second run in the pod's finds nothing
// left to abort.
func TestSockDestroyStale(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			var ops []sockOp
			for range 16 {
				ops = append(ops, sockOp{Kind: sockUDPHold, Dest: netip.AddrPortFrom(netip.MustParseAddr(fam.clusterIP), sockUDPPort)})
			}
			c := startSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, ops, true)
			c.ready(t)
			svcs := e.services()
			web := svcs["web"]
			web.Backends = web.Backends[1:]
			svcs["web"] = web
			if err := e.d.Services().Sync(svcs); err != nil {
				t.Fatal(err)
			}
			var inNode, inPod, again int
			if err := e.node.NS.Do(func() (err error) { inNode, err = e.d.DestroyStaleSockets(); return }); err != nil {
				t.Fatal(err)
			}
			if err := e.client.NS.Do(func() (err error) {
				if inPod, err = e.d.DestroyStaleSockets(); err != nil {
					return err
				}
				again, err = e.d.DestroyStaleSockets()
				return err
			}); err != nil {
				t.Fatal(err)
			}
			c.release(t)
			res := c.wait(t)
			onB1 := 0
			for i, r := range res {
				switch r.Reply {
				case "b1":
					onB1++
					if r.After != syscall.ECONNABORTED {
						t.Errorf("socket %d on the removed b1: after the destroy errno %v, reply %q; want ECONNABORTED", i, r.After, r.AfterReply)
					}
				case "b2":
					if r.After != 0 || r.AfterReply != "b2" {
						t.Errorf("socket %d on b2: after the destroy errno %v, reply %q; want b2's answer", i, r.After, r.AfterReply)
					}
				default:
					t.Errorf("socket %d: errno %v, reply %q before the destroy", i, r.Errno, r.Reply)
				}
			}
			if onB1 == 0 || onB1 == len(res) {
				t.Fatalf("%d of %d sockets on b1: the test needs both backends", onB1, len(res))
			}
			if inPod != onB1 || inNode != 0 || again != 0 {
				t.Errorf("aborted %d in the pod's namespace (want %d), %d in the node's (want 0), %d on a second run (want 0)",
					inPod, onB1, inNode, again)
			}
		})
	}
}

// TestSockDestroyUnsupported: where the kernel lacks bpf_sock_destroy (the
// probe made to say so), DestroyStaleSockets says so with
// ebpf.ErrNotSupported and aborts nothing; on this kernel the probe finds
// the kfunc.
func TestSockDestroyUnsupported(t *testing.T) {
	testutil.RequirePrivileged(t)
	if err := haveSockDestroy(); err != nil {
		t.Fatalf("probe on this kernel: %v", err)
	}
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	probe := haveSockDestroy
	haveSockDestroy = func() error { return fmt.Errorf("kfunc bpf_sock_destroy: %w", ebpf.ErrNotSupported) }
	defer func() { haveSockDestroy = probe }()
	if n, err := d.DestroyStaleSockets(); !errors.Is(err, ebpf.ErrNotSupported) || n != 0 {
		t.Errorf("DestroyStaleSockets without the kfunc = %d, %v; want 0 and ErrNotSupported", n, err)
	}
}
