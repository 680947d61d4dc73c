package testpkt

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readGolden decodes a testdata hex file: '#' lines are comments, and
// whitespace between hex digits is ignored.
func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", name+".hex"))
	if err != nil {
		t.Fatal(err)
	}
	var digits strings.Builder
	for line := range strings.Lines(string(text)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		digits.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(digits.String())
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var (
	goldenA = netip.MustParseAddr("10.201.7.1")
	goldenB = netip.MustParseAddr("10.201.7.2")
)

// TestGoldenKernelFrames rebuilds frames Linux built, from their fields as
// read off the hex by hand: Bytes must give the kernel's bytes, checksums
// included, and Parse must give the fields back.
func TestGoldenKernelFrames(t *testing.T) {
	probe := UDPv4(netip.AddrPortFrom(goldenA, 42000), netip.AddrPortFrom(goldenB, 9), nil)
	probe.IPv4.ID = 0x1234
	tests := []struct {
		file string
		want Packet
	}{
		{
			file: "kernel_icmp_echo_reply",
			want: Packet{
				Eth:     Eth{Dst: mustMAC(t, "4a:fe:6e:f1:b2:d2"), Src: mustMAC(t, "3e:fd:9a:31:8a:8d")},
				IPv4:    &IPv4{Src: goldenB, Dst: goldenA, ID: 0x027b, TTL: 64},
				ICMPv4:  &ICMPv4{Type: ICMPv4EchoReply, ID: 0x5151, Seq: 2},
				Payload: []byte("sluice echo data"),
			},
		},
		{
			file: "kernel_tcp_synack",
			want: Packet{
				Eth:  Eth{Dst: mustMAC(t, "d2:0f:a9:7c:f6:41"), Src: mustMAC(t, "ce:c8:15:b8:1a:aa")},
				IPv4: &IPv4{Src: goldenB, Dst: goldenA, TTL: 64, DontFragment: true},
				TCP: &TCP{
					SrcPort: 9001, DstPort: 41001, Seq: 0x46cfc8f2, Ack: 5001,
					Flags: SYN | ACK, Window: 0xfaf0, Options: []byte{0x02, 0x04, 0x05, 0xb4},
				},
			},
		},
		{
			file: "kernel_icmp_port_unreachable",
			want: Packet{
				Eth:     Eth{Dst: mustMAC(t, "f6:db:c0:88:f6:32"), Src: mustMAC(t, "ba:bd:bb:85:83:84")},
				IPv4:    &IPv4{Src: goldenB, Dst: goldenA, TOS: 0xc0, ID: 0x9750, TTL: 64},
				ICMPv4:  &ICMPv4{Type: ICMPv4DestUnreachable, Code: 3},
				Payload: Quote(MustBytes(t, probe)),
			},
		},
		{
			file: "kernel_arp_reply",
			want: arpReply(t, mustMAC(t, "4e:cd:95:f4:97:86"), goldenB, mustMAC(t, "a2:21:dc:e6:d5:14"), goldenA),
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			golden := readGolden(t, tt.file)
			if got := MustBytes(t, tt.want); !bytes.Equal(got, golden) {
				t.Errorf("Bytes differs from the kernel's frame:\n got % x\nwant % x", got, golden)
			}
			got, err := Parse(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := Diff(&tt.want, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

// TestGoldenIPv4HeaderExample rebuilds the published IPv4 header example:
// total length 115 is a UDP datagram of 8+87 bytes.
func TestGoldenIPv4HeaderExample(t *testing.T) {
	want := readGolden(t, "ipv4_header_wikipedia")
	p := UDPv4(netip.MustParseAddrPort("192.168.0.1:1000"), netip.MustParseAddrPort("192.168.0.199:2000"), make([]byte, 87))
	p.IPv4.DontFragment = true
	frame := MustBytes(t, p)
	if got := frame[EthLen : EthLen+IPv4MinLen]; !bytes.Equal(got, want) {
		t.Errorf("IPv4 header:\n got % x\nwant % x", got, want)
	}
}

// TestGoldenVLANFrames rebuilds frames whose tags were written into the
// kernel's echo reply by hand, by the field layout of IEEE 802.1Q: Bytes must
// give the file's bytes and Parse the tags, outer first. Dropping the tags
// must leave the kernel's frame, which checks the hand-written files.
func TestGoldenVLANFrames(t *testing.T) {
	reply := Packet{
		Eth:     Eth{Dst: mustMAC(t, "4a:fe:6e:f1:b2:d2"), Src: mustMAC(t, "3e:fd:9a:31:8a:8d")},
		IPv4:    &IPv4{Src: goldenB, Dst: goldenA, ID: 0x027b, TTL: 64},
		ICMPv4:  &ICMPv4{Type: ICMPv4EchoReply, ID: 0x5151, Seq: 2},
		Payload: []byte("sluice echo data"),
	}
	untagged := readGolden(t, "kernel_icmp_echo_reply")
	tests := []struct {
		file string
		tags []VLANTag
	}{
		{"vlan_8021q_icmp_echo_reply", []VLANTag{{TPID: TPID8021Q, PCP: 5, DEI: true, VID: 123}}},
		{"vlan_qinq_icmp_echo_reply", []VLANTag{{TPID: TPID8021AD, PCP: 7, VID: 100}, {TPID: TPID8021Q, PCP: 1, DEI: true, VID: 3712}}},
		{"vlan_9100_priority_icmp_echo_reply", []VLANTag{{TPID: TPIDQinQ, PCP: 1, VID: 5}, {TPID: TPID8021Q, PCP: 5}}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			golden := readGolden(t, tt.file)
			if got := concat(golden[:12], golden[12+VLANTagLen*len(tt.tags):]); !bytes.Equal(got, untagged) {
				t.Fatalf("%s without its tags is not kernel_icmp_echo_reply:\n got % x\nwant % x", tt.file, got, untagged)
			}
			want := reply.Clone()
			want.Eth.VLANs = tt.tags
			if got := MustBytes(t, want); !bytes.Equal(got, golden) {
				t.Errorf("Bytes differs from the golden frame:\n got % x\nwant % x", got, golden)
			}
			got, err := Parse(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := Diff(&want, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}
