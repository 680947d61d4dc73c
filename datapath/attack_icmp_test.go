package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
)

// atkICMPIDs are the rule IDs of one hook's policy in the ICMP tests.
type atkICMPIDs struct{ tcp, udp, echo, icmp, end uint64 }

// atkICMPPolicy allows TCP to 80, UDP to 53 and echo requests; with
// allowICMP every other ICMP message too; the rest is denied.
func atkICMPPolicy(ids atkICMPIDs, allowICMP bool) polprog.Rules {
	rules := []polprog.Rule{
		{ID: ids.tcp, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}},
		{ID: ids.udp, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(53)}},
		{ID: ids.echo, Action: polprog.ActionAllow, Protocol: "icmp", ICMP: &polprog.ICMPMatch{Type: testpkt.ICMPv4EchoRequest}},
	}
	if allowICMP {
		rules = append(rules, polprog.Rule{ID: ids.icmp, Action: polprog.ActionAllow, Protocol: "icmp"})
	}
	return atkRules(ids.end, rules...)
}

// atkICMPNet is three workloads, the first two with TCP, UDP and echo
// flows between them, policed by atkICMPPolicy at every hook.
type atkICMPNet struct {
	*atkSpoofNet
	ids map[string]map[bpf.Hook]atkICMPIDs
}

func atkNewICMPNet(t *testing.T) *atkICMPNet {
	n := &atkICMPNet{atkSpoofNet: atkNewSpoofNet(t), ids: map[string]map[bpf.Hook]atkICMPIDs{}}
	for i, name := range []string{"atkp1", "atkp2", "atkp3"} {
		base := uint64(1000 * (i + 1))
		n.ids[name] = map[bpf.Hook]atkICMPIDs{}
		for _, hk := range []bpf.Hook{bpf.HookIngress, bpf.HookEgress} {
			b := base + 100*uint64(hk+1)
			n.ids[name][hk] = atkICMPIDs{b + 1, b + 2, b + 3, b + 4, b + 9}
		}
	}
	n.policies(false)
	return n
}

// policies installs atkICMPPolicy on every workload hook.
func (n *atkICMPNet) policies(allowICMP bool) {
	for name, ids := range n.ids {
		// A workload's Egress policy runs at its TC ingress hook.
		n.e.set(name, Interface{Kind: Workload, Egress: atkICMPPolicy(ids[bpf.HookIngress], allowICMP), Ingress: atkICMPPolicy(ids[bpf.HookEgress], allowICMP)})
	}
}

// allHits returns the hits of every rule of every hook.
func (n *atkICMPNet) allHits() map[uint64]uint64 {
	hits := map[uint64]uint64{}
	for _, byHook := range n.ids {
		for _, ids := range byHook {
			for _, id := range []uint64{ids.tcp, ids.udp, ids.echo, ids.icmp, ids.end} {
				hits[id] = n.e.hits(id)
			}
		}
	}
	return hits
}

// atkICMPErr builds an ICMP message of any type from src to dst whose
// data is data.
func atkICMPErr(tb testing.TB, src, dst netip.Addr, typ, code uint8, data []byte) []byte {
	return testpkt.MustBytes(tb, testpkt.ICMPv4Error(src, dst, typ, code, data))
}

// atkIP is the IPv4 packet of a frame, from its header on.
func atkIP(frame []byte) []byte { return frame[testpkt.EthLen:] }

