package conntrack

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func mustKey(t testing.TB, proto uint8, src, dst string) Key {
	t.Helper()
	k, _, err := NewKey(proto, ap(src), ap(dst))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewKeyCanonical(t *testing.T) {
	type result struct {
		A, B     netip.AddrPort
		Reversed bool
	}
	tests := []struct {
		name     string
		src, dst string
		want     result
	}{
		{"lower source", "10.0.0.1:1234", "10.0.0.2:80", result{ap("10.0.0.1:1234"), ap("10.0.0.2:80"), false}},
		{"lower destination", "10.0.0.2:80", "10.0.0.1:1234", result{ap("10.0.0.1:1234"), ap("10.0.0.2:80"), true}},
		// Big-endian order: 1.0.0.2 < 2.0.0.1, although their in-memory
		// uint32s on a little-endian host order the other way.
		{"big-endian address order", "2.0.0.1:1", "1.0.0.2:1", result{ap("1.0.0.2:1"), ap("2.0.0.1:1"), true}},
		{"first octet decides", "9.255.255.255:9", "10.0.0.0:9", result{ap("9.255.255.255:9"), ap("10.0.0.0:9"), false}},
		{"address beats port", "10.0.0.1:65535", "10.0.0.2:1", result{ap("10.0.0.1:65535"), ap("10.0.0.2:1"), false}},
		{"same address, lower source port", "10.0.0.1:80", "10.0.0.1:8080", result{ap("10.0.0.1:80"), ap("10.0.0.1:8080"), false}},
		{"same address, lower destination port", "10.0.0.1:8080", "10.0.0.1:80", result{ap("10.0.0.1:80"), ap("10.0.0.1:8080"), true}},
		{"port order is numeric", "10.0.0.1:256", "10.0.0.1:1", result{ap("10.0.0.1:1"), ap("10.0.0.1:256"), true}},
		{"same endpoint", "10.0.0.1:53", "10.0.0.1:53", result{ap("10.0.0.1:53"), ap("10.0.0.1:53"), false}},
		{"IPv4-mapped", "[::ffff:10.0.0.9]:5", "10.0.0.3:5", result{ap("10.0.0.3:5"), ap("10.0.0.9:5"), true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, reversed, err := NewKey(ProtoTCP, ap(tt.src), ap(tt.dst))
			if err != nil {
				t.Fatal(err)
			}
			got := result{k.A(), k.B(), reversed}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(x, y netip.AddrPort) bool { return x == y })); diff != "" {
				t.Errorf("NewKey(%s, %s) (-want +got):\n%s", tt.src, tt.dst, diff)
			}
			if k.Proto != ProtoTCP || !k.Canonical() {
				t.Errorf("key %v: proto %d canonical %v", k, k.Proto, k.Canonical())
			}
		})
	}
}

