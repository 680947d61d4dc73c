package datapath

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// ctCmp compares entries on everything but the timestamps, which
// checkTimes covers.
var ctCmp = cmp.Options{
	cmpopts.IgnoreUnexported(bpf.CTValue{}, bpf.CTLeg{}, bpf.CTKey{}),
	cmpopts.IgnoreFields(bpf.CTValue{}, "Created", "LastSeen"),
}

func checkTimes(t *testing.T, step string, v bpf.CTValue, prevLastSeen uint64) {
	t.Helper()
	if v.Created == 0 || v.LastSeen < v.Created || v.LastSeen < prevLastSeen {
		t.Errorf("%s: timestamps created=%d last_seen=%d (previous last_seen %d)", step, v.Created, v.LastSeen, prevLastSeen)
	}
}

// flowStep is one packet of a flow: from the client or the server, run at
// a hook, with what it should do to the verdict and the entry.
type flowStep struct {
	fromClient bool
	flags      testpkt.TCPFlags
	payload    int
	legFlags   bpf.CTLegFlags // bits the packet's leg gains
}

// TestTCPSequences drives handshake, data, FIN and RST sequences through
// both hooks, with the client on either side of the canonical order, and
// checks the verdict, the counter and the whole conntrack entry after every
// packet.
func TestTCPSequences(t *testing.T) {
	h := newHarness(t)
	server := netip.MustParseAddrPort("10.0.0.50:80")
	clients := map[string]netip.AddrPort{
		"client is A": netip.MustParseAddrPort("10.0.0.7:40000"),
		"client is B": netip.MustParseAddrPort("10.0.0.200:40000"),
	}
	runTCPSequences(t, h, testpkt.TCPv4, server, clients)
}

// runTCPSequences runs the handshake, data, FIN and RST sequences of
// TestTCPSequences in packets tcp builds, opened at either hook, from each
// client to server.
func runTCPSequences(t *testing.T, h *harness, tcp tcpBuilder, server netip.AddrPort, clients map[string]netip.AddrPort) {
	handshakeFin := []flowStep{
		{true, testpkt.SYN, 0, bpf.CTLegSYN},
		{false, testpkt.SYN | testpkt.ACK, 0, bpf.CTLegSYN | bpf.CTLegACK},
		{true, testpkt.ACK, 0, bpf.CTLegACK},
		{true, testpkt.PSH | testpkt.ACK, 100, bpf.CTLegACK},
		{false, testpkt.PSH | testpkt.ACK, 1400, bpf.CTLegACK},
		{true, testpkt.FIN | testpkt.ACK, 0, bpf.CTLegFIN | bpf.CTLegACK},
		{false, testpkt.FIN | testpkt.ACK, 0, bpf.CTLegFIN | bpf.CTLegACK},
		{true, testpkt.ACK, 0, bpf.CTLegACK},
	}
	handshakeRst := []flowStep{
		{true, testpkt.SYN, 0, bpf.CTLegSYN},
		{false, testpkt.SYN | testpkt.ACK, 0, bpf.CTLegSYN | bpf.CTLegACK},
		{true, testpkt.ACK, 0, bpf.CTLegACK},
		{false, testpkt.RST, 0, bpf.CTLegRST},
		{true, testpkt.RST | testpkt.ACK, 0, bpf.CTLegRST | bpf.CTLegACK},
	}
	port := uint16(40000)
	for _, openAt := range []bpf.Hook{bpf.HookIngress, bpf.HookEgress} {
		for clientName, client := range clients {
			for seqName, steps := range map[string][]flowStep{"fin": handshakeFin, "rst": handshakeRst} {
				port++ // a fresh flow per sequence
				client := netip.AddrPortFrom(client.Addr(), port)
				name := fmt.Sprintf("open at %s/%s/%s", openAt.String(), clientName, seqName)
				t.Run(name, func(t *testing.T) { runTCPSequence(t, h, tcp, openAt, client, server, steps) })
			}
		}
	}
}

func otherHook(hk bpf.Hook) bpf.Hook { return 1 - hk }

// tcpBuilder builds a TCP packet of one family (testpkt.TCPv4 or TCPv6).
type tcpBuilder func(src, dst netip.AddrPort, flags testpkt.TCPFlags, payload []byte) testpkt.Packet

