package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// minIPv4TestRun is the shortest IPv4 frame BPF_PROG_TEST_RUN accepts:
// it refuses shorter ones with EINVAL before the program runs.
const minIPv4TestRun = 14 + 20

// refusedByTestRun says whether BPF_PROG_TEST_RUN refuses frame because it
// is shorter than its ethertype's fixed header.
func refusedByTestRun(frame []byte) bool {
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
		return len(frame) < minIPv4TestRun
	case 0x86dd:
		return len(frame) < 14+40
	}
	return false
}

// newDenyHarness is a harness whose policies deny everything, so that no
// conntrack entry ever forms and a parsed packet always ends in
// bpf.ReasonDroppedByPolicy.
func newDenyHarness(tb testing.TB) *harness {
	h := newHarness(tb)
	h.putPolicy(h.lo.ingress, allowDstPorts())
	h.putPolicy(h.lo.egress, allowDstPorts())
	return h
}

// expectOf is the verdict and reason the datapath owes a frame when policy
// denies all: the reference model's, or dropped by policy once it parses.
func expectOf(frame []byte, flags bpf.IfaceFlags) bpf.Reason {
	if r, decided := modelParse(frame, flags); decided {
		return r
	}
	return bpf.ReasonDroppedByPolicy
}

// runMalformed runs frame at lo's ingress hook with iface flags and
// checks the reason against want and the reference model. It reports
// false when the kernel refused to run the frame at all.
func (h *harness) runMalformed(t *testing.T, name string, frame []byte, flags bpf.IfaceFlags, want bpf.Reason) bool {
	t.Helper()
	h.setLo(flags | bpf.IfaceReady)
	if model := expectOf(frame, flags); model != want {
		t.Errorf("%s: reference model says %d, want %d", name, model, want)
	}
	before := h.counters(loIfindex, bpf.HookIngress)
	ret, err := h.program(progIngress).Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		if errors.Is(err, syscall.EINVAL) && refusedByTestRun(frame) {
			return false
		}
		t.Fatalf("%s: run: %v", name, err)
	}
	if ret != verdictOf(want) {
		t.Errorf("%s: verdict %d, want %d", name, ret, verdictOf(want))
	}
	if diff := cmp.Diff(one(want), reasonDelta(before, h.counters(loIfindex, bpf.HookIngress))); diff != "" {
		t.Errorf("%s: counters (-want +got):\n%s", name, diff)
	}
	return true
}

