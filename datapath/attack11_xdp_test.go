package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// atk11Case is a frame an attacker on the wire sends to a host interface
// with xdpTiers, and whether the flow the receiving kernel would see is
// one those tiers deny: then XDP or TC must drop it.
type atk11Case struct {
	name   string
	frame  []byte
	denied bool
}

// atk11Frames are attacks on the XDP hook's parse: headers a deny must
// see through, and malformed variants XDP leaves to TC.
func atk11Frames(tb testing.TB) []atk11Case {
	ssh := func() testpkt.Packet {
		return testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:22"), testpkt.SYN, []byte("payload-payload-"))
	}
	dns := func() testpkt.Packet {
		return testpkt.UDPv6(ap("[2001:db8::1]:1000"), ap("[2001:db9::1]:53"), []byte("query-query-query"))
	}
	with := func(p testpkt.Packet, f func(*testpkt.Packet)) []byte {
		q := p.Clone()
		f(&q)
		return testpkt.MustBytes(tb, q)
	}
	v4frag := func(p testpkt.Packet, off uint16, more bool) []byte {
		return with(p, func(q *testpkt.Packet) { q.IPv4.FragOffset, q.IPv4.MoreFragments = off, more })
	}
	// tiny is a first fragment of 8 bytes of TCP: the ports, not the data
	// offset.
	tiny := testpkt.MustBytes(tb, ssh())
	tiny[testpkt.EthLen+6] = 0x20 // MF
	tiny = tiny[:testpkt.EthLen+testpkt.IPv4MinLen+8]
	tiny[testpkt.EthLen+2], tiny[testpkt.EthLen+3] = 0, byte(testpkt.IPv4MinLen+8)
	tiny[testpkt.EthLen+10], tiny[testpkt.EthLen+11] = 0, 0
	ck := testpkt.Checksum(tiny[testpkt.EthLen : testpkt.EthLen+testpkt.IPv4MinLen])
	tiny[testpkt.EthLen+10], tiny[testpkt.EthLen+11] = byte(ck>>8), byte(ck)
	dstopt := func(n int) []testpkt.IPv6Ext {
		return testpkt.RepeatExt(testpkt.ExtDestOpts(nil), n)
	}
	return []atk11Case{
		{"v4 plain", testpkt.MustBytes(tb, ssh()), true},
		{"v4 full options", with(ssh(), func(q *testpkt.Packet) { q.IPv4.Options = make([]byte, 40) }), true},
		{"v4 trailing bytes", with(ssh(), func(q *testpkt.Packet) { q.Trailer = make([]byte, 30) }), true},
		{"v4 bad TCP checksum", with(ssh(), func(q *testpkt.Packet) { q.TCP.BadChecksum = true }), true},
		{"v4 bad IP checksum", with(ssh(), func(q *testpkt.Packet) { q.IPv4.BadChecksum = true }), true},
		{"v4 first fragment", v4frag(ssh(), 0, true), true},
		{"v4 tiny first fragment", tiny, true},
		{"v4 IHL past total length", with(ssh(), func(q *testpkt.Packet) { q.IPv4.IHL = 15 }), true},
		{"v4 total length past frame", with(ssh(), func(q *testpkt.Packet) { q.IPv4.TotalLen = 1400 }), true},
		{"v4 total length short of TCP", with(ssh(), func(q *testpkt.Packet) { q.IPv4.TotalLen = 30 }), true},
		{"v4 802.1Q", with(ssh(), func(q *testpkt.Packet) { q.Eth.VLANs = []testpkt.VLANTag{{TPID: testpkt.TPID8021Q, VID: 7}} }), true},
		{"v4 802.1ad", with(ssh(), func(q *testpkt.Packet) { q.Eth.VLANs = []testpkt.VLANTag{{TPID: 0x88a8, VID: 7}} }), true},
		{"v4 QinQ 9100", with(ssh(), func(q *testpkt.Packet) {
			q.Eth.VLANs = []testpkt.VLANTag{{TPID: 0x9100, VID: 7}, {TPID: testpkt.TPID8021Q, VID: 8}}
		}), true},
		{"v6 plain", testpkt.MustBytes(tb, dns()), true},
		{"v6 hop-by-hop, dstopts, SRH", with(dns(), func(q *testpkt.Packet) {
			q.IPv6.Ext = []testpkt.IPv6Ext{testpkt.ExtHopByHop(nil), testpkt.ExtDestOpts(nil),
				testpkt.ExtSegmentRouting(0, netip.MustParseAddr("2001:db9::1"))}
		}), true},
		{"v6 AH", with(dns(), func(q *testpkt.Packet) {
			q.IPv6.Ext = []testpkt.IPv6Ext{testpkt.ExtAH(1, 1, make([]byte, 12))}
		}), true},
		{"v6 first fragment", atk7Frag(tb, dns(), 0, true), true},
		{"v6 atomic fragment", atk7Frag(tb, dns(), 0, false), true},
		{"v6 eight dstopts", with(dns(), func(q *testpkt.Packet) { q.IPv6.Ext = dstopt(7) }), true},
		// Linux walks a chain of any length: the receiver gets the DNS
		// query.
		{"v6 nine dstopts", with(dns(), func(q *testpkt.Packet) { q.IPv6.Ext = dstopt(9) }), true},
		{"v6 trailing bytes", with(dns(), func(q *testpkt.Packet) { q.Trailer = make([]byte, 30) }), true},
		{"v6 echo", testpkt.MustBytes(tb, testpkt.ICMPv6Echo(netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db9::1"), 1, 1, false)), true},
		{"v6 error", testpkt.MustBytes(tb, testpkt.ICMPv6Error(netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db9::1"), 1, 3, testpkt.QuoteIPv6(testpkt.MustBytes(tb, dns())))), true},
		// RFC 7112's case: the UDP header is in the second fragment.
		{"v6 first fragment ends in the chain", testpkt.MustBytes(tb, testpkt.Packet{Eth: dns().Eth, IPv6: &testpkt.IPv6{
			Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db9::1"), Protocol: 17,
			Ext: []testpkt.IPv6Ext{testpkt.ExtFragment(0, true, 7), testpkt.ExtDestOpts(nil)}}}), true},
		{"v6 later fragment", atk7Frag(tb, dns(), 8, false), false},
		{"v6 other port", testpkt.MustBytes(tb, testpkt.UDPv6(ap("[2001:db8::1]:1000"), ap("[2001:db9::1]:54"), nil)), false},
		{"v6 neighbour discovery", testpkt.MustBytes(tb, testpkt.NDRouterSolicit(netip.MustParseAddr("2001:db8::5"))), false},
		{"v4 later fragment", v4frag(ssh(), 8, false), false},
		// Linux drops a payload past the frame: no flow to deny.
		{"v6 payload length past frame", with(dns(), func(q *testpkt.Packet) { q.IPv6.PayloadLen = 1400 }), false},
	}
}

// xdpKeeps are the frames XDP passes at every interface: a later
// fragment, a flow the tiers do not deny, neighbour discovery.
var xdpKeeps = map[string]bool{"v6 later fragment": true, "v6 other port": true, "v6 neighbour discovery": true, "v4 later fragment": true}

// runTCAt1 runs the datapath's TC ingress program on frame at lo.
func runTCAt1(tb testing.TB, d *Datapath, frame []byte) uint32 {
	tb.Helper()
	ret, err := d.objs.SlTcIngress.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		tb.Fatalf("run tc ingress: %v", err)
	}
	return ret
}

// countSum is the number of packets counted over every reason.
func countSum(m map[bpf.Reason]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// TestAttack11XDPThenTC: each attack frame runs through XDP and, when it
// passes, through TC ingress of the same interface, as on the wire. A
// frame of a flow the XDP tiers deny is dropped by one of the two, and
// every frame is counted exactly once over both hooks; for each of the
// interface settings that change what TC does with what XDP passes. At
// an IPv6Pass interface, XDP passed an IPv6 packet the tiers deny but its
// parser stops at (nine extension headers, which Linux walks) to a TC that
// passes IPv6 unchecked: it now drops it, counted with the parser's
// reason.
func TestAttack11XDPThenTC(t *testing.T) {
	d := openXDP(t)
	for _, set := range []struct {
		name string
		cfg  Interface
	}{
		{"default", Interface{Kind: Host, XDP: xdpTiers}},
		{"pass fragments", Interface{Kind: Host, XDP: xdpTiers, PassFragments: true}},
		{"ipv6 drop", Interface{Kind: Host, XDP: xdpTiers, IPv6: IPv6Drop}},
		{"ipv6 pass", Interface{Kind: Host, XDP: xdpTiers, IPv6: IPv6Pass}},
	} {
		if err := d.SetInterface(loIfindex, set.cfg); err != nil {
			t.Fatal(err)
		}
		for _, tc := range atk11Frames(t) {
			t.Run(set.name+"/"+tc.name, func(t *testing.T) {
				before := xdpCounts(t, d)
				ret := runXDP(t, d, tc.frame)
				dropped := ret == xdpDrop
				how := "xdp"
				if ret == xdpPass {
					how = "tc"
					dropped = runTCAt1(t, d, tc.frame) == 2 // TC_ACT_SHOT
				}
				delta := diffCounts(before, xdpCounts(t, d))
				if ret == xdpDrop && xdpKeeps[tc.name] {
					t.Errorf("XDP dropped it; counted %v", delta)
				}
				if tc.denied && !dropped {
					t.Errorf("a denied flow passed XDP and TC; counted %v", delta)
				}
				if n := countSum(delta); n != 1 {
					t.Errorf("counted %d times (%s decided): %v", n, how, delta)
				}
				// At an IPv6Pass interface XDP drops the IPv6
				// packets it cannot parse, with the reason TC's
				// parser would give; elsewhere only what policy
				// denies.
				if how == "xdp" && delta[bpf.ReasonDroppedByPolicy] != 1 &&
					(set.cfg.IPv6 != IPv6Pass || tc.frame[12] != 0x86) {
					t.Errorf("XDP drop counted as %v", delta)
				}
			})
		}
	}
}
