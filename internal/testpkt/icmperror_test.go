package testpkt

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestICMPv4ErrorTrailingBytes builds ICMP errors whose data runs past the
// quote: a payload smuggled right behind it, and an RFC 4884 extension
// behind a quote padded to 128 bytes. The quote must stay intact at the
// start of the data, the extra bytes must follow it (after the zero
// padding), the IP total length and the ICMP checksum must cover them, and
// Parse must give all of it back as the payload.
func TestICMPv4ErrorTrailingBytes(t *testing.T) {
	orig := MustBytes(t, TCPv4(srcAP, dstAP, SYN, []byte("the original segment's payload")))
	quote := Quote(orig)
	smuggled := []byte("\x45\x00\x00\x1csmuggled inner packet")
	// RFC 4884 extension header (version 2, reserved, checksum left 0) and
	// one object: length 8, class 2 (interface information), c-type 0x0a.
	ext := []byte{0x20, 0x00, 0x00, 0x00, 0x00, 0x08, 0x02, 0x0a, 0x00, 0x00, 0x00, 0x07}
	tests := []struct {
		name string
		data []byte
		rest [4]byte
		// quoteLen is where the quote and its padding end.
		quoteLen int
		trailing []byte
	}{
		{"quote alone", quote, [4]byte{}, len(quote), nil},
		{"smuggled payload", concat(quote, smuggled), [4]byte{}, len(quote), smuggled},
		{"odd-length smuggled payload", concat(quote, []byte("odd")), [4]byte{}, len(quote), []byte("odd")},
		{"RFC 4884 extension", concat(PadQuote(quote, 128), ext), [4]byte{1: 128 / 4}, 128, ext},
		{"padded to a 576-byte datagram", PadQuote(quote, 576-IPv4MinLen-ICMPv4HdrLen), [4]byte{}, 576 - IPv4MinLen - ICMPv4HdrLen, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ICMPv4Error(dstAP.Addr(), srcAP.Addr(), ICMPv4DestUnreachable, 1, tt.data)
			p.ICMPv4.Rest = tt.rest
			b := MustBytes(t, p)
			expectLen(t, b, EthLen+IPv4MinLen+ICMPv4HdrLen+len(tt.data))
			expectU16(t, b, EthLen+2, uint16(IPv4MinLen+ICMPv4HdrLen+len(tt.data)))
			icmp := b[EthLen+IPv4MinLen:]
			if !refVerifies(icmp) {
				t.Errorf("ICMP checksum does not verify over the whole message")
			}
			data := icmp[ICMPv4HdrLen:]
			if diff := cmp.Diff(quote, data[:len(quote)]); diff != "" {
				t.Errorf("quote (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(make([]byte, tt.quoteLen-len(quote)), data[len(quote):tt.quoteLen], CmpOptions); diff != "" {
				t.Errorf("padding after the quote (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.trailing, data[tt.quoteLen:], CmpOptions); diff != "" {
				t.Errorf("bytes after the quote (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.rest[:], icmp[4:8]); diff != "" {
				t.Errorf("bytes 4-7 (-want +got):\n%s", diff)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := Diff(&p, got); diff != "" {
				t.Errorf("Parse (-built +parsed):\n%s", diff)
			}
		})
	}
	// The quoted header still claims the whole original datagram, longer
	// than what is quoted: a datapath must not take the bytes after the
	// quote for the rest of it.
	expectU16(t, quote, 2, uint16(len(orig)-EthLen))
}

func TestPadQuote(t *testing.T) {
	q := []byte{1, 2, 3}
	tests := []struct {
		name  string
		quote []byte
		n     int
		want  []byte
	}{
		{"pads with zeros", q, 8, []byte{1, 2, 3, 0, 0, 0, 0, 0}},
		{"exact length", q, 3, []byte{1, 2, 3}},
		{"longer quote is kept whole", q, 2, []byte{1, 2, 3}},
		{"negative length", q, -1, []byte{1, 2, 3}},
		{"empty quote", nil, 4, []byte{0, 0, 0, 0}},
		{"nothing", nil, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PadQuote(tt.quote, tt.n)
			if diff := cmp.Diff(tt.want, got, CmpOptions); diff != "" {
				t.Errorf("PadQuote(% x, %d) (-want +got):\n%s", tt.quote, tt.n, diff)
			}
			if len(got) > 0 && len(tt.quote) > 0 && &got[0] == &tt.quote[0] {
				t.Errorf("PadQuote aliases its input")
			}
		})
	}
	if !bytes.Equal(q, []byte{1, 2, 3}) {
		t.Errorf("PadQuote changed its input to % x", q)
	}
}
