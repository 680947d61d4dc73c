package testpkt

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFragmentIPv6(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789"), 10) // 100 bytes + 8 of UDP
	tests := []struct {
		name string
		ext  []IPv6Ext
		// unfrag is the length of the unfragmentable part; nextAt the next
		// header field it ends with; then the headers that are fragmented.
		unfrag, nextAt int
		size           int
		wantSizes      []int
	}{
		{"no extension headers", nil, 40, 6, 36, []int{32, 32, 32, 12}},
		{"hop-by-hop stays in front", []IPv6Ext{ExtHopByHop(nil), ExtDestOpts(nil)}, 48, 40, 50, []int{48, 48, 20}},
		{
			"up to the routing header",
			[]IPv6Ext{ExtHopByHop(nil), ExtDestOpts(nil), ExtRoutingType0(0, hop6), ExtDestOpts(nil)},
			80, 56, 200, []int{116},
		},
		{"destination options alone are fragmented", []IPv6Ext{ExtDestOpts(nil)}, 40, 6, 64, []int{64, 52}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := UDPv6(src6, dst6, payload)
			p.IPv6.Ext = tt.ext
			p.Eth.VLANs = []VLANTag{{TPID: TPID8021Q, VID: 7}}
			whole := MustBytes(t, p)
			l3 := EthLen + VLANTagLen
			ip := whole[l3:]
			frags, err := FragmentIPv6(whole, tt.size, 0xcafe)
			if err != nil {
				t.Fatal(err)
			}
			var sizes []int
			var joined []byte
			for i, f := range frags {
				if !bytes.Equal(f[:l3], whole[:l3]) {
					t.Errorf("fragment %d lost the Ethernet header or tag", i)
				}
				h := f[l3:]
				// The unfragmentable part is copied but for the payload
				// length and the next header naming the fragment header.
				want := bytes.Clone(ip[:tt.unfrag])
				want[tt.nextAt] = ProtoFragment
				want[4], want[5] = h[4], h[5]
				if diff := cmp.Diff(want, h[:tt.unfrag]); diff != "" {
					t.Errorf("fragment %d unfragmentable part (-want +got):\n%s", i, diff)
				}
				if got := int(h[4])<<8 | int(h[5]); got != len(h)-IPv6HdrLen {
					t.Errorf("fragment %d payload length %d, want %d", i, got, len(h)-IPv6HdrLen)
				}
				fh := h[tt.unfrag : tt.unfrag+8]
				data := h[tt.unfrag+8:]
				wantFH := ExtFragment(uint16(len(joined)/8), i < len(frags)-1, 0xcafe)
				wantHdr, _ := wantFH.header(ip[tt.nextAt])
				if diff := cmp.Diff(wantHdr, fh); diff != "" {
					t.Errorf("fragment %d fragment header (-want +got):\n%s", i, diff)
				}
				sizes = append(sizes, len(data))
				joined = append(joined, data...)
				// Every fragment parses; the non-first ones as raw data.
				got, err := Parse(f)
				if i > 0 && err != nil {
					t.Errorf("fragment %d does not parse: %v", i, err)
				}
				if i > 0 && err == nil && !bytes.Equal(got.Payload, data) {
					t.Errorf("fragment %d parsed payload differs", i)
				}
			}
			if diff := cmp.Diff(tt.wantSizes, sizes); diff != "" {
				t.Errorf("fragment sizes (-want +got):\n%s", diff)
			}
			if !bytes.Equal(joined, ip[tt.unfrag:]) {
				t.Errorf("fragments do not join back into the fragmentable part")
			}
		})
	}
}

// TestFragmentIPv6Again splits a fragment again: the pieces keep its
// identification, next header and offsets, and the last keeps its M flag.
func TestFragmentIPv6Again(t *testing.T) {
	p := UDPv6(src6, dst6, bytes.Repeat([]byte("x"), 64))
	p.IPv6.Ext = []IPv6Ext{ExtHopByHop(nil)}
	first, err := FragmentIPv6(MustBytes(t, p), 48, 77)
	if err != nil {
		t.Fatal(err)
	}
	again, err := FragmentIPv6(first[0], 16, 999)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 3 {
		t.Fatalf("%d pieces, want 3", len(again))
	}
	for i, f := range again {
		got, err := Parse(f)
		if i > 0 && err != nil {
			t.Fatal(err)
		}
		if err != nil {
			continue // the first piece's UDP length reaches past it
		}
		fe := got.IPv6.Ext[1]
		want := ExtFragment(uint16(2*i), true, 77)
		if diff := cmp.Diff(want, fe); diff != "" {
			t.Errorf("piece %d fragment header (-want +got):\n%s", i, diff)
		}
		if got.IPv6.Protocol != ProtoUDP {
			t.Errorf("piece %d next header %d, want UDP", i, got.IPv6.Protocol)
		}
	}
}

func TestFragmentIPv6Errors(t *testing.T) {
	good := MustBytes(t, UDPv6(src6, dst6, []byte("data")))
	long := UDPv6(src6, dst6, nil)
	long.IPv6.Ext = RepeatExt(ExtDestOpts(nil), MaxExtHeaders+1)
	short := UDPv6(src6, dst6, []byte("data"))
	short.IPv6.PayloadLen = 500
	for name, tt := range map[string]struct {
		frame []byte
		size  int
	}{
		"size below 8":   {good, 7},
		"IPv4":           {MustBytes(t, UDPv4(srcAP, dstAP, nil)), 8},
		"short frame":    {good[:EthLen+39], 8},
		"chain too long": {MustBytes(t, long), 8},
		"payload length": {MustBytes(t, short), 8},
	} {
		if _, err := FragmentIPv6(tt.frame, tt.size, 1); err == nil {
			t.Errorf("%s: FragmentIPv6 succeeded, want an error", name)
		}
	}
	if _, err := Fragment(good, 8); err == nil {
		t.Errorf("Fragment of an IPv6 frame succeeded, want an error")
	}
}
