package datapath

import (
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// TestAttack2FragmentsKeepReversePathCheck: with PassFragments, a
// datagram's later fragments pass unpoliced, since "the receiver cannot
// reassemble them without the policed first fragment". That reasoning
// holds only for fragments whose source is the sender's own: the
// reverse-path check is what ties a first fragment, and so its datagram,
// to the sender. A workload that forges the source of a later fragment
// (another workload's, or that of a server another workload talks to)
// injects data into a datagram someone else sent and the receiver
// reassembles: the fragment-injection attack on fragmented DNS answers.
// A workload's forged sources are DROPPED_RPF whatever the packet, so
// such a fragment must be dropped; the workload's own later fragments
// still pass, and so does the same forged fragment at a host interface
// when it claims an outside address (host RPF lets those in).
func TestAttack2FragmentsKeepReversePathCheck(t *testing.T) {
	n := atkNewSpoofNet(t)
	e := n.e
	for _, name := range []string{"atkp1", "atkp2", "atkp3"} {
		e.set(name, Interface{Kind: Workload, Ingress: atkAllowAll(100), Egress: atkAllowAll(200), PassFragments: true})
	}
	e.set("atkhif", Interface{Kind: Host, Ingress: atkHostRules(atkAllowAll(300)), Egress: atkHostRules(atkAllowAll(400)), PassFragments: true})
	dns := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.53"), 53)
	later := func(src, dst netip.AddrPort) []byte {
		p := testpkt.UDPv4(src, dst, make([]byte, 1200))
		p.IPv4.ID = 0x1234
		frags, err := testpkt.Fragment(testpkt.MustBytes(t, p), 600)
		if err != nil {
			t.Fatal(err)
		}
		return frags[1]
	}
	victim := netip.AddrPortFrom(n.pod1, 33000)
	e.expect("pod3's own later fragment", "atkp3", bpf.HookIngress, later(netip.AddrPortFrom(n.pod3, 33000), dns), bpf.ReasonFragmentPassed)
	e.expect("an outside resolver's later fragment at the host interface", "atkhif", bpf.HookIngress, later(dns, victim), bpf.ReasonFragmentPassed)
	for _, c := range []struct {
		name string
		src  netip.AddrPort
		dst  netip.AddrPort
	}{
		{"pod3 forges the resolver's later fragment to pod1", dns, victim},
		{"pod3 forges pod2's later fragment to pod1", netip.AddrPortFrom(n.pod2, 53), victim},
		{"pod3 forges pod1's later fragment to the resolver", victim, dns},
		{"pod3 forges the node's later fragment to pod1", netip.AddrPortFrom(n.node, 53), victim},
	} {
		e.expect(c.name, "atkp3", bpf.HookIngress, later(c.src, c.dst), bpf.ReasonDroppedRPF)
	}
	for _, c := range []struct {
		name string
		src  netip.AddrPort
	}{
		{"a later fragment at the host interface claiming pod2", netip.AddrPortFrom(n.pod2, 53)},
		{"a later fragment at the host interface claiming the node", netip.AddrPortFrom(n.node, 53)},
	} {
		e.expect(c.name, "atkhif", bpf.HookIngress, later(c.src, victim), bpf.ReasonDroppedRPF)
	}
}