// TestMalformedCorpus gives each malformed or unusual frame its defined
// verdict and counter: every truncation of TCP SYNs with and without
// options, bad IHLs, bad lengths, options, fragments, bad data offsets,
// short UDP and ICMP, and non-IPv4 frames.
func TestMalformedCorpus(t *testing.T) {
	h := newDenyHarness(t)
	src := netip.MustParseAddrPort("10.5.0.1:40000")
	dst := netip.MustParseAddrPort("10.5.0.2:80")
	ipOpts := []byte{0x94, 0x04, 0x00, 0x00} // router alert
	mssOpt := []byte{0x02, 0x04, 0x05, 0xb4}
	build := func(mod func(p *testpkt.Packet)) []byte {
		p := testpkt.TCPv4(src, dst, testpkt.SYN, nil)
		if mod != nil {
			mod(&p)
		}
		return testpkt.MustBytes(t, p)
	}
	withIHL := func(b []byte, ihl byte) []byte {
		b[14] = 0x40 | ihl
		return b
	}
	setTotLen := func(b []byte, n uint16) []byte {
		binary.BigEndian.PutUint16(b[16:18], n)
		return b
	}
	udp := func(payload int) testpkt.Packet { return testpkt.UDPv4(src, dst, make([]byte, payload)) }

	// Every truncation of three SYNs: plain, with IP options, with TCP
	// options. The kernel refuses the shortest, and the counted ones
	// must follow the model: short inside the IP header, bad length after.
	syns := map[string][]byte{
		"syn":             build(nil),
		"syn+ip options":  build(func(p *testpkt.Packet) { p.IPv4.Options = ipOpts }),
		"syn+tcp options": build(func(p *testpkt.Packet) { p.TCP.Options = mssOpt }),
	}
	for name, full := range syns {
		ran := 0
		for n := 14; n < len(full); n++ {
			b := testpkt.Truncate(full, n)
			want := bpf.ReasonDroppedBadLen
			if ihl := int(full[14]&0x0f) * 4; n < 14+ihl {
				want = bpf.ReasonDroppedShort
			}
			if h.runMalformed(t, fmt.Sprintf("%s cut to %d", name, n), b, 0, want) {
				ran++
			}
		}
		if want := len(full) - minIPv4TestRun; ran != want {
			t.Errorf("%s: %d truncations ran, want %d (lengths %d..%d)", name, ran, want, minIPv4TestRun, len(full)-1)
		}
		h.runMalformed(t, name+" whole", full, 0, bpf.ReasonDroppedByPolicy)
	}

	cases := []struct {
		name  string
		frame []byte
		flags bpf.IfaceFlags
		want  bpf.Reason
	}{
		{"ihl 0", withIHL(build(nil), 0), 0, bpf.ReasonDroppedBadIHL},
		{"ihl 4", withIHL(build(nil), 4), 0, bpf.ReasonDroppedBadIHL},
		{"ihl 15 past the frame", withIHL(build(nil), 15), 0, bpf.ReasonDroppedShort},
		{"ihl 6 leaves 16 bytes for TCP", withIHL(build(nil), 6), 0, bpf.ReasonDroppedShort},
		{"version 6 in IPv4 frame", build(func(p *testpkt.Packet) { p.IPv4.Version = 6 }), 0, bpf.ReasonDroppedBadVersion},
		{"total length below header", setTotLen(build(nil), 19), 0, bpf.ReasonDroppedBadLen},
		{"total length past frame", setTotLen(build(nil), 41), 0, bpf.ReasonDroppedBadLen},
		{"total length cuts TCP", setTotLen(build(nil), 39), 0, bpf.ReasonDroppedShort},
		{"ethernet padding", build(func(p *testpkt.Packet) { p.Trailer = make([]byte, 6) }), 0, bpf.ReasonDroppedByPolicy},
		{"4 bytes of IP options", build(func(p *testpkt.Packet) { p.IPv4.Options = ipOpts }), 0, bpf.ReasonDroppedByPolicy},
		{"40 bytes of IP options", build(func(p *testpkt.Packet) { p.IPv4.Options = make([]byte, 40) }), 0, bpf.ReasonDroppedByPolicy},
		{"tcp data offset 4", build(func(p *testpkt.Packet) { p.TCP.DataOffset = 4 }), 0, bpf.ReasonDroppedBadTCPDoff},
		{"tcp data offset past segment", build(func(p *testpkt.Packet) { p.TCP.DataOffset = 6 }), 0, bpf.ReasonDroppedBadTCPDoff},
		{"tcp data offset 15 with options", build(func(p *testpkt.Packet) { p.TCP.Options = make([]byte, 40) }), 0, bpf.ReasonDroppedByPolicy},
		{"first fragment", build(func(p *testpkt.Packet) { p.IPv4.MoreFragments = true }), 0, bpf.ReasonDroppedFragment},
		{"later fragment", build(func(p *testpkt.Packet) { p.IPv4.FragOffset = 185 }), 0, bpf.ReasonDroppedFragment},
		{"last fragment", build(func(p *testpkt.Packet) { p.IPv4.FragOffset = 1 }), 0, bpf.ReasonDroppedFragment},
		{"first fragment, fragments passed", build(func(p *testpkt.Packet) { p.IPv4.MoreFragments = true }), bpf.IfacePassFragments, bpf.ReasonDroppedByPolicy},
		{"later fragment, fragments passed", build(func(p *testpkt.Packet) {
			p.IPv4.FragOffset = 185
			p.IPv4.MoreFragments = true
		}), bpf.IfacePassFragments, bpf.ReasonFragmentPassed},
		{"don't fragment", build(func(p *testpkt.Packet) { p.IPv4.DontFragment = true }), 0, bpf.ReasonDroppedByPolicy},
		{"udp", testpkt.MustBytes(t, udp(0)), 0, bpf.ReasonDroppedByPolicy},
		{"udp cut by total length", setTotLen(testpkt.MustBytes(t, udp(0)), 27), 0, bpf.ReasonDroppedShort},
		{"icmp cut by total length", setTotLen(testpkt.MustBytes(t, testpkt.ICMPv4Echo(src.Addr(), dst.Addr(), 1, 1, false)), 24), 0, bpf.ReasonDroppedShort},
		{"unknown protocol without L4 bytes", setTotLen(build(func(p *testpkt.Packet) { p.IPv4.Protocol = 47 }), 20), 0, bpf.ReasonDroppedByPolicy},
		{"ipv6", ethFrame(0x86dd, 60), 0, bpf.ReasonDroppedIPv6},
		{"ipv6 passed", ethFrame(0x86dd, 60), bpf.IfacePassIPv6, bpf.ReasonIPv6Passed},
		{"arp", ethFrame(0x0806, 28), 0, bpf.ReasonNonIPPassed},
		{"arp dropped", ethFrame(0x0806, 28), bpf.IfaceDropNonIP, bpf.ReasonDroppedNonIP},
		{"bare ethernet header", ethFrame(0x88cc, 0), 0, bpf.ReasonNonIPPassed},
	}
	for _, c := range cases {
		if !h.runMalformed(t, c.name, c.frame, c.flags, c.want) {
			t.Errorf("%s: kernel refused the frame", c.name)
		}
	}
}

