// Package testpkt builds and parses the packets sluice's tests feed to BPF
// programs and read back from them.
//
// A Packet is a stack of layers: Ethernet with zero or more 802.1Q/802.1ad
// VLAN tags, IPv4 or IPv6 (with a chain of extension headers, IPv6Ext, in
// any order and number), then at most one of TCP, UDP, ICMPv4 (over IPv4) or
// ICMPv6 (over IPv6), then a payload.
// Packet.Bytes serializes it with every length and checksum computed; the
// override fields on each layer (IHL, TotalLen, PayloadLen, NextHeader,
// Length, Checksum, BadChecksum, DataOffset, ...) replace a computed value so
// that tests can build exactly the malformed packet they mean. Parse is the
// inverse: it reports a derived field only where the wire differs from what
// Bytes would compute, so for well-formed packets built with the derived
// fields left at zero, Parse(Bytes(p)) equals p and Bytes(Parse(b)) equals b.
// Parse walks an IPv6 extension chain with WalkIPv6Chain, bounded by
// MaxExtHeaders, and a chain it cannot walk gives a *ChainError saying where
// the walk stopped and why.
//
// Frames of EtherTypes without a layer here (ARP, MPLS, PPPoE, LLDP, 802.3
// length-field frames) keep their payload raw: EthFrame, LLCSNAPFrame and
// ARPRequest build them, and Parse gives them back with Eth.Type set.
//
// Diff compares packets (netip.Addr needs an option go-cmp lacks by
// default). Quote cuts what an ICMP error quotes (QuoteIPv6 for IPv6) and
// PadQuote lengthens it, Fragment and FragmentIPv6 split a datagram into
// fragments, and Truncate cuts a frame for truncation tests. TCPv4, UDPv4,
// ICMPv4Echo and ICMPv4Error have IPv6 twins (TCPv6, UDPv6, ICMPv6Echo,
// ICMPv6Error); the Ext* functions build extension headers and the ND*
// functions neighbour discovery messages and options.
//
// L4 checksums go through L4Checksum, which takes the addresses as
// netip.Addr and picks the pseudo-header of their family; over IPv6 the
// destination is the final one a routing header names (IPv6.FinalDst).
package testpkt