// TestKeyWireForm checks the bytes the kernel sees: 16-byte addresses in
// network order, IPv4 mapped into ::ffff:0:0/96, ports in host order.
func TestKeyWireForm(t *testing.T) {
	mapped := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}
	tests := []struct {
		name     string
		src, dst string
		want     []byte
	}{
		{"IPv4", "10.1.2.3:4660", "192.168.7.8:53",
			slices.Concat(mapped, []byte{10, 1, 2, 3}, mapped, []byte{192, 168, 7, 8})},
		{"IPv6", "[2001:db8::1]:4660", "[2001:db8::2]:53",
			slices.Concat(netip.MustParseAddr("2001:db8::1").AsSlice(), netip.MustParseAddr("2001:db8::2").AsSlice())},
	}
	for _, tt := range tests {
		k := mustKey(t, ProtoUDP, tt.src, tt.dst)
		got, err := binary.Append(nil, binary.NativeEndian, k)
		if err != nil {
			t.Fatal(err)
		}
		want := binary.NativeEndian.AppendUint16(tt.want, 4660)
		want = binary.NativeEndian.AppendUint16(want, 53)
		want = append(want, ProtoUDP, 0, 0, 0)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: encoded key (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestNewKeyErrors(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.AddrPort
	}{
		{"IPv6 source, IPv4 destination", ap("[2001:db8::1]:1"), ap("10.0.0.1:2")},
		{"IPv4 source, IPv6 destination", ap("10.0.0.1:2"), ap("[2001:db8::1]:1")},
		{"no source", netip.AddrPort{}, ap("10.0.0.1:2")},
		{"no destination", ap("10.0.0.1:2"), netip.AddrPort{}},
	}
	for _, tt := range tests {
		if k, _, err := NewKey(ProtoTCP, tt.src, tt.dst); err == nil {
			t.Errorf("%s: NewKey = %v, want an error", tt.name, k)
		}
	}
}

// TestNewKeyProperties checks, on random flows, that a key is canonical,
// that both directions of a flow share it, and that Directed recovers the
// packet's direction.
func TestNewKeyProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	v6 := false // the family of the flow being drawn
	randEndpoint := func() netip.AddrPort {
		// Few distinct values, so equal addresses and ports happen often.
		port := uint16(rng.IntN(3)) * 0x1ff
		if v6 {
			var b [16]byte
			b[0], b[1] = 0x20, 0x01
			for _, i := range []int{2, 7, 15} {
				b[i] = byte(rng.IntN(3)) * 127
			}
			return netip.AddrPortFrom(netip.AddrFrom16(b), port)
		}
		var b [4]byte
		for i := range b {
			b[i] = byte(rng.IntN(3)) * 127
		}
		return netip.AddrPortFrom(netip.AddrFrom4(b), port)
	}
	for range 5000 {
		v6 = rng.IntN(2) == 0
		proto := uint8(rng.IntN(256))
		src, dst := randEndpoint(), randEndpoint()
		k, reversed, err := NewKey(proto, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		back, backReversed, err := NewKey(proto, dst, src)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(k, back); diff != "" {
			t.Fatalf("%v -> %v and back differ (-fwd +back):\n%s", src, dst, diff)
		}
		if wantBack := src != dst && !reversed; backReversed != wantBack {
			t.Fatalf("%v -> %v: reversed %v, back reversed %v", src, dst, reversed, backReversed)
		}
		if !k.Canonical() || k.Proto != proto {
			t.Fatalf("%v -> %v: key %v not canonical", src, dst, k)
		}
		gotSrc, gotDst := k.Directed(reversed)
		if gotSrc != src || gotDst != dst {
			t.Fatalf("Directed(%v) of %v = %v -> %v, want %v -> %v", reversed, k, gotSrc, gotDst, src, dst)
		}
	}
}

func TestKeyString(t *testing.T) {
	tests := []struct {
		proto    uint8
		src, dst string
		want     string
	}{
		{ProtoTCP, "10.0.0.2:80", "10.0.0.1:1234", "tcp 10.0.0.1:1234 <-> 10.0.0.2:80"},
		{ProtoUDP, "10.0.0.1:53", "10.0.0.2:5353", "udp 10.0.0.1:53 <-> 10.0.0.2:5353"},
		{ProtoICMP, "10.0.0.1:7", "10.0.0.2:7", "icmp 10.0.0.1:7 <-> 10.0.0.2:7"},
		{ProtoSCTP, "10.0.0.1:1", "10.0.0.2:2", "sctp 10.0.0.1:1 <-> 10.0.0.2:2"},
		{ProtoICMPv6, "[2001:db8::2]:8", "[2001:db8::1]:7", "icmpv6 [2001:db8::1]:7 <-> [2001:db8::2]:8"},
		{47, "10.0.0.1:0", "10.0.0.2:0", "proto 47 10.0.0.1:0 <-> 10.0.0.2:0"},
	}
	for _, tt := range tests {
		if got := mustKey(t, tt.proto, tt.src, tt.dst).String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestKeyCompare(t *testing.T) {
	ordered := []Key{
		mustKey(t, ProtoICMP, "10.0.0.9:1", "10.0.0.9:1"),
		mustKey(t, ProtoTCP, "2.0.0.1:1", "9.0.0.0:1"),
		mustKey(t, ProtoTCP, "10.0.0.1:80", "10.0.0.2:1"),
		mustKey(t, ProtoTCP, "10.0.0.1:443", "10.0.0.2:1"),
		mustKey(t, ProtoTCP, "10.0.0.1:443", "10.0.0.3:1"),
		mustKey(t, ProtoUDP, "1.0.0.0:1", "1.0.0.0:2"),
	}
	for i, x := range ordered {
		for j, y := range ordered {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := x.Compare(y); got != want {
				t.Errorf("(%v).Compare(%v) = %d, want %d", x, y, got, want)
			}
		}
	}
}

// TestEchoPortsKeepDirections: for every identifier, a request and its
// reply share a key, and no request in the opposite direction has it:
// among others, none whose identifier the other side derives from the
// request's (equal, one off, complemented, the responder's port).
func TestEchoPortsKeepDirections(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	key := func(request bool, id uint16, src, dst netip.Addr) Key {
		sport, dport := EchoPorts(request, id)
		k, _, err := NewKey(ProtoICMP, netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	for i := range 1 << 16 {
		id := uint16(i)
		req := key(true, id, a, b)
		if reply := key(false, id, b, a); req != reply {
			t.Fatalf("identifier %#x: request key %s, reply key %s", id, req, reply)
		}
		_, responder := EchoPorts(true, id)
		for _, other := range []uint16{id, id + 1, id - 1, id + 2, ^id, responder, ^responder, 0, 0xffff} {
			if back := key(true, other, b, a); back == req {
				t.Fatalf("identifier %#x: the other side's request with identifier %#x has its key %s", id, other, req)
			}
		}
	}
}
