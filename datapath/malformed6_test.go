package datapath

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// enforce6 are the interface flags of the IPv6 corpus: IPv6 enforced.
const enforce6 = bpf.IfaceEnforceIPv6

// newDenyHarness6 is newDenyHarness with every IPv6 source routed to lo
// too, so that lo's reverse-path check passes for IPv6.
func newDenyHarness6(tb testing.TB) *harness {
	h := newDenyHarness(tb)
	h.setRoute(workloadRoute("::/0", loIfindex))
	return h
}

// v6Chains are well-formed IPv6 packets with the extension-header chains
// the datapath walks, by name; each is built from a fresh TCP SYN or
// message so that a test may change it.
func v6Chains(src, dst netip.AddrPort) map[string]func() testpkt.Packet {
	syn := func(ext ...testpkt.IPv6Ext) func() testpkt.Packet {
		return func() testpkt.Packet {
			p := testpkt.TCPv6(src, dst, testpkt.SYN, nil)
			p.IPv6.Ext = ext
			return p
		}
	}
	return map[string]func() testpkt.Packet{
		"syn":             syn(),
		"syn+hbh+dstopts": syn(testpkt.ExtHopByHop(testpkt.RouterAlertOption(0)), testpkt.ExtDestOpts(nil)),
		"syn+srh":         syn(testpkt.ExtSegmentRouting(0, dst.Addr())),
		"syn+atomic frag": syn(testpkt.ExtFragment(0, false, 7)),
		"syn+ah+dstopts":  syn(testpkt.ExtAH(1, 2, make([]byte, 12)), testpkt.ExtDestOpts(make([]byte, 20))),
		"syn+8 dstopts":   syn(testpkt.RepeatExt(testpkt.ExtDestOpts(nil), 8)...),
		"udp+routing type 2": func() testpkt.Packet {
			p := testpkt.UDPv6(src, dst, []byte("payload"))
			p.IPv6.Ext = []testpkt.IPv6Ext{testpkt.ExtRouting(testpkt.RoutingType2, 0, make([]byte, 20))}
			return p
		},
		"echo+hbh": func() testpkt.Packet {
			p := testpkt.ICMPv6Echo(src.Addr(), dst.Addr(), 9, 1, false)
			p.IPv6.Ext = []testpkt.IPv6Ext{testpkt.ExtHopByHop(nil)}
			return p
		},
	}
}

// l4Min is the shortest L4 header the datapath accepts of each protocol a
// chain of v6Chains ends in.
func l4Min(p testpkt.Packet) int {
	if p.TCP != nil {
		return 20
	}
	return 8
}

