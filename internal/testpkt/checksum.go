package testpkt

import (
	"encoding/binary"
	"net/netip"
)

// Checksum is the RFC 1071 Internet checksum of b: the ones' complement of
// the ones' complement sum of its big-endian 16-bit words, an odd last byte
// padded with zero. Over data that already holds a correct checksum it
// returns 0.
func Checksum(b []byte) uint16 {
	return ^fold(sum16(0, b))
}

// L4Checksum is the TCP/UDP checksum of the L4 segment l4 (header and
// payload) over the pseudo-header of src and dst's family: for IPv4 the
// addresses, protocol and 16-bit length (RFC 793), for IPv6 the addresses,
// 32-bit length and next header (RFC 8200). To compute a checksum, zero the
// checksum field first; over a segment whose checksum is correct it returns
// 0. UDP writes a computed 0 as 0xffff.
func L4Checksum(src, dst netip.Addr, proto uint8, l4 []byte) uint16 {
	return ^fold(sum16(pseudoHeaderSum(src, dst, proto, len(l4)), l4))
}

// pseudoHeaderSum is the unfolded sum of the pseudo-header's words. The two
// families' layouts differ only in the width of the length, which makes no
// difference to the sum for lengths below 64 KiB.
func pseudoHeaderSum(src, dst netip.Addr, proto uint8, l4Len int) uint32 {
	var s uint32
	s = sum16(s, src.AsSlice())
	s = sum16(s, dst.AsSlice())
	s += uint32(proto)
	s += uint32(l4Len>>16) + uint32(l4Len&0xffff)
	return s
}

// sum16 adds b's big-endian 16-bit words to s without folding; callers fold
// once at the end. A uint32 holds the carries of any packet under 128 KiB.
func sum16(s uint32, b []byte) uint32 {
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

// fold adds the carries back into the low 16 bits (end-around carry).
func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// corruptChecksum returns a checksum that is neither c nor equivalent to it
// in ones' complement arithmetic (where 0x0000 and 0xffff are the same
// number), and never 0, which UDP reads as "no checksum".
func corruptChecksum(c uint16) uint16 {
	if bad := c ^ 0x5a5a; bad != 0 {
		return bad
	}
	return c ^ 0xa5a5
}

// checksumsEqual reports whether two checksums are the same ones'
// complement number.
func checksumsEqual(a, b uint16) bool {
	return a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

// pickChecksum applies a layer's overrides to the correct checksum.
func pickChecksum(correct, override uint16, zero, bad bool) uint16 {
	switch {
	case override != 0:
		return override
	case zero:
		return 0
	case bad:
		return corruptChecksum(correct)
	}
	return correct
}

// classifyChecksum is pickChecksum's inverse for Parse: the override,
// ZeroChecksum and BadChecksum that make Bytes write wire, given the correct
// checksum.
func classifyChecksum(wire, correct uint16) (override uint16, zero, bad bool) {
	switch {
	case wire == correct:
		return 0, false, false
	case wire == corruptChecksum(correct):
		return 0, false, true
	case wire == 0:
		return 0, true, !checksumsEqual(wire, correct)
	}
	return wire, false, !checksumsEqual(wire, correct)
}
