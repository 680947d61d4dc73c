package testpkt

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// overrideCase is one malformation: set applies it to a well-formed packet
// and returns the value the field must then hold on the wire; read takes the
// field from the frame by its RFC offset (l4 is where the L4 header starts);
// offsets lists every byte the field occupies.
type overrideCase struct {
	name    string
	kind    int
	set     func(p *Packet, r *rand.Rand) uint64
	read    func(b []byte, l4 int) uint64
	offsets func(l4 int) []int
	// ipChecksum and l4Checksum mark overrides of a checksum itself, which
	// is then not expected to verify.
	ipChecksum, l4Checksum bool
}

func u16(b []byte, off int) uint64 { return uint64(binary.BigEndian.Uint16(b[off:])) }

func span(off, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = off + i
	}
	return s
}

// randOther returns a random value in [1, limit) other than avoid.
func randOther(r *rand.Rand, limit int, avoid uint64) uint64 {
	for {
		if v := uint64(1 + r.IntN(limit-1)); v != avoid {
			return v
		}
	}
}

var overrideCases = []overrideCase{
	{
		name: "eth type", kind: kindUDP,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.Eth.Type = uint16(randOther(r, 1<<16, 0x0800))
			return uint64(p.Eth.Type)
		},
		read:    func(b []byte, _ int) uint64 { return u16(b, 12) },
		offsets: func(int) []int { return span(12, 2) },
	},
	{
		name: "ipv4 version", kind: kindTCP,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.IPv4.Version = uint8(randOther(r, 16, 4))
			return uint64(p.IPv4.Version)
		},
		read:    func(b []byte, _ int) uint64 { return uint64(b[14] >> 4) },
		offsets: func(int) []int { return []int{14} },
	},
	{
		name: "ipv4 IHL", kind: kindUDP,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.IPv4.IHL = uint8(randOther(r, 16, uint64(5+len(p.IPv4.Options)/4)))
			return uint64(p.IPv4.IHL)
		},
		read:    func(b []byte, _ int) uint64 { return uint64(b[14] & 0x0f) },
		offsets: func(int) []int { return []int{14} },
	},
	{
		name: "ipv4 total length", kind: kindICMP,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.IPv4.TotalLen = uint16(randOther(r, 1<<16, 0))
			return uint64(p.IPv4.TotalLen)
		},
		read:    func(b []byte, _ int) uint64 { return u16(b, 16) },
		offsets: func(int) []int { return span(16, 2) },
	},
	{
		name: "ipv4 zero TTL", kind: kindTCP,
		set:     func(p *Packet, _ *rand.Rand) uint64 { p.IPv4.ZeroTTL = true; return 0 },
		read:    func(b []byte, _ int) uint64 { return uint64(b[22]) },
		offsets: func(int) []int { return []int{22} },
	},
	{
		name: "ipv4 protocol", kind: kindTCP,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.IPv4.Protocol = uint8(randOther(r, 256, uint64(ProtoTCP)))
			return uint64(p.IPv4.Protocol)
		},
		read:    func(b []byte, _ int) uint64 { return uint64(b[23]) },
		offsets: func(int) []int { return []int{23} },
	},
	{
		name: "ipv4 checksum value", kind: kindUDP, ipChecksum: true,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.IPv4.Checksum = uint16(randOther(r, 1<<16, 0))
			return uint64(p.IPv4.Checksum)
		},
		read:    func(b []byte, _ int) uint64 { return u16(b, 24) },
		offsets: func(int) []int { return span(24, 2) },
	},
	{
		name: "ipv4 bad checksum", kind: kindICMP, ipChecksum: true,
		set:     func(p *Packet, _ *rand.Rand) uint64 { p.IPv4.BadChecksum = true; return 0 },
		offsets: func(int) []int { return span(24, 2) },
	},
	{
		name: "tcp data offset", kind: kindTCP,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.TCP.DataOffset = uint8(randOther(r, 16, uint64(5+len(p.TCP.Options)/4)))
			return uint64(p.TCP.DataOffset)
		},
		read:    func(b []byte, l4 int) uint64 { return uint64(b[l4+12] >> 4) },
		offsets: func(l4 int) []int { return []int{l4 + 12} },
	},
	{
		name: "tcp checksum value", kind: kindTCP, l4Checksum: true,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.TCP.Checksum = uint16(randOther(r, 1<<16, 0))
			return uint64(p.TCP.Checksum)
		},
		read:    func(b []byte, l4 int) uint64 { return u16(b, l4+16) },
		offsets: func(l4 int) []int { return span(l4+16, 2) },
	},
	{
		name: "tcp bad checksum", kind: kindTCP, l4Checksum: true,
		set:     func(p *Packet, _ *rand.Rand) uint64 { p.TCP.BadChecksum = true; return 0 },
		offsets: func(l4 int) []int { return span(l4+16, 2) },
	},
	{
		name: "udp length", kind: kindUDP,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.UDP.Length = uint16(randOther(r, 1<<16, uint64(UDPLen+len(p.Payload))))
			return uint64(p.UDP.Length)
		},
		read:    func(b []byte, l4 int) uint64 { return u16(b, l4+4) },
		offsets: func(l4 int) []int { return span(l4+4, 2) },
	},
	{
		name: "udp checksum value", kind: kindUDP, l4Checksum: true,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.UDP.Checksum = uint16(randOther(r, 1<<16, 0))
			return uint64(p.UDP.Checksum)
		},
		read:    func(b []byte, l4 int) uint64 { return u16(b, l4+6) },
		offsets: func(l4 int) []int { return span(l4+6, 2) },
	},
	{
		name: "udp no checksum", kind: kindUDP, l4Checksum: true,
		set:     func(p *Packet, _ *rand.Rand) uint64 { p.UDP.NoChecksum = true; return 0 },
		read:    func(b []byte, l4 int) uint64 { return u16(b, l4+6) },
		offsets: func(l4 int) []int { return span(l4+6, 2) },
	},
	{
		name: "udp bad checksum", kind: kindUDP, l4Checksum: true,
		set:     func(p *Packet, _ *rand.Rand) uint64 { p.UDP.BadChecksum = true; return 0 },
		offsets: func(l4 int) []int { return span(l4+6, 2) },
	},
	{
		name: "icmp checksum value", kind: kindICMP, l4Checksum: true,
		set: func(p *Packet, r *rand.Rand) uint64 {
			p.ICMPv4.Checksum = uint16(randOther(r, 1<<16, 0))
			return uint64(p.ICMPv4.Checksum)
		},
		read:    func(b []byte, l4 int) uint64 { return u16(b, l4+2) },
		offsets: func(l4 int) []int { return span(l4+2, 2) },
	},
	{
		name: "icmp bad checksum", kind: kindICMP, l4Checksum: true,
		set:     func(p *Packet, _ *rand.Rand) uint64 { p.ICMPv4.BadChecksum = true; return 0 },
		offsets: func(l4 int) []int { return span(l4+2, 2) },
	},
}