// TestMalformedCorpusIPv6 gives each malformed or unusual IPv6 frame at an
// interface that enforces IPv6 its defined verdict and counter: every
// truncation of the fixed header, of each chain of v6Chains and of the L4
// header after it, both by cutting the frame and by cutting the payload
// length; bad versions and lengths; IPv4-mapped addresses; chains too long
// by count and by bytes; misplaced, repeated and deprecated headers;
// fragments; ESP and no next header; neighbour discovery.
func TestMalformedCorpusIPv6(t *testing.T) {
	h := newDenyHarness6(t)
	src := netip.MustParseAddrPort("[2001:db8::1]:40000")
	dst := netip.MustParseAddrPort("[2001:db8::2]:80")
	for name, build := range v6Chains(src, dst) {
		p := build()
		full := testpkt.MustBytes(t, p)
		bare := p.Clone()
		bare.IPv6.Ext = nil
		chain := len(full) - len(testpkt.MustBytes(t, bare)) // bytes of extension headers
		// A frame cut short: its payload length runs past it.
		ran := 0
		for n := 14; n < len(full); n++ {
			want := bpf.ReasonDroppedBadLen
			if n < 14+40 {
				want = bpf.ReasonDroppedShort // the kernel refuses to run these
			}
			if h.runMalformed(t, fmt.Sprintf("%s cut to %d", name, n), testpkt.Truncate(full, n), enforce6, want) {
				ran++
			}
		}
		if want := len(full) - (14 + 40); ran != want {
			t.Errorf("%s: %d truncations ran, want %d", name, ran, want)
		}
		// A payload length that ends inside the chain or the L4 header.
		for k := 0; k < len(full)-14-40; k++ {
			b := append([]byte(nil), full...)
			binary.BigEndian.PutUint16(b[18:20], uint16(k))
			want := bpf.ReasonDroppedShort
			switch {
			case k == 0:
				want = bpf.ReasonDroppedBadLen
			case k < chain:
				want = bpf.ReasonDroppedIPv6Ext
			case k-chain >= l4Min(p):
				// Only a TCP SYN's header is longer than its minimum: never.
				want = bpf.ReasonDroppedByPolicy
			}
			h.runMalformed(t, fmt.Sprintf("%s payload length %d", name, k), b, enforce6, want)
		}
		h.runMalformed(t, name+" whole", full, enforce6, bpf.ReasonDroppedByPolicy)
	}

	syn := func(mod func(p *testpkt.Packet)) []byte {
		p := testpkt.TCPv6(src, dst, testpkt.SYN, nil)
		if mod != nil {
			mod(&p)
		}
		return testpkt.MustBytes(t, p)
	}
	ext := func(e ...testpkt.IPv6Ext) []byte {
		return syn(func(p *testpkt.Packet) { p.IPv6.Ext = e })
	}
	bigOpts := testpkt.ExtDestOpts(make([]byte, 126)) // 128 bytes
	mapped := netip.MustParseAddr("::ffff:10.0.0.1")
	linkLocal := netip.MustParseAddr("fe80::1")
	ns := testpkt.NDNeighborSolicit(linkLocal, dst.Addr())
	nsRouted := ns.Clone()
	nsRouted.IPv6.HopLimit = 64
	ra := testpkt.NDRouterAdvert(linkLocal, testpkt.AllNodesAddr, testpkt.RouterAdvert{Lifetime: 1800})
	mld := testpkt.Packet{
		Eth:    ns.Eth,
		IPv6:   &testpkt.IPv6{Src: linkLocal, Dst: netip.MustParseAddr("ff02::16"), HopLimit: 1, Ext: []testpkt.IPv6Ext{testpkt.ExtHopByHop(testpkt.RouterAlertOption(0))}},
		ICMPv6: &testpkt.ICMPv6{Type: 143},
	}
	payload := func(next uint8) []byte {
		return testpkt.MustBytes(t, testpkt.Packet{Eth: ns.Eth, IPv6: &testpkt.IPv6{Src: src.Addr(), Dst: dst.Addr(), Protocol: next}, Payload: make([]byte, 16)})
	}
	echo := testpkt.MustBytes(t, testpkt.ICMPv6Echo(src.Addr(), dst.Addr(), 1, 1, false))
	cases := []struct {
		name  string
		frame []byte
		flags bpf.IfaceFlags
		want  bpf.Reason
	}{
		{"not enforced", syn(nil), 0, bpf.ReasonDroppedIPv6},
		{"not enforced, passed", syn(nil), bpf.IfacePassIPv6, bpf.ReasonIPv6Passed},
		{"enforced over passed", syn(nil), enforce6 | bpf.IfacePassIPv6, bpf.ReasonDroppedByPolicy},
		{"version 4", syn(func(p *testpkt.Packet) { p.IPv6.Version = 4 }), enforce6, bpf.ReasonDroppedBadVersion},
		{"payload length 0 (jumbogram)", syn(func(p *testpkt.Packet) { p.IPv6.ZeroPayloadLen = true }), enforce6, bpf.ReasonDroppedBadLen},
		{"payload length past frame", syn(func(p *testpkt.Packet) { p.IPv6.PayloadLen = 21 }), enforce6, bpf.ReasonDroppedBadLen},
		{"ethernet padding", syn(func(p *testpkt.Packet) { p.Trailer = make([]byte, 6) }), enforce6, bpf.ReasonDroppedByPolicy},
		{"mapped source", syn(func(p *testpkt.Packet) { p.IPv6.Src = mapped }), enforce6, bpf.ReasonDroppedIPv4Mapped},
		{"mapped destination", syn(func(p *testpkt.Packet) { p.IPv6.Dst = mapped }), enforce6, bpf.ReasonDroppedIPv4Mapped},
		{"9 headers", ext(testpkt.RepeatExt(testpkt.ExtDestOpts(nil), 9)...), enforce6, bpf.ReasonDroppedIPv6ChainLong},
		{"256 bytes of chain", ext(bigOpts, bigOpts), enforce6, bpf.ReasonDroppedByPolicy},
		{"264 bytes of chain", ext(bigOpts, bigOpts, testpkt.ExtDestOpts(nil)), enforce6, bpf.ReasonDroppedIPv6ChainLong},
		{"hop-by-hop second", ext(testpkt.ExtDestOpts(nil), testpkt.ExtHopByHop(nil)), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"two fragment headers", ext(testpkt.ExtFragment(0, false, 1), testpkt.ExtFragment(0, false, 2)), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"type 0 routing, segments left", ext(testpkt.ExtRoutingType0(1, dst.Addr())), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"type 0 routing, none left", ext(testpkt.ExtRoutingType0(0, dst.Addr())), enforce6, bpf.ReasonDroppedByPolicy},
		{"header length past payload", ext(testpkt.IPv6Ext{Type: testpkt.ProtoDestOpts, Length: 9}), enforce6, bpf.ReasonDroppedIPv6Ext},
		{"first fragment", ext(testpkt.ExtFragment(0, true, 3)), enforce6, bpf.ReasonDroppedFragment},
		{"later fragment", ext(testpkt.ExtFragment(185, true, 3)), enforce6, bpf.ReasonDroppedFragment},
		{"last fragment", ext(testpkt.ExtFragment(1, false, 3)), enforce6, bpf.ReasonDroppedFragment},
		{"first fragment, fragments passed", ext(testpkt.ExtFragment(0, true, 3)), enforce6 | bpf.IfacePassFragments, bpf.ReasonDroppedByPolicy},
		{"later fragment, fragments passed", ext(testpkt.ExtFragment(185, true, 3)), enforce6 | bpf.IfacePassFragments, bpf.ReasonFragmentPassed},
		{"later fragment from a workload", ext(testpkt.ExtFragment(185, false, 3)), enforce6 | bpf.IfacePassFragments | bpf.IfaceWorkload, bpf.ReasonFragmentPassed},
		{"esp", payload(testpkt.ProtoESP), enforce6, bpf.ReasonDroppedByPolicy},
		{"no next header", payload(testpkt.ProtoNoNextHeader), enforce6, bpf.ReasonDroppedByPolicy},
		{"icmpv6 cut by payload length", func() []byte {
			b := append([]byte(nil), echo...)
			binary.BigEndian.PutUint16(b[18:20], 7)
			return b
		}(), enforce6, bpf.ReasonDroppedShort},
		{"neighbour solicitation", testpkt.MustBytes(t, ns), enforce6, bpf.ReasonNDPassed},
		{"neighbour solicitation from a workload", testpkt.MustBytes(t, ns), enforce6 | bpf.IfaceWorkload, bpf.ReasonNDPassed},
		{"neighbour solicitation, dropped", testpkt.MustBytes(t, ns), enforce6 | bpf.IfaceDropND, bpf.ReasonDroppedND},
		{"routed neighbour solicitation", testpkt.MustBytes(t, nsRouted), enforce6, bpf.ReasonDroppedByPolicy},
		{"router advertisement", testpkt.MustBytes(t, ra), enforce6, bpf.ReasonNDPassed},
		{"router advertisement from a workload", testpkt.MustBytes(t, ra), enforce6 | bpf.IfaceWorkload, bpf.ReasonDroppedND},
		{"mld report behind hop-by-hop", testpkt.MustBytes(t, mld), enforce6, bpf.ReasonNDPassed},
		{"echo", echo, enforce6, bpf.ReasonDroppedByPolicy},
	}
	for _, c := range cases {
		if !h.runMalformed(t, c.name, c.frame, c.flags, c.want) {
			t.Errorf("%s: kernel refused the frame", c.name)
		}
	}
}

