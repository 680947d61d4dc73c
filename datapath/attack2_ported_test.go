package datapath

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// TestAttack2PortedProtocolsTruncatedAndRelated: for SCTP, DCCP and
// UDP-Lite, pod1 (whose Ingress policy denies everything) opens a flow to
// pod2. A header shorter than the protocol's (12 bytes for SCTP and
// DCCP, 8 for UDP-Lite) is DROPPED_SHORT; an error a router sends pod1
// about the flow, quoting 8 bytes of its header, passes as related; one
// quoting another source or destination port, or the flow's tuple under
// another of the three protocols, meets pod1's policy and is denied.
func TestAttack2PortedProtocolsTruncatedAndRelated(t *testing.T) {
	n := atk2NewEchoNet(t)
	e := n.e
	router := netip.MustParseAddr("10.88.255.254")
	server := netip.AddrPortFrom(n.pod2, 5000)
	protos := []struct {
		name string
		num  uint8
		hdr  int
	}{{"sctp", 132, 12}, {"dccp", 33, 12}, {"udplite", 136, 8}}
	for i, p := range protos {
		// A client port of each protocol's own, so that the tuple under
		// another protocol is a flow nobody opened.
		client := netip.AddrPortFrom(n.pod1, uint16(40000+10*i))
		other := protos[(i+1)%len(protos)]
		e.expect(p.name+": a header one byte short", "atk2p1", bpf.HookIngress, atkPorted(t, p.num, client, server, p.hdr-1), bpf.ReasonDroppedShort)
		pkt := atkPorted(t, p.num, client, server, p.hdr+8)
		if !e.expect(p.name+": pod1's packet leaves", "atk2p1", bpf.HookIngress, pkt, bpf.ReasonAcceptedByPolicy) ||
			!e.expect(p.name+": pod1's packet reaches pod2", "atk2p2", bpf.HookEgress, pkt, bpf.ReasonAcceptedByPolicy) ||
			!e.expect(p.name+": pod2's reply reaches pod1", "atk2p1", bpf.HookEgress, atkPorted(t, p.num, server, client, p.hdr), bpf.ReasonAcceptedEstablished) {
			continue
		}
		quote := func(frame []byte) []byte {
			return atkICMPErr(t, router, n.pod1, 3, 3, testpkt.Truncate(atkIP(frame), testpkt.IPv4MinLen+8))
		}
		e.expect(p.name+": an error about the flow", "atk2p1", bpf.HookEgress, quote(pkt), bpf.ReasonAcceptedRelated)
		for _, f := range []struct {
			name  string
			frame []byte
		}{
			{"another source port", atkPorted(t, p.num, netip.AddrPortFrom(n.pod1, client.Port()+1), server, p.hdr)},
			{"another destination port", atkPorted(t, p.num, client, netip.AddrPortFrom(n.pod2, 5001), p.hdr)},
			{"the tuple under " + other.name, atkPorted(t, other.num, client, server, other.hdr)},
			{"the tuple without ports (GRE)", atkPorted(t, 47, client, server, 8)},
		} {
			before := e.hits(atk2PolicyEnd)
			e.expect(fmt.Sprintf("%s: an error quoting %s", p.name, f.name), "atk2p1", bpf.HookEgress, quote(f.frame), bpf.ReasonDroppedByPolicy)
			if got := e.hits(atk2PolicyEnd) - before; got != 1 {
				t.Errorf("%s: an error quoting %s: pod1's deny rule hit %d times, want once", p.name, f.name, got)
			}
		}
	}
}
