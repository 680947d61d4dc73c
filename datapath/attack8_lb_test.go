package datapath

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// Attack8 attacks the service stage (lb.h, rewrite.h, reject.h) at lo:
// NodePorts reached through the wildcard address, refusals reflected to
// groups or built from odd packets, checksums of translated packets,
// fragments and mid-flow segments to frontends, and tuples that collide
// with a NAT flow's. attack8_lbspoof_test.go forges packets between
// interfaces; attack8_lbgaps_test.go holds the findings outside these
// headers.

// rawCounted runs frame at lo's hook, checks the verdict and the one
// reason counted, and returns the frame as it left the program.
func (h *lbHarness) rawCounted(what string, hook bpf.Hook, frame []byte, verdict uint32, reason bpf.Reason) []byte {
	h.t.Helper()
	before := h.counters(loIfindex, hook)
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+512)}
	ret, err := h.program(hookProg(hook)).Run(opts)
	if err != nil {
		h.t.Fatalf("run: %v", err)
	}
	delta := reasonDelta(before, h.counters(loIfindex, hook))
	if ret != verdict {
		h.t.Errorf("%s: verdict %d, want %d (counted %v)", what, ret, verdict, delta)
	}
	if diff := cmp.Diff(map[bpf.Reason]uint64{reason: 1}, delta); diff != "" {
		h.t.Errorf("%s: counters (-want +got):\n%s", what, diff)
	}
	return opts.DataOut
}

// untouched runs p, checks verdict and reason, and that the program left
// the frame as it was.
func (h *lbHarness) untouched(what string, hook bpf.Hook, p testpkt.Packet, verdict uint32, reason bpf.Reason) {
	h.t.Helper()
	frame := testpkt.MustBytes(h.t, p)
	if out := h.rawCounted(what, hook, frame, verdict, reason); !bytes.Equal(out, frame) {
		h.t.Errorf("%s: the program changed the frame it %s:\n got %x\nwant %x", what, reasonVerb(verdict), out, frame)
	}
}

func reasonVerb(verdict uint32) string {
	if verdict == tcActShot {
		return "dropped"
	}
	return "passed"
}

// parsed parses a program's output, failing the test if it does not.
func parsed(t *testing.T, out []byte) *testpkt.Packet {
	t.Helper()
	p, err := testpkt.Parse(out)
	if err != nil {
		t.Fatalf("parse %x: %v", out, err)
	}
	return p
}

// noNAT fails the test if conntrack holds a NAT entry under the tuple
// from client to frontend, or any entry under the one from client to
// backend.
func (h *lbHarness) noNAT(proto uint8, client, frontend, backend string) {
	h.t.Helper()
	c := netip.MustParseAddrPort(client)
	key, _ := ctKeyOf(proto, c, netip.MustParseAddrPort(frontend))
	if v, ok := h.ctEntry(key); ok && v.Type != bpf.CTNormal {
		h.t.Errorf("conntrack has a %v entry under %s -> %s", v.Type, client, frontend)
	}
	key, _ = ctKeyOf(proto, c, netip.MustParseAddrPort(backend))
	if v, ok := h.ctEntry(key); ok {
		h.t.Errorf("conntrack has a %v entry under %s -> %s", v.Type, client, backend)
	}
}

