package conntrack

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluicenet/sluice/bpf"
)

func TestLegFlagsString(t *testing.T) {
	tests := []struct {
		flags LegFlags
		want  string
	}{
		{0, "0"},
		{LegSYN, "syn"},
		{LegSYN | LegACK, "syn|ack"},
		{LegRST | LegFIN | LegACK | LegSYN, "syn|ack|fin|rst"},
		{LegSYN | LegIngressOK, "syn|ingress_ok"},
		{LegEgressOK, "egress_ok"},
		{LegACK | 0xc0, "ack|0xc0"},
		{0x100, "0x100"},
	}
	for _, tt := range tests {
		if got := tt.flags.String(); got != tt.want {
			t.Errorf("LegFlags(%#x).String() = %q, want %q", uint32(tt.flags), got, tt.want)
		}
	}
}

func TestEntryTypeString(t *testing.T) {
	tests := []struct {
		typ  EntryType
		want string
	}{
		{Normal, "normal"},
		{NATForward, "nat_fwd"},
		{NATReverse, "nat_rev"},
		{7, "CTType(7)"},
	}
	for _, tt := range tests {
		if got := tt.typ.String(); got != tt.want {
			t.Errorf("EntryType(%d).String() = %q, want %q", uint32(tt.typ), got, tt.want)
		}
	}
}

func legOf(flags LegFlags, packets uint32, bytes uint64, ifindex uint32) Leg {
	return Leg{Flags: legFlagsField(flags), Packets: packets, Bytes: bytes, Ifindex: ifindex}
}

func TestValueString(t *testing.T) {
	fwdKey := mustKey(t, ProtoTCP, "10.0.0.1:1234", "10.96.0.1:80")
	revKey := mustKey(t, ProtoTCP, "10.0.0.1:1234", "10.0.5.5:8080")

	normal := Value{Created: uint64(time.Second), LastSeen: uint64(61 * time.Second)}
	normal.SetLegs(legOf(LegSYN|LegACK, 3, 180, 2), legOf(LegSYN|LegACK, 2, 120, 0))

	rev := Value{Created: 5, LastSeen: 5 + uint64(1500*time.Millisecond), Type: bpf.CTType(NATReverse), Flags: bpf.CTFClientIsB | 0x8}
	rev.SetLegs(legOf(LegSYN, 1, 60, 0), Leg{})
	rev.SetPeer(fwdKey)
	if err := rev.SetOrig(ap("10.96.0.1:80")); err != nil {
		t.Fatal(err)
	}

	fwd := Value{Created: 10, LastSeen: 3, Type: bpf.CTType(NATForward)}
	fwd.SetPeer(revKey)

	tests := []struct {
		name  string
		value Value
		want  string
	}{
		{"normal", normal, "normal age=1m0s a->b[pkts=3 bytes=180 seen=syn|ack if=2] b->a[pkts=2 bytes=120 seen=syn|ack]"},
		{"nat reverse", rev, "nat_rev age=1.5s flags=client_is_b|0x8 a->b[pkts=1 bytes=60 seen=syn] b->a[pkts=0 bytes=0 seen=0] orig=10.96.0.1:80 peer=(tcp 10.0.0.1:1234 <-> 10.96.0.1:80)"},
		{"nat forward, last seen before created", fwd, "nat_fwd age=0s a->b[pkts=0 bytes=0 seen=0] b->a[pkts=0 bytes=0 seen=0] peer=(tcp 10.0.0.1:1234 <-> 10.0.5.5:8080)"},
	}
	for _, tt := range tests {
		if got := tt.value.String(); got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

func TestValueAccessors(t *testing.T) {
	var v Value
	if err := v.SetOrig(netip.AddrPort{}); err == nil {
		t.Error("SetOrig accepted no address")
	}
	if err := v.SetOrig(ap("[2001:db8::1]:80")); err != nil || v.Orig() != ap("[2001:db8::1]:80") {
		t.Errorf("SetOrig of an IPv6 address: %v, Orig() = %v", err, v.Orig())
	}
	if err := v.SetOrig(ap("10.96.0.10:53")); err != nil {
		t.Fatal(err)
	}
	if got := v.Orig(); got != ap("10.96.0.10:53") {
		t.Errorf("Orig() = %v", got)
	}
	k := mustKey(t, ProtoUDP, "10.0.0.1:1", "10.0.0.2:2")
	v.SetPeer(k)
	if v.Peer() != k {
		t.Errorf("Peer() = %v, want %v", v.Peer(), k)
	}
	v.LastSeen = uint64(10 * time.Second)
	tests := []struct {
		now  time.Duration
		want time.Duration
	}{
		{15 * time.Second, 5 * time.Second},
		{10 * time.Second, 0},
		{time.Second, 0},
		{-time.Second, 0},
	}
	for _, tt := range tests {
		if got := v.Idle(tt.now); got != tt.want {
			t.Errorf("Idle(%v) = %v, want %v", tt.now, got, tt.want)
		}
	}
}

func legFlagsField(f LegFlags) bpf.CTLegFlags { return bpf.CTLegFlags(f) }