// TestAttackForgedICMPErrors sends ICMP errors about the flows of two
// workloads, genuine and forged, from every side. Each either passes as
// related (ACCEPTED_RELATED, no rule hit, no entry changed) exactly when
// the datapath's rules say so, or gets policy's verdict as ICMP: once with
// policies that deny ICMP errors (DROPPED_BY_POLICY, the tier end hit) and
// once with policies that allow them (ACCEPTED_BY_POLICY, the ICMP rule
// hit). A forged source at a workload's interface is DROPPED_RPF first.
func TestAttackForgedICMPErrors(t *testing.T) {
	n := atkNewICMPNet(t)
	e := n.e
	client := netip.AddrPortFrom(n.pod1, 40000)
	server := netip.AddrPortFrom(n.pod2, 80)
	n.handshake(t, client, server, "atkp1", "atkp2")
	udpC, udpS := netip.AddrPortFrom(n.pod1, 5353), netip.AddrPortFrom(n.pod2, 53)
	udpReq := testpkt.MustBytes(t, testpkt.UDPv4(udpC, udpS, []byte("query")))
	echoReq := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod1, n.pod2, 0x4242, 1, false))
	echoRep := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod2, n.pod1, 0x4242, 1, true))
	// The node's own connection to the outside, through the host
	// interface.
	nodeClient, outside := netip.AddrPortFrom(n.node, 45000), netip.MustParseAddrPort("198.51.100.7:443")
	nodeSyn := atkTCP(t, nodeClient, outside, testpkt.SYN, 0)
	for _, s := range []struct {
		name   string
		iface  string
		hook   bpf.Hook
		frame  []byte
		reason bpf.Reason
	}{
		{"UDP query leaves pod1", "atkp1", bpf.HookIngress, udpReq, bpf.ReasonAcceptedByPolicy},
		{"UDP query reaches pod2", "atkp2", bpf.HookEgress, udpReq, bpf.ReasonAcceptedByPolicy},
		{"echo request leaves pod1", "atkp1", bpf.HookIngress, echoReq, bpf.ReasonAcceptedByPolicy},
		{"echo request reaches pod2", "atkp2", bpf.HookEgress, echoReq, bpf.ReasonAcceptedByPolicy},
		{"echo reply leaves pod2", "atkp2", bpf.HookIngress, echoRep, bpf.ReasonAcceptedEstablished},
		{"echo reply reaches pod1", "atkp1", bpf.HookEgress, echoRep, bpf.ReasonAcceptedEstablished},
		{"the node's SYN leaves the host interface", "atkhif", bpf.HookEgress, nodeSyn, bpf.ReasonAcceptedByPolicy},
		{"the SYN-ACK reaches the node", "atkhif", bpf.HookIngress, atkTCP(t, outside, nodeClient, testpkt.SYN|testpkt.ACK, 0), bpf.ReasonAcceptedEstablished},
	} {
		if !e.expect(s.name, s.iface, s.hook, s.frame, s.reason) {
			t.FailNow()
		}
	}
	tcpKey, _ := ctKeyOf(testpkt.ProtoTCP, client, server)
	flowsBefore, _ := e.ctEntry(tcpKey)

	syn := atkTCP(t, client, server, testpkt.SYN, 0)
	data := atkTCP(t, client, server, testpkt.PSH|testpkt.ACK, 1000) // IP total length 1040
	reply := atkTCP(t, server, client, testpkt.ACK, 0)
	withOpts := testpkt.TCPv4(client, server, testpkt.ACK, nil)
	withOpts.IPv4.Options = []byte{0x94, 0x04, 0x00, 0x00}
	synQ := testpkt.Quote(syn)
	setTotLen := func(q []byte, n uint16) []byte {
		q = append([]byte(nil), q...)
		binary.BigEndian.PutUint16(q[2:], n)
		return q
	}
	setFrag := func(q []byte, v uint16) []byte {
		q = append([]byte(nil), q...)
		binary.BigEndian.PutUint16(q[6:], v)
		return q
	}
	// sizedQuote quotes the large data packet so that the whole error is
	// total bytes of IP.
	sizedQuote := func(total int) []byte {
		return testpkt.Truncate(atkIP(data), total-testpkt.IPv4MinLen-testpkt.ICMPv4HdrLen)
	}
	router := n.node
	errorTypes := []struct {
		typ, code uint8
	}{{3, 3}, {3, 4}, {3, 13}, {4, 0}, {5, 1}, {11, 0}, {12, 0}}

	type errCase struct {
		name    string
		iface   string
		hook    bpf.Hook
		frame   []byte
		related bool
		// rpf: a forged outer source, dropped before anything else.
		rpf bool
	}
	var cases []errCase
	for _, et := range errorTypes {
		q := synQ
		cases = append(cases,
			errCase{fmt.Sprintf("type %d/%d from pod2 about pod1's SYN", et.typ, et.code), "atkp2", bpf.HookIngress,
				atkICMPErr(t, n.pod2, n.pod1, et.typ, et.code, q), true, false},
			errCase{fmt.Sprintf("type %d/%d from a router reaches pod1", et.typ, et.code), "atkp1", bpf.HookEgress,
				atkICMPErr(t, router, n.pod1, et.typ, et.code, q), true, false},
			errCase{fmt.Sprintf("type %d/%d from pod3's interface about pod1's flow", et.typ, et.code), "atkp3", bpf.HookIngress,
				atkICMPErr(t, n.pod3, n.pod1, et.typ, et.code, q), false, false},
			errCase{fmt.Sprintf("type %d/%d from pod1's own side about its flow", et.typ, et.code), "atkp1", bpf.HookIngress,
				atkICMPErr(t, n.pod1, n.pod1, et.typ, et.code, q), false, false},
		)
	}
	for _, typ := range []uint8{1, 2, 6, 7, 9, 10, 13, 14, 15, 16, 17, 18, 30, 40, 255} {
		cases = append(cases,
			errCase{fmt.Sprintf("type %d from pod2 quoting pod1's SYN", typ), "atkp2", bpf.HookIngress, atkICMPErr(t, n.pod2, n.pod1, typ, 0, synQ), false, false},
			errCase{fmt.Sprintf("type %d from a router quoting pod1's SYN reaches pod1", typ), "atkp1", bpf.HookEgress, atkICMPErr(t, router, n.pod1, typ, 0, synQ), false, false},
		)
	}
	unreach := func(name, iface string, hook bpf.Hook, src, dst netip.Addr, quote []byte, related bool) errCase {
		return errCase{name, iface, hook, atkICMPErr(t, src, dst, 3, 3, quote), related, false}
	}
	ingress, egress := bpf.HookIngress, bpf.HookEgress
	cases = append(cases,
		unreach("about pod1's data", "atkp2", ingress, n.pod2, n.pod1, testpkt.Quote(data), true),
		unreach("about pod1's UDP query", "atkp2", ingress, n.pod2, n.pod1, testpkt.Quote(udpReq), true),
		unreach("about pod1's UDP query, reaching pod1", "atkp1", egress, router, n.pod1, testpkt.Quote(udpReq), true),
		unreach("about pod1's echo request", "atkp2", ingress, n.pod2, n.pod1, testpkt.Quote(echoReq), true),
		unreach("from pod1 about pod2's echo reply", "atkp1", ingress, n.pod1, n.pod2, testpkt.Quote(echoRep), true),
		unreach("from pod1 about pod2's reply", "atkp1", ingress, n.pod1, n.pod2, testpkt.Quote(reply), true),
		unreach("from pod1 about pod2's reply, reaching pod2", "atkp2", egress, n.pod1, n.pod2, testpkt.Quote(reply), true),
		unreach("quote with IP options", "atkp2", ingress, n.pod2, n.pod1, testpkt.Quote(testpkt.MustBytes(t, withOpts)), true),
		unreach("quote of the whole SYN", "atkp2", ingress, n.pod2, n.pod1, atkIP(syn), true),
		unreach("quote of a first fragment", "atkp2", ingress, n.pod2, n.pod1, setFrag(synQ, 0x2000), true),
		unreach("error of exactly 576 bytes", "atkp2", ingress, n.pod2, n.pod1, sizedQuote(576), true),
		unreach("error of 577 bytes", "atkp2", ingress, n.pod2, n.pod1, sizedQuote(577), false),
		unreach("error of 1068 bytes", "atkp2", ingress, n.pod2, n.pod1, sizedQuote(1068), false),
		unreach("600 bytes appended to the quote", "atkp2", ingress, n.pod2, n.pod1, append(append([]byte(nil), synQ...), make([]byte, 600)...), false),
		unreach("a smuggled packet appended to the quote", "atkp2", ingress, n.pod2, n.pod1, append(append([]byte(nil), synQ...), atkIP(udpReq)...), false),
		unreach("one byte more than the quoted packet", "atkp2", ingress, n.pod2, n.pod1, append(atkIP(syn), 0), false),
		unreach("quoted total length below the quote", "atkp2", ingress, n.pod2, n.pod1, setTotLen(synQ, 27), false),
		unreach("quote of 4 L4 bytes", "atkp2", ingress, n.pod2, n.pod1, synQ[:24], false),
		unreach("quote of the IP header alone", "atkp2", ingress, n.pod2, n.pod1, synQ[:20], false),
		unreach("quote of a later fragment", "atkp2", ingress, n.pod2, n.pod1, setFrag(synQ, 0x0001), false),
		unreach("quote with IHL 4", "atkp2", ingress, n.pod2, n.pod1, append([]byte{0x44}, synQ[1:]...), false),
		unreach("quote of IP version 6", "atkp2", ingress, n.pod2, n.pod1, append([]byte{0x65}, synQ[1:]...), false),
		unreach("sent to pod3, quoting pod1's SYN", "atkp2", ingress, n.pod2, n.pod3, synQ, false),
		unreach("sent to pod2, quoting pod1's SYN to pod2", "atkp2", ingress, n.pod2, n.pod2, synQ, false),
		unreach("reaching pod2, quoting pod1's SYN", "atkp2", egress, router, n.pod2, synQ, false),
		unreach("towards pod1 through pod2's interface", "atkp2", egress, router, n.pod1, synQ, false),
		unreach("towards pod1 through pod3's interface", "atkp3", egress, router, n.pod1, synQ, false),
		unreach("quoting a flow that does not exist", "atkp2", ingress, n.pod2, n.pod1, testpkt.Quote(atkTCP(t, netip.AddrPortFrom(n.pod1, 40001), server, testpkt.SYN, 0)), false),
		errCase{"with outer IP options", "atkp2", ingress, atkWithOuterOptions(t, n.pod2, n.pod1, synQ), true, false},
		errCase{"with Ethernet padding after it", "atkp2", ingress, append(atkICMPErr(t, n.pod2, n.pod1, 3, 3, synQ), make([]byte, 700)...), true, false},
		errCase{"from a router about the node's SYN, at the host interface", "atkhif", ingress,
			atkICMPErr(t, netip.MustParseAddr("198.51.100.1"), n.node, 3, 4, testpkt.Quote(nodeSyn)), true, false},
		unreach("from pod3 about the node's SYN", "atkp3", ingress, n.pod3, n.node, testpkt.Quote(nodeSyn), false),
		unreach("quoting pod1's flow with another port", "atkp2", ingress, n.pod2, n.pod1, testpkt.Quote(atkTCP(t, client, netip.AddrPortFrom(n.pod2, 81), testpkt.SYN, 0)), false),
		unreach("quoting an echo request of another identifier", "atkp2", ingress, n.pod2, n.pod1, testpkt.Quote(testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod1, n.pod2, 0x4243, 1, false))), false),
		unreach("quoting an ICMP error", "atkp2", ingress, n.pod2, n.pod1, testpkt.Quote(atkICMPErr(t, n.pod1, n.pod2, 3, 3, testpkt.Quote(reply))), false),
		errCase{"pod3 forges pod2's error", "atkp3", ingress, atkICMPErr(t, n.pod2, n.pod1, 3, 3, synQ), false, true},
		errCase{"pod1 forges pod2's error from its own side", "atkp1", ingress, atkICMPErr(t, n.pod2, n.pod1, 3, 3, synQ), false, true},
		errCase{"pod3 forges pod1's error about pod2's reply", "atkp3", ingress, atkICMPErr(t, n.pod1, n.pod2, 3, 3, testpkt.Quote(reply)), false, true},
	)

	for _, allowICMP := range []bool{false, true} {
		n.policies(allowICMP)
		phase := map[bool]string{false: "ICMP denied", true: "ICMP allowed"}[allowICMP]
		for _, c := range cases {
			name := phase + ": " + c.name
			want := bpf.ReasonAcceptedRelated
			wantHits := n.allHits()
			ids := n.ids[c.iface][c.hook]
			switch {
			case c.rpf:
				want = bpf.ReasonDroppedRPF
			case c.related:
			case allowICMP:
				want = bpf.ReasonAcceptedByPolicy
				wantHits[ids.icmp]++
			default:
				want = bpf.ReasonDroppedByPolicy
				wantHits[ids.end]++
			}
			e.expect(name, c.iface, c.hook, c.frame, want)
			if diff := cmp.Diff(wantHits, n.allHits()); diff != "" {
				t.Errorf("%s: rule hits (-want +got):\n%s", name, diff)
			}
			// An error policy allowed is tracked under its own tuple;
			// forget it so that it cannot decide the next case.
			ip := atkIP(c.frame)
			src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
			k, _ := ctKeyOf(testpkt.ProtoICMPv4, netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0))
			e.ctDelete(k)
		}
	}
	flowsAfter, _ := e.ctEntry(tcpKey)
	if diff := cmp.Diff(flowsBefore, flowsAfter, ctCmp); diff != "" {
		t.Errorf("ICMP errors changed the TCP flow's entry (-before +after):\n%s", diff)
	}
}

