// Package testpkt builds and parses the packets sluice's tests feed to BPF
// programs and read back from them.
//
// A Packet is a stack of layers: Ethernet, IPv4, then at most one of TCP, UDP
// or ICMPv4, then a payload. Packet.Bytes serializes it with every length and
// checksum computed; the override fields on each layer (IHL, TotalLen,
// Checksum, BadChecksum, DataOffset, Length, ...) replace a computed value so
// that tests can build exactly the malformed packet they mean. Parse is the
// inverse: it reports a derived field only where the wire differs from what
// Bytes would compute, so for well-formed packets built with the derived
// fields left at zero, Parse(Bytes(p)) equals p and Bytes(Parse(b)) equals b.
//
// Diff compares packets (netip.Addr needs an option go-cmp lacks by
// default). Quote cuts what an ICMP error quotes, Fragment splits a datagram
// into IPv4 fragments, and Truncate cuts a frame for truncation tests.
//
// L4 checksums go through L4Checksum, which takes the addresses as
// netip.Addr and picks the pseudo-header of their family, so an IPv6 layer
// can be added beside IPv4 without touching the L4 code.
package testpkt