// TestAttack8NodePortWildcardDestination: a NodePort is keyed by its
// family's wildcard address, so a packet sent to 0.0.0.0 or :: itself
// used to find it in the exact lookup and be DNATed, though no node
// has that address (fixed in lb.h: an exact hit on a NodePort is held to
// the node-address test). The packet goes to policy as it is; one to a
// node address is still DNATed.
func TestAttack8NodePortWildcardDestination(t *testing.T) {
	h := newLBHarness(t)
	h.setRoute(routes.Route{Prefix: netip.MustParsePrefix("10.0.0.100/32"), Flags: routes.FlagLocalHost})
	h.setRoute(routes.Route{Prefix: netip.MustParsePrefix("fd00::100/128"), Flags: routes.FlagLocalHost})
	for _, np := range []struct{ any, node, client, backend string }{
		{"0.0.0.0", "10.0.0.100:30080", "10.0.0.9:40000", "10.1.0.8:8080"},
		{"::", "[fd00::100]:30080", "[fd00::9]:40000", "[fd00::1:8]:8080"},
	} {
		wild := netip.AddrPortFrom(netip.MustParseAddr(np.any), 30080).String()
		svc := oneBackend(wild, np.backend, nat.ProtoTCP)
		svc.Frontends[0].NodePort, svc.Frontends[0].External = true, true
		h.sync(map[string]nat.Service{"np": svc})
		for _, p := range []testpkt.Packet{tcpSeg(np.client, wild, testpkt.SYN, 1, 0), udp(np.client, wild, []byte("x"))} {
			p.Eth.Dst = testpkt.DefaultDstMAC
			h.untouched("to the wildcard "+wild, bpf.HookIngress, p, tcActOK, bpf.ReasonAcceptedByPolicy)
		}
		h.noNAT(nat.ProtoTCP, np.client, wild, np.backend)
		got := h.counted(bpf.HookIngress, tcpSeg(np.client, np.node, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		wantEndpoints(t, "to the node address", got, np.client, np.backend)
	}
}

// TestAttack8RejectUnanswerable: a refusal is never sent to a group.
// A source that names no single host (unspecified, loopback, multicast,
// limited broadcast, class E) or a frame to or from a group MAC address
// (which every node of the link receives, and each would answer) is
// dropped, counted, and left as it was, not turned into a RST or port
// unreachable aimed at the group (fixed in reject.h:
// sl_reject_answerable). A unicast client is still answered.
func TestAttack8RejectUnanswerable(t *testing.T) {
	h := newLBHarness(t)
	h.sync(map[string]nat.Service{
		"tcp":  {Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("10.96.0.3"), Port: 80, Protocol: nat.ProtoTCP}}},
		"udp":  {Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("10.96.0.3"), Port: 53, Protocol: nat.ProtoUDP}}},
		"tcp6": {Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("fd00:96::3"), Port: 80, Protocol: nat.ProtoTCP}}},
		"udp6": {Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("fd00:96::3"), Port: 53, Protocol: nat.ProtoUDP}}},
	})
	front := func(src netip.Addr, port uint16) string {
		if src.Is4() {
			return netip.AddrPortFrom(netip.MustParseAddr("10.96.0.3"), port).String()
		}
		return netip.AddrPortFrom(netip.MustParseAddr("fd00:96::3"), port).String()
	}
	for _, s := range []string{"0.0.0.0", "0.1.2.3", "127.0.0.1", "224.0.0.1", "239.1.2.3", "240.0.0.1", "255.255.255.255", "::", "::1", "ff02::1", "ff0e::5"} {
		src := netip.AddrPortFrom(netip.MustParseAddr(s), 40001).String()
		a := netip.MustParseAddr(s)
		h.untouched("TCP from "+s, bpf.HookIngress, tcpSeg(src, front(a, 80), testpkt.SYN, 1000, 0), tcActShot, bpf.ReasonDroppedNoBackend)
		h.untouched("UDP from "+s, bpf.HookIngress, udp(src, front(a, 53), []byte("q")), tcActShot, bpf.ReasonDroppedNoBackend)
	}
	for _, mac := range []struct {
		name     string
		dst, src net.HardwareAddr
	}{
		{"to broadcast", net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, testpkt.DefaultSrcMAC},
		{"to IPv4 multicast", net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}, testpkt.DefaultSrcMAC},
		{"to IPv6 multicast", net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}, testpkt.DefaultSrcMAC},
		{"from a group", testpkt.DefaultDstMAC, net.HardwareAddr{0x03, 0x00, 0x00, 0x00, 0x00, 0x01}},
	} {
		for i, p := range []testpkt.Packet{
			tcpSeg("10.0.0.7:40001", "10.96.0.3:80", testpkt.SYN, 1000, 0),
			udp("10.0.0.7:40001", "10.96.0.3:53", []byte("q")),
			tcpSeg("[fd00::7]:40001", "[fd00:96::3]:80", testpkt.SYN, 1000, 0),
			udp("[fd00::7]:40001", "[fd00:96::3]:53", []byte("q")),
		} {
			p.Eth.Dst, p.Eth.Src = mac.dst, mac.src
			h.untouched(mac.name+" "+[]string{"TCP", "UDP", "TCPv6", "UDPv6"}[i], bpf.HookIngress, p, tcActShot, bpf.ReasonDroppedNoBackend)
		}
	}
	got := h.counted(bpf.HookIngress, tcpSeg("10.0.0.7:40001", "10.96.0.3:80", testpkt.SYN, 1000, 0), tcActRedirect, bpf.ReasonRejectedNoBackend)
	wantEndpoints(t, "a unicast client's RST", got, "10.96.0.3:80", "10.0.0.7:40001")
}

