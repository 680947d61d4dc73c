package testpkt

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestQuoteIPv6(t *testing.T) {
	plain := MustBytes(t, UDPv6(src6, dst6, []byte("0123456789")))
	big := MustBytes(t, UDPv6(src6, dst6, make([]byte, 1500)))
	trailer := UDPv6(src6, dst6, []byte("ab"))
	trailer.Trailer = []byte("padding")
	padded := MustBytes(t, trailer)
	tagged := UDPv6(src6, dst6, []byte("0123456789"))
	tagged.Eth.VLANs = []VLANTag{{TPID: TPID8021Q, VID: 3}}
	tests := []struct {
		name  string
		frame []byte
		want  []byte
	}{
		{"whole packet", plain, plain[EthLen:]},
		{"cut to ICMPv6MaxQuote", big, big[EthLen : EthLen+ICMPv6MaxQuote]},
		{"not the trailer", padded, padded[EthLen : len(padded)-len("padding")]},
		{"short frame", plain[:EthLen+30], plain[EthLen : EthLen+30]},
		{"behind a VLAN tag", MustBytes(t, tagged), plain[EthLen:]},
		{"ethernet only", plain[:EthLen], nil},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, QuoteIPv6(tt.frame), CmpOptions); diff != "" {
				t.Errorf("QuoteIPv6 (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, Quote(tt.frame), CmpOptions); diff != "" {
				t.Errorf("Quote of an IPv6 frame (-want +got):\n%s", diff)
			}
		})
	}
}

