package testpkt

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestChecksumVectors(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want uint16
	}{
		// RFC 1071 section 3, "Numerical Examples": the words 0001 f203
		// f4f5 f6f7 sum to 2ddf0, which folds to ddf2; the checksum is its
		// complement.
		{"rfc1071 example", []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, ^uint16(0xddf2)},
		// An odd length pads the last byte with a zero on the right:
		// 0001+f203+f4f5+f600 = 2dcf9, which folds to dcfb.
		{"odd length", []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6}, ^uint16(0xdcfb)},
		{"empty", nil, 0xffff},
		{"all ones", []byte{0xff, 0xff, 0xff, 0xff}, 0x0000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Checksum(tt.data)); diff != "" {
				t.Errorf("Checksum(% x) (-want +got):\n%s", tt.data, diff)
			}
		})
	}
}

func TestL4ChecksumPseudoHeaderFamilies(t *testing.T) {
	// L4Checksum picks the pseudo-header by address family; a checksum it
	// computes must verify to zero under the same family.
	seg := []byte{0x12, 0x34, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 'a', 'b', 'c', 'd'}
	for _, tt := range []struct{ src, dst string }{
		{"192.0.2.1", "198.51.100.7"},
		{"2001:db8::1", "2001:db8::2"},
	} {
		src, dst := netip.MustParseAddr(tt.src), netip.MustParseAddr(tt.dst)
		b := append([]byte{}, seg...)
		c := L4Checksum(src, dst, ProtoUDP, b)
		b[6], b[7] = byte(c>>8), byte(c)
		if got := L4Checksum(src, dst, ProtoUDP, b); got != 0 {
			t.Errorf("%s -> %s: checksum %#04x does not verify (got %#04x)", src, dst, c, got)
		}
	}
}
