package testpkt

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// samplePackets6 covers every IPv6 layer with extension headers and payload
// present.
func samplePackets6(tb testing.TB) map[string]Packet {
	tcp := TCPv6(src6, dst6, SYN|ACK, []byte("hello, world"))
	// Options padded as Bytes pads them, so Parse gives back what was set.
	tcp.IPv6.Ext = []IPv6Ext{ExtHopByHop(concat(RouterAlertOption(0), []byte{1, 0})), ExtDestOpts([]byte{1, 4, 0, 0, 0, 0}), ExtRoutingType0(0, hop6)}
	tcp.TCP.Options = []byte{0x02, 0x04, 0x05, 0xa0}
	udp := UDPv6(src6, dst6, []byte("payload"))
	udp.IPv6.Ext = []IPv6Ext{ExtFragment(0, true, 7), ExtAH(1, 2, make([]byte, 12))}
	frag := UDPv6(src6, dst6, []byte("second fragment data"))
	frag.UDP, frag.IPv6.Protocol = nil, ProtoUDP
	frag.IPv6.Ext = []IPv6Ext{ExtFragment(185, false, 9)}
	vlan := ICMPv6Echo(src6.Addr(), dst6.Addr(), 7, 9, false)
	vlan.Eth.VLANs = []VLANTag{{TPID: TPID8021Q, VID: 100}}
	vlan.Payload = []byte("ping")
	return map[string]Packet{
		"tcp":      tcp,
		"udp":      udp,
		"fragment": frag,
		"vlan":     vlan,
		"na":       NDNeighborAdvert(dst6.Addr(), src6.Addr(), dst6.Addr(), NAFlagSolicited, NDTargetLinkAddr(DefaultDstMAC)),
		"error":    ICMPv6Error(hop6, src6.Addr(), ICMPv6DestUnreachable, 4, QuoteIPv6(MustBytes(tb, tcp))),
	}
}

// TestParseTruncatedAtEveryLength6 cuts each sample at every length short
// of its end: Parse must fail with ErrTruncated every time.
func TestParseTruncatedAtEveryLength6(t *testing.T) {
	for name, p := range samplePackets6(t) {
		t.Run(name, func(t *testing.T) {
			full := MustBytes(t, p)
			for n := 0; n < len(full); n++ {
				if _, err := Parse(full[:n]); !errors.Is(err, ErrTruncated) {
					t.Fatalf("Parse of %d/%d bytes: err = %v, want ErrTruncated", n, len(full), err)
				}
			}
			got, err := Parse(full)
			if err != nil {
				t.Fatal(err)
			}
			if diff := Diff(&p, got); diff != "" {
				t.Errorf("Parse (-built +parsed):\n%s", diff)
			}
		})
	}
}

// TestParseShortPayloadLen lowers the payload length of each sample to every
// value short of the real one: the bytes past it are the trailer, and Parse
// must fail with ErrTruncated (a header or the L4 layer past the payload
// length) or decode a shorter packet that Bytes rebuilds exactly.
func TestParseShortPayloadLen(t *testing.T) {
	for name, p := range samplePackets6(t) {
		t.Run(name, func(t *testing.T) {
			full := MustBytes(t, p)
			ip := full[len(full)-(len(full)-EthLen-len(p.Eth.VLANs)*VLANTagLen):]
			plen := int(ip[4])<<8 | int(ip[5])
			for n := range plen {
				q := p.Clone()
				q.IPv6.PayloadLen, q.IPv6.ZeroPayloadLen = uint16(n), n == 0
				b := MustBytes(t, q)
				got, err := Parse(b)
				if err != nil {
					if !errors.Is(err, ErrTruncated) {
						t.Fatalf("payload length %d: err = %v, want ErrTruncated", n, err)
					}
					continue
				}
				if diff := cmp.Diff(b, MustBytes(t, *got)); diff != "" {
					t.Fatalf("payload length %d: Bytes(Parse(b)) differs:\n%s", n, diff)
				}
			}
		})
	}
}