// atkWithOuterOptions is a port unreachable whose own IP header carries
// options (router alert).
func atkWithOuterOptions(tb testing.TB, src, dst netip.Addr, quote []byte) []byte {
	p := testpkt.ICMPv4Error(src, dst, 3, 3, quote)
	p.IPv4.Options = []byte{0x94, 0x04, 0x00, 0x00}
	return testpkt.MustBytes(tb, p)
}

// TestAttackICMPMessageRidesAnother has pod1 send pod2 one ICMP message
// that both pods' policies allow (fragmentation needed), then sends ICMP
// messages of other types that the same policies deny, from pod1 and back
// from pod2: a redirect, a host unreachable quoting nothing tracked, a
// timestamp request. Each must get policy's verdict; an ICMP message of
// one type must not open the way for every other type between the two
// addresses.
func TestAttackICMPMessageRidesAnother(t *testing.T) {
	n := atkNewSpoofNet(t)
	e := n.e
	fragNeeded := polprog.Rule{ID: 11, Action: polprog.ActionAllow, Protocol: "icmp", ICMP: &polprog.ICMPMatch{Type: 3, Code: 4, HasCode: true}}
	for _, name := range []string{"atkp1", "atkp2"} {
		e.set(name, Interface{Kind: Workload, Egress: atkRules(19, fragNeeded), Ingress: atkRules(29, fragNeeded)})
	}
	untracked := testpkt.Quote(atkTCP(t, netip.AddrPortFrom(n.pod2, 5000), netip.AddrPortFrom(n.pod3, 80), testpkt.SYN, 0))
	pmtu := atkICMPErr(t, n.pod1, n.pod2, 3, 4, testpkt.Quote(atkTCP(t, netip.AddrPortFrom(n.pod2, 5000), netip.AddrPortFrom(n.pod1, 443), testpkt.ACK, 0)))
	e.expect("pod1's fragmentation-needed leaves pod1", "atkp1", bpf.HookIngress, pmtu, bpf.ReasonAcceptedByPolicy)
	e.expect("pod1's fragmentation-needed reaches pod2", "atkp2", bpf.HookEgress, pmtu, bpf.ReasonAcceptedByPolicy)
	for _, c := range []struct {
		name     string
		from, to string
		frame    []byte
	}{
		{"redirect from pod1", "atkp1", "atkp2", atkICMPErr(t, n.pod1, n.pod2, 5, 1, untracked)},
		{"timestamp request from pod1", "atkp1", "atkp2", atkICMPErr(t, n.pod1, n.pod2, 13, 0, nil)},
		{"host unreachable from pod1", "atkp1", "atkp2", atkICMPErr(t, n.pod1, n.pod2, 3, 1, untracked)},
		{"redirect from pod2", "atkp2", "atkp1", atkICMPErr(t, n.pod2, n.pod1, 5, 1, untracked)},
		{"host unreachable from pod2", "atkp2", "atkp1", atkICMPErr(t, n.pod2, n.pod1, 3, 1, untracked)},
		{"address mask request from pod2", "atkp2", "atkp1", atkICMPErr(t, n.pod2, n.pod1, 17, 0, nil)},
	} {
		e.expect(c.name+" leaves "+c.from, c.from, bpf.HookIngress, c.frame, bpf.ReasonDroppedByPolicy)
		e.expect(c.name+" reaches "+c.to, c.to, bpf.HookEgress, c.frame, bpf.ReasonDroppedByPolicy)
	}
}