// fourRefusing is a TCP and a UDP frontend without backends in each
// family: 10.96.0.3 and fd00:96::3, ports 80 and 53.
func (h *lbHarness) fourRefusing() {
	h.t.Helper()
	svcs := map[string]nat.Service{}
	for name, f := range map[string]string{"tcp": "10.96.0.3:80", "udp": "10.96.0.3:53", "tcp6": "[fd00:96::3]:80", "udp6": "[fd00:96::3]:53"} {
		ap := netip.MustParseAddrPort(f)
		proto := uint8(nat.ProtoTCP)
		if name[:3] == "udp" {
			proto = nat.ProtoUDP
		}
		svcs[name] = nat.Service{Frontends: []nat.Frontend{{Addr: ap.Addr(), Port: ap.Port(), Protocol: proto}}}
	}
	h.sync(svcs)
}

// TestAttack8RejectTCPShapes: the RST that refuses a segment is a bare
// 20-byte TCP header in a 20-byte IPv4 or 40-byte IPv6 header, whatever
// the segment carried (TCP options, payload, IPv4 options, IPv6
// extension headers, Ethernet padding), from the frontend back to the
// client's MAC, with valid checksums, acknowledging exactly what the
// segment occupied (payload, SYN and FIN; padding not), or at the
// segment's acknowledgment number when it had one.
func TestAttack8RejectTCPShapes(t *testing.T) {
	h := newLBHarness(t)
	h.fourRefusing()
	const c4, f4, c6, f6 = "10.0.0.7:40001", "10.96.0.3:80", "[fd00::7]:40001", "[fd00:96::3]:80"
	withOpts := tcpSeg(c4, f4, testpkt.SYN, 5000, 0)
	withOpts.TCP.Options = []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 7}
	withOpts.Payload = []byte("0123456789")
	ipOpts := tcpSeg(c4, f4, testpkt.SYN, 7000, 0)
	ipOpts.IPv4.Options = []byte{1, 1, 1, 0, 0x94, 4, 0, 0} // NOPs, router alert
	synFin := tcpSeg(c4, f4, testpkt.SYN|testpkt.FIN, 100, 0)
	synFin.Payload = []byte("abc")
	padded := tcpSeg(c4, f4, testpkt.SYN, 9000, 0)
	padded.Trailer = make([]byte, 6)
	v6dst := tcpSeg(c6, f6, testpkt.SYN, 300, 0)
	v6dst.IPv6.Ext = []testpkt.IPv6Ext{{Type: testpkt.ProtoDestOpts}}
	v6hbh := tcpSeg(c6, f6, testpkt.ACK|testpkt.PSH, 10, 4242)
	v6hbh.IPv6.Ext = []testpkt.IPv6Ext{{Type: testpkt.ProtoHopByHop}, {Type: testpkt.ProtoDestOpts, Data: make([]byte, 14)}}
	v6hbh.Payload = []byte("data")
	for _, c := range []struct {
		name     string
		p        testpkt.Packet
		flags    testpkt.TCPFlags
		seq, ack uint32
	}{
		{"TCP options and payload", withOpts, testpkt.RST | testpkt.ACK, 0, 5011},
		{"IPv4 options", ipOpts, testpkt.RST | testpkt.ACK, 0, 7001},
		{"SYN, FIN and payload", synFin, testpkt.RST | testpkt.ACK, 0, 105},
		{"Ethernet padding", padded, testpkt.RST | testpkt.ACK, 0, 9001},
		{"IPv6 destination options", v6dst, testpkt.RST | testpkt.ACK, 0, 301},
		{"IPv6 hop-by-hop, options and payload", v6hbh, testpkt.RST, 4242, 0},
	} {
		out := h.rawCounted(c.name, bpf.HookIngress, testpkt.MustBytes(t, c.p), tcActRedirect, bpf.ReasonRejectedNoBackend)
		got := parsed(t, out)
		v6 := c.p.IPv6 != nil
		client, front := c4, f4
		wantLen := testpkt.EthLen + testpkt.IPv4MinLen + testpkt.TCPMinLen
		if v6 {
			client, front = c6, f6
			wantLen = testpkt.EthLen + testpkt.IPv6HdrLen + testpkt.TCPMinLen
		}
		if len(out) != wantLen {
			t.Errorf("%s: answer is %d bytes, want %d", c.name, len(out), wantLen)
		}
		wantEndpoints(t, c.name, got, front, client)
		if got.TCP == nil || got.TCP.Flags != c.flags || got.TCP.Seq != c.seq || got.TCP.Ack != c.ack ||
			got.TCP.Options != nil || got.Payload != nil || got.Trailer != nil {
			t.Errorf("%s: answer %+v payload %x trailer %x, want %v seq %d ack %d, bare", c.name, got.TCP, got.Payload, got.Trailer, c.flags, c.seq, c.ack)
		}
		if (got.IPv4 != nil && got.IPv4.Options != nil) || (got.IPv6 != nil && got.IPv6.Ext != nil) {
			t.Errorf("%s: answer keeps the IP options or extension headers", c.name)
		}
		if !bytes.Equal(got.Eth.Dst, testpkt.DefaultSrcMAC) || !bytes.Equal(got.Eth.Src, testpkt.DefaultDstMAC) {
			t.Errorf("%s: answer %v -> %v, want the MACs swapped", c.name, got.Eth.Src, got.Eth.Dst)
		}
	}
}