// TestParserMatchesModelIPv6 holds the kernel's IPv6 parser to the Go
// reference model on 20,000 random mutations of well-formed IPv6 frames
// with extension-header chains, ICMPv6 errors and neighbour discovery:
// header bytes, lengths, next-header values, addresses and interface flags
// changed at random, many frames cut short.
func TestParserMatchesModelIPv6(t *testing.T) {
	h := newDenyHarness6(t)
	rng := rand.New(rand.NewPCG(6, 6))
	src := netip.MustParseAddrPort("[2001:db8:6::1]:1234")
	dst := netip.MustParseAddrPort("[2001:db8:6::2]:80")
	var bases [][]byte
	for _, build := range v6Chains(src, dst) {
		bases = append(bases, testpkt.MustBytes(t, build()))
	}
	synFrame := testpkt.MustBytes(t, testpkt.TCPv6(src, dst, testpkt.SYN, []byte("hello")))
	bases = append(bases,
		testpkt.MustBytes(t, testpkt.ICMPv6TooBig(dst.Addr(), src.Addr(), 1280, testpkt.QuoteIPv6(synFrame))),
		testpkt.MustBytes(t, testpkt.NDNeighborSolicit(netip.MustParseAddr("fe80::1"), dst.Addr())),
		testpkt.MustBytes(t, testpkt.NDRouterAdvert(netip.MustParseAddr("fe80::1"), testpkt.AllNodesAddr, testpkt.RouterAdvert{})),
		testpkt.MustBytes(t, func() testpkt.Packet {
			p := testpkt.TCPv6(src, dst, testpkt.SYN, nil)
			p.IPv6.Ext = []testpkt.IPv6Ext{testpkt.ExtFragment(0, true, 5)}
			return p
		}()),
	)
	flagChoices := []bpf.IfaceFlags{
		enforce6, enforce6 | bpf.IfacePassFragments, enforce6 | bpf.IfaceDropND,
		enforce6 | bpf.IfaceWorkload | bpf.IfacePassFragments, bpf.IfacePassIPv6, 0,
	}
	cases := 20000
	if testing.Short() {
		cases = 2000
	}
	ran, decided := 0, map[bpf.Reason]int{}
	for i := range cases {
		frame := append([]byte(nil), bases[rng.IntN(len(bases))]...)
		for range 1 + rng.IntN(3) {
			mutate6(rng, frame)
		}
		if rng.IntN(4) == 0 {
			frame = frame[:14+40+rng.IntN(len(frame)-14-40+1)]
		}
		flags := flagChoices[rng.IntN(len(flagChoices))]
		want := expectOf(frame, flags)
		if h.runMalformed(t, fmt.Sprintf("case %d flags %s % x", i, flags, frame), frame, flags, want) {
			ran++
			decided[want]++
		}
		if t.Failed() {
			break
		}
	}
	if ran < cases*9/10 {
		t.Errorf("only %d of %d cases ran", ran, cases)
	}
	// The mutations must reach the IPv6 reasons, or the run shows little.
	for _, r := range []bpf.Reason{bpf.ReasonDroppedIPv6Ext, bpf.ReasonDroppedIPv6ChainLong, bpf.ReasonDroppedIPv4Mapped,
		bpf.ReasonNDPassed, bpf.ReasonDroppedND, bpf.ReasonDroppedBadLen, bpf.ReasonDroppedFragment, bpf.ReasonDroppedByPolicy} {
		if decided[r] == 0 {
			t.Errorf("no case ended in %s", r)
		}
	}
}

