package ipsets

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
)

// Attack tests (review of 980b88f): Decode accepts only the keys NetKey and
// NamedPortKey write, keys of distinct members never collide, and the
// Members model agrees with the kernel map for zoned addresses.

// TestAttackDecodeCanonical decodes random keys close to valid ones and
// requires every key Decode accepts to be the key of the member it
// returns.
func TestAttackDecodeCanonical(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	lens := []uint32{0, 95, 96, 97, 191, 192, 193, 200, 216, 223, 224, 225, 255, 256, 257}
	accepted := 0
	for i := 0; i < 200000; i++ {
		var k Key
		k.Prefixlen = lens[r.IntN(len(lens))]
		if r.IntN(2) == 0 {
			k.Prefixlen = uint32(r.IntN(260))
		}
		k.Family = []bpf.Family{bpf.FamilyIPv4, bpf.FamilyIPv6, 0, 5}[r.IntN(4)]
		for j := range k.SetID {
			k.SetID[j] = byte(r.IntN(2))
		}
		switch r.IntN(3) {
		case 0:
			k.Addr = netip.AddrFrom4([4]byte{byte(r.IntN(256)), 0, 0, byte(r.IntN(2))}).As16()
		case 1:
			k.Addr[0], k.Addr[15] = byte(r.IntN(256)), byte(r.IntN(2))
		}
		if r.IntN(3) == 0 {
			k.Port = uint16(r.IntN(3))
		}
		if r.IntN(3) == 0 {
			k.Proto = uint8(r.IntN(3))
		}
		id, m, err := Decode(k)
		if err != nil {
			continue
		}
		accepted++
		back, err := m.Key(id)
		if err != nil || back != k {
			t.Fatalf("Decode(%+v) = %d, %+v, whose key is %+v (%v)", k, id, m, back, err)
		}
	}
	if accepted == 0 {
		t.Fatal("no random key decoded")
	}
}

// TestAttackKeysDistinct requires distinct members of every prefix length
// of both families to get distinct keys, and equal keys only for equal
// members.
func TestAttackKeysDistinct(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("255.255.255.255"),
		netip.MustParseAddr("::"), netip.MustParseAddr("::ffff:ffff"), netip.MustParseAddr("::fffe:ffff:ffff"),
		netip.MustParseAddr("ffff::ffff:ffff:ffff")}
	seen := map[Key]Member{}
	for _, a := range addrs {
		for bits := 0; bits <= a.BitLen(); bits++ {
			m := Member{Net: netip.PrefixFrom(a, bits).Masked()}
			k, err := m.Key(1)
			if err != nil {
				continue // IPv4-mapped prefixes are refused
			}
			if old, ok := seen[k]; ok && old != m {
				t.Errorf("%v and %v share key %+v", old, m, k)
			}
			seen[k] = m
		}
		for _, port := range []uint16{0, 1} {
			m := Member{NamedPort: NamedPort{Addr: a, Protocol: 6, Port: port}}
			if a.Is4In6() {
				continue
			}
			k, err := m.Key(1)
			if err != nil {
				t.Fatal(err)
			}
			if old, ok := seen[k]; ok && old != m {
				t.Errorf("%v and %v share key %+v", old, m, k)
			}
			seen[k] = m
		}
	}
}

// TestAttackZonedNamedPort writes a named-port member with an IPv6 zone:
// the key drops the zone, so the kernel map matches the unzoned address,
// but Members compares addresses with their zones and says no. Either
// NamedPortKey refuses zones or Members ignores them; they must agree.
func TestAttackZonedNamedPort(t *testing.T) {
	m := newTestMap(t, 16)
	zoned := NamedPort{Addr: netip.MustParseAddr("fe80::1%eth0"), Protocol: 6, Port: 80}
	sets := Members{1: {NamedPorts: []NamedPort{zoned}}}
	if _, err := m.Sync(sets); err != nil {
		// Refusing the zone is a defined answer.
		return
	}
	for _, a := range []netip.Addr{netip.MustParseAddr("fe80::1"), netip.MustParseAddr("fe80::1%eth0")} {
		got, err := m.Contains(1, a, 6, 80)
		if err != nil {
			t.Fatal(err)
		}
		if want := sets.ContainsNamedPort(1, a, 6, 80); got != want {
			t.Errorf("named port %v, lookup %v: map says %v, Members %v", zoned.Addr, a, got, want)
		}
	}
	back, err := m.Read()
	if err != nil {
		t.Fatal(err)
	}
	if got := back[1].NamedPorts; len(got) != 1 || got[0] != zoned {
		t.Errorf("Read after Sync: %+v, want %+v", got, []NamedPort{zoned})
	}
}

// TestAttackNilNames calls Names' methods on a nil pointer: the zero Names
// is documented ready, a nil one should not panic either (or say so).
func TestAttackNilNames(t *testing.T) {
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("nil *Names panicked: %v", r)
		}
	}()
	var n *Names
	_, _ = n.ID("a")
}

// TestAttackPaddedNamedPort has another writer put a named-port key whose
// pad byte (covered by the named-port prefix, so lookups with pad 0 miss
// it) is 1. Read must refuse it as not ipsets' own, and Sync of the same
// member must leave a key that lookups find.
func TestAttackPaddedNamedPort(t *testing.T) {
	m := newTestMap(t, 16)
	np := NamedPort{Addr: netip.MustParseAddr("10.0.0.7"), Protocol: 6, Port: 80}
	k, err := NamedPortKey(1, np)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := binary.Append(nil, binary.NativeEndian, k)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] = 1 // pad
	one := binary.NativeEndian.AppendUint32(nil, 1)
	if err := m.EBPF().Update(raw, one, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Read(); err == nil {
		t.Errorf("Read accepted a key with a non-zero pad: %+v", got)
	}
	if _, err := m.Sync(Members{1: {NamedPorts: []NamedPort{np}}}); err != nil {
		t.Fatal(err)
	}
	ok, err := m.Contains(1, np.Addr, np.Protocol, np.Port)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Error("after Sync the named port is not found: the padded foreign key stood for it")
	}
}
