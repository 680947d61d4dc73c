package testpkt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	srcAP = netip.MustParseAddrPort("192.0.2.10:40000")
	dstAP = netip.MustParseAddrPort("198.51.100.20:80")
)

// samplePackets covers every layer with options and payload present.
func samplePackets() map[string]Packet {
	tcp := TCPv4(srcAP, dstAP, SYN|ACK, []byte("hello, world"))
	tcp.IPv4.Options = []byte{0x94, 0x04, 0x00, 0x00} // router alert
	tcp.TCP.Options = []byte{0x02, 0x04, 0x05, 0xb4}  // MSS 1460
	frag := UDPv4(srcAP, dstAP, nil)
	frag.UDP = nil
	frag.IPv4.Protocol = ProtoUDP
	frag.IPv4.FragOffset = 185
	frag.Payload = []byte("second fragment data")
	vlan := UDPv4(srcAP, dstAP, []byte("tagged"))
	vlan.Eth.VLANs = []VLANTag{{TPID: TPID8021Q, PCP: 2, VID: 100}}
	qinq := tcp.Clone()
	qinq.Eth.VLANs = []VLANTag{{TPID: TPID8021AD, VID: 10}, {TPID: TPID8021Q, DEI: true, VID: 20}}
	return map[string]Packet{
		"tcp":      tcp,
		"udp":      UDPv4(srcAP, dstAP, []byte("payload")),
		"icmp":     ICMPv4Echo(srcAP.Addr(), dstAP.Addr(), 7, 9, false),
		"fragment": frag,
		"vlan":     vlan,
		"qinq":     qinq,
	}
}

// TestParseTruncatedAtEveryLength cuts each sample at every length short of
// its end: Parse must fail with ErrTruncated every time, and never panic.
func TestParseTruncatedAtEveryLength(t *testing.T) {
	for name, p := range samplePackets() {
		t.Run(name, func(t *testing.T) {
			full := MustBytes(t, p)
			for n := 0; n < len(full); n++ {
				cut := Truncate(full, n)
				if len(cut) != n || !bytes.Equal(cut, full[:n]) {
					t.Fatalf("Truncate(%d) = % x, want the first %d bytes", n, cut, n)
				}
				if _, err := Parse(cut); !errors.Is(err, ErrTruncated) {
					t.Fatalf("Parse of %d/%d bytes: err = %v, want ErrTruncated", n, len(full), err)
				}
			}
			if _, err := Parse(Truncate(full, len(full))); err != nil {
				t.Fatalf("Parse of the whole frame: %v", err)
			}
		})
	}
}

func TestTruncateBounds(t *testing.T) {
	b := []byte{1, 2, 3}
	for _, tt := range []struct {
		n    int
		want []byte
	}{{-1, []byte{}}, {0, []byte{}}, {2, []byte{1, 2}}, {3, []byte{1, 2, 3}}, {9, []byte{1, 2, 3}}} {
		got := Truncate(b, tt.n)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Truncate(%d) (-want +got):\n%s", tt.n, diff)
		}
		if len(got) > 0 && &got[0] == &b[0] {
			t.Errorf("Truncate(%d) aliases its input", tt.n)
		}
	}
}

// malformedCase builds a malformed packet, checks its bytes directly by RFC
// offsets, and names the error Parse must wrap.
type malformedCase struct {
	name    string
	build   func() Packet
	check   func(t *testing.T, b []byte)
	wantErr error
}

