package bpf

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

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
	const (
		slotAllow80 = 10
		slotDenyAll = 11
		slotPod2In  = 12
	)
	h.setPolicy(slotAllow80, allowDstPorts(80))
	h.setPolicy(slotDenyAll, allowDstPorts())
	h.setPolicy(slotPod2In, allowDstPorts())
	h.setIface(ifindex["pod1"], Iface{Flags: IfaceWorkload | IfaceReady, IngressPolicy: slotAllow80, EgressPolicy: slotDenyAll, CounterSlot: 2})
	h.setIface(ifindex["pod2"], Iface{Flags: IfaceWorkload | IfaceReady, IngressPolicy: slotDenyAll, EgressPolicy: slotPod2In, CounterSlot: 3})
	h.setIface(ifindex["pod3"], Iface{Flags: IfaceWorkload | IfaceReady, IngressPolicy: slotDenyAll, EgressPolicy: slotDenyAll, CounterSlot: 4})

	pod1 := netip.MustParseAddrPort("10.4.0.1:43000")
	pod2 := netip.MustParseAddrPort("10.4.0.2:80")
	tcp := func(src, dst netip.AddrPort, f testpkt.TCPFlags) []byte {
		return testpkt.MustBytes(t, testpkt.TCPv4(src, dst, f, nil))
	}
	steps := []struct {
		name    string
		iface   string
		hook    Hook
		frame   []byte
		arrange func()
		wantRet uint32
		want    Reason
	}{
		{"SYN leaves pod1", "pod1", HookIngress, tcp(pod1, pod2, testpkt.SYN), nil, tcActOK, ReasonAcceptedByPolicy},
		{"pod2's policy denies the SYN", "pod2", HookEgress, tcp(pod1, pod2, testpkt.SYN), nil, tcActShot, ReasonDroppedByPolicy},
		{"pod2's policy denies a later ACK too", "pod2", HookEgress, tcp(pod1, pod2, testpkt.ACK), nil, tcActShot, ReasonDroppedByPolicy},
		{"retransmitted SYN leaves pod1", "pod1", HookIngress, tcp(pod1, pod2, testpkt.SYN),
			func() { h.setPolicy(slotPod2In, allowDstPorts(80)) }, tcActOK, ReasonAcceptedByPolicy},
		{"pod2's policy now allows", "pod2", HookEgress, tcp(pod1, pod2, testpkt.SYN), nil, tcActOK, ReasonAcceptedByPolicy},
		{"SYN-ACK leaves pod2", "pod2", HookIngress, tcp(pod2, pod1, testpkt.SYN|testpkt.ACK), nil, tcActOK, ReasonAcceptedEstablished},
		{"SYN-ACK reaches pod1", "pod1", HookEgress, tcp(pod2, pod1, testpkt.SYN|testpkt.ACK), nil, tcActOK, ReasonAcceptedEstablished},
		{"ACK leaves pod1", "pod1", HookIngress, tcp(pod1, pod2, testpkt.ACK), nil, tcActOK, ReasonAcceptedEstablished},
		{"ACK reaches pod2", "pod2", HookEgress, tcp(pod1, pod2, testpkt.ACK), nil, tcActOK, ReasonAcceptedEstablished},
		{"pod3 spoofs pod2's reply", "pod3", HookIngress, tcp(pod2, pod1, testpkt.ACK), nil, tcActShot, ReasonDroppedByPolicy},
		{"pod3 spoofs pod1's data", "pod3", HookIngress, tcp(pod1, pod2, testpkt.ACK), nil, tcActShot, ReasonDroppedByPolicy},
		{"pod1's flow still established", "pod1", HookIngress, tcp(pod1, pod2, testpkt.ACK), nil, tcActOK, ReasonAcceptedEstablished},
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
			ret, err = h.runAt(progOf(s.hook), s.frame, idx)
			return err
		})
		if err != nil {
			t.Fatalf("%s: run at %s: %v", s.name, s.iface, err)
		}
		if ret != s.wantRet {
			t.Errorf("%s: verdict %d, want %d", s.name, ret, s.wantRet)
		}
		if diff := cmp.Diff(one(s.want), reasonDelta(before, h.counters(idx, s.hook))); diff != "" {
			t.Errorf("%s: counters of %s %s (-want +got):\n%s", s.name, s.iface, hookName(s.hook), diff)
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
		CTLegSYN|CTLegACK|CTLegIngressOK|CTLegEgressOK, ifindex["pod1"], CTLegSYN|CTLegACK|CTLegIngressOK, ifindex["pod2"])
	gotFlags := fmt.Sprintf("a_to_b %v if %d, b_to_a %v if %d", got.A_toB.Flags, got.A_toB.Ifindex, got.B_toA.Flags, got.B_toA.Ifindex)
	if wantFlags != gotFlags {
		t.Errorf("legs: got %s, want %s", gotFlags, wantFlags)
	}
}
