package datapath

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/routes"
)

// atkSpoofNet is the addressing of the spoofing tests: three workloads on
// veths, a host interface, the node's own address, a remote node's
// workloads and an address nobody routes.
type atkSpoofNet struct {
	e                            *atkEnv
	pod1, pod2, pod3, node, remo netip.Addr
	unrouted                     netip.Addr
}

// atkNewSpoofNet configures every interface to allow everything, so that
// only the reverse-path check stands between a spoofed packet and its
// destination.
func atkNewSpoofNet(t *testing.T) *atkSpoofNet {
	e := atkNewEnv(t, "atkp1", "atkp2", "atkp3", "atkhif")
	n := &atkSpoofNet{e: e,
		pod1: netip.MustParseAddr("10.8.0.1"), pod2: netip.MustParseAddr("10.8.0.2"), pod3: netip.MustParseAddr("10.8.0.3"),
		node: netip.MustParseAddr("10.8.255.1"), remo: netip.MustParseAddr("10.9.0.7"), unrouted: netip.MustParseAddr("172.16.0.1"),
	}
	for name, a := range map[string]netip.Addr{"atkp1": n.pod1, "atkp2": n.pod2, "atkp3": n.pod3} {
		e.route(atkLocal(a, e.idx(name)))
		e.set(name, Interface{Kind: Workload, Ingress: atkAllowAll(100), Egress: atkAllowAll(200)})
	}
	e.route(atkHostRoute(n.node))
	e.route(routes.Route{Prefix: netip.MustParsePrefix("10.9.0.0/16"), Flags: routes.FlagRemoteWorkload, NextHop: netip.MustParseAddr("192.168.1.2")})
	e.route(routes.Route{Prefix: netip.MustParsePrefix("192.168.1.2/32"), Flags: routes.FlagRemoteHost, NextHop: netip.MustParseAddr("192.168.1.2")})
	e.set("atkhif", Interface{Kind: Host, Ingress: atkHostRules(atkAllowAll(300)), Egress: atkHostRules(atkAllowAll(400))})
	return n
}

func atkTCP(tb testing.TB, src, dst netip.AddrPort, f testpkt.TCPFlags, payload int) []byte {
	return testpkt.MustBytes(tb, testpkt.TCPv4(src, dst, f, make([]byte, payload)))
}

// atkHandshake establishes client -> server between two workload
// interfaces: each packet crosses the sender's TC ingress and the
// receiver's TC egress.
func (n *atkSpoofNet) handshake(t *testing.T, client, server netip.AddrPort, cif, sif string) {
	t.Helper()
	e := n.e
	steps := []struct {
		name  string
		frame []byte
		from  string
		to    string
		first bool
	}{
		{"SYN", atkTCP(t, client, server, testpkt.SYN, 0), cif, sif, true},
		{"SYN-ACK", atkTCP(t, server, client, testpkt.SYN|testpkt.ACK, 0), sif, cif, false},
		{"ACK", atkTCP(t, client, server, testpkt.ACK, 0), cif, sif, false},
		{"data", atkTCP(t, client, server, testpkt.PSH|testpkt.ACK, 100), cif, sif, false},
		{"reply data", atkTCP(t, server, client, testpkt.PSH|testpkt.ACK, 200), sif, cif, false},
	}
	for _, s := range steps {
		// The SYN is new at both hooks; the SYN's egress approval is
		// what lets the server's replies in at its interface.
		want := bpf.ReasonAcceptedEstablished
		if s.first {
			want = bpf.ReasonAcceptedByPolicy
		}
		if !e.expect("handshake "+s.name+" leaves "+s.from, s.from, bpf.HookIngress, s.frame, want) ||
			!e.expect("handshake "+s.name+" reaches "+s.to, s.to, bpf.HookEgress, s.frame, want) {
			t.FailNow()
		}
	}
}

