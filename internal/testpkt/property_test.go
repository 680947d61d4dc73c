package testpkt

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// propertyCases is how many random packets each property test builds.
func propertyCases() int {
	if testing.Short() {
		return 500
	}
	return 5000
}

// newRand returns a seeded generator so a failure names a reproducible case.
func newRand(t *testing.T, seed uint64) *rand.Rand {
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, 0x5eed))
}

// refOnesSum adds 16-bit words with the carry wrapped in at every step, the
// textbook form of RFC 1071's sum, independent of the package's
// fold-at-the-end implementation.
func refOnesSum(b []byte) uint16 {
	var s uint16
	for i := 0; i < len(b); i += 2 {
		w := uint16(b[i]) << 8
		if i+1 < len(b) {
			w |= uint16(b[i+1])
		}
		t := uint32(s) + uint32(w)
		s = uint16(t) + uint16(t>>16)
	}
	return s
}

// refVerifies reports whether data holding its own checksum verifies: its
// ones' complement sum is all ones (negative zero).
func refVerifies(b []byte) bool { return refOnesSum(b) == 0xffff }

// refPseudoHeader lays out the RFC 793 IPv4 pseudo-header byte by byte.
func refPseudoHeader(ip []byte, l4Len int) []byte {
	ph := make([]byte, 12)
	copy(ph[0:8], ip[12:20])
	ph[9] = ip[9]
	binary.BigEndian.PutUint16(ph[10:], uint16(l4Len))
	return ph
}

