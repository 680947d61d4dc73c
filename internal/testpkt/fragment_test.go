package testpkt

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestFragment(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789"), 10) // 100 bytes + 8 of UDP
	p := UDPv4(srcAP, dstAP, payload)
	p.IPv4.ID = 0xbeef
	p.IPv4.Options = []byte{0x94, 0x04, 0, 0}
	whole := MustBytes(t, p)
	l4 := whole[EthLen+24:]
	tests := []struct {
		name      string
		size      int
		wantSizes []int
	}{
		{"even split", 36, []int{32, 32, 32, 12}},
		{"size rounds down to 8", 50, []int{48, 48, 12}},
		{"one fragment when it fits", 200, []int{108}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frags, err := Fragment(whole, tt.size)
			if err != nil {
				t.Fatal(err)
			}
			var sizes []int
			var joined []byte
			for i, f := range frags {
				h := f[EthLen : EthLen+24]
				data := f[EthLen+24:]
				sizes = append(sizes, len(data))
				if !bytes.Equal(f[:EthLen], whole[:EthLen]) || !bytes.Equal(h[20:], p.IPv4.Options) {
					t.Errorf("fragment %d lost the Ethernet header or the options", i)
				}
				if got := binary.BigEndian.Uint16(h[2:]); int(got) != 24+len(data) {
					t.Errorf("fragment %d total length %d, want %d", i, got, 24+len(data))
				}
				if got := binary.BigEndian.Uint16(h[4:]); got != 0xbeef {
					t.Errorf("fragment %d ID %#x, want 0xbeef", i, got)
				}
				field := binary.BigEndian.Uint16(h[6:])
				if wantMF := i < len(frags)-1; (field&0x2000 != 0) != wantMF {
					t.Errorf("fragment %d MF = %v, want %v", i, !wantMF, wantMF)
				}
				if got := int(field&0x1fff) * 8; got != len(joined) {
					t.Errorf("fragment %d offset %d bytes, want %d", i, got, len(joined))
				}
				if !refVerifies(h) {
					t.Errorf("fragment %d header checksum does not verify", i)
				}
				joined = append(joined, data...)
			}
			if len(sizes) != len(tt.wantSizes) {
				t.Fatalf("fragment sizes %v, want %v", sizes, tt.wantSizes)
			}
			for i := range sizes {
				if sizes[i] != tt.wantSizes[i] {
					t.Fatalf("fragment sizes %v, want %v", sizes, tt.wantSizes)
				}
			}
			if !bytes.Equal(joined, l4) {
				t.Errorf("fragments do not join back into the datagram")
			}
		})
	}
}

func TestFragmentErrors(t *testing.T) {
	good := MustBytes(t, UDPv4(srcAP, dstAP, []byte("data")))
	badTotal := bytes.Clone(good)
	binary.BigEndian.PutUint16(badTotal[EthLen+2:], 9999)
	for name, tt := range map[string]struct {
		frame []byte
		size  int
	}{
		"size below 8":  {good, 7},
		"not IPv4":      {MustBytes(t, Packet{Eth: Eth{Type: EtherTypeARP}, Payload: make([]byte, 28)}), 8},
		"short frame":   {good[:EthLen+10], 8},
		"total too big": {badTotal, 8},
	} {
		if _, err := Fragment(tt.frame, tt.size); err == nil {
			t.Errorf("%s: Fragment succeeded, want an error", name)
		}
	}
}