// TestPropertyOverrides builds random packets twice, without and with one
// override, and checks that the override changed only its own field (and the
// checksum covering it, which must still verify), that the field reads the
// value asked for, and that a bad-checksum override never verifies.
func TestPropertyOverrides(t *testing.T) {
	r := newRand(t, 4)
	n := propertyCases() / 5
	for _, tc := range overrideCases {
		t.Run(tc.name, func(t *testing.T) {
			for i := range n {
				good := randPacketOf(r, tc.kind)
				bad := good.Clone()
				want := tc.set(&bad, r)
				gb, bb := MustBytes(t, good), MustBytes(t, bad)
				if len(gb) != len(bb) {
					t.Fatalf("case %d: override changed the length from %d to %d", i, len(gb), len(bb))
				}
				hlen := IPv4MinLen + len(good.IPv4.Options)
				l4 := EthLen + hlen
				allowed := map[int]bool{}
				for _, o := range tc.offsets(l4) {
					allowed[o] = true
				}
				ipCovered, l4Covered := false, false
				for _, o := range tc.offsets(l4) {
					ipCovered = ipCovered || (o >= EthLen && o < l4)
					l4Covered = l4Covered || o >= l4
				}
				if ipCovered && !tc.ipChecksum {
					allowed[24], allowed[25] = true, true
				}
				if l4Covered && !tc.l4Checksum {
					for _, o := range l4ChecksumOffsets(tc.kind, l4) {
						allowed[o] = true
					}
				}
				for o := range gb {
					if gb[o] != bb[o] && !allowed[o] {
						t.Fatalf("case %d: byte %d changed (%#02x -> %#02x), outside the field", i, o, gb[o], bb[o])
					}
				}
				if tc.read != nil {
					if diff := cmp.Diff(want, tc.read(bb, l4)); diff != "" {
						t.Fatalf("case %d: field on the wire (-want +got):\n%s", i, diff)
					}
				}
				ipOK := refVerifies(bb[EthLen:l4])
				if tc.ipChecksum {
					if ipOK != (tc.read != nil && checksumsEqual(uint16(want), binary.BigEndian.Uint16(gb[24:]))) {
						t.Fatalf("case %d: IPv4 checksum verifies = %v after override", i, ipOK)
					}
				} else if !ipOK {
					t.Fatalf("case %d: IPv4 header checksum no longer verifies", i)
				}
				l4OK := l4Verifies(tc.kind, bb, l4)
				switch {
				case tc.name == "udp no checksum":
				case tc.l4Checksum:
					wantOK := tc.read != nil && checksumsEqual(uint16(want), uint16(u16(gb, l4ChecksumOffsets(tc.kind, l4)[0])))
					if l4OK != wantOK {
						t.Fatalf("case %d: L4 checksum verifies = %v after override, want %v", i, l4OK, wantOK)
					}
				case !l4OK:
					t.Fatalf("case %d: L4 checksum no longer verifies", i)
				}
			}
		})
	}
}

func l4ChecksumOffsets(kind, l4 int) []int {
	switch kind {
	case kindTCP:
		return span(l4+16, 2)
	case kindUDP:
		return span(l4+6, 2)
	}
	return span(l4+2, 2)
}

// l4Verifies checks the L4 checksum with the reference sum, over the
// pseudo-header of the protocol the layer is (not the IP header's protocol
// field, which an override may have changed).
func l4Verifies(kind int, frame []byte, l4 int) bool {
	seg := frame[l4:]
	switch kind {
	case kindTCP, kindUDP:
		ph := refPseudoHeader(frame[EthLen:], len(seg))
		ph[9] = map[int]uint8{kindTCP: ProtoTCP, kindUDP: ProtoUDP}[kind]
		return refVerifies(append(ph, seg...))
	}
	return refVerifies(seg)
}