func randBytes(r *rand.Rand, n int) []byte {
	if n == 0 {
		return nil
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randAddr4(r *rand.Rand) netip.Addr {
	return netip.AddrFrom4([4]byte(randBytes(r, 4)))
}

// randOptions returns 0 to 40 bytes of options, a multiple of 4 so Parse
// gives back exactly what was set.
func randOptions(r *rand.Rand) []byte {
	if r.IntN(3) != 0 {
		return nil
	}
	return randBytes(r, 4*r.IntN(11))
}

// Kinds of random packet: which layer follows IPv4.
const (
	kindTCP = iota
	kindUDP
	kindICMP
	kindRawProto
	kindFragment
	numKinds
)

// randPacket builds a well-formed random packet of a random kind.
func randPacket(r *rand.Rand) Packet { return randPacketOf(r, r.IntN(numKinds)) }

// randPacketOf builds a well-formed random packet of the given kind with
// every derived field left at zero, so Parse must give it back unchanged.
func randPacketOf(r *rand.Rand, kind int) Packet {
	p := Packet{
		Eth: Eth{Dst: net.HardwareAddr(randBytes(r, 6)), Src: net.HardwareAddr(randBytes(r, 6))},
		IPv4: &IPv4{
			Src: randAddr4(r), Dst: randAddr4(r),
			TOS: uint8(r.Uint32()), ID: uint16(r.Uint32()), TTL: uint8(1 + r.IntN(255)),
			DontFragment: r.IntN(2) == 0, Options: randOptions(r),
		},
		Payload: randBytes(r, r.IntN(300)),
	}
	switch kind {
	case kindTCP:
		p.TCP = &TCP{
			SrcPort: uint16(r.Uint32()), DstPort: uint16(r.Uint32()),
			Seq: r.Uint32(), Ack: r.Uint32(), Flags: TCPFlags(r.Uint32()),
			Window: uint16(r.Uint32()), Urgent: uint16(r.Uint32()), Options: randOptions(r),
		}
	case kindUDP:
		p.UDP = &UDP{SrcPort: uint16(r.Uint32()), DstPort: uint16(r.Uint32())}
	case kindICMP:
		p.ICMPv4 = &ICMPv4{Type: uint8(r.IntN(20)), Code: uint8(r.IntN(16))}
		if p.ICMPv4.IsQuery() {
			p.ICMPv4.ID, p.ICMPv4.Seq = uint16(r.Uint32()), uint16(r.Uint32())
		} else {
			p.ICMPv4.Rest = [4]byte(randBytes(r, 4))
		}
	case kindRawProto:
		// A protocol without an L4 decoder: the payload stays raw.
		for p.IPv4.Protocol == 0 || p.IPv4.Protocol == ProtoTCP || p.IPv4.Protocol == ProtoUDP || p.IPv4.Protocol == ProtoICMPv4 {
			p.IPv4.Protocol = uint8(r.Uint32())
		}
	case kindFragment:
		// A non-first fragment: never decoded past IP.
		p.IPv4.Protocol = []uint8{ProtoTCP, ProtoUDP, ProtoICMPv4}[r.IntN(3)]
		p.IPv4.FragOffset = uint16(1 + r.IntN(0x1fff))
		p.IPv4.MoreFragments = r.IntN(2) == 0
		p.IPv4.DontFragment = false
	}
	return p
}

// ipAndL4 splits a built frame at the IPv4 header's IHL.
func ipAndL4(t *testing.T, frame []byte) (ip, l4 []byte) {
	t.Helper()
	ipPkt := frame[EthLen:]
	hlen := int(ipPkt[0]&0x0f) * 4
	return ipPkt[:hlen], ipPkt[hlen:]
}

func TestPropertyChecksumsVerify(t *testing.T) {
	r := newRand(t, 1)
	for i := range propertyCases() {
		p := randPacket(r)
		frame, err := p.Bytes()
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		ip, l4 := ipAndL4(t, frame)
		if !refVerifies(ip) {
			t.Fatalf("case %d: IPv4 header checksum does not verify: % x", i, ip)
		}
		if Checksum(ip) != 0 {
			t.Fatalf("case %d: Checksum over a correct IPv4 header = %#04x, want 0", i, Checksum(ip))
		}
		switch {
		case p.TCP != nil, p.UDP != nil:
			if !refVerifies(append(refPseudoHeader(ip, len(l4)), l4...)) {
				t.Fatalf("case %d: L4 checksum does not verify over the pseudo-header", i)
			}
			if got := L4Checksum(p.IPv4.Src, p.IPv4.Dst, ip[9], l4); got != 0 {
				t.Fatalf("case %d: L4Checksum over a correct segment = %#04x, want 0", i, got)
			}
			if p.UDP != nil && binary.BigEndian.Uint16(l4[6:]) == 0 {
				t.Fatalf("case %d: UDP checksum written as 0 (no checksum)", i)
			}
		case p.ICMPv4 != nil:
			if !refVerifies(l4) {
				t.Fatalf("case %d: ICMP checksum does not verify", i)
			}
		}
	}
}

func TestPropertyChecksumMatchesReference(t *testing.T) {
	r := newRand(t, 2)
	for i := range propertyCases() {
		b := randBytes(r, r.IntN(200))
		if got, want := Checksum(b), ^refOnesSum(b); !checksumsEqual(got, want) {
			t.Fatalf("case %d: Checksum(% x) = %#04x, reference %#04x", i, b, got, want)
		}
	}
}

func TestPropertyRoundTrip(t *testing.T) {
	r := newRand(t, 3)
	for i := range propertyCases() {
		roundTrip(t, i, randPacket(r))
	}
}

// roundTrip checks that Parse gives p back from its frame unchanged and
// that Bytes rebuilds the frame, and returns the frame.
func roundTrip(t *testing.T, i int, p Packet) []byte {
	t.Helper()
	frame, err := p.Bytes()
	if err != nil {
		t.Fatalf("case %d: %v", i, err)
	}
	got, err := Parse(frame)
	if err != nil {
		t.Fatalf("case %d: Parse: %v", i, err)
	}
	if diff := Diff(&p, got); diff != "" {
		t.Fatalf("case %d: Parse(Bytes(p)) differs (-built +parsed):\n%s", i, diff)
	}
	again, err := got.Bytes()
	if err != nil {
		t.Fatalf("case %d: re-encode: %v", i, err)
	}
	if diff := cmp.Diff(frame, again); diff != "" {
		t.Fatalf("case %d: Bytes(Parse(b)) differs from b:\n%s", i, diff)
	}
	return frame
}