// TestAttack8RejectUDPShapes: a port unreachable quotes the refused
// datagram's start as it arrived (a zero checksum, extension headers and
// all), is 36 or 56 bytes of ICMP whatever the datagram's size, and
// verifies; a datagram whose IPv4 options would not fit the quote is
// dropped, counted, unchanged.
func TestAttack8RejectUDPShapes(t *testing.T) {
	h := newLBHarness(t)
	h.fourRefusing()
	const c4, f4, c6, f6 = "10.0.0.7:40001", "10.96.0.3:53", "[fd00::7]:40001", "[fd00:96::3]:53"
	zero := udp(c4, f4, []byte("query"))
	zero.UDP.NoChecksum = true
	big := udp(c4, f4, make([]byte, 1200))
	bare6 := udp(c6, f6, nil)
	ext6 := udp(c6, f6, []byte("query"))
	ext6.IPv6.Ext = []testpkt.IPv6Ext{{Type: testpkt.ProtoDestOpts}}
	for _, c := range []struct {
		name string
		p    testpkt.Packet
	}{{"zero checksum", zero}, {"1200-byte payload", big}, {"bare IPv6 header", bare6}, {"IPv6 destination options", ext6}} {
		wire := testpkt.MustBytes(t, c.p)
		out := h.rawCounted(c.name, bpf.HookIngress, wire, tcActRedirect, bpf.ReasonRejectedNoBackend)
		got := parsed(t, out)
		if c.p.IPv4 != nil {
			if got.ICMPv4 == nil || got.ICMPv4.Type != 3 || got.ICMPv4.Code != 3 || got.ICMPv4.BadChecksum || got.IPv4.BadChecksum || len(out) != 14+20+36 {
				t.Errorf("%s: answer %+v (%d bytes), want a verifying port unreachable of 70 bytes", c.name, got.ICMPv4, len(out))
			}
			if diff := cmp.Diff(wire[14:14+28], got.Payload); diff != "" {
				t.Errorf("%s: quote (-want +got):\n%s", c.name, diff)
			}
			continue
		}
		if got.ICMPv6 == nil || got.ICMPv6.Type != 1 || got.ICMPv6.Code != 4 || got.ICMPv6.BadChecksum || len(out) != 14+40+56 {
			t.Errorf("%s: answer %+v (%d bytes), want a verifying port unreachable of 110 bytes", c.name, got.ICMPv6, len(out))
		}
		if diff := cmp.Diff(wire[14:14+48], got.Payload); diff != "" {
			t.Errorf("%s: quote (-want +got):\n%s", c.name, diff)
		}
	}
	opts := udp(c4, f4, []byte("query"))
	opts.IPv4.Options = []byte{1, 1, 1, 1}
	h.untouched("UDP with IPv4 options", bpf.HookIngress, opts, tcActShot, bpf.ReasonDroppedNoBackend)
}

