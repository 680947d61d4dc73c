package testpkt

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// arpReply is the ARP reply senderMAC at senderIP sends to targetMAC at
// targetIP: ARPRequest's message with opcode 2 and the target MAC filled in,
// unicast to the target.
func arpReply(t *testing.T, senderMAC net.HardwareAddr, senderIP netip.Addr, targetMAC net.HardwareAddr, targetIP netip.Addr) Packet {
	t.Helper()
	p, err := ARPRequest(senderMAC, senderIP, targetIP)
	if err != nil {
		t.Fatal(err)
	}
	p.Eth.Dst = bytes.Clone(targetMAC)
	binary.BigEndian.PutUint16(p.Payload[6:], ARPOpReply)
	copy(p.Payload[18:24], targetMAC)
	return p
}

// TestRawEtherTypes builds frames of EtherTypes without a layer here and
// checks each byte by its offset in the standard: the EtherType (or 802.3
// length) at 12, the payload from 14, and that Parse keeps them raw.
func TestRawEtherTypes(t *testing.T) {
	ip := MustBytes(t, UDPv4(srcAP, dstAP, []byte("inside")))[EthLen:]
	// One MPLS label stack entry: label 16, TC 0, bottom of stack, TTL 64.
	mpls := append([]byte{0x00, 0x01, 0x01, 0x40}, ip...)
	// PPPoE session header (version 1, type 1, code 0, session 0x1234,
	// length) and the PPP protocol number of IPv4, 0x0021.
	pppoe := append([]byte{0x11, 0x00, 0x12, 0x34, 0x00, byte(2 + len(ip)), 0x00, 0x21}, ip...)
	// LLDP: chassis ID TLV (type 1, length 7, subtype 4 MAC), then End.
	lldp := []byte{0x02, 0x07, 0x04, 0x02, 0, 0, 0, 0, 1, 0x00, 0x00}
	tests := []struct {
		name     string
		p        Packet
		wantType uint16
		wantRest []byte
	}{
		{"MPLS", EthFrame(EtherTypeMPLSUnicast, mpls), 0x8847, mpls},
		{"MPLS multicast", EthFrame(EtherTypeMPLSMulticast, mpls), 0x8848, mpls},
		{"PPPoE session", EthFrame(EtherTypePPPoESession, pppoe), 0x8864, pppoe},
		{"PPPoE discovery", EthFrame(EtherTypePPPoEDiscovery, []byte{0x11, 0x09, 0, 0, 0, 0}), 0x8863, []byte{0x11, 0x09, 0, 0, 0, 0}},
		{"LLDP", EthFrame(EtherTypeLLDP, lldp), 0x88cc, lldp},
		{"empty payload", EthFrame(0x88b5, nil), 0x88b5, nil},
		{
			// RFC 1042: 0x001e = 8 bytes of LLC/SNAP + 22 of payload.
			"802.3 LLC/SNAP carrying IPv4",
			LLCSNAPFrame(EtherTypeIPv4, ip[:22]),
			0x001e, append([]byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x00, 0x08, 0x00}, ip[:22]...),
		},
		{
			"802.3 LLC/SNAP of the largest 802.3 length",
			LLCSNAPFrame(EtherTypeARP, make([]byte, MaxLength8023-LLCSNAPLen)),
			MaxLength8023, append([]byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x00, 0x08, 0x06}, make([]byte, MaxLength8023-LLCSNAPLen)...),
		},
		{
			"802.3 LLC/SNAP length capped at 0xffff",
			LLCSNAPFrame(EtherTypeIPv4, make([]byte, 0x10000)),
			0xffff, append([]byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x00, 0x08, 0x00}, make([]byte, 0x10000)...),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := MustBytes(t, tt.p)
			if diff := cmp.Diff([]byte(DefaultDstMAC), b[0:6]); diff != "" {
				t.Errorf("destination MAC (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]byte(DefaultSrcMAC), b[6:12]); diff != "" {
				t.Errorf("source MAC (-want +got):\n%s", diff)
			}
			expectU16(t, b, 12, tt.wantType)
			if diff := cmp.Diff(tt.wantRest, b[EthLen:], CmpOptions); diff != "" {
				t.Errorf("after the EtherType (-want +got):\n%s", diff)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.IPv4 != nil {
				t.Errorf("Parse decoded IPv4 behind EtherType %#04x", tt.wantType)
			}
			if diff := Diff(&tt.p, got); diff != "" {
				t.Errorf("Parse (-built +parsed):\n%s", diff)
			}
		})
	}
}

func TestARPRequest(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
	p, err := ARPRequest(mac, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.254"))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
		0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, // sender
		0x08, 0x06, // ARP
		0x00, 0x01, // hardware type Ethernet
		0x08, 0x00, // protocol type IPv4
		0x06, 0x04, // address lengths
		0x00, 0x01, // request
		0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, // sender hardware address
		192, 0, 2, 1, // sender protocol address
		0, 0, 0, 0, 0, 0, // target hardware address: unknown
		192, 0, 2, 254, // target protocol address
	}
	b := MustBytes(t, p)
	if diff := cmp.Diff(want, b); diff != "" {
		t.Errorf("frame (-want +got):\n%s", diff)
	}
	if len(b) != EthLen+ARPv4Len {
		t.Errorf("frame is %d bytes, want %d", len(b), EthLen+ARPv4Len)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := Diff(&p, got); diff != "" {
		t.Errorf("Parse (-built +parsed):\n%s", diff)
	}
	mac[0] = 0xff
	if p.Eth.Src[0] != 0x02 || p.Payload[8] != 0x02 {
		t.Errorf("ARPRequest aliases the caller's MAC")
	}
	if BroadcastMAC[0] != 0xff {
		t.Errorf("BroadcastMAC changed")
	}
}

func TestARPRequestErrors(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	v4, v6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	tests := []struct {
		name           string
		mac            net.HardwareAddr
		sender, target netip.Addr
	}{
		{"short MAC", mac[:5], v4, v4},
		{"nil MAC", nil, v4, v4},
		{"EUI-64 MAC", append(mac, 0, 0), v4, v4},
		{"IPv6 sender", mac, v6, v4},
		{"IPv6 target", mac, v4, v6},
		{"unset target", mac, v4, netip.Addr{}},
		{"IPv4-mapped IPv6", mac, netip.MustParseAddr("::ffff:192.0.2.1"), v4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if p, err := ARPRequest(tt.mac, tt.sender, tt.target); err == nil {
				t.Errorf("ARPRequest succeeded with %+v, want an error", p)
			}
		})
	}
}

func TestRawConstructorsDoNotAlias(t *testing.T) {
	payload := []byte("abc")
	frame, snap := EthFrame(EtherTypeLLDP, payload), LLCSNAPFrame(EtherTypeIPv4, payload)
	payload[0] = 'X'
	frame.Eth.Src[0] = 0xff
	if string(frame.Payload) != "abc" || string(snap.Payload[LLCSNAPLen:]) != "abc" {
		t.Errorf("payload aliases the caller's slice: %q, %q", frame.Payload, snap.Payload)
	}
	if DefaultSrcMAC[0] != 0x02 {
		t.Errorf("changing a frame's MAC changed DefaultSrcMAC to %v", DefaultSrcMAC)
	}
}