// mutate6 changes one field of an IPv6 frame at random.
func mutate6(rng *rand.Rand, frame []byte) {
	ip := frame[14:]
	switch rng.IntN(9) {
	case 0: // version
		ip[0] = byte(rng.IntN(16))<<4 | ip[0]&0x0f
	case 1: // payload length, usually near the true one
		n := len(ip) - 40 + rng.IntN(16) - 12
		if rng.IntN(4) == 0 {
			n = rng.IntN(1 << 16)
		}
		binary.BigEndian.PutUint16(ip[4:6], uint16(n))
	case 2: // the fixed header's next header
		ip[6] = []byte{0, 6, 17, 43, 44, 50, 51, 58, 59, 60, byte(rng.IntN(256))}[rng.IntN(11)]
	case 3: // hop limit
		ip[7] = []byte{1, 64, 255, byte(rng.IntN(256))}[rng.IntN(4)]
	case 4: // an address IPv4-mapped
		at := 8 + 16*rng.IntN(2)
		copy(ip[at:at+12], []byte{10: 0xff, 11: 0xff})
	case 5, 6: // a byte of the chain or L4 header: next header, length, fragment bits, ICMPv6 type
		if len(ip) > 48 {
			at := 40 + rng.IntN(min(len(ip)-40, 64))
			ip[at] = []byte{0, 1, 2, 6, 17, 44, 58, 60, 128, 134, 135, 255, byte(rng.IntN(256))}[rng.IntN(13)]
		}
	case 7: // ethertype
		binary.BigEndian.PutUint16(frame[12:14], []uint16{0x86dd, 0x86dd, 0x86dd, 0x0800}[rng.IntN(4)])
	case 8: // any byte
		frame[rng.IntN(len(frame))] = byte(rng.IntN(256))
	}
}