func TestMalformedHeaders(t *testing.T) {
	udp := func() Packet { return UDPv4(srcAP, dstAP, []byte("0123456789abcdef")) }
	var tests []malformedCase
	for ihl := uint8(1); ihl < 5; ihl++ {
		tests = append(tests, malformedCase{
			name:    fmt.Sprintf("IHL %d", ihl),
			build:   func() Packet { p := udp(); p.IPv4.IHL = ihl; return p },
			check:   func(t *testing.T, b []byte) { expectByte(t, b, 14, 0x40|ihl) },
			wantErr: ErrMalformed,
		})
	}
	tests = append(tests,
		malformedCase{
			// 15 words is 60 bytes; the frame holds 20+8+16 = 44 after Ethernet.
			name:    "IHL beyond the packet",
			build:   func() Packet { p := udp(); p.IPv4.IHL = 15; return p },
			check:   func(t *testing.T, b []byte) { expectByte(t, b, 14, 0x4f); expectLen(t, b, 14+44) },
			wantErr: ErrTruncated,
		},
		malformedCase{
			name:    "total length larger than the frame",
			build:   func() Packet { p := udp(); p.IPv4.TotalLen = 1500; return p },
			check:   func(t *testing.T, b []byte) { expectU16(t, b, 16, 1500); expectLen(t, b, 14+44) },
			wantErr: ErrTruncated,
		},
		malformedCase{
			name:    "total length shorter than the header",
			build:   func() Packet { p := udp(); p.IPv4.TotalLen = 19; return p },
			check:   func(t *testing.T, b []byte) { expectU16(t, b, 16, 19) },
			wantErr: ErrMalformed,
		},
		malformedCase{
			name:    "tcp data offset below 5",
			build:   func() Packet { p := TCPv4(srcAP, dstAP, SYN, nil); p.TCP.DataOffset = 4; return p },
			check:   func(t *testing.T, b []byte) { expectByte(t, b, 14+20+12, 0x40) },
			wantErr: ErrMalformed,
		},
		malformedCase{
			name:    "tcp data offset beyond the segment",
			build:   func() Packet { p := TCPv4(srcAP, dstAP, SYN, []byte("x")); p.TCP.DataOffset = 15; return p },
			check:   func(t *testing.T, b []byte) { expectByte(t, b, 14+20+12, 0xf0); expectLen(t, b, 14+20+21) },
			wantErr: ErrTruncated,
		},
		malformedCase{
			name:    "udp length beyond the datagram",
			build:   func() Packet { p := udp(); p.UDP.Length = 100; return p },
			check:   func(t *testing.T, b []byte) { expectU16(t, b, 14+20+4, 100) },
			wantErr: ErrTruncated,
		},
	)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := MustBytes(t, tt.build())
			tt.check(t, b)
			if _, err := Parse(b); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse: err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// TestTotalLengthShorterThanFrame checks that bytes past the total length are
// kept as the trailer, as Ethernet padding is, and survive a re-encode.
func TestTotalLengthShorterThanFrame(t *testing.T) {
	p := UDPv4(srcAP, dstAP, nil)
	p.UDP = nil
	p.IPv4.Protocol = 253 // experimental: no L4 decoder
	p.Payload = []byte("0123456789")
	p.IPv4.TotalLen = 20 + 4
	b := MustBytes(t, p)
	expectU16(t, b, 16, 24)
	expectLen(t, b, 14+20+10)
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := p.Clone()
	want.IPv4.TotalLen = 0
	want.Payload, want.Trailer = []byte("0123"), []byte("456789")
	if diff := Diff(&want, got); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
	again := MustBytes(t, *got)
	if !bytes.Equal(again, b) {
		t.Errorf("re-encoded frame differs:\n got % x\nwant % x", again, b)
	}
}

func TestIPv4Options(t *testing.T) {
	tests := []struct {
		name     string
		opts     []byte
		wantIHL  uint8
		wantOpts []byte
	}{
		{"none", nil, 5, nil},
		{"one NOP padded", []byte{0x01}, 6, []byte{0x01, 0, 0, 0}},
		{"router alert", []byte{0x94, 0x04, 0x00, 0x00}, 6, []byte{0x94, 0x04, 0x00, 0x00}},
		{"record route 39 bytes", append([]byte{0x07, 39, 4}, make([]byte, 36)...), 15, append(append([]byte{0x07, 39, 4}, make([]byte, 36)...), 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ICMPv4Echo(srcAP.Addr(), dstAP.Addr(), 1, 2, false)
			p.IPv4.Options = tt.opts
			b := MustBytes(t, p)
			expectByte(t, b, 14, 0x40|tt.wantIHL)
			hlen := int(tt.wantIHL) * 4
			if diff := cmp.Diff(tt.wantOpts, b[14+20:14+hlen], CmpOptions); diff != "" {
				t.Errorf("options on the wire (-want +got):\n%s", diff)
			}
			expectU16(t, b, 16, uint16(hlen+8))
			if !refVerifies(b[14 : 14+hlen]) {
				t.Errorf("header checksum does not cover the options")
			}
			if b[14+hlen] != ICMPv4EchoRequest {
				t.Errorf("ICMP type after options = %d, want %d", b[14+hlen], ICMPv4EchoRequest)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantOpts, got.IPv4.Options, CmpOptions); diff != "" {
				t.Errorf("parsed options (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFragments(t *testing.T) {
	tests := []struct {
		name      string
		mf        bool
		offset    uint16
		df        bool
		wantField uint16
		wantL4    bool
	}{
		{"first fragment", true, 0, false, 0x2000, true},
		{"middle fragment", true, 185, false, 0x2000 | 185, false},
		{"last fragment", false, 370, false, 370, false},
		{"largest offset", false, 0x1fff, false, 0x1fff, false},
		{"dont fragment", false, 0, true, 0x4000, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := UDPv4(srcAP, dstAP, []byte("fragment payload"))
			p.IPv4.MoreFragments, p.IPv4.FragOffset, p.IPv4.DontFragment = tt.mf, tt.offset, tt.df
			if !tt.wantL4 {
				p.UDP, p.IPv4.Protocol = nil, ProtoUDP
			}
			b := MustBytes(t, p)
			expectU16(t, b, 20, tt.wantField)
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := Diff(&p, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBytesErrors(t *testing.T) {
	base := func() Packet { return TCPv4(srcAP, dstAP, SYN, nil) }
	tests := []struct {
		name  string
		build func() Packet
	}{
		{"short MAC", func() Packet { p := base(); p.Eth.Src = net.HardwareAddr{1, 2, 3}; return p }},
		{"IPv6 source in IPv4", func() Packet { p := base(); p.IPv4.Src = netip.MustParseAddr("2001:db8::1"); return p }},
		{"unset destination", func() Packet { p := base(); p.IPv4.Dst = netip.Addr{}; return p }},
		{"two L4 layers", func() Packet { p := base(); p.UDP = &UDP{}; return p }},
		{"L4 without IP", func() Packet { p := base(); p.IPv4 = nil; return p }},
		{"IPv4 options past 40 bytes", func() Packet { p := base(); p.IPv4.Options = make([]byte, 41); return p }},
		{"TCP options past 40 bytes", func() Packet { p := base(); p.TCP.Options = make([]byte, 44); return p }},
		{"IHL past 4 bits", func() Packet { p := base(); p.IPv4.IHL = 16; return p }},
		{"version past 4 bits", func() Packet { p := base(); p.IPv4.Version = 16; return p }},
		{"fragment offset past 13 bits", func() Packet { p := base(); p.IPv4.FragOffset = 0x2000; return p }},
		{"data offset past 4 bits", func() Packet { p := base(); p.TCP.DataOffset = 16; return p }},
		{"total length past 65535", func() Packet { p := base(); p.Payload = make([]byte, 65535-40+1); return p }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, err := tt.build().Bytes(); err == nil {
				t.Errorf("Bytes succeeded with % x, want an error", b)
			}
		})
	}
}

func TestParseNonIPv4(t *testing.T) {
	arp := Packet{Eth: Eth{Dst: DefaultDstMAC, Src: DefaultSrcMAC, Type: EtherTypeARP}, Payload: []byte{0, 1, 8, 0}}
	b := MustBytes(t, arp)
	expectU16(t, b, 12, EtherTypeARP)
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := Diff(&arp, got); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

func expectByte(t *testing.T, b []byte, off int, want uint8) {
	t.Helper()
	if off >= len(b) || b[off] != want {
		t.Fatalf("byte %d of % x: want %#02x", off, b, want)
	}
}

func expectU16(t *testing.T, b []byte, off int, want uint16) {
	t.Helper()
	if off+2 > len(b) || binary.BigEndian.Uint16(b[off:]) != want {
		t.Fatalf("bytes %d-%d of % x: want %#04x", off, off+1, b, want)
	}
}

func expectLen(t *testing.T, b []byte, want int) {
	t.Helper()
	if len(b) != want {
		t.Fatalf("frame is %d bytes, want %d", len(b), want)
	}
}
