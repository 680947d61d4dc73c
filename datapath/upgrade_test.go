package datapath

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/ipsets"
	"github.com/sluicenet/sluice/maps"
)

// v1IPSetKey encodes a version 1 IP set key.
func v1IPSetKey(plen uint32, id uint64, addr netip.Addr, port uint16, proto uint8) []byte {
	k := make([]byte, ipsetKeyV1Size)
	binary.NativeEndian.PutUint32(k, plen)
	binary.BigEndian.PutUint64(k[4:], id)
	a := addr.As16()
	copy(k[12:], a[:])
	binary.NativeEndian.PutUint16(k[28:], port)
	k[30] = proto
	return k
}

// TestIPSetsUpgradeFromV1 pins a version 1 IP set map as an earlier
// release wrote it and opens the datapath over it: every member comes
// through with its family, and the IPv6 member ::/0, which in version 1
// covered IPv4 addresses, now matches IPv6 ones only.
func TestIPSetsUpgradeFromV1(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	v1 := maps.Params{Name: "sl_ipsets", Type: ebpf.LPMTrie, KeySize: ipsetKeyV1Size, ValueSize: 4,
		MaxEntries: 64, Flags: unix.BPF_F_NO_PREALLOC, Version: 1, PinDir: pinDir}
	old, _, err := maps.OpenOrCreate(v1)
	if err != nil {
		t.Fatal(err)
	}
	entries := [][]byte{
		v1IPSetKey(64+96+8, 1, netip.MustParseAddr("::ffff:10.0.0.0"), 0, 0),
		v1IPSetKey(64+0, 2, netip.MustParseAddr("::"), 0, 0),
		v1IPSetKey(64+32, 3, netip.MustParseAddr("2001:db8::"), 0, 0),
		v1IPSetKey(ipsetKeyV1NamedPort, 4, netip.MustParseAddr("::ffff:10.0.0.7"), 80, 6),
		v1IPSetKey(224, 5, netip.MustParseAddr("fd00::7"), 443, 6),
		v1IPSetKey(ipsetKeyV1NamedPort, 6, netip.MustParseAddr("::ffff:10.0.0.7"), 80, 0), // protocol 0: dropped
	}
	one := make([]byte, 4)
	binary.NativeEndian.PutUint32(one, 1)
	for _, k := range entries {
		if err := old.Put(k, one); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()

	d, err := Open(Options{PinDir: pinDir, ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err := d.IPSets().Read()
	if err != nil {
		t.Fatal(err)
	}
	want := ipsets.Members{
		1: {Nets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		2: {Nets: []netip.Prefix{netip.MustParsePrefix("::/0")}},
		3: {Nets: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}},
		4: {NamedPorts: []ipsets.NamedPort{{Addr: netip.MustParseAddr("10.0.0.7"), Protocol: 6, Port: 80}}},
		5: {NamedPorts: []ipsets.NamedPort{{Addr: netip.MustParseAddr("fd00::7"), Protocol: 6, Port: 443}}},
	}
	if len(got) != len(want) {
		t.Fatalf("upgraded map holds sets %v, want %v", got, want)
	}
	for id, w := range want {
		g := got[id]
		if len(g.Nets) != len(w.Nets) || len(g.NamedPorts) != len(w.NamedPorts) ||
			(len(w.Nets) == 1 && g.Nets[0] != w.Nets[0]) || (len(w.NamedPorts) == 1 && g.NamedPorts[0] != w.NamedPorts[0]) {
			t.Errorf("set %d after upgrade: %+v, want %+v", id, g, w)
		}
	}
	for _, c := range []struct {
		id   uint64
		addr string
		want bool
	}{{2, "10.1.2.3", false}, {2, "fd00::1", true}, {1, "10.9.9.9", true}, {1, "::a09:909", false}} {
		ok, err := d.IPSets().Contains(c.id, netip.MustParseAddr(c.addr), 0, 0)
		if err != nil || ok != c.want {
			t.Errorf("set %d contains %s: %v (%v), want %v", c.id, c.addr, ok, err, c.want)
		}
		// The membership map did not exist before: Open built it.
		ok, err = d.IPSets().Lookup(c.id, netip.MustParseAddr(c.addr), 0, 0)
		if err != nil || ok != c.want {
			t.Errorf("membership lookup of set %d, %s: %v (%v), want %v", c.id, c.addr, ok, err, c.want)
		}
	}
	if ok, err := d.IPSets().Lookup(4, netip.MustParseAddr("10.0.0.7"), 6, 80); err != nil || !ok {
		t.Errorf("membership lookup of named port 10.0.0.7 tcp/80 in set 4: %v (%v), want true", ok, err)
	}
}
