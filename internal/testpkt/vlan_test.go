package testpkt

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestVLANTags builds frames with zero, one, two and MaxVLANTags tags in
// front of IPv4 and of raw EtherTypes: the bytes from offset 12 must be the
// tags as written out by hand (TPID, then TCI = PCP<<13 | DEI<<12 | VID)
// and then the untagged frame's EtherType and payload, and Parse must give
// the packet back.
func TestVLANTags(t *testing.T) {
	q := func(vid uint16) VLANTag { return VLANTag{TPID: TPID8021Q, VID: vid} }
	eight := []VLANTag{q(1), q(2), q(3), q(4), q(5), q(6), q(7), q(8)}
	eightWire := []byte{
		0x81, 0x00, 0x00, 0x01, 0x81, 0x00, 0x00, 0x02, 0x81, 0x00, 0x00, 0x03, 0x81, 0x00, 0x00, 0x04,
		0x81, 0x00, 0x00, 0x05, 0x81, 0x00, 0x00, 0x06, 0x81, 0x00, 0x00, 0x07, 0x81, 0x00, 0x00, 0x08,
	}
	udp := func() Packet { return UDPv4(srcAP, dstAP, []byte("tagged")) }
	tests := []struct {
		name string
		base Packet
		tags []VLANTag
		// wire is what Bytes must write between the source MAC and the
		// inner EtherType.
		wire []byte
	}{
		{"no tags", udp(), nil, nil},
		{"802.1Q", udp(), []VLANTag{{TPID: TPID8021Q, PCP: 5, VID: 100}}, []byte{0x81, 0x00, 0xa0, 0x64}},
		{"every TCI bit", udp(), []VLANTag{{TPID: TPID8021Q, PCP: 7, DEI: true, VID: 0xfff}}, []byte{0x81, 0x00, 0xff, 0xff}},
		{"DEI alone", udp(), []VLANTag{{TPID: TPID8021Q, DEI: true}}, []byte{0x81, 0x00, 0x10, 0x00}},
		{"priority tag", udp(), []VLANTag{{TPID: TPID8021Q, PCP: 3}}, []byte{0x81, 0x00, 0x60, 0x00}},
		{
			"802.1ad over 802.1Q",
			udp(),
			[]VLANTag{{TPID: TPID8021AD, PCP: 1, VID: 10}, {TPID: TPID8021Q, VID: 0x123}},
			[]byte{0x88, 0xa8, 0x20, 0x0a, 0x81, 0x00, 0x01, 0x23},
		},
		{
			"0x9100 over 802.1Q",
			TCPv4(srcAP, dstAP, SYN, nil),
			[]VLANTag{{TPID: TPIDQinQ, VID: 4094}, {TPID: TPID8021Q, VID: 2}},
			[]byte{0x91, 0x00, 0x0f, 0xfe, 0x81, 0x00, 0x00, 0x02},
		},
		{"MaxVLANTags", ICMPv4Echo(srcAP.Addr(), dstAP.Addr(), 1, 2, false), eight, eightWire},
		{"ARP behind a tag", EthFrame(EtherTypeARP, make([]byte, ARPv4Len)), []VLANTag{q(7)}, []byte{0x81, 0x00, 0x00, 0x07}},
		{"802.3 length behind a tag", LLCSNAPFrame(EtherTypeIPv4, []byte{0x45}), []VLANTag{q(7)}, []byte{0x81, 0x00, 0x00, 0x07}},
		{"EtherType 0 behind a tag", EthFrame(0, []byte{1, 2, 3}), []VLANTag{q(7)}, []byte{0x81, 0x00, 0x00, 0x07}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			untagged := MustBytes(t, tt.base)
			p := tt.base.Clone()
			p.Eth.VLANs = tt.tags
			b := MustBytes(t, p)
			want := concat(untagged[:12], tt.wire, untagged[12:])
			if diff := cmp.Diff(want, b); diff != "" {
				t.Errorf("frame (-want +got):\n%s", diff)
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
}

func TestVLANTagTCI(t *testing.T) {
	tests := []struct {
		tag VLANTag
		tci uint16
	}{
		{VLANTag{TPID: TPID8021Q}, 0x0000},
		{VLANTag{TPID: TPID8021Q, VID: 1}, 0x0001},
		{VLANTag{TPID: TPID8021Q, VID: 0xfff}, 0x0fff},
		{VLANTag{TPID: TPID8021AD, DEI: true}, 0x1000},
		{VLANTag{TPID: TPID8021AD, PCP: 1}, 0x2000},
		{VLANTag{TPID: TPIDQinQ, PCP: 7}, 0xe000},
		{VLANTag{TPID: TPIDQinQ, PCP: 4, DEI: true, VID: 0xabc}, 0x9abc},
	}
	for _, tt := range tests {
		if got := tt.tag.TCI(); got != tt.tci {
			t.Errorf("%+v.TCI() = %#04x, want %#04x", tt.tag, got, tt.tci)
		}
		if diff := cmp.Diff(tt.tag, VLANTagFromTCI(tt.tag.TPID, tt.tci)); diff != "" {
			t.Errorf("VLANTagFromTCI(%#04x, %#04x) (-want +got):\n%s", tt.tag.TPID, tt.tci, diff)
		}
	}
	// Too-wide fields are cut to their bits; Bytes rejects them instead.
	if got := (VLANTag{PCP: 0xff, VID: 0xffff}).TCI(); got != 0xefff {
		t.Errorf("TCI of overwide fields = %#04x, want 0xefff", got)
	}
}

func TestIsVLANTPID(t *testing.T) {
	for typ, want := range map[uint16]bool{
		TPID8021Q: true, TPID8021AD: true, TPIDQinQ: true,
		EtherTypeIPv4: false, EtherTypeARP: false, 0x9200: false, 0x88e7: false, 0: false,
	} {
		if got := IsVLANTPID(typ); got != want {
			t.Errorf("IsVLANTPID(%#04x) = %v, want %v", typ, got, want)
		}
	}
}

func TestVLANBytesErrors(t *testing.T) {
	tests := []struct {
		name string
		tag  VLANTag
	}{
		{"TPID 0", VLANTag{VID: 1}},
		{"PCP past 3 bits", VLANTag{TPID: TPID8021Q, PCP: 8}},
		{"VID past 12 bits", VLANTag{TPID: TPID8021Q, VID: 0x1000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := UDPv4(srcAP, dstAP, nil)
			// The bad tag is the inner one, behind a good one.
			p.Eth.VLANs = []VLANTag{{TPID: TPID8021AD, VID: 1}, tt.tag}
			if b, err := p.Bytes(); err == nil {
				t.Errorf("Bytes succeeded with % x, want an error", b)
			}
		})
	}
}

// TestParseVLANLimits checks the bound on tags: MaxVLANTags parse, one more
// is ErrMalformed (though Bytes writes it, for datapath tests of the bound),
// and a frame that ends inside a tag is ErrTruncated.
func TestParseVLANLimits(t *testing.T) {
	tags := func(n int) []VLANTag {
		var ts []VLANTag
		for i := range n {
			ts = append(ts, VLANTag{TPID: []uint16{TPID8021AD, TPID8021Q, TPIDQinQ}[i%3], VID: uint16(i)})
		}
		return ts
	}
	frame := func(n int) []byte {
		p := UDPv4(srcAP, dstAP, []byte("deep"))
		p.Eth.VLANs = tags(n)
		return MustBytes(t, p)
	}
	tests := []struct {
		name    string
		frame   []byte
		wantErr error
	}{
		{"MaxVLANTags", frame(MaxVLANTags), nil},
		{"one tag too many", frame(MaxVLANTags + 1), ErrMalformed},
		{"far too many", frame(100), ErrMalformed},
		{"TPID with no TCI", frame(1)[:14], ErrTruncated},
		{"TCI cut short", frame(1)[:15], ErrTruncated},
		{"no EtherType after the tag", frame(1)[:16], ErrTruncated},
		{"inner EtherType cut short", frame(2)[:21], ErrTruncated},
		{"IPv4 missing after the tags", frame(2)[:22], ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.frame)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse: err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// TestVLANFragmentAndQuote checks that Fragment and Quote find the IPv4
// header behind the tags.
func TestVLANFragmentAndQuote(t *testing.T) {
	p := UDPv4(srcAP, dstAP, bytes.Repeat([]byte("0123456789"), 5))
	p.IPv4.ID = 0x4242
	untagged := MustBytes(t, p)
	p.Eth.VLANs = []VLANTag{{TPID: TPID8021AD, VID: 10}, {TPID: TPID8021Q, VID: 20}}
	tagged := MustBytes(t, p)
	tagLen := 2 * VLANTagLen

	if diff := cmp.Diff(Quote(untagged), Quote(tagged)); diff != "" {
		t.Errorf("Quote of the tagged frame (-untagged +tagged):\n%s", diff)
	}
	plain, err := Fragment(untagged, 16)
	if err != nil {
		t.Fatal(err)
	}
	frags, err := Fragment(tagged, 16)
	if err != nil {
		t.Fatal(err)
	}
	if len(frags) != len(plain) {
		t.Fatalf("%d fragments of the tagged frame, %d of the untagged", len(frags), len(plain))
	}
	for i := range frags {
		if !bytes.Equal(frags[i][:EthLen+tagLen], tagged[:EthLen+tagLen]) {
			t.Errorf("fragment %d lost the tags: % x", i, frags[i][:EthLen+tagLen])
		}
		if got := concat(frags[i][:12], frags[i][12+tagLen:]); !bytes.Equal(got, plain[i]) {
			t.Errorf("fragment %d without its tags differs from the untagged fragment:\n got % x\nwant % x", i, got, plain[i])
		}
		// The first fragment's UDP length reaches past it, which Parse
		// rejects, so only the Ethernet header is decoded.
		tags, typ, _, err := splitEth(frags[i])
		if err != nil || typ != EtherTypeIPv4 {
			t.Fatalf("fragment %d: EtherType %#04x, %v", i, typ, err)
		}
		if diff := cmp.Diff(p.Eth.VLANs, tags); diff != "" {
			t.Errorf("fragment %d tags (-want +got):\n%s", i, diff)
		}
	}
	if _, err := Fragment(tagged[:EthLen+tagLen+10], 16); err == nil {
		t.Errorf("Fragment of a tagged frame cut inside IPv4 succeeded")
	}
	tooDeep := p.Clone()
	tooDeep.Eth.VLANs = make([]VLANTag, MaxVLANTags+1)
	for i := range tooDeep.Eth.VLANs {
		tooDeep.Eth.VLANs[i].TPID = TPID8021Q
	}
	if _, err := Fragment(MustBytes(t, tooDeep), 16); err == nil {
		t.Errorf("Fragment behind %d tags succeeded, want an error", MaxVLANTags+1)
	}
	if q := Quote(MustBytes(t, tooDeep)); q != nil {
		t.Errorf("Quote behind %d tags = % x, want nothing", MaxVLANTags+1, q)
	}
}

func TestCloneVLANs(t *testing.T) {
	base := UDPv4(srcAP, dstAP, nil)
	base.Eth.VLANs = []VLANTag{{TPID: TPID8021Q, VID: 5}}
	c := base.Clone()
	c.Eth.VLANs[0].VID = 6
	if base.Eth.VLANs[0].VID != 5 {
		t.Errorf("changing a clone's tag changed the original's VID to %d", base.Eth.VLANs[0].VID)
	}
}

// randTags returns 0 to MaxVLANTags random tags with the TPIDs Parse reads.
func randTags(r *rand.Rand) []VLANTag {
	n := r.IntN(MaxVLANTags + 1)
	if n == 0 {
		return nil
	}
	tags := make([]VLANTag, n)
	for i := range tags {
		tags[i] = VLANTag{
			TPID: []uint16{TPID8021Q, TPID8021AD, TPIDQinQ}[r.IntN(3)],
			PCP:  uint8(r.IntN(8)),
			DEI:  r.IntN(2) == 0,
			VID:  uint16(r.IntN(0x1000)),
		}
	}
	return tags
}

// TestPropertyVLANRoundTrip tags random packets of every kind, and random
// raw frames: the tagged frame must be the untagged one with each tag's four
// bytes (by the reference layout) after the source MAC, Parse must give the
// packet back, and Bytes of that must give the frame back.
func TestPropertyVLANRoundTrip(t *testing.T) {
	r := newRand(t, 6)
	for i := range propertyCases() {
		var p Packet
		if r.IntN(numKinds+1) == numKinds {
			// A raw EtherType: anything but IPv4 and the TPIDs.
			typ := uint16(r.Uint32())
			for typ == EtherTypeIPv4 || IsVLANTPID(typ) {
				typ = uint16(r.Uint32())
			}
			p = EthFrame(typ, randBytes(r, r.IntN(100)))
		} else {
			p = randPacket(r)
		}
		untagged := MustBytes(t, p)
		p.Eth.VLANs = randTags(r)
		frame, err := p.Bytes()
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		want := untagged[:12:12]
		for _, tag := range p.Eth.VLANs {
			tci := uint16(tag.PCP)<<13 | tag.VID
			if tag.DEI {
				tci |= 1 << 12
			}
			want = append(want, byte(tag.TPID>>8), byte(tag.TPID), byte(tci>>8), byte(tci))
		}
		want = append(want, untagged[12:]...)
		if !bytes.Equal(frame, want) {
			t.Fatalf("case %d: tagged frame\n got % x\nwant % x", i, frame, want)
		}
		got, err := Parse(frame)
		if err != nil {
			t.Fatalf("case %d: Parse: %v", i, err)
		}
		if diff := Diff(&p, got); diff != "" {
			t.Fatalf("case %d: Parse(Bytes(p)) differs (-built +parsed):\n%s", i, diff)
		}
		again, err := got.Bytes()
		if err != nil {
			t.Fatalf("case %d: re-encode: %v", i, err)
		}
		if !bytes.Equal(frame, again) {
			t.Fatalf("case %d: Bytes(Parse(b)) differs from b:\n got % x\nwant % x", i, again, frame)
		}
	}
}

// TestParseRandomTaggedBytes feeds Parse random bytes behind random stacks
// of TPIDs, some past MaxVLANTags: it must return a packet Bytes accepts or
// an error, never panic.
func TestParseRandomTaggedBytes(t *testing.T) {
	r := newRand(t, 7)
	for range propertyCases() {
		b := randBytes(r, 12)
		for range r.IntN(MaxVLANTags + 3) {
			tpid := []uint16{TPID8021Q, TPID8021AD, TPIDQinQ}[r.IntN(3)]
			b = append(b, byte(tpid>>8), byte(tpid), byte(r.Uint32()), byte(r.Uint32()))
		}
		if r.IntN(2) == 0 {
			b = append(b, 0x08, 0x00, 0x45)
		}
		b = append(b, randBytes(r, r.IntN(60))...)
		b = Truncate(b, r.IntN(len(b)+1))
		if p, err := Parse(b); err == nil {
			if _, err := p.Bytes(); err != nil {
				t.Fatalf("Parse(% x) gave a packet Bytes rejects: %v", b, err)
			}
		}
	}
}