// TestICMPv6Errors builds each error type quoting a packet with extension
// headers and checks the header fields by RFC 4443 offsets, the quote, the
// checksum and the round trip.
func TestICMPv6Errors(t *testing.T) {
	orig := TCPv6(src6, dst6, SYN, []byte("original"))
	orig.IPv6.Ext = []IPv6Ext{ExtHopByHop(nil), ExtFragment(0, false, 5)}
	quote := QuoteIPv6(MustBytes(t, orig))
	tests := []struct {
		name     string
		p        Packet
		typ      uint8
		code     uint8
		restWant []byte
	}{
		{"port unreachable", ICMPv6Error(hop6, src6.Addr(), ICMPv6DestUnreachable, 4, quote), 1, 4, []byte{0, 0, 0, 0}},
		{"packet too big", ICMPv6TooBig(hop6, src6.Addr(), 1280, quote), 2, 0, []byte{0, 0, 0x05, 0x00}},
		{"hop limit exceeded", ICMPv6Error(hop6, src6.Addr(), ICMPv6TimeExceeded, 0, quote), 3, 0, []byte{0, 0, 0, 0}},
		{"unrecognized next header", ICMPv6Problem(hop6, src6.Addr(), 1, 48, quote), 4, 1, []byte{0, 0, 0, 48}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := MustBytes(t, tt.p)
			icmp := b[EthLen+IPv6HdrLen:]
			expectByte(t, icmp, 0, tt.typ)
			expectByte(t, icmp, 1, tt.code)
			if diff := cmp.Diff(tt.restWant, icmp[4:8]); diff != "" {
				t.Errorf("bytes 4-7 (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(quote, icmp[8:]); diff != "" {
				t.Errorf("quote (-want +got):\n%s", diff)
			}
			if !refVerifies(append(refPseudoHeader6(hop6, src6.Addr(), ProtoICMPv6, len(icmp)), icmp...)) {
				t.Errorf("ICMPv6 checksum does not verify")
			}
			if !tt.p.ICMPv6.IsError() || tt.p.ICMPv6.IsEcho() {
				t.Errorf("IsError = %v, IsEcho = %v", tt.p.ICMPv6.IsError(), tt.p.ICMPv6.IsEcho())
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := Diff(&tt.p, got); diff != "" {
				t.Errorf("Parse (-built +parsed):\n%s", diff)
			}
			// The quote parses back into the original.
			inner, err := Parse(concat(b[:EthLen], got.Payload))
			if err != nil {
				t.Fatal(err)
			}
			want := orig.Clone()
			want.IPv6.Ext[0].Data = []byte{1, 4, 0, 0, 0, 0}
			want.Eth = Eth{Dst: b[:6], Src: b[6:12]}
			if diff := Diff(&want, inner); diff != "" {
				t.Errorf("quoted packet (-want +got):\n%s", diff)
			}
		})
	}
}

// TestICMPv6Checksum checks the checksum overrides and that the checksum
// covers the pseudo-header: the same message between other addresses does
// not verify.
func TestICMPv6Checksum(t *testing.T) {
	good := ICMPv6Echo(src6.Addr(), dst6.Addr(), 1, 2, false)
	good.Payload = []byte("odd")
	gb := MustBytes(t, good)
	for _, tt := range []struct {
		name    string
		set     func(c *ICMPv6)
		wantSum uint16
	}{
		{"bad", func(c *ICMPv6) { c.BadChecksum = true }, 0},
		{"override", func(c *ICMPv6) { c.Checksum = 0x1234 }, 0x1234},
		{"zero", func(c *ICMPv6) { c.ZeroChecksum = true }, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := good.Clone()
			tt.set(bad.ICMPv6)
			b := MustBytes(t, bad)
			if tt.wantSum != 0 {
				expectU16(t, b, EthLen+IPv6HdrLen+2, tt.wantSum)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if !got.ICMPv6.BadChecksum {
				t.Errorf("Parse did not flag the checksum")
			}
			if bad.ICMPv6.ZeroChecksum {
				expectU16(t, b, EthLen+IPv6HdrLen+2, 0)
				if !got.ICMPv6.ZeroChecksum {
					t.Errorf("Parse did not set ZeroChecksum for a 0 on the wire")
				}
			}
			if diff := cmp.Diff(b, MustBytes(t, *got)); diff != "" {
				t.Errorf("re-encoded (-want +got):\n%s", diff)
			}
		})
	}
	moved := good.Clone()
	moved.IPv6.Src = hop6
	mb := MustBytes(t, moved)
	if bytes.Equal(gb[EthLen+IPv6HdrLen+2:EthLen+IPv6HdrLen+4], mb[EthLen+IPv6HdrLen+2:EthLen+IPv6HdrLen+4]) {
		t.Errorf("the checksum does not depend on the source address")
	}
}

func TestNDOptions(t *testing.T) {
	prefix := netip.MustParsePrefix("2001:db8:5::/64")
	tests := []struct {
		name string
		opt  NDOption
		want []byte
	}{
		{"source link address", NDSourceLinkAddr(DefaultSrcMAC), []byte{1, 1, 2, 0, 0, 0, 0, 1}},
		{"target link address", NDTargetLinkAddr(DefaultDstMAC), []byte{2, 1, 2, 0, 0, 0, 0, 2}},
		{
			"prefix information", NDPrefixInfo(prefix, PrefixFlagOnLink|PrefixFlagAuto, 86400, 14400),
			concat([]byte{3, 4, 64, 0xc0, 0, 1, 0x51, 0x80, 0, 0, 0x38, 0x40, 0, 0, 0, 0}, prefix.Addr().AsSlice()),
		},
		{"mtu", NDMTU(1500), []byte{5, 1, 0, 0, 0, 0, 0x05, 0xdc}},
		{"redirected header", NDRedirectedHeader([]byte{0x60, 1}), []byte{4, 2, 0, 0, 0, 0, 0, 0, 0x60, 1, 0, 0, 0, 0, 0, 0}},
		{"opaque, padded", NDOption{Type: 99, Data: []byte{7}}, []byte{99, 1, 7, 0, 0, 0, 0, 0}},
		{"length override", NDOption{Type: 1, Data: make([]byte, 6), Length: 3}, []byte{1, 3, 0, 0, 0, 0, 0, 0}},
		{"zero length", NDOption{Type: 1, Data: make([]byte, 6), ZeroLength: true}, []byte{1, 0, 0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NDOptions(tt.opt)
			if diff := cmp.Diff(tt.want, b); diff != "" {
				t.Fatalf("NDOptions (-want +got):\n%s", diff)
			}
			got, err := ParseNDOptions(b)
			if tt.opt.Length != 0 || tt.opt.ZeroLength {
				if err == nil {
					t.Errorf("ParseNDOptions of a wrong length gave %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := []NDOption{{Type: tt.want[0], Data: tt.want[2:]}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("ParseNDOptions (-want +got):\n%s", diff)
			}
		})
	}
	two := NDOptions(NDSourceLinkAddr(DefaultSrcMAC), NDMTU(9000))
	if got, err := ParseNDOptions(two); err != nil || len(got) != 2 {
		t.Errorf("ParseNDOptions of two options = %+v, %v", got, err)
	}
	for _, tt := range []struct {
		name string
		b    []byte
		want error
	}{
		{"zero length", []byte{1, 0, 0, 0, 0, 0, 0, 0}, ErrMalformed},
		{"past the end", []byte{1, 2, 0, 0, 0, 0, 0, 0}, ErrTruncated},
		{"one byte", []byte{1}, ErrTruncated},
	} {
		if _, err := ParseNDOptions(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
	for typ, want := range map[uint8]int{ICMPv6RouterSolicit: 0, ICMPv6RouterAdvert: 8, ICMPv6NeighborSolicit: 16, ICMPv6NeighborAdvert: 16, ICMPv6Redirect: 32, ICMPv6EchoRequest: -1} {
		if got := NDOptionsOffset(typ); got != want {
			t.Errorf("NDOptionsOffset(%d) = %d, want %d", typ, got, want)
		}
	}
}

func TestMulticastAddrs(t *testing.T) {
	a := netip.MustParseAddr("2001:db8::1:2:3")
	if got, want := SolicitedNodeAddr(a), netip.MustParseAddr("ff02::1:ff02:3"); got != want {
		t.Errorf("SolicitedNodeAddr(%v) = %v, want %v", a, got, want)
	}
	if diff := cmp.Diff(mustMAC(t, "33:33:ff:02:00:03"), MulticastMAC(SolicitedNodeAddr(a))); diff != "" {
		t.Errorf("MulticastMAC (-want +got):\n%s", diff)
	}
}

func TestCloneIPv6(t *testing.T) {
	base := UDPv6(src6, dst6, []byte("x"))
	base.IPv6.Ext = []IPv6Ext{ExtDestOpts([]byte{1, 4, 0, 0, 0, 0})}
	icmp := ICMPv6Echo(src6.Addr(), dst6.Addr(), 1, 1, false)
	before, beforeICMP := MustBytes(t, base), MustBytes(t, icmp)
	c, ci := base.Clone(), icmp.Clone()
	c.IPv6.HopLimit++
	c.IPv6.Ext[0].Data[0]++
	c.IPv6.Ext = append(c.IPv6.Ext, ExtDestOpts(nil))
	ci.ICMPv6.Seq++
	if !bytes.Equal(before, MustBytes(t, base)) || !bytes.Equal(beforeICMP, MustBytes(t, icmp)) {
		t.Errorf("changing a clone changed the original")
	}
	ext := RepeatExt(base.IPv6.Ext[0], 2)
	ext[0].Data[0]++
	if ext[1].Data[0] != 1 || base.IPv6.Ext[0].Data[0] != 1 {
		t.Errorf("RepeatExt aliases Data")
	}
}