// TestAttackEchoRequestRidesReply lets pod1 ping pod2, which both pods'
// policies allow, and then has pod2 send pod1 an echo request with the
// same identifier, which both policies deny (only pod1 may ping). A
// request is not a reply of the flow: it must get policy's verdict.
func TestAttackEchoRequestRidesReply(t *testing.T) {
	n := atkNewSpoofNet(t)
	e := n.e
	ping := polprog.Rule{ID: 11, Action: polprog.ActionAllow, Protocol: "icmp", ICMP: &polprog.ICMPMatch{Type: testpkt.ICMPv4EchoRequest}}
	e.set("atkp1", Interface{Kind: Workload, Egress: atkRules(19, ping), Ingress: atkRules(29)})
	e.set("atkp2", Interface{Kind: Workload, Egress: atkRules(39), Ingress: atkRules(49, ping)})
	req := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod1, n.pod2, 77, 1, false))
	rep := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod2, n.pod1, 77, 1, true))
	e.expect("pod1's echo request leaves pod1", "atkp1", bpf.HookIngress, req, bpf.ReasonAcceptedByPolicy)
	e.expect("pod1's echo request reaches pod2", "atkp2", bpf.HookEgress, req, bpf.ReasonAcceptedByPolicy)
	e.expect("pod2's echo reply leaves pod2", "atkp2", bpf.HookIngress, rep, bpf.ReasonAcceptedEstablished)
	e.expect("pod2's echo reply reaches pod1", "atkp1", bpf.HookEgress, rep, bpf.ReasonAcceptedEstablished)
	back := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod2, n.pod1, 77, 2, false))
	e.expect("pod2's echo request of the same identifier leaves pod2", "atkp2", bpf.HookIngress, back, bpf.ReasonDroppedByPolicy)
	e.expect("pod2's echo request of the same identifier reaches pod1", "atkp1", bpf.HookEgress, back, bpf.ReasonDroppedByPolicy)
	other := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod2, n.pod1, 78, 1, false))
	e.expect("pod2's echo request of another identifier leaves pod2", "atkp2", bpf.HookIngress, other, bpf.ReasonDroppedByPolicy)
}