func TestWalkIPv6Chain(t *testing.T) {
	udp := func(ext ...IPv6Ext) Packet {
		p := UDPv6(src6, dst6, []byte("data"))
		p.IPv6.Ext = ext
		return p
	}
	opts := ExtDestOpts(nil)
	tests := []struct {
		name  string
		p     Packet
		limit int
		// cut, if non-zero, truncates the IPv6 packet to that many bytes.
		cut  int
		want IPv6Chain
	}{
		{
			name: "no extension headers", p: udp(), limit: 8,
			want: IPv6Chain{Proto: ProtoUDP, Offset: 40, NextHeaderAt: 6, Stop: ChainUpperLayer},
		},
		{
			name: "every kind", p: udp(ExtHopByHop(nil), ExtRoutingType0(0, hop6), ExtFragment(0, true, 1), ExtAH(1, 1, make([]byte, 12)), ExtDestOpts(make([]byte, 14))), limit: 8,
			want: IPv6Chain{
				Headers: []ChainHeader{
					{ProtoHopByHop, 40, 8}, {ProtoRouting, 48, 24}, {ProtoFragment, 72, 8}, {ProtoAH, 80, 24}, {ProtoDestOpts, 104, 16},
				},
				Proto: ProtoUDP, Offset: 120, NextHeaderAt: 104, Stop: ChainUpperLayer,
			},
		},
		{
			name: "non-first fragment", p: udp(ExtFragment(3, false, 1), opts), limit: 8,
			want: IPv6Chain{Headers: []ChainHeader{{ProtoFragment, 40, 8}}, Proto: ProtoDestOpts, Offset: 48, NextHeaderAt: 40, Stop: ChainNonFirstFragment},
		},
		{
			name: "ESP ends the chain", p: func() Packet { p := udp(opts); p.UDP, p.IPv6.Protocol = nil, ProtoESP; return p }(), limit: 8,
			want: IPv6Chain{Headers: []ChainHeader{{ProtoDestOpts, 40, 8}}, Proto: ProtoESP, Offset: 48, NextHeaderAt: 40, Stop: ChainUpperLayer},
		},
		{
			name: "no next header", p: func() Packet { p := udp(); p.UDP = nil; return p }(), limit: 8,
			want: IPv6Chain{Proto: ProtoNoNextHeader, Offset: 40, NextHeaderAt: 6, Stop: ChainUpperLayer},
		},
		{
			name: "exactly the limit", p: udp(RepeatExt(opts, 4)...), limit: 4,
			want: IPv6Chain{
				Headers: []ChainHeader{{60, 40, 8}, {60, 48, 8}, {60, 56, 8}, {60, 64, 8}},
				Proto:   ProtoUDP, Offset: 72, NextHeaderAt: 64, Stop: ChainUpperLayer,
			},
		},
		{
			name: "one past the limit", p: udp(RepeatExt(opts, 5)...), limit: 4,
			want: IPv6Chain{
				Headers: []ChainHeader{{60, 40, 8}, {60, 48, 8}, {60, 56, 8}, {60, 64, 8}},
				Proto:   ProtoDestOpts, Offset: 72, NextHeaderAt: 64, Stop: ChainTooLong,
			},
		},
		{
			name: "limit 0", p: udp(opts), limit: 0,
			want: IPv6Chain{Proto: ProtoDestOpts, Offset: 40, NextHeaderAt: 6, Stop: ChainTooLong},
		},
		{
			name: "hop-by-hop second", p: udp(opts, ExtHopByHop(nil)), limit: 8,
			want: IPv6Chain{Headers: []ChainHeader{{60, 40, 8}}, Proto: ProtoHopByHop, Offset: 48, NextHeaderAt: 40, Stop: ChainHopByHopNotFirst},
		},
		{
			name: "length past the payload length", p: udp(IPv6Ext{Type: ProtoDestOpts, Length: 9}), limit: 8,
			want: IPv6Chain{Proto: ProtoDestOpts, Offset: 40, NextHeaderAt: 6, Stop: ChainPastPayloadLen},
		},
		{
			name: "payload length cuts a header", p: func() Packet { p := udp(opts, opts); p.IPv6.PayloadLen = 12; return p }(), limit: 8,
			want: IPv6Chain{Headers: []ChainHeader{{60, 40, 8}}, Proto: ProtoDestOpts, Offset: 48, NextHeaderAt: 40, Stop: ChainPastPayloadLen},
		},
		{
			name: "payload length cuts the length byte", p: func() Packet { p := udp(opts, opts); p.IPv6.PayloadLen = 9; return p }(), limit: 8,
			want: IPv6Chain{Headers: []ChainHeader{{60, 40, 8}}, Proto: ProtoDestOpts, Offset: 48, NextHeaderAt: 40, Stop: ChainPastPayloadLen},
		},
		{
			name: "frame cuts a header", p: udp(opts, ExtFragment(0, false, 0)), limit: 8, cut: 52,
			want: IPv6Chain{Headers: []ChainHeader{{60, 40, 8}}, Proto: ProtoFragment, Offset: 48, NextHeaderAt: 40, Stop: ChainPastFrame},
		},
		{
			name: "frame cuts the fixed header", p: udp(), limit: 8, cut: 39,
			want: IPv6Chain{Stop: ChainPastFrame},
		},
		{
			// A length that claims less than was written: the walk reads
			// the rest as the next header's.
			name: "short length misreads the chain", p: udp(IPv6Ext{Type: ProtoDestOpts, Data: make([]byte, 14), ZeroLength: true}), limit: 8,
			want: IPv6Chain{Headers: []ChainHeader{{60, 40, 8}}, Proto: ProtoUDP, Offset: 48, NextHeaderAt: 40, Stop: ChainUpperLayer},
		},
		{
			name: "next header loops back", p: udp(IPv6Ext{Type: ProtoDestOpts, NextHeader: ProtoDestOpts}), limit: 8,
			want: IPv6Chain{Headers: []ChainHeader{{60, 40, 8}}, Proto: ProtoDestOpts, Offset: 48, NextHeaderAt: 40, Stop: ChainPastPayloadLen},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ip := MustBytes(t, tt.p)[EthLen:]
			if tt.cut != 0 {
				ip = ip[:tt.cut]
			}
			got := WalkIPv6Chain(ip, tt.limit)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("WalkIPv6Chain (-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseChainErrors checks that Parse stops at a malformed chain with a
// *ChainError naming the header, its offset and the reason.
func TestParseChainErrors(t *testing.T) {
	udp := func(ext ...IPv6Ext) Packet {
		p := UDPv6(src6, dst6, []byte("data"))
		p.IPv6.Ext = ext
		return p
	}
	opts := ExtDestOpts(nil)
	tests := []struct {
		name    string
		p       Packet
		cut     int
		want    ChainError
		wantErr error
	}{
		{"past MaxExtHeaders", udp(RepeatExt(opts, MaxExtHeaders+1)...), 0, ChainError{ChainTooLong, MaxExtHeaders, 40 + 8*MaxExtHeaders, ProtoDestOpts}, ErrMalformed},
		{"a loop of 200 headers", udp(RepeatExt(opts, 200)...), 0, ChainError{ChainTooLong, MaxExtHeaders, 40 + 8*MaxExtHeaders, ProtoDestOpts}, ErrMalformed},
		{"hop-by-hop third", udp(opts, ExtRoutingType0(0), ExtHopByHop(nil)), 0, ChainError{ChainHopByHopNotFirst, 2, 56, ProtoHopByHop}, ErrMalformed},
		{"length past the payload", udp(opts, IPv6Ext{Type: ProtoRouting, Data: []byte{0, 0}, Length: 200}), 0, ChainError{ChainPastPayloadLen, 1, 48, ProtoRouting}, ErrTruncated},
		{"frame ends in AH", udp(ExtAH(1, 2, make([]byte, 12))), EthLen + 40 + 20, ChainError{ChainPastFrame, 0, 40, ProtoAH}, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := MustBytes(t, tt.p)
			if tt.cut != 0 {
				b = b[:tt.cut]
			}
			_, err := Parse(b)
			var ce *ChainError
			if !errors.As(err, &ce) {
				t.Fatalf("Parse: err = %v, want a *ChainError", err)
			}
			if diff := cmp.Diff(tt.want, *ce); diff != "" {
				t.Errorf("ChainError (-want +got):\n%s", diff)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want it to wrap %v", err, tt.wantErr)
			}
		})
	}
	// At the bound, Parse reads the chain.
	p := udp(RepeatExt(opts, MaxExtHeaders)...)
	got, err := Parse(MustBytes(t, p))
	if err != nil {
		t.Fatal(err)
	}
	p.IPv6.Ext = RepeatExt(IPv6Ext{Type: ProtoDestOpts, Data: []byte{1, 4, 0, 0, 0, 0}}, MaxExtHeaders)
	if diff := Diff(&p, got); diff != "" {
		t.Errorf("Parse of %d headers (-want +got):\n%s", MaxExtHeaders, diff)
	}
}

func TestChainStopString(t *testing.T) {
	for s := ChainUpperLayer; s <= ChainPastFrame; s++ {
		if str := s.String(); str == "" || str == fmt.Sprintf("ChainStop(%d)", uint8(s)) {
			t.Errorf("ChainStop %d has no name", s)
		}
	}
	if got := ChainStop(99).String(); got != "ChainStop(99)" {
		t.Errorf("ChainStop(99).String() = %q", got)
	}
	err := &ChainError{Stop: ChainTooLong, Index: 16, Offset: 168, Proto: 60}
	if want := "extension header 16 (type 60) at offset 168: too many extension headers: malformed"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
}
