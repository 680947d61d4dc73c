package testpkt

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConstructors(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	eth := Eth{Dst: DefaultDstMAC, Src: DefaultSrcMAC}
	ip := func(src, dst netip.Addr) *IPv4 { return &IPv4{Src: src, Dst: dst, TTL: 64} }
	tests := []struct {
		name string
		got  Packet
		want Packet
	}{
		{
			"TCPv4",
			TCPv4(netip.AddrPortFrom(a, 1), netip.AddrPortFrom(b, 2), SYN, []byte("x")),
			Packet{Eth: eth, IPv4: ip(a, b), TCP: &TCP{SrcPort: 1, DstPort: 2, Flags: SYN, Window: 65535}, Payload: []byte("x")},
		},
		{
			"UDPv4",
			UDPv4(netip.AddrPortFrom(a, 3), netip.AddrPortFrom(b, 4), []byte("y")),
			Packet{Eth: eth, IPv4: ip(a, b), UDP: &UDP{SrcPort: 3, DstPort: 4}, Payload: []byte("y")},
		},
		{
			"ICMPv4Echo request",
			ICMPv4Echo(a, b, 5, 6, false),
			Packet{Eth: eth, IPv4: ip(a, b), ICMPv4: &ICMPv4{Type: ICMPv4EchoRequest, ID: 5, Seq: 6}},
		},
		{
			"ICMPv4Echo reply",
			ICMPv4Echo(b, a, 5, 6, true),
			Packet{Eth: eth, IPv4: ip(b, a), ICMPv4: &ICMPv4{Type: ICMPv4EchoReply, ID: 5, Seq: 6}},
		},
		{
			"ICMPv4Error",
			ICMPv4Error(b, a, ICMPv4TimeExceeded, 0, []byte{0x45}),
			Packet{Eth: eth, IPv4: ip(b, a), ICMPv4: &ICMPv4{Type: ICMPv4TimeExceeded}, Payload: []byte{0x45}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := Diff(&tt.want, &tt.got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			// Every constructor's packet must survive the wire unchanged.
			parsed, err := Parse(MustBytes(t, tt.got))
			if err != nil {
				t.Fatal(err)
			}
			if diff := Diff(&tt.got, parsed); diff != "" {
				t.Errorf("Parse(Bytes) (-built +parsed):\n%s", diff)
			}
		})
	}
}

func TestConstructorsDoNotAlias(t *testing.T) {
	payload := []byte("abc")
	p := UDPv4(srcAP, dstAP, payload)
	payload[0] = 'X'
	p.Eth.Src[0] = 0xff
	if string(p.Payload) != "abc" {
		t.Errorf("payload aliases the caller's slice: %q", p.Payload)
	}
	if DefaultSrcMAC[0] != 0x02 {
		t.Errorf("changing a packet's MAC changed DefaultSrcMAC to %v", DefaultSrcMAC)
	}
}

func TestClone(t *testing.T) {
	base := TCPv4(srcAP, dstAP, SYN, []byte("data"))
	base.IPv4.Options = []byte{1, 1, 1, 0}
	base.TCP.Options = []byte{1, 1, 1, 0}
	base.Trailer = []byte{0}
	before := MustBytes(t, base)
	c := base.Clone()
	c.Eth.Dst[0]++
	c.IPv4.TTL++
	c.IPv4.Options[0]++
	c.TCP.Window++
	c.TCP.Options[0]++
	c.Payload[0]++
	c.Trailer[0]++
	if after := MustBytes(t, base); !bytes.Equal(before, after) {
		t.Errorf("changing a clone changed the original:\nbefore % x\n after % x", before, after)
	}
	for _, p := range []Packet{UDPv4(srcAP, dstAP, nil), ICMPv4Echo(srcAP.Addr(), dstAP.Addr(), 1, 1, false)} {
		if diff := Diff(&p, ptr(p.Clone())); diff != "" {
			t.Errorf("clone differs (-orig +clone):\n%s", diff)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestQuote(t *testing.T) {
	plain := MustBytes(t, UDPv4(srcAP, dstAP, []byte("0123456789")))
	withOpts := UDPv4(srcAP, dstAP, []byte("0123456789"))
	withOpts.IPv4.Options = []byte{0x94, 0x04, 0, 0, 1, 1, 1, 0}
	opts := MustBytes(t, withOpts)
	badIHL := bytes.Clone(plain)
	badIHL[EthLen] = 0x42
	tests := []struct {
		name  string
		frame []byte
		want  []byte
	}{
		{"header and 8 bytes", plain, plain[EthLen : EthLen+28]},
		{"options follow the IHL", opts, opts[EthLen : EthLen+36]},
		{"IHL below 5 takes 20 bytes", badIHL, badIHL[EthLen : EthLen+28]},
		{"short frame", plain[:EthLen+24], plain[EthLen : EthLen+24]},
		{"ethernet only", plain[:EthLen], nil},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Quote(tt.frame), CmpOptions); diff != "" {
				t.Errorf("Quote (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTCPFlagsString(t *testing.T) {
	tests := []struct {
		flags TCPFlags
		want  string
	}{
		{0, "0"},
		{SYN, "SYN"},
		{SYN | ACK, "SYN|ACK"},
		{0x01, "FIN"}, {0x04, "RST"}, {0x08, "PSH"}, {0x20, "URG"}, {0x40, "ECE"}, {0x80, "CWR"},
		{0xff, "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"},
	}
	for _, tt := range tests {
		if got := tt.flags.String(); got != tt.want {
			t.Errorf("TCPFlags(%#02x).String() = %q, want %q", uint8(tt.flags), got, tt.want)
		}
	}
}

// TestParseRandomBytes feeds Parse random frames, most of them with an IPv4
// EtherType: it must return a packet or an error, never panic.
func TestParseRandomBytes(t *testing.T) {
	r := newRand(t, 5)
	for range propertyCases() {
		b := randBytes(r, r.IntN(120))
		if len(b) >= EthLen && r.IntN(4) != 0 {
			b[12], b[13] = 0x08, 0x00
			if len(b) > EthLen && r.IntN(2) == 0 {
				b[EthLen] = 0x40 | b[EthLen]&0x0f
			}
		}
		if p, err := Parse(b); err == nil {
			if _, err := p.Bytes(); err != nil {
				t.Fatalf("Parse(% x) gave a packet Bytes rejects: %v", b, err)
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, p := range samplePackets() {
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
		if _, err := Parse(again); err != nil {
			t.Fatalf("re-encoded packet does not parse: %v", err)
		}
	})
}
