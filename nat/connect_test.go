package nat

import (
	"net/netip"
	"testing"
	"time"
)

func TestSocketAddr(t *testing.T) {
	for _, tt := range []struct {
		cookie uint64
		want   string
	}{
		{0, "100::"},
		{1, "100::1"},
		{0x0102030405060708, "100::102:304:506:708"},
	} {
		if got := SocketAddr(tt.cookie); got != netip.MustParseAddr(tt.want) {
			t.Errorf("SocketAddr(%#x) = %v, want %s", tt.cookie, got, tt.want)
		}
	}
}

// TestChooseConnect: the connect-time model's stand-ins. The hash is the
// socket's (ConnectHash); an IPv4-mapped destination meets the IPv4
// frontend; source ranges are decided on the bound source, and an unbound
// socket is left to the TC stage; affinity is kept for the bound source,
// else the namespace.
func TestChooseConnect(t *testing.T) {
	ap := netip.MustParseAddrPort
	b1, b2 := Backend{Addr: netip.MustParseAddr("10.1.0.1"), Port: 80}, Backend{Addr: netip.MustParseAddr("10.1.0.2"), Port: 80}
	svcs := map[string]Service{
		"web": {Frontends: []Frontend{{Addr: netip.MustParseAddr("10.96.0.1"), Port: 53, Protocol: ProtoUDP},
			{Addr: netip.MustParseAddr("10.97.0.1"), Port: 53, Protocol: ProtoUDP, External: true}},
			Backends: []Backend{b1, b2}, SourceRanges: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
			Affinity: time.Minute},
	}
	list := []Backend{b1, b2}
	byHash := func(f ConnectFlow) Backend { return list[ConnectHash(f)%2] }
	cluster := ConnectFlow{Socket: 7, NetNS: 3, Dest: ap("10.96.0.1:53"), Protocol: ProtoUDP}
	mapped := cluster
	mapped.Dest = ap("[::ffff:10.96.0.1]:53")
	external := ConnectFlow{Socket: 7, NetNS: 3, Dest: ap("10.97.0.1:53"), Protocol: ProtoUDP}
	inside, outside := external, external
	inside.Source, outside.Source = netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("198.51.100.9")
	nsAff := &AffinityRecord{Backend: netip.AddrPortFrom(b2.Addr, 80), LastUsed: time.Second}
	for _, tt := range []struct {
		name   string
		flow   ConnectFlow
		aff    *AffinityRecord
		reason Reason
		want   Backend
	}{
		{"clusterIP by the socket's hash", cluster, nil, ReasonHash, byHash(cluster)},
		{"IPv4-mapped destination", mapped, nil, ReasonHash, byHash(mapped)},
		{"external, unbound", external, nil, ReasonSourceUnknown, Backend{}},
		{"external, bound inside", inside, nil, ReasonHash, byHash(inside)},
		{"external, bound outside", outside, nil, ReasonSourceRange, Backend{}},
		{"affinity", cluster, nsAff, ReasonAffinity, b2},
	} {
		c := ChooseConnect(svcs, tt.flow, tt.aff, 2*time.Second)
		if c.Reason != tt.reason || c.Backend != tt.want {
			t.Errorf("%s: %v to %+v, want %v to %+v", tt.name, c.Reason, c.Backend, tt.reason, tt.want)
		}
	}
	if ConnectHash(cluster) != ConnectHash(mapped) {
		t.Error("an IPv4-mapped destination hashes unlike its IPv4 address")
	}
	other := cluster
	other.Socket = 8
	if ConnectHash(cluster) == ConnectHash(other) {
		t.Error("two sockets' cookies hash alike")
	}
}
