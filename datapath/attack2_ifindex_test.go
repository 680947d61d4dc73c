package datapath

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
)

// atk2AddPodVeth attaches a pod the way CNI plugins that build the veth
// pair inside the pod's namespace do: a fresh namespace (the pod's),
// a veth pair in it, and the host end moved into the env's namespace
// under name. The host end keeps the index it got in the pod's namespace
// when that index is free in the env's, which is how a later pod's
// interface comes to reuse an earlier pod's index without anyone asking
// for it. It returns the host end's index in the env's namespace.
func atk2AddPodVeth(t *testing.T, e *atkEnv, name string) uint32 {
	t.Helper()
	pod := testutil.NewNetNS(t)
	if err := pod.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0"}); err != nil {
		t.Fatalf("add veth %s in the pod: %v", name, err)
	}
	l, err := pod.Handle.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	target, err := netns.GetFromName(e.ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := pod.Handle.LinkSetNsFd(l, int(target)); err != nil {
		t.Fatalf("move %s to the node: %v", name, err)
	}
	moved, err := e.ns.Handle.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	e.ifindex[name] = uint32(moved.Attrs().Index)
	return e.ifindex[name]
}

// atk2ReusedIfindex establishes a flow from an old workload to a
// server, deletes the old workload (RemoveInterface, its route and its
// veth go) and attaches a new one, at newAddr, whose host-side veth the
// kernel gives the old one's ifindex; the new workload's policies deny
// everything but DNS out. It skips the test when the kernel picks
// another index.
func atk2ReusedIfindex(t *testing.T, newAddr netip.Addr) (e *atkEnv, client, server netip.AddrPort) {
	e = atkNewEnv(t)
	oldPod := atk2OldPodAddr()
	server = netip.AddrPortFrom(netip.MustParseAddr("10.89.0.2"), 80)
	client = netip.AddrPortFrom(oldPod, 40000)

	oldIdx := atk2AddPodVeth(t, e, "atk2old")
	srvIdx := atk2AddPodVeth(t, e, "atk2srv")
	e.route(atkLocal(oldPod, oldIdx))
	e.route(atkLocal(server.Addr(), srvIdx))
	e.set("atk2old", Interface{Kind: Workload, Egress: atkAllowAll(100), Ingress: atkRules(199)})
	e.set("atk2srv", Interface{Kind: Workload, Egress: atkAllowAll(200), Ingress: atkRules(299,
		polprog.Rule{ID: 201, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}})})
	(&atkSpoofNet{e: e}).handshake(t, client, server, "atk2old", "atk2srv")

	// The old workload goes.
	if err := e.d.RemoveInterface(int(oldIdx)); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Routes().Delete(netip.PrefixFrom(oldPod, 32)); err != nil {
		t.Fatal(err)
	}
	old, err := e.ns.Handle.LinkByName("atk2old")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ns.Handle.LinkDel(old); err != nil {
		t.Fatal(err)
	}

	// A new one comes, allowed to send only DNS and to receive nothing.
	newIdx := atk2AddPodVeth(t, e, "atk2new")
	if newIdx != oldIdx {
		t.Skipf("the new workload's interface got ifindex %d, not the old %d: the kernel did not reuse it here", newIdx, oldIdx)
	}
	t.Logf("the new workload's interface reuses ifindex %d", newIdx)
	e.route(atkLocal(newAddr, newIdx))
	e.set("atk2new", Interface{Kind: Workload, Ingress: atkRules(399), Egress: atkRules(499,
		polprog.Rule{ID: 401, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(53)}})})
	return e, client, server
}

// TestAttack2ReusedIfindexInheritsFlows: a new workload whose host-side
// veth reuses a deleted workload's ifindex (as it does, unasked, when a
// CNI plugin builds the pair in the pod's namespace and moves the host
// end out) must not inherit the old workload's flows. The datapath skips
// the reverse-path check and policy for packets conntrack passes, on the
// premise that "they arrived at the interface their leg was approved
// on", which an ifindex now naming another interface no longer makes
// true.
//
// With another address, the new workload sends the old flow's packets
// with the old workload's address as source: that source is routed to no
// interface, so they must be DROPPED_RPF. With the old address (IPAM
// hands freed addresses out again), the server's data on the old
// connection must meet the new workload's Ingress policy, and the new
// workload's packets on it its Egress policy, as they do when the new
// interface has another ifindex (TestAttackReusedAddressMeetsNewPolicy).
func TestAttack2ReusedIfindexInheritsFlows(t *testing.T) {
	t.Run("another address", func(t *testing.T) {
		newPod := netip.MustParseAddr("10.89.0.9")
		e, client, server := atk2ReusedIfindex(t, newPod)
		// Its own address meets its policy, as it should.
		e.expect("the new workload's own SYN", "atk2new", bpf.HookIngress,
			atkTCP(t, netip.AddrPortFrom(newPod, 40000), server, testpkt.SYN, 0), bpf.ReasonDroppedByPolicy)
		for _, s := range []struct {
			name  string
			flags testpkt.TCPFlags
		}{
			{"ACK", testpkt.ACK},
			{"data", testpkt.PSH | testpkt.ACK},
			{"RST", testpkt.RST | testpkt.ACK},
		} {
			e.expect("the new workload sends the old flow's "+s.name+" as the old address", "atk2new", bpf.HookIngress,
				atkTCP(t, client, server, s.flags, 64), bpf.ReasonDroppedRPF)
		}
	})
	t.Run("the old address", func(t *testing.T) {
		e, client, server := atk2ReusedIfindex(t, atk2OldPodAddr())
		before := e.hits(399)
		e.expect("the server's data on the old connection reaches the new workload", "atk2new", bpf.HookEgress,
			atkTCP(t, server, client, testpkt.PSH|testpkt.ACK, 100), bpf.ReasonDroppedByPolicy)
		if got := e.hits(399) - before; got != 1 {
			t.Errorf("the new workload's Ingress tier end hit %d times, want once", got)
		}
		e.expect("the new workload sends on the old connection", "atk2new", bpf.HookIngress,
			atkTCP(t, client, server, testpkt.PSH|testpkt.ACK, 100), bpf.ReasonDroppedByPolicy)
	})
}

// atk2OldPodAddr is the old workload's address in atk2ReusedIfindex.
func atk2OldPodAddr() netip.Addr { return netip.MustParseAddr("10.89.0.1") }
