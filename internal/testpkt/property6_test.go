package testpkt

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func randAddr6(r *rand.Rand) netip.Addr {
	return netip.AddrFrom16([16]byte(randBytes(r, 16)))
}

// randExt returns a well-formed extension header of a random kind whose
// Data is already padded, so Parse gives back exactly what was set. A
// fragment header has offset 0 unless last, so that the walk goes on.
func randExt(r *rand.Rand, first, last bool) IPv6Ext {
	kinds := []uint8{ProtoRouting, ProtoFragment, ProtoDestOpts, ProtoAH, ProtoMobility, ProtoExperiment2}
	if first {
		kinds = append(kinds, ProtoHopByHop)
	}
	switch typ := kinds[r.IntN(len(kinds))]; typ {
	case ProtoFragment:
		e := ExtFragment(0, r.IntN(2) == 0, r.Uint32())
		if last && r.IntN(2) == 0 {
			e.FragOffset = uint16(1 + r.IntN(0x1fff))
		}
		return e
	case ProtoAH:
		return IPv6Ext{Type: typ, Data: randBytes(r, 6+4*r.IntN(8))}
	case ProtoRouting:
		// Segments left 0 so the final destination is Dst; the routing
		// headers that move it have their own test.
		data := randBytes(r, 6+8*r.IntN(6))
		data[1] = 0
		return IPv6Ext{Type: typ, Data: data}
	default:
		return IPv6Ext{Type: typ, Data: randBytes(r, 6+8*r.IntN(4))}
	}
}

// Kinds of random IPv6 packet: which layer follows the chain.
const (
	kind6TCP = iota
	kind6UDP
	kind6ICMP
	kind6Raw
	kind6NoNext
	numKinds6
)

// randPacket6 builds a well-formed random IPv6 packet with every derived
// field left at zero.
func randPacket6(r *rand.Rand) Packet {
	p := Packet{
		Eth: Eth{Dst: net.HardwareAddr(randBytes(r, 6)), Src: net.HardwareAddr(randBytes(r, 6))},
		IPv6: &IPv6{
			Src: randAddr6(r), Dst: randAddr6(r),
			TrafficClass: uint8(r.Uint32()), FlowLabel: r.Uint32() & 0xfffff, HopLimit: uint8(1 + r.IntN(255)),
		},
		Payload: randBytes(r, r.IntN(300)),
	}
	if r.IntN(4) == 0 {
		p.Eth.VLANs = randTags(r)
	}
	n := r.IntN(7)
	for i := range n {
		p.IPv6.Ext = append(p.IPv6.Ext, randExt(r, i == 0, i == n-1))
	}
	if n > 0 && p.IPv6.Ext[n-1].FragOffset != 0 {
		// A non-first fragment: never decoded past the chain.
		p.IPv6.Protocol = []uint8{ProtoTCP, ProtoUDP, ProtoICMPv6, ProtoDestOpts}[r.IntN(4)]
		return p
	}
	switch r.IntN(numKinds6) {
	case kind6TCP:
		p.TCP = &TCP{
			SrcPort: uint16(r.Uint32()), DstPort: uint16(r.Uint32()),
			Seq: r.Uint32(), Ack: r.Uint32(), Flags: TCPFlags(r.Uint32()),
			Window: uint16(r.Uint32()), Urgent: uint16(r.Uint32()), Options: randOptions(r),
		}
	case kind6UDP:
		p.UDP = &UDP{SrcPort: uint16(r.Uint32()), DstPort: uint16(r.Uint32())}
	case kind6ICMP:
		p.ICMPv6 = &ICMPv6{Type: uint8(r.Uint32()), Code: uint8(r.Uint32())}
		if p.ICMPv6.IsEcho() {
			p.ICMPv6.ID, p.ICMPv6.Seq = uint16(r.Uint32()), uint16(r.Uint32())
		} else {
			p.ICMPv6.Rest = [4]byte(randBytes(r, 4))
		}
	case kind6Raw:
		// ESP or a protocol without a decoder: the payload stays raw.
		for p.IPv6.Protocol == 0 || IsIPv6ExtHeader(p.IPv6.Protocol) || p.IPv6.Protocol == ProtoNoNextHeader ||
			p.IPv6.Protocol == ProtoTCP || p.IPv6.Protocol == ProtoUDP || p.IPv6.Protocol == ProtoICMPv6 {
			p.IPv6.Protocol = uint8(r.Uint32())
		}
	case kind6NoNext:
	}
	return p
}