// TestAttackFragmentedICMPErrorNotRelated sends, to an interface that
// passes fragments (the first is policed, later ones pass), an ICMP error
// about a tracked flow that is over 576 bytes and quotes far more than the
// quoted packet held, cut into fragments. The whole error is not one that
// may pass as related; its first fragment alone looks like one. The
// datapath cannot vouch for a whole it has not seen: the first fragment
// must get policy's verdict as ICMP (denied here), so that the fragments
// that pass after it cannot be reassembled into a related error.
func TestAttackFragmentedICMPErrorNotRelated(t *testing.T) {
	n := atkNewICMPNet(t)
	e := n.e
	client := netip.AddrPortFrom(n.pod1, 40000)
	server := netip.AddrPortFrom(n.pod2, 80)
	n.handshake(t, client, server, "atkp1", "atkp2")
	ids := n.ids["atkp2"]
	e.set("atkp2", Interface{Kind: Workload, PassFragments: true,
		Egress: atkICMPPolicy(ids[bpf.HookIngress], false), Ingress: atkICMPPolicy(ids[bpf.HookEgress], false)})

	quote := testpkt.Quote(atkTCP(t, client, server, testpkt.SYN, 0))
	whole := atkICMPErr(t, n.pod2, n.pod1, 3, 3, append(append([]byte(nil), quote...), make([]byte, 1000)...))
	e.expect("the whole error", "atkp2", bpf.HookIngress, whole, bpf.ReasonDroppedByPolicy)
	frags, err := testpkt.Fragment(whole, 40)
	if err != nil {
		t.Fatal(err)
	}
	before := e.hits(ids[bpf.HookIngress].end)
	e.expect("its first fragment", "atkp2", bpf.HookIngress, frags[0], bpf.ReasonDroppedByPolicy)
	if got := e.hits(ids[bpf.HookIngress].end) - before; got != 1 {
		t.Errorf("first fragment: tier end hit %d times, want once", got)
	}
	for i, f := range frags[1:3] {
		e.expect(fmt.Sprintf("fragment %d", i+1), "atkp2", bpf.HookIngress, f, bpf.ReasonFragmentPassed)
	}
}