// TestAttackSpoofedSources has a workload send with sources it does not
// own: another workload's (also as SYNs, ACKs and replies of that
// workload's established flow), an unrouted address, a remote node's
// workload, the node's own address, another node's address, 0.0.0.0 and
// broadcast. Every one is DROPPED_RPF at the sender's TC ingress, though
// policy allows everything; the victim's conntrack entry is exactly as it
// was; and the victim's flow keeps passing.
func TestAttackSpoofedSources(t *testing.T) {
	n := atkNewSpoofNet(t)
	e := n.e
	client := netip.AddrPortFrom(n.pod1, 40000)
	server := netip.AddrPortFrom(n.pod2, 80)
	n.handshake(t, client, server, "atkp1", "atkp2")
	key, _ := ctKeyOf(testpkt.ProtoTCP, client, server)
	before, ok := e.ctEntry(key)
	if !ok {
		t.Fatal("no entry for the victim's flow")
	}
	ap := netip.AddrPortFrom
	udp := func(src, dst netip.AddrPort) []byte {
		return testpkt.MustBytes(t, testpkt.UDPv4(src, dst, []byte("spoofed")))
	}
	cases := []struct {
		name  string
		iface string
		frame []byte
	}{
		{"pod3 sends a SYN of pod1's flow", "atkp3", atkTCP(t, client, server, testpkt.SYN, 0)},
		{"pod3 sends an ACK of pod1's flow", "atkp3", atkTCP(t, client, server, testpkt.ACK, 0)},
		{"pod3 sends a RST of pod1's flow", "atkp3", atkTCP(t, client, server, testpkt.RST, 0)},
		{"pod3 sends a FIN of pod1's flow", "atkp3", atkTCP(t, client, server, testpkt.FIN|testpkt.ACK, 0)},
		{"pod3 sends pod2's SYN-ACK", "atkp3", atkTCP(t, server, client, testpkt.SYN|testpkt.ACK, 0)},
		{"pod3 sends pod2's data", "atkp3", atkTCP(t, server, client, testpkt.PSH|testpkt.ACK, 10)},
		{"pod3 sends pod2's SYN to pod1", "atkp3", atkTCP(t, server, client, testpkt.SYN, 0)},
		{"pod1 sends pod2's reply", "atkp1", atkTCP(t, server, client, testpkt.ACK, 0)},
		{"pod1 sends a SYN as pod2", "atkp1", atkTCP(t, server, client, testpkt.SYN, 0)},
		{"pod2 sends pod1's data", "atkp2", atkTCP(t, client, server, testpkt.ACK, 0)},
		{"pod3 sends UDP as pod1", "atkp3", udp(ap(n.pod1, 53), ap(n.pod2, 53))},
		{"pod3 pings as pod2", "atkp3", testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod2, n.pod1, 7, 1, false))},
		{"pod3 sends from an unrouted address", "atkp3", atkTCP(t, ap(n.unrouted, 1000), server, testpkt.SYN, 0)},
		{"pod3 sends from a remote node's workload", "atkp3", atkTCP(t, ap(n.remo, 1000), server, testpkt.SYN, 0)},
		{"pod3 sends from another node", "atkp3", atkTCP(t, ap(netip.MustParseAddr("192.168.1.2"), 1000), server, testpkt.SYN, 0)},
		{"pod3 sends from the node's address", "atkp3", atkTCP(t, ap(n.node, 1000), server, testpkt.SYN, 0)},
		{"pod3 sends from the node's address to the node", "atkp3", udp(ap(n.node, 53), ap(n.node, 53))},
		{"pod3 sends from 0.0.0.0", "atkp3", udp(ap(netip.IPv4Unspecified(), 68), ap(netip.MustParseAddr("255.255.255.255"), 67))},
		{"pod3 sends from broadcast", "atkp3", udp(ap(netip.MustParseAddr("255.255.255.255"), 1), server)},
		{"pod3 sends from its neighbour in the /24", "atkp3", atkTCP(t, ap(netip.MustParseAddr("10.8.0.4"), 1000), server, testpkt.SYN, 0)},
	}
	for _, c := range cases {
		e.expect(c.name, c.iface, bpf.HookIngress, c.frame, bpf.ReasonDroppedRPF)
	}
	after, _ := e.ctEntry(key)
	if diff := cmp.Diff(before, after, ctCmp); diff != "" {
		t.Errorf("spoofed packets changed the victim's entry (-before +after):\n%s", diff)
	}
	for _, s := range []struct {
		name, iface string
		hook        bpf.Hook
		frame       []byte
	}{
		{"victim's data leaves pod1", "atkp1", bpf.HookIngress, atkTCP(t, client, server, testpkt.ACK, 10)},
		{"victim's data reaches pod2", "atkp2", bpf.HookEgress, atkTCP(t, client, server, testpkt.ACK, 10)},
		{"victim's reply leaves pod2", "atkp2", bpf.HookIngress, atkTCP(t, server, client, testpkt.ACK, 10)},
		{"victim's reply reaches pod1", "atkp1", bpf.HookEgress, atkTCP(t, server, client, testpkt.ACK, 10)},
	} {
		e.expect(s.name, s.iface, s.hook, s.frame, bpf.ReasonAcceptedEstablished)
	}
}

