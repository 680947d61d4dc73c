// Package testpkt builds and parses the packets sluice's tests feed to BPF
// programs and read back from them.
//
// A Packet is a stack of layers: Ethernet with zero or more 802.1Q/802.1ad
// VLAN tags, IPv4, then at most one of TCP, UDP or ICMPv4, then a payload.
// Packet.Bytes serializes it with every length and checksum computed; the
// override fields on each layer (IHL, TotalLen, Checksum, BadChecksum,
// DataOffset, Length, ...) replace a computed value so that tests can build
// exactly the malformed packet they mean. Parse is the
// inverse: it reports a derived field only where the wire differs from what
// Bytes would compute, so for well-formed packets built with the derived
// fields left at zero, Parse(Bytes(p)) equals p and Bytes(Parse(b)) equals b.
//
// Frames of EtherTypes without a layer here (ARP, MPLS, PPPoE, LLDP, IPv6,
// 802.3 length-field frames) keep their payload raw: EthFrame, LLCSNAPFrame
// and ARPRequest build them, and Parse gives them back with Eth.Type set.
//
// Diff compares packets (netip.Addr needs an option go-cmp lacks by
// default). Quote cuts what an ICMP error quotes and PadQuote lengthens it,
// Fragment splits a datagram into IPv4 fragments, and Truncate cuts a frame
// for truncation tests.
//
// L4 checksums go through L4Checksum, which takes the addresses as
// netip.Addr and picks the pseudo-header of their family, so an IPv6 layer
// can be added beside IPv4 without touching the L4 code.
package testpkt