// TestAttack8MalformedToFrontend: packets to a frontend that the parser
// refuses never reach the service stage: no answer is built from them
// and no NAT entry is written; each is dropped, counted, unchanged. That
// holds for a frontend with backends and one without.
func TestAttack8MalformedToFrontend(t *testing.T) {
	h := newLBHarness(t)
	h.sync(map[string]nat.Service{
		"web":  oneBackend("10.96.0.20:80", "10.1.0.20:8080", nat.ProtoTCP),
		"dns":  oneBackend("10.96.0.20:53", "10.1.0.20:5353", nat.ProtoUDP),
		"dns6": oneBackend("[fd00:96::20]:53", "[fd00::1:20]:5353", nat.ProtoUDP),
		"none": {Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("10.96.0.21"), Port: 53, Protocol: nat.ProtoUDP}}},
		"nont": {Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("10.96.0.21"), Port: 80, Protocol: nat.ProtoTCP}}},
	})
	for _, front := range []string{"10.96.0.20", "10.96.0.21"} {
		shortUDP := udp("10.0.0.8:40000", front+":53", nil)
		shortUDP.IPv4.TotalLen = 24
		shortUDP.Trailer = []byte{0, 0, 0, 0}
		doffBig := tcpSeg("10.0.0.8:40000", front+":80", testpkt.SYN, 1, 0)
		doffBig.TCP.DataOffset = 15
		doffSmall := tcpSeg("10.0.0.8:40000", front+":80", testpkt.SYN, 1, 0)
		doffSmall.TCP.DataOffset = 4
		shortTCP := tcpSeg("10.0.0.8:40000", front+":80", testpkt.SYN, 1, 0)
		shortTCP.IPv4.TotalLen = 20 + 12
		longLen := udp("10.0.0.8:40000", front+":53", []byte("q"))
		longLen.IPv4.TotalLen = 200
		for _, c := range []struct {
			name   string
			p      testpkt.Packet
			reason bpf.Reason
		}{
			{"UDP of 4 bytes", shortUDP, bpf.ReasonDroppedShort},
			{"TCP data offset past the segment", doffBig, bpf.ReasonDroppedBadTCPDoff},
			{"TCP data offset 4", doffSmall, bpf.ReasonDroppedBadTCPDoff},
			{"TCP of 12 bytes", shortTCP, bpf.ReasonDroppedShort},
			{"IPv4 total length past the frame", longLen, bpf.ReasonDroppedBadLen},
		} {
			h.untouched(c.name+" to "+front, bpf.HookIngress, c.p, tcActShot, c.reason)
		}
		h.noNAT(nat.ProtoUDP, "10.0.0.8:40000", front+":53", "10.1.0.20:5353")
		h.noNAT(nat.ProtoTCP, "10.0.0.8:40000", front+":80", "10.1.0.20:8080")
	}
	short6 := udp("[fd00::8]:40000", "[fd00:96::20]:53", []byte("query"))
	short6.IPv6.PayloadLen = 4
	h.untouched("IPv6 payload length 4", bpf.HookIngress, short6, tcActShot, bpf.ReasonDroppedShort)
	h.noNAT(nat.ProtoUDP, "[fd00::8]:40000", "[fd00:96::20]:53", "[fd00::1:20]:5353")
}
