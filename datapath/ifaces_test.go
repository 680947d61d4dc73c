package datapath

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
)

// TestTwoWorkloadInterfaces follows a connection between two workloads on
// one host: it crosses the sender's ingress hook and the receiver's egress
// hook, and each hook's policy must approve it on its own, while a third
// interface cannot ride on their approval with spoofed packets.
func TestTwoWorkloadInterfaces(t *testing.T) {
	h := newHarness(t)
	ns := testutil.NewNetNS(t)
	ifindex := map[string]uint32{}
	for _, name := range []string{"pod1", "pod2", "pod3"} {
		// A veth pair inside the test's namespace: the test only needs
		// devices that exist, and dummy may not be built.
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
		if err := ns.Handle.LinkAdd(veth); err != nil {
			t.Fatalf("add veth %s: %v", name, err)
		}
		link, err := ns.Handle.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		ifindex[name] = uint32(link.Attrs().Index)
	}
	slotAllow80 := h.setPolicy(allowDstPorts(80))
	slotDenyAll := h.setPolicy(allowDstPorts())
	slotPod2In := h.setPolicy(allowDstPorts())
	workload := bpf.IfaceWorkload | bpf.IfaceReady
	h.setIface(ifindex["pod1"], workload, stubSlots{slotAllow80, slotDenyAll}, 2)
	h.setIface(ifindex["pod2"], workload, stubSlots{slotDenyAll, slotPod2In}, 3)
	h.setIface(ifindex["pod3"], workload, stubSlots{slotDenyAll, slotDenyAll}, 4)

	pod1 := netip.MustParseAddrPort("10.4.0.1:43000")
	pod2 := netip.MustParseAddrPort("10.4.0.2:80")
	pod3 := netip.MustParseAddr("10.4.0.3")
	for name, addr := range map[string]netip.Addr{"pod1": pod1.Addr(), "pod2": pod2.Addr(), "pod3": pod3} {
		h.setRoute(workloadRoute(netip.PrefixFrom(addr, 32).String(), ifindex[name]))
	}
	tcp := func(src, dst netip.AddrPort, f testpkt.TCPFlags) []byte {
		return testpkt.MustBytes(t, testpkt.TCPv4(src, dst, f, nil))
	}
	steps := []struct {
		name    string
		iface   string
		hook    bpf.Hook
		frame   []byte
		arrange func()
		wantRet uint32
		want    bpf.Reason
	}{
		{"SYN leaves pod1", "pod1", bpf.HookIngress, tcp(pod1, pod2, testpkt.SYN), nil, tcActOK, bpf.ReasonAcceptedByPolicy},
		{"pod2's policy denies the SYN", "pod2", bpf.HookEgress, tcp(pod1, pod2, testpkt.SYN), nil, tcActShot, bpf.ReasonDroppedByPolicy},
		{"pod2's policy denies a later ACK too", "pod2", bpf.HookEgress, tcp(pod1, pod2, testpkt.ACK), nil, tcActShot, bpf.ReasonDroppedByPolicy},
		{"retransmitted SYN leaves pod1", "pod1", bpf.HookIngress, tcp(pod1, pod2, testpkt.SYN),
			func() { h.putPolicy(slotPod2In, allowDstPorts(80)) }, tcActOK, bpf.ReasonAcceptedByPolicy},
		{"pod2's policy now allows", "pod2", bpf.HookEgress, tcp(pod1, pod2, testpkt.SYN), nil, tcActOK, bpf.ReasonAcceptedByPolicy},
		{"SYN-ACK leaves pod2", "pod2", bpf.HookIngress, tcp(pod2, pod1, testpkt.SYN|testpkt.ACK), nil, tcActOK, bpf.ReasonAcceptedEstablished},
		{"SYN-ACK reaches pod1", "pod1", bpf.HookEgress, tcp(pod2, pod1, testpkt.SYN|testpkt.ACK), nil, tcActOK, bpf.ReasonAcceptedEstablished},
		{"ACK leaves pod1", "pod1", bpf.HookIngress, tcp(pod1, pod2, testpkt.ACK), nil, tcActOK, bpf.ReasonAcceptedEstablished},
		{"ACK reaches pod2", "pod2", bpf.HookEgress, tcp(pod1, pod2, testpkt.ACK), nil, tcActOK, bpf.ReasonAcceptedEstablished},
		{"pod3 spoofs pod2's reply", "pod3", bpf.HookIngress, tcp(pod2, pod1, testpkt.ACK), nil, tcActShot, bpf.ReasonDroppedRPF},
		{"pod3 spoofs pod1's data", "pod3", bpf.HookIngress, tcp(pod1, pod2, testpkt.ACK), nil, tcActShot, bpf.ReasonDroppedRPF},
		{"pod3 spoofs a SYN of pod1's flow", "pod3", bpf.HookIngress, tcp(pod1, pod2, testpkt.SYN), nil, tcActShot, bpf.ReasonDroppedRPF},
		{"pod3's own traffic meets its policy", "pod3", bpf.HookIngress, tcp(netip.AddrPortFrom(pod3, 5000), pod2, testpkt.SYN), nil, tcActShot, bpf.ReasonDroppedByPolicy},
		{"pod1's flow still established", "pod1", bpf.HookIngress, tcp(pod1, pod2, testpkt.ACK), nil, tcActOK, bpf.ReasonAcceptedEstablished},
	}
	for _, s := range steps {
		if s.arrange != nil {
			s.arrange()
		}
		idx := ifindex[s.iface]
		before := h.counters(idx, s.hook)
		var ret uint32
		err := ns.Do(func() error {
			var err error
			ret, err = h.runAt(hookProg(s.hook), s.frame, idx)
			return err
		})
		if err != nil {
			t.Fatalf("%s: run at %s: %v", s.name, s.iface, err)
		}
		if ret != s.wantRet {
			t.Errorf("%s: verdict %d, want %d", s.name, ret, s.wantRet)
		}
		if diff := cmp.Diff(one(s.want), reasonDelta(before, h.counters(idx, s.hook))); diff != "" {
			t.Errorf("%s: counters of %s %s (-want +got):\n%s", s.name, s.iface, s.hook, diff)
		}
	}
	key, _ := ctKeyOf(testpkt.ProtoTCP, pod1, pod2)
	got, ok := h.ctEntry(key)
	if !ok {
		t.Fatal("no conntrack entry")
	}
	// pod1 is A. Its leg entered at pod1 and was approved leaving at pod2;
	// pod2's replies may enter at pod2.
	wantFlags := fmt.Sprintf("a_to_b %v if %d, b_to_a %v if %d",
		bpf.CTLegSYN|bpf.CTLegACK|bpf.CTLegIngressOK|bpf.CTLegEgressOK, ifindex["pod1"], bpf.CTLegSYN|bpf.CTLegACK|bpf.CTLegIngressOK, ifindex["pod2"])
	gotFlags := fmt.Sprintf("a_to_b %v if %d, b_to_a %v if %d", got.AToB.Flags, got.AToB.Ifindex, got.BToA.Flags, got.BToA.Ifindex)
	if wantFlags != gotFlags {
		t.Errorf("legs: got %s, want %s", gotFlags, wantFlags)
	}
}
