package datapath

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/bpf"
)

// atk7Addrs are the addresses the chain generator picks from: ordinary
// global ones, and the special ones a raw socket can write.
var atk7Addrs = []netip.Addr{
	netip.MustParseAddr("2001:db8:7::1"), netip.MustParseAddr("2001:db8:7::2"),
	netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::1:ff00:2"),
	netip.IPv6Unspecified(), netip.IPv6Loopback(), netip.MustParseAddr("::10.0.0.1"),
	netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("::ffff:0:10.0.0.1"),
}

// atk7GenHeader is one random extension header of type typ naming next.
func atk7GenHeader(rng *rand.Rand, typ, next uint8) []byte {
	pick := func(v ...int) int { return v[rng.IntN(len(v))] }
	switch typ {
	case 44: // fragment
		f := make([]byte, 8)
		f[0], f[1] = next, byte(pick(0, 0, 0, 0xff))
		v := uint16(pick(0, 0, 0, 1, 185, 8191)) << 3
		v |= uint16(rng.IntN(8)) & uint16(pick(1, 1, 7)) // M, and now and then the reserved bits
		binary.BigEndian.PutUint16(f[2:], v)
		return f
	case 51: // AH, 4-byte words less 2
		n := pick(0, 1, 2, 4, 30, 61, 62, 63, 255)
		h := make([]byte, min((n+2)*4, 300))
		h[0], h[1] = next, byte(n)
		return h
	}
	n := pick(0, 0, 0, 0, 0, 1, 2, 15, 30, 31, 32, 255)
	h := make([]byte, min((n+1)*8, 300))
	h[0], h[1] = next, byte(n)
	if typ == 43 {
		h[2], h[3] = byte(pick(0, 0, 1, 2, 3, 4)), byte(pick(0, 0, 1, 255))
	}
	return h
}

// atk7GenL4 is a random upper-layer header and payload of protocol proto.
func atk7GenL4(rng *rand.Rand, proto uint8) []byte {
	pick := func(v ...int) int { return v[rng.IntN(len(v))] }
	switch proto {
	case 6:
		t := make([]byte, pick(20, 20, 24, 12))
		binary.BigEndian.PutUint16(t[2:], 80)
		if len(t) > 13 {
			t[12], t[13] = byte(pick(5, 5, 6, 4, 15))<<4, 0x02
		}
		return t
	case 58:
		m := make([]byte, pick(8, 8, 24, 4, 64))
		m[0] = byte(pick(1, 2, 3, 4, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 143, 200))
		m[1] = byte(pick(0, 0, 1))
		return m
	}
	return make([]byte, pick(0, 4, 8, 12, 16))
}

// atk7GenFrame is a random IPv6 frame: a chain of 0 to 10 extension
// headers in any order (known types, and now and then ones the walk does
// not know), an upper layer, a hop limit of the ones ND and MLD check,
// addresses special or not, and a payload length that is right, a little
// off, 0 or anything; now and then cut short.
func atk7GenFrame(rng *rand.Rand) []byte {
	pick := func(v ...int) int { return v[rng.IntN(len(v))] }
	exts := []uint8{0, 43, 44, 51, 60, 60}
	var types []uint8
	for range pick(0, 0, 0, 1, 1, 1, 2, 3, 7, 8, 9, 10) {
		types = append(types, exts[rng.IntN(len(exts))])
	}
	if rng.IntN(3) == 0 && len(types) > 0 && types[0] != 0 {
		types[0] = 0 // hop-by-hop first, as it must be
	}
	final := uint8(pick(6, 6, 17, 58, 58, 58, 132, 33, 136, 50, 59, 135, 253, 1))
	var chain []byte
	for i, typ := range types {
		next := final
		if i+1 < len(types) {
			next = types[i+1]
		}
		chain = append(chain, atk7GenHeader(rng, typ, next)...)
	}
	first := final
	if len(types) > 0 {
		first = types[0]
	}
	src := atk7Addrs[pick(0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9)]
	dst := atk7Addrs[pick(1, 1, 0, 2, 3, 4, 5, 6, 7, 8, 9)]
	if rng.IntN(4) != 0 {
		src, dst = atk7Addrs[pick(0, 2)], atk7Addrs[pick(1, 3, 4, 2)]
	}
	hop := uint8(pick(1, 2, 64, 254, 255, 255))
	b := atk7Raw(src, dst, first, hop, atk7Cat(chain, atk7GenL4(rng, final)))
	switch rng.IntN(10) {
	case 0:
		binary.BigEndian.PutUint16(b[18:], uint16(len(b)-54+rng.IntN(17)-8))
	case 1:
		binary.BigEndian.PutUint16(b[18:], uint16(pick(0, rng.IntN(1<<16))))
	}
	if rng.IntN(12) == 0 {
		b = b[:54+rng.IntN(len(b)-54+1)]
	}
	return b
}

// TestAttack7ChainsMatchModel holds the kernel's IPv6 parser, its
// neighbour-discovery decision included, to the reference model on
// random chains built header by header (TestParserMatchesModelIPv6
// mutates a few fixed frames; these reach every bound): chains up to
// past 8 headers and 256 bytes in any order and of any length, fragment
// headers anywhere with every offset and flag, AH of odd lengths,
// routing types and segments left, ND and MLD types behind all of it
// with the hop limits they are checked by, special and IPv4-mapped
// addresses, lying payload lengths and cut frames, at every interface
// setting that changes the IPv6 path.
func TestAttack7ChainsMatchModel(t *testing.T) {
	h := newDenyHarness6(t)
	rng := rand.New(rand.NewPCG(7, 6))
	flagChoices := []bpf.IfaceFlags{
		enforce6, enforce6 | bpf.IfaceWorkload, enforce6 | bpf.IfacePassFragments, enforce6 | bpf.IfaceDropND,
		enforce6 | bpf.IfaceWorkload | bpf.IfacePassFragments, enforce6 | bpf.IfaceWorkload | bpf.IfaceDropND,
	}
	cases := 20000
	if testing.Short() {
		cases = 2000
	}
	decided := map[bpf.Reason]int{}
	for i := range cases {
		frame := atk7GenFrame(rng)
		flags := flagChoices[rng.IntN(len(flagChoices))]
		want := expectOf(frame, flags)
		if !h.runMalformed(t, fmt.Sprintf("case %d flags %s % x", i, flags, frame), frame, flags, want) {
			t.Fatalf("case %d: kernel refused a frame of %d bytes", i, len(frame))
		}
		decided[want]++
		if t.Failed() {
			break
		}
	}
	// The generator must reach every reason of the IPv6 path, or the run
	// shows little.
	for _, r := range []bpf.Reason{bpf.ReasonDroppedIPv6Ext, bpf.ReasonDroppedIPv6ChainLong, bpf.ReasonDroppedIPv4Mapped,
		bpf.ReasonNDPassed, bpf.ReasonDroppedND, bpf.ReasonDroppedBadLen, bpf.ReasonDroppedFragment,
		bpf.ReasonFragmentPassed, bpf.ReasonDroppedShort, bpf.ReasonDroppedBadTCPDoff, bpf.ReasonDroppedByPolicy} {
		if decided[r] < 20 {
			t.Errorf("only %d cases ended in %s", decided[r], r)
		}
	}
}
