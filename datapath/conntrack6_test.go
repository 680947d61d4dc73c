package datapath

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// newHarness6 is newHarness with lo enforcing IPv6 and every IPv6 source
// routed to it.
func newHarness6(tb testing.TB) *harness {
	h := newHarness(tb)
	h.setRoute(workloadRoute("::/0", loIfindex))
	h.setLo(bpf.IfaceWorkload | bpf.IfaceReady | bpf.IfaceEnforceIPv6)
	return h
}

// TestTCPSequencesIPv6 is TestTCPSequences in IPv6.
func TestTCPSequencesIPv6(t *testing.T) {
	h := newHarness6(t)
	server := netip.MustParseAddrPort("[2001:db8::50]:80")
	clients := map[string]netip.AddrPort{
		"client is A": netip.MustParseAddrPort("[2001:db8::7]:40000"),
		"client is B": netip.MustParseAddrPort("[2001:db8::200]:40000"),
	}
	runTCPSequences(t, h, testpkt.TCPv6, server, clients)
}

// TestUDPAndICMPv6EchoFlows is TestUDPAndICMPEchoFlows in IPv6: a UDP flow
// and an ICMPv6 echo exchange opened at ingress and answered at egress,
// each entry checked after every packet.
func TestUDPAndICMPv6EchoFlows(t *testing.T) {
	h := newHarness6(t)
	client := netip.MustParseAddrPort("[2001:db8:1::9]:5353")
	server := netip.MustParseAddrPort("[2001:db8:1::1]:80")
	udpKey, _ := ctKeyOf(testpkt.ProtoUDP, client, server)
	// Echo: the identifier on the requester's side, the identifier plus one on the other.
	echoKey, _ := ctKeyOf(testpkt.ProtoICMPv6, netip.AddrPortFrom(client.Addr(), 0x4242), netip.AddrPortFrom(server.Addr(), 0x4243))
	tests := []struct {
		name           string
		key            bpf.CTKey
		request, reply []byte
	}{
		{"udp", udpKey,
			testpkt.MustBytes(t, testpkt.UDPv6(client, server, []byte("query"))),
			testpkt.MustBytes(t, testpkt.UDPv6(server, client, []byte("answer!")))},
		{"icmpv6 echo", echoKey,
			testpkt.MustBytes(t, testpkt.ICMPv6Echo(client.Addr(), server.Addr(), 0x4242, 1, false)),
			testpkt.MustBytes(t, testpkt.ICMPv6Echo(server.Addr(), client.Addr(), 0x4242, 1, true))},
	}
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
				h.expect(t, s.hook, s.frame, s.reason, "packet", i)
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

// expect runs frame at lo's hook and checks its verdict and its one
// counted reason.
func (h *harness) expect(t *testing.T, hook bpf.Hook, frame []byte, want bpf.Reason, step string, i int) {
	t.Helper()
	before := h.counters(loIfindex, hook)
	if ret := h.run(hookProg(hook), frame); ret != verdictOf(want) {
		t.Errorf("%s %d: verdict %d, want %d", step, i, ret, verdictOf(want))
	}
	if diff := cmp.Diff(one(want), reasonDelta(before, h.counters(loIfindex, hook))); diff != "" {
		t.Errorf("%s %d: counters (-want +got):\n%s", step, i, diff)
	}
}

// TestICMPv6EchoKeepsDirection checks the echo keying's anti-bypass
// property in IPv6: after A pings B, B's reply to A's identifier is
// established, but B's request to A of any identifier (the same, plus one,
// minus one) meets policy, as does a reply to an identifier A never used.
func TestICMPv6EchoKeepsDirection(t *testing.T) {
	h := newHarness6(t)
	a := netip.MustParseAddr("2001:db8:2::a")
	b := netip.MustParseAddr("2001:db8:2::b")
	const id = 0x1000
	echo := func(src, dst netip.Addr, id uint16, reply bool) []byte {
		return testpkt.MustBytes(t, testpkt.ICMPv6Echo(src, dst, id, 1, reply))
	}
	h.expect(t, bpf.HookIngress, echo(a, b, id, false), bpf.ReasonAcceptedByPolicy, "A's request", 0)
	h.expect(t, bpf.HookEgress, echo(b, a, id, true), bpf.ReasonAcceptedEstablished, "B's reply", 0)
	for i, j := range []uint16{id, id + 1, id - 1} {
		// At egress, B's request has no approved leg: policy decides it,
		// and the stub policy allows port 0 (a new approval, not a pass).
		h.expect(t, bpf.HookEgress, echo(b, a, j, false), bpf.ReasonAcceptedByPolicy, "B's request", i)
	}
	h.expect(t, bpf.HookEgress, echo(b, a, id+1, true), bpf.ReasonAcceptedByPolicy, "B's reply to another identifier", 0)
}

// TestICMPv6ErrorsRelated opens a TCP flow and an echo from a workload
// behind lo and sends ICMPv6 errors back to it: quoting the flow's
// packets, they pass lo's egress hook as related (a packet too big
// exactly 1280 bytes long too); at the ingress hook, where the flow's
// replies do not pass, or quoting an untracked flow, a packet to another
// address, a quote with extension headers, or longer than 1280 bytes, or
// longer than the quoted packet, each meets policy instead (which allows
// ICMPv6 here, so the reason tells the two apart).
func TestICMPv6ErrorsRelated(t *testing.T) {
	h := newHarness6(t)
	client := netip.MustParseAddrPort("[2001:db8:3::10]:40000")
	server := netip.MustParseAddrPort("[2001:db8:4::20]:80")
	router := netip.MustParseAddr("2001:db8:ff::1")
	syn := testpkt.MustBytes(t, testpkt.TCPv6(client, server, testpkt.SYN, nil))
	big := testpkt.MustBytes(t, testpkt.TCPv6(client, server, testpkt.ACK, make([]byte, 1400)))
	ping := testpkt.MustBytes(t, testpkt.ICMPv6Echo(client.Addr(), server.Addr(), 77, 1, false))
	h.expect(t, bpf.HookIngress, syn, bpf.ReasonAcceptedByPolicy, "SYN", 0)
	h.expect(t, bpf.HookIngress, ping, bpf.ReasonAcceptedByPolicy, "ping", 0)
	h.expect(t, bpf.HookIngress, big, bpf.ReasonAcceptedEstablished, "data", 0)

	tooBig := func(quoted []byte) []byte {
		return testpkt.MustBytes(t, testpkt.ICMPv6TooBig(router, client.Addr(), 1280, quoted))
	}
	unreach := func(dst netip.Addr, quoted []byte) []byte {
		return testpkt.MustBytes(t, testpkt.ICMPv6Error(router, dst, testpkt.ICMPv6DestUnreachable, 0, quoted))
	}
	withHBH := func() []byte {
		p := testpkt.TCPv6(client, server, testpkt.SYN, nil)
		p.IPv6.Ext = []testpkt.IPv6Ext{testpkt.ExtHopByHop(nil)}
		return testpkt.MustBytes(t, p)
	}()
	other := testpkt.MustBytes(t, testpkt.TCPv6(netip.AddrPortFrom(client.Addr(), 40001), server, testpkt.SYN, nil))
	fullQuote := testpkt.QuoteIPv6(big)
	if n := len(tooBig(fullQuote)) - 14; n != 1280 {
		t.Fatalf("packet too big of %d bytes, want 1280", n)
	}
	cases := []struct {
		name  string
		hook  bpf.Hook
		frame []byte
		want  bpf.Reason
	}{
		{"unreachable quoting the SYN", bpf.HookEgress, unreach(client.Addr(), testpkt.QuoteIPv6(syn)), bpf.ReasonAcceptedRelated},
		{"time exceeded quoting the ping", bpf.HookEgress, testpkt.MustBytes(t, testpkt.ICMPv6Error(router, client.Addr(), testpkt.ICMPv6TimeExceeded, 0, testpkt.QuoteIPv6(ping))), bpf.ReasonAcceptedRelated},
		{"packet too big of 1280 bytes", bpf.HookEgress, tooBig(fullQuote), bpf.ReasonAcceptedRelated},
		{"parameter problem quoting the SYN", bpf.HookEgress, testpkt.MustBytes(t, testpkt.ICMPv6Problem(router, client.Addr(), 0, 6, testpkt.QuoteIPv6(syn))), bpf.ReasonAcceptedRelated},
		{"at ingress, where replies do not pass", bpf.HookIngress, unreach(client.Addr(), testpkt.QuoteIPv6(syn)), bpf.ReasonAcceptedByPolicy},
		{"quoting an untracked flow", bpf.HookEgress, unreach(client.Addr(), testpkt.QuoteIPv6(other)), bpf.ReasonAcceptedByPolicy},
		{"to another address than the quoted source", bpf.HookEgress, unreach(netip.MustParseAddr("2001:db8:3::11"), testpkt.QuoteIPv6(syn)), bpf.ReasonAcceptedByPolicy},
		{"quote with a hop-by-hop header", bpf.HookEgress, unreach(client.Addr(), testpkt.QuoteIPv6(withHBH)), bpf.ReasonAcceptedByPolicy},
		{"longer than 1280 bytes", bpf.HookEgress, tooBig(append(append([]byte(nil), fullQuote...), make([]byte, 8)...)), bpf.ReasonAcceptedByPolicy},
		{"quote longer than its packet", bpf.HookEgress, unreach(client.Addr(), append(testpkt.QuoteIPv6(syn), make([]byte, 8)...)), bpf.ReasonAcceptedByPolicy},
		{"quote cut inside the L4 header", bpf.HookEgress, unreach(client.Addr(), testpkt.QuoteIPv6(syn)[:40+7]), bpf.ReasonAcceptedByPolicy},
	}
	for i, c := range cases {
		h.expect(t, c.hook, c.frame, c.want, c.name, i)
	}
}
