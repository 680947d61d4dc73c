package ipsets

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// TestLayout holds Key to struct sl_ipset_key in the datapath's BTF and
// the package's prefix lengths to the key's size.
func TestLayout(t *testing.T) {
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	if err := maps.CheckLayout(spec.Types, bpf.TypeIPSetKey, Key{}); err != nil {
		t.Error(err)
	}
	ms, ok := spec.Maps[bpf.MapIPSets]
	if !ok {
		t.Fatalf("datapath has no map %s", bpf.MapIPSets)
	}
	if int(ms.KeySize) != keySize || ms.ValueSize != 4 || ms.Type != ebpf.LPMTrie {
		t.Errorf("map %s: %s with key/value size %d/%d, package uses an LPM trie with %d/4",
			bpf.MapIPSets, ms.Type, ms.KeySize, ms.ValueSize, keySize)
	}
	if want := (keySize - 4) * 8; NamedPortBits != want {
		t.Errorf("NamedPortBits %d, the key holds %d bits after prefixlen", NamedPortBits, want)
	}
	if setBits != 96 {
		t.Errorf("set ID and family take %d bits, want 96", setBits)
	}
}

func TestKeys(t *testing.T) {
	id := uint64(0x0102030405060708)
	setID := bpf.IPSetID(id)
	tests := []struct {
		name string
		mem  Member
		want Key
	}{
		{"IPv4 net, masked", Member{Net: netip.MustParsePrefix("10.1.2.3/16")}, Key{Prefixlen: 96 + 96 + 16, SetID: setID,
			Family: bpf.FamilyIPv4, Addr: netip.MustParseAddr("10.1.0.0").As16()}},
		{"IPv4 /0", Member{Net: netip.MustParsePrefix("0.0.0.0/0")}, Key{Prefixlen: 192, SetID: setID,
			Family: bpf.FamilyIPv4, Addr: netip.MustParseAddr("0.0.0.0").As16()}},
		{"IPv6 /0", Member{Net: netip.MustParsePrefix("::/0")}, Key{Prefixlen: 96, SetID: setID, Family: bpf.FamilyIPv6}},
		{"IPv6 covering mapped", Member{Net: netip.MustParsePrefix("::ffff:0:0/95")}, Key{Prefixlen: 96 + 95, SetID: setID,
			Family: bpf.FamilyIPv6, Addr: netip.MustParseAddr("::fffe:0:0").As16()}},
		{"IPv6 host", Member{Net: netip.MustParsePrefix("fd00::1/128")}, Key{Prefixlen: 224, SetID: setID,
			Family: bpf.FamilyIPv6, Addr: netip.MustParseAddr("fd00::1").As16()}},
		{"named port IPv4", Member{NamedPort: NamedPort{Addr: netip.MustParseAddr("10.0.0.1"), Protocol: 6, Port: 80}},
			Key{Prefixlen: 256, SetID: setID, Family: bpf.FamilyIPv4, Addr: netip.MustParseAddr("10.0.0.1").As16(), Port: 80, Proto: 6}},
		{"named port IPv6", Member{NamedPort: NamedPort{Addr: netip.MustParseAddr("fd00::1"), Protocol: 17, Port: 0}},
			Key{Prefixlen: 256, SetID: setID, Family: bpf.FamilyIPv6, Addr: netip.MustParseAddr("fd00::1").As16(), Proto: 17}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.mem.Key(id)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("key (-want +got):\n%s", diff)
			}
			gotID, gotMem, err := Decode(got)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.mem
			want.Net = want.Net.Masked()
			if gotID != id || !cmp.Equal(want, gotMem, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
				t.Errorf("Decode = %d, %+v; want %d, %+v", gotID, gotMem, id, want)
			}
		})
	}
}

func TestKeyErrors(t *testing.T) {
	bad := []Member{
		{Net: netip.Prefix{}},
		{Net: netip.MustParsePrefix("::ffff:10.0.0.0/104")},
		{Net: netip.MustParsePrefix("::ffff:0:0/96")},
		{NamedPort: NamedPort{Addr: netip.MustParseAddr("::ffff:10.0.0.1"), Protocol: 6, Port: 1}},
		{NamedPort: NamedPort{Protocol: 6, Port: 1}},
	}
	for _, m := range bad {
		if _, err := m.Key(1); !errors.Is(err, ErrInvalidMember) {
			t.Errorf("Key(%+v) error %v, want ErrInvalidMember", m, err)
		}
	}
	// A named port with protocol 0 is no named port: it is the zero net.
	if _, err := NamedPortKey(1, NamedPort{Addr: netip.MustParseAddr("10.0.0.1")}); !errors.Is(err, ErrInvalidMember) {
		t.Errorf("NamedPortKey with protocol 0: %v, want ErrInvalidMember", err)
	}
	for _, k := range []Key{
		{Prefixlen: 192, Family: 5},
		{Prefixlen: 192, Family: bpf.FamilyIPv4}, // not mapped
		{Prefixlen: 96 + 96 + 33, Family: bpf.FamilyIPv4, Addr: netip.MustParseAddr("10.0.0.0").As16()}, // too long
		{Prefixlen: 96 + 8, Family: bpf.FamilyIPv6, Addr: netip.MustParseAddr("fd00::1").As16()},        // not masked
		{Prefixlen: 96 + 8, Family: bpf.FamilyIPv6, Addr: netip.MustParseAddr("::ffff:1.2.3.4").As16()},
	} {
		if _, _, err := Decode(k); !errors.Is(err, ErrInvalidMember) {
			t.Errorf("Decode(%+v) error %v, want ErrInvalidMember", k, err)
		}
	}
}

func TestNilMap(t *testing.T) {
	var m *Map
	if err := m.Add(1, Member{Net: netip.MustParsePrefix("10.0.0.0/8")}); err == nil {
		t.Error("Add on nil Map succeeded")
	}
	if _, err := m.Sync(nil); err == nil {
		t.Error("Sync on nil Map succeeded")
	}
	if _, err := m.Read(); err == nil {
		t.Error("Read on nil Map succeeded")
	}
	if _, err := (&Map{}).Contains(1, netip.MustParseAddr("10.0.0.1"), 0, 0); err == nil {
		t.Error("Contains on zero Map succeeded")
	}
	if m.EBPF() != nil {
		t.Error("EBPF of nil Map is not nil")
	}
}