func runTCPSequence(t *testing.T, h *harness, tcp tcpBuilder, openAt bpf.Hook, client, server netip.AddrPort, steps []flowStep) {
	key, clientDir := ctKeyOf(testpkt.ProtoTCP, client, server)
	want := bpf.CTValue{Type: bpf.CTNormal}
	legOf := func(v *bpf.CTValue, dir bpf.CTDir) *bpf.CTLeg {
		if dir == bpf.CTDirAToB {
			return &v.AToB
		}
		return &v.BToA
	}
	// The opening hook's approval: at ingress the client's leg may enter
	// lo; at egress the client's leg may leave and replies may enter lo.
	if openAt == bpf.HookIngress {
		legOf(&want, clientDir).Flags |= bpf.CTLegIngressOK
		legOf(&want, clientDir).Ifindex = loIfindex
	} else {
		legOf(&want, clientDir).Flags |= bpf.CTLegEgressOK
		legOf(&want, clientDir).EgressIfindex = loIfindex
		legOf(&want, 1-clientDir).Flags |= bpf.CTLegIngressOK
		legOf(&want, 1-clientDir).Ifindex = loIfindex
	}
	var lastSeen uint64
	for i, s := range steps {
		src, dst, dir, hook := client, server, clientDir, openAt
		if !s.fromClient {
			src, dst, dir, hook = server, client, 1-clientDir, otherHook(openAt)
		}
		frame := testpkt.MustBytes(t, tcp(src, dst, s.flags, make([]byte, s.payload)))
		wantReason := bpf.ReasonAcceptedEstablished
		if i == 0 {
			wantReason = bpf.ReasonAcceptedByPolicy
		}
		step := fmt.Sprintf("packet %d (%v %s at %s)", i, s.flags, map[bool]string{true: "from client", false: "from server"}[s.fromClient], (hook))

		before := h.counters(loIfindex, hook)
		if ret := h.run(hookProg(hook), frame); ret != tcActOK {
			t.Fatalf("%s: verdict %d, want TC_ACT_OK", step, ret)
		}
		if diff := cmp.Diff(map[bpf.Reason]uint64{wantReason: 1}, reasonDelta(before, h.counters(loIfindex, hook))); diff != "" {
			t.Errorf("%s: counters (-want +got):\n%s", step, diff)
		}

		leg := legOf(&want, dir)
		leg.Packets++
		leg.Bytes += uint64(len(frame))
		leg.Flags |= s.legFlags
		got, ok := h.ctEntry(key)
		if !ok {
			t.Fatalf("%s: no conntrack entry for %+v", step, key)
		}
		if diff := cmp.Diff(want, got, ctCmp); diff != "" {
			t.Errorf("%s: conntrack entry (-want +got):\n%s", step, diff)
		}
		checkTimes(t, step, got, lastSeen)
		lastSeen = got.LastSeen
	}
}

// TestUDPAndICMPEchoFlows opens a UDP flow and an ICMP echo exchange at
// ingress, answers at egress, and checks each entry after every packet.
func TestUDPAndICMPEchoFlows(t *testing.T) {
	h := newHarness(t)
	client := netip.MustParseAddrPort("10.1.0.9:5353")
	server := netip.MustParseAddrPort("10.1.0.1:80")
	tests := []struct {
		name    string
		key     bpf.CTKey
		request []byte
		reply   []byte
	}{
		{
			name:    "udp",
			request: testpkt.MustBytes(t, testpkt.UDPv4(client, server, []byte("query"))),
			reply:   testpkt.MustBytes(t, testpkt.UDPv4(server, client, []byte("answer!"))),
		},
		{
			name:    "icmp echo",
			request: testpkt.MustBytes(t, testpkt.ICMPv4Echo(client.Addr(), server.Addr(), 0x4242, 1, false)),
			reply:   testpkt.MustBytes(t, testpkt.ICMPv4Echo(server.Addr(), client.Addr(), 0x4242, 1, true)),
		},
	}
	tests[0].key, _ = ctKeyOf(testpkt.ProtoUDP, client, server)
	// Echo: the identifier on the requester's side, the identifier plus one on the other.
	tests[1].key, _ = ctKeyOf(testpkt.ProtoICMPv4, netip.AddrPortFrom(client.Addr(), 0x4242), netip.AddrPortFrom(server.Addr(), 0x4243))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// server < client, so the client is B.
			want := bpf.CTValue{Type: bpf.CTNormal, BToA: bpf.CTLeg{Flags: bpf.CTLegIngressOK, Ifindex: loIfindex}}
			steps := []struct {
				hook   bpf.Hook
				frame  []byte
				leg    *bpf.CTLeg
				reason bpf.Reason
			}{
				{bpf.HookIngress, tt.request, &want.BToA, bpf.ReasonAcceptedByPolicy},
				{bpf.HookEgress, tt.reply, &want.AToB, bpf.ReasonAcceptedEstablished},
				{bpf.HookIngress, tt.request, &want.BToA, bpf.ReasonAcceptedEstablished},
				{bpf.HookEgress, tt.reply, &want.AToB, bpf.ReasonAcceptedEstablished},
			}
			for i, s := range steps {
				before := h.counters(loIfindex, s.hook)
				if ret := h.run(hookProg(s.hook), s.frame); ret != tcActOK {
					t.Fatalf("packet %d: verdict %d, want TC_ACT_OK", i, ret)
				}
				if diff := cmp.Diff(map[bpf.Reason]uint64{s.reason: 1}, reasonDelta(before, h.counters(loIfindex, s.hook))); diff != "" {
					t.Errorf("packet %d: counters (-want +got):\n%s", i, diff)
				}
				s.leg.Packets++
				s.leg.Bytes += uint64(len(s.frame))
				got, ok := h.ctEntry(tt.key)
				if !ok {
					t.Fatalf("packet %d: no conntrack entry for %+v", i, tt.key)
				}
				if diff := cmp.Diff(want, got, ctCmp); diff != "" {
					t.Errorf("packet %d: conntrack entry (-want +got):\n%s", i, diff)
				}
			}
		})
	}
}
