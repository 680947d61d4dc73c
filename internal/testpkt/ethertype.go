package testpkt

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
)

// BroadcastMAC is the Ethernet broadcast address, where ARP requests go.
var BroadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// ARP operation codes (RFC 826).
const (
	ARPOpRequest uint16 = 1
	ARPOpReply   uint16 = 2
)

// EthFrame returns a frame between the default MACs with the given EtherType
// and payload, raw: MPLS, PPPoE, LLDP or any type this package has no layer
// for. Parse gives it back unchanged for every type it keeps raw, that is all
// but EtherTypeIPv4, EtherTypeIPv6 and the VLAN TPIDs, whose payload it
// decodes.
func EthFrame(etherType uint16, payload []byte) Packet {
	eth := defaultEth()
	eth.Type = etherType
	return Packet{Eth: eth, Payload: bytes.Clone(payload)}
}

// LLCSNAPFrame returns an IEEE 802.3 frame between the default MACs: a
// length field where Ethernet II has its EtherType, then an 802.2 LLC header
// (DSAP and SSAP 0xaa, control 0x03 for unnumbered information) and a SNAP
// header (OUI 00-00-00, so the next two bytes are etherType) before payload.
// This is how 802.3 carries IPv4 (RFC 1042). The length counts the LLC/SNAP
// header and payload, capped at 0xffff; past MaxLength8023 (a payload over
// 1492 bytes) it no longer reads as a length. Parse keeps the frame raw.
func LLCSNAPFrame(etherType uint16, payload []byte) Packet {
	snap := make([]byte, LLCSNAPLen, LLCSNAPLen+len(payload))
	snap[0], snap[1], snap[2] = 0xaa, 0xaa, 0x03
	be.PutUint16(snap[6:], etherType)
	eth := defaultEth()
	eth.Type = uint16(min(len(snap)+len(payload), 0xffff))
	return Packet{Eth: eth, Payload: append(snap, payload...)}
}

// ARPRequest returns an ARP request for IPv4 over Ethernet (RFC 826) in which
// senderMAC, at senderIP, asks who has targetIP. The frame goes from
// senderMAC to BroadcastMAC with EtherType ARP; its payload is the 28-byte
// message: hardware type 1 (Ethernet), protocol type 0x0800, address lengths
// 6 and 4, opcode ARPOpRequest, the sender's addresses, a zero target
// hardware address and targetIP. Parse keeps it raw. It returns an error
// unless senderMAC is 6 bytes and both addresses are IPv4.
func ARPRequest(senderMAC net.HardwareAddr, senderIP, targetIP netip.Addr) (Packet, error) {
	if len(senderMAC) != 6 {
		return Packet{}, fmt.Errorf("arp request: sender MAC %v is %d bytes, want 6", senderMAC, len(senderMAC))
	}
	if !senderIP.Is4() || !targetIP.Is4() {
		return Packet{}, fmt.Errorf("arp request: addresses %v and %v are not both IPv4", senderIP, targetIP)
	}
	msg := make([]byte, ARPv4Len)
	be.PutUint16(msg[0:], 1)
	be.PutUint16(msg[2:], EtherTypeIPv4)
	msg[4], msg[5] = 6, 4
	be.PutUint16(msg[6:], ARPOpRequest)
	copy(msg[8:14], senderMAC)
	copy(msg[14:18], senderIP.AsSlice())
	copy(msg[24:28], targetIP.AsSlice())
	eth := Eth{Dst: bytes.Clone(BroadcastMAC), Src: bytes.Clone(senderMAC), Type: EtherTypeARP}
	return Packet{Eth: eth, Payload: msg}, nil
}