// TestHostSpoofedSYNKeepsLegs sends, at a host interface, SYNs and other
// packets carrying the tuples of flows that belong to others. The host's
// own policy would allow them; the host interface's reverse-path check
// drops them, since a packet entering the node from outside never comes
// from one of its workloads or from the node itself. They must not move
// the victims' legs: every leg keeps its interface binding, the victims'
// packets keep passing where they did, and each keeps being counted once
// on its leg.
//
// The victims are a flow between two workloads, a flow from the node
// itself to a workload (only a TC egress hook sees it), and a flow from a
// workload to the node.
func TestHostSpoofedSYNKeepsLegs(t *testing.T) {
	n := atkNewSpoofNet(t)
	e := n.e
	type victim struct {
		name           string
		client, server netip.AddrPort
		// cif is where the client's packets leave (TC ingress) or ""
		// for the node itself; sif likewise for the server.
		cif, sif string
	}
	victims := []victim{
		{"pod1 to pod2", netip.AddrPortFrom(n.pod1, 41000), netip.AddrPortFrom(n.pod2, 80), "atkp1", "atkp2"},
		{"node to pod2", netip.AddrPortFrom(n.node, 42000), netip.AddrPortFrom(n.pod2, 80), "", "atkp2"},
		{"pod3 to node", netip.AddrPortFrom(n.pod3, 43000), netip.AddrPortFrom(n.node, 80), "atkp3", ""},
	}
	for _, v := range victims {
		t.Run(v.name, func(t *testing.T) {
			parent := e.t
			e.t = t
			defer func() { e.t = parent }()
			// send runs a victim packet through every hook of ours it
			// crosses: its sender's TC ingress, its receiver's TC egress.
			send := func(step string, fromClient bool, f testpkt.TCPFlags, payload int, want bpf.Reason) []byte {
				src, dst, from, to := v.client, v.server, v.cif, v.sif
				if !fromClient {
					src, dst, from, to = v.server, v.client, v.sif, v.cif
				}
				frame := atkTCP(t, src, dst, f, payload)
				if from != "" {
					e.expect(step+" leaves "+from, from, bpf.HookIngress, frame, want)
				}
				if to != "" {
					e.expect(step+" reaches "+to, to, bpf.HookEgress, frame, want)
				}
				return frame
			}
			send("SYN", true, testpkt.SYN, 0, bpf.ReasonAcceptedByPolicy)
			send("SYN-ACK", false, testpkt.SYN|testpkt.ACK, 0, bpf.ReasonAcceptedEstablished)
			send("ACK", true, testpkt.ACK, 0, bpf.ReasonAcceptedEstablished)
			key, clientDir := ctKeyOf(testpkt.ProtoTCP, v.client, v.server)
			before, ok := e.ctEntry(key)
			if !ok {
				t.Fatal("no entry for the victim's flow")
			}

			for _, a := range []struct {
				name       string
				fromClient bool
				flags      testpkt.TCPFlags
			}{
				{"SYN with the client's tuple", true, testpkt.SYN},
				{"SYN with the server's tuple", false, testpkt.SYN},
				{"ACK with the client's tuple", true, testpkt.ACK},
				{"ACK with the server's tuple", false, testpkt.ACK},
			} {
				src, dst := v.client, v.server
				if !a.fromClient {
					src, dst = v.server, v.client
				}
				e.expect("spoofed "+a.name+" at the host interface", "atkhif", bpf.HookIngress, atkTCP(t, src, dst, a.flags, 0), bpf.ReasonDroppedRPF)
			}
			after, _ := e.ctEntry(key)
			if diff := cmp.Diff(atkLegs(before), atkLegs(after)); diff != "" {
				t.Errorf("spoofed packets at the host interface moved the victim's legs (-before +after):\n%s", diff)
			}

			// The victim's own packets still pass, and are counted once on
			// their legs.
			for _, p := range []struct {
				fromClient bool
				payload    int
			}{{true, 300}, {false, 700}, {true, 0}} {
				dir := clientDir
				if !p.fromClient {
					dir = 1 - clientDir
				}
				prev, _ := e.ctEntry(key)
				frame := send(fmt.Sprintf("victim's packet of %d bytes", p.payload), p.fromClient, testpkt.ACK, p.payload, bpf.ReasonAcceptedEstablished)
				cur, _ := e.ctEntry(key)
				gotP := atkLegOf(&cur, dir).Packets - atkLegOf(&prev, dir).Packets
				gotB := atkLegOf(&cur, dir).Bytes - atkLegOf(&prev, dir).Bytes
				if gotP != 1 || gotB != uint64(len(frame)) {
					t.Errorf("victim's packet of %d bytes from the %s: its leg gained %d packets and %d bytes, want 1 and %d",
						p.payload, map[bool]string{true: "client", false: "server"}[p.fromClient], gotP, gotB, len(frame))
				}
			}
		})
	}
}
