package conntrack_test

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	. "github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// loIfindex is the interface a test run uses.
const loIfindex = 1

// allowAll is a policy that allows every packet.
var allowAll = polprog.Rules{Tiers: []polprog.Tier{{
	Name:     "all",
	Policies: []polprog.Policy{{Name: "all", Rules: []polprog.Rule{{ID: 1, Action: polprog.ActionAllow}}}},
}}}

func coarseNow(t *testing.T) time.Duration {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// TestDatapathAgrees runs random IPv4 and IPv6 flows' first packets through the real
// datapath and holds what it writes to the package: the key is NewKey's,
// the packet's leg is the one NewKey's direction names, last_seen is on the
// Scanner's default clock, and a sweep expires the entries when that clock
// passes their timeout.
func TestDatapathAgrees(t *testing.T) {
	testutil.RequirePrivileged(t)
	dp, err := datapath.Open(datapath.Options{ConntrackEntries: 512, PolicySlots: 8, MaxInterfaces: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	// Every source of both families is a workload behind lo, so lo's
	// reverse-path check passes.
	for _, p := range []string{"0.0.0.0/0", "::/0"} {
		anywhere := routes.Route{Prefix: netip.MustParsePrefix(p), Flags: routes.FlagLocalWorkload, Ifindex: loIfindex}
		if err := dp.Routes().Put(anywhere); err != nil {
			t.Fatal(err)
		}
	}
	if err := dp.SetInterface(loIfindex, datapath.Interface{Kind: datapath.Workload, Egress: allowAll, Ingress: allowAll}); err != nil {
		t.Fatal(err)
	}
	m := dp.Conntrack()

	rng := rand.New(rand.NewPCG(3, 4))
	endpoint := func(v6 bool) netip.AddrPort {
		// Few values, so equal addresses with different ports occur.
		addr := netip.AddrFrom4([4]byte{byte(1 + rng.IntN(2)*200), 0, 0, byte(1 + rng.IntN(3))})
		if v6 {
			addr = netip.AddrFrom16([16]byte{0: 0x20, 1: 0x01, 2: byte(rng.IntN(2) * 0xf0), 15: byte(1 + rng.IntN(3))})
		}
		return netip.AddrPortFrom(addr, uint16(1+rng.IntN(3)*0x101))
	}
	type flow struct {
		key      Key
		reversed bool
	}
	flows := map[Key]flow{}
	before := coarseNow(t)
	for range 400 {
		v6 := rng.IntN(2) == 0
		src, dst := endpoint(v6), endpoint(v6)
		var proto uint8
		var pkt testpkt.Packet
		switch rng.IntN(3) {
		case 0:
			proto, pkt = ProtoTCP, testpkt.TCPv4(src, dst, testpkt.SYN, nil)
			if v6 {
				pkt = testpkt.TCPv6(src, dst, testpkt.SYN, nil)
			}
		case 1:
			proto, pkt = ProtoUDP, testpkt.UDPv4(src, dst, []byte("hi"))
			if v6 {
				pkt = testpkt.UDPv6(src, dst, []byte("hi"))
			}
		default:
			// An echo request: the identifier goes on the requester's side.
			id := src.Port()
			proto, pkt = ProtoICMP, testpkt.ICMPv4Echo(src.Addr(), dst.Addr(), id, 1, false)
			if v6 {
				proto, pkt = ProtoICMPv6, testpkt.ICMPv6Echo(src.Addr(), dst.Addr(), id, 1, false)
			}
			sport, dport := EchoPorts(true, id)
			src, dst = netip.AddrPortFrom(src.Addr(), sport), netip.AddrPortFrom(dst.Addr(), dport)
		}
		k, reversed, err := NewKey(proto, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		if _, seen := flows[k]; seen {
			continue // only first packets: the leg check below stays simple
		}
		flows[k] = flow{k, reversed}
		ret, err := dp.TCIngress().Run(&ebpf.RunOptions{Data: testpkt.MustBytes(t, pkt)})
		if err != nil || ret != 0 {
			t.Fatalf("%v -> %v (%s): datapath returned %d, %v; want TC_ACT_OK", src, dst, ProtoName(proto), ret, err)
		}
	}
	nRev := 0
	for _, f := range flows {
		if f.reversed {
			nRev++
		}
	}
	t.Logf("%d flows, %d with the destination as A", len(flows), nRev)
	after := coarseNow(t)

	entries, err := m.Entries()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(flows) {
		t.Errorf("datapath wrote %d entries for %d flows", len(entries), len(flows))
	}
	for _, e := range entries {
		f, ok := flows[e.Key]
		if !ok {
			t.Errorf("datapath wrote key %v, which NewKey gives no flow", e.Key)
			continue
		}
		own, other := e.Value.LegAToB(), e.Value.LegBToA()
		if f.reversed {
			own, other = other, own
		}
		if own.Packets != 1 || other.Packets != 0 {
			t.Errorf("%v (reversed %v): legs %v", e.Key, f.reversed, e.Value)
		}
		if seen := time.Duration(e.Value.LastSeen); seen < before || seen > after {
			t.Errorf("%v: last_seen %v outside the CLOCK_MONOTONIC_COARSE window [%v, %v]", e.Key, seen, before, after)
		}
	}

	now := coarseNow
	s, err := NewScanner(m, ScannerOptions{Clock: func() time.Duration { return now(t) }})
	if err != nil {
		t.Fatal(err)
	}
	stats, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if stats.Scanned != len(flows) || stats.Deleted+stats.Entries != len(flows) {
		t.Errorf("sweep on the real clock: %+v", stats)
	}
	// Two hours on, every entry (TCP SYN-sent, UDP, ICMP) has expired.
	now = func(*testing.T) time.Duration { return after + 2*time.Hour }
	if _, err := s.Scan(); err != nil {
		t.Fatal(err)
	}
	if n, err := m.Count(); err != nil || n != 0 {
		t.Errorf("after expiry %d entries left (%v)", n, err)
	}
}