// ethFrame is an Ethernet frame of the given ethertype and payload length.
func ethFrame(etherType uint16, payload int) []byte {
	b := make([]byte, 14+payload)
	copy(b[0:6], testpkt.DefaultDstMAC)
	copy(b[6:12], testpkt.DefaultSrcMAC)
	binary.BigEndian.PutUint16(b[12:14], etherType)
	return b
}

// TestParserMatchesModel holds the kernel's parser to the Go reference
// model on random mutations of well-formed frames: header bytes, lengths
// and interface flags changed at random.
func TestParserMatchesModel(t *testing.T) {
	h := newDenyHarness(t)
	rng := rand.New(rand.NewPCG(1, 2))
	src := netip.MustParseAddrPort("10.6.0.1:1234")
	dst := netip.MustParseAddrPort("10.6.0.2:80")
	syn := testpkt.TCPv4(src, dst, testpkt.SYN, []byte("hello"))
	bases := [][]byte{
		testpkt.MustBytes(t, syn),
		testpkt.MustBytes(t, testpkt.UDPv4(src, dst, []byte("payload"))),
		testpkt.MustBytes(t, testpkt.ICMPv4Echo(src.Addr(), dst.Addr(), 7, 1, false)),
		testpkt.MustBytes(t, testpkt.ICMPv4Error(dst.Addr(), src.Addr(), testpkt.ICMPv4DestUnreachable, 4, testpkt.Quote(testpkt.MustBytes(t, syn)))),
	}
	withOpts := syn.Clone()
	withOpts.IPv4.Options = make([]byte, 8)
	withOpts.TCP.Options = make([]byte, 12)
	bases = append(bases, testpkt.MustBytes(t, withOpts))
	flagChoices := []bpf.IfaceFlags{0, bpf.IfacePassFragments, bpf.IfacePassIPv6 | bpf.IfaceDropNonIP}

	cases := 3000
	if testing.Short() {
		cases = 500
	}
	ran := 0
	for i := range cases {
		frame := append([]byte(nil), bases[rng.IntN(len(bases))]...)
		for range 1 + rng.IntN(3) {
			mutate(rng, frame)
		}
		if rng.IntN(4) == 0 {
			frame = frame[:minIPv4TestRun+rng.IntN(len(frame)-minIPv4TestRun+1)]
		}
		flags := flagChoices[rng.IntN(len(flagChoices))]
		if h.runMalformed(t, fmt.Sprintf("case %d % x", i, frame), frame, flags, expectOf(frame, flags)) {
			ran++
		}
		if t.Failed() {
			break
		}
	}
	if ran < cases*9/10 {
		t.Errorf("only %d of %d cases ran", ran, cases)
	}
}

// mutate changes one header field of frame at random.
func mutate(rng *rand.Rand, frame []byte) {
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	switch rng.IntN(8) {
	case 0: // version and IHL
		ip[0] = byte(rng.IntN(256))
		if rng.IntN(2) == 0 {
			ip[0] = 0x40 | ip[0]&0x0f
		}
	case 1: // total length, usually near the true one
		n := len(ip) + rng.IntN(16) - 12
		if rng.IntN(4) == 0 {
			n = rng.IntN(1 << 16)
		}
		binary.BigEndian.PutUint16(ip[2:4], uint16(n))
	case 2: // fragment bits and offset
		binary.BigEndian.PutUint16(ip[6:8], uint16(rng.IntN(1<<16)))
	case 3: // protocol
		ip[9] = []byte{1, 6, 17, 47, byte(rng.IntN(256))}[rng.IntN(5)]
	case 4, 5: // a byte of the L4 header, often the TCP data offset
		if ihl >= 20 && ihl+13 < len(ip) {
			at := ihl + 12
			if rng.IntN(2) == 0 {
				at = ihl + rng.IntN(14)
			}
			ip[at] = byte(rng.IntN(256))
		}
	case 6: // ethertype
		binary.BigEndian.PutUint16(frame[12:14], []uint16{0x0800, 0x0800, 0x86dd, 0x0806}[rng.IntN(4)])
	case 7: // any byte
		frame[rng.IntN(len(frame))] = byte(rng.IntN(256))
	}
}