// TestPropertyRoundTrip6 builds random IPv6 packets: Parse must give each
// back unchanged and Bytes must rebuild its frame, every checksum must
// verify over the reference pseudo-header, and the walk must find the L4
// layer where the extension headers end.
func TestPropertyRoundTrip6(t *testing.T) {
	r := newRand(t, 6)
	for i := range propertyCases() {
		p := randPacket6(r)
		frame := roundTrip(t, i, p)
		ip := frame[EthLen+VLANTagLen*len(p.Eth.VLANs):]
		chain := WalkIPv6Chain(ip, MaxExtHeaders)
		if len(chain.Headers) != len(p.IPv6.Ext) {
			t.Fatalf("case %d: walk read %d headers, built %d", i, len(chain.Headers), len(p.IPv6.Ext))
		}
		extLen := 0
		for j, h := range chain.Headers {
			if h.Type != p.IPv6.Ext[j].Type || h.Offset != IPv6HdrLen+extLen {
				t.Fatalf("case %d: header %d walked as %+v", i, j, h)
			}
			extLen += h.Len
		}
		l4 := ip[IPv6HdrLen+extLen:]
		var proto uint8
		switch {
		case p.TCP != nil:
			proto = ProtoTCP
		case p.UDP != nil:
			proto = ProtoUDP
		case p.ICMPv6 != nil:
			proto = ProtoICMPv6
		default:
			continue
		}
		if chain.Proto != proto || chain.Stop != ChainUpperLayer {
			t.Fatalf("case %d: walk stopped at %d (%s), want %d", i, chain.Proto, chain.Stop, proto)
		}
		if !refVerifies(append(refPseudoHeader6(p.IPv6.Src, p.IPv6.Dst, proto, len(l4)), l4...)) {
			t.Fatalf("case %d: checksum does not verify over the pseudo-header", i)
		}
	}
}

// TestParseRandomBytes6 feeds Parse random IPv6 frames, many with a valid
// fixed header and random chains: it must return a packet Bytes accepts
// and rebuilds exactly, or an error, never panic.
func TestParseRandomBytes6(t *testing.T) {
	r := newRand(t, 7)
	for range propertyCases() {
		b := randBytes(r, EthLen+r.IntN(200))
		b[12], b[13] = 0x86, 0xdd
		if len(b) > EthLen+IPv6HdrLen && r.IntN(2) == 0 {
			b[EthLen] = 0x60 | b[EthLen]&0x0f
			plen := len(b) - EthLen - IPv6HdrLen - r.IntN(4)
			b[EthLen+4], b[EthLen+5] = byte(plen>>8), byte(plen)
			b[EthLen+6] = []uint8{0, 43, 44, 60, 51, 6, 17, 58}[r.IntN(8)]
		}
		p, err := Parse(b)
		if err != nil {
			continue
		}
		again, err := p.Bytes()
		if err != nil {
			t.Fatalf("Parse(% x) gave a packet Bytes rejects: %v", b, err)
		}
		if diff := cmp.Diff(b, again); diff != "" {
			t.Fatalf("Bytes(Parse(b)) differs from b:\n%s", diff)
		}
	}
}

func FuzzParse6(f *testing.F) {
	for _, p := range samplePackets6(f) {
		f.Add(MustBytes(f, p))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		again, err := p.Bytes()
		if err != nil {
			t.Fatalf("Parse gave a packet Bytes rejects: %v", err)
		}
		if diff := cmp.Diff(b, again); diff != "" {
			t.Fatalf("Bytes(Parse(b)) differs from b:\n%s", diff)
		}
	})
}
