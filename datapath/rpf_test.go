package datapath

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/routes"
)

// TestRPFMatchesModel is the differential test of the datapath's
// reverse-path checks against the routes package's models: random routes
// of every kind over three workload interfaces and a host interface, and
// random sources, each sent as a new flow into a policy that allows
// everything. At a workload interface's TC ingress hook a packet passes
// exactly when routes.RPFAllows says; at the host interface's, exactly
// when routes.HostSourceAllowed says.
func TestRPFMatchesModel(t *testing.T) { testRPFMatchesModel(t, false) }

// TestRPFMatchesModelIPv6 is TestRPFMatchesModel in IPv6, at interfaces
// that enforce it.
func TestRPFMatchesModelIPv6(t *testing.T) { testRPFMatchesModel(t, true) }

func testRPFMatchesModel(t *testing.T, v6 bool) {
	h := newHarness(t)
	ns := testutil.NewNetNS(t)
	names := []string{"rpf1", "rpf2", "rpf3", "rpfhost"}
	ifindex := map[string]uint32{}
	for _, name := range names {
		if err := ns.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			t.Fatal(err)
		}
		l, err := ns.Handle.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		ifindex[name] = uint32(l.Attrs().Index)
	}
	allow := h.setPolicy(allowDstPorts(80))
	for i, name := range names {
		flags := bpf.IfaceWorkload | bpf.IfaceReady | bpf.IfaceEnforceIPv6
		if name == "rpfhost" {
			flags = bpf.IfaceHost | bpf.IfaceReady | bpf.IfaceEnforceIPv6
		}
		h.setIface(ifindex[name], flags, stubSlots{allow, allow}, uint32(2+i))
	}
	rng := rand.New(rand.NewPCG(7, 9))
	addr := func() netip.Addr { // few values, so routes and sources meet
		if v6 {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x40, 5: byte(rng.IntN(4)), 15: byte(rng.IntN(8))})
		}
		return netip.AddrFrom4([4]byte{10, 40, byte(rng.IntN(4)), byte(rng.IntN(8))})
	}
	bits := []int{16, 24, 30, 32}
	remote, server, tcp := netip.MustParseAddr("192.168.0.2"), netip.MustParseAddrPort("10.41.0.1:80"), testpkt.TCPv4
	if v6 {
		bits = []int{40, 48, 125, 128}
		remote, server, tcp = netip.MustParseAddr("2001:db8:ff::2"), netip.MustParseAddrPort("[2001:db8:41::1]:80"), testpkt.TCPv6
	}
	var allowed, dropped int
	for round := range 20 {
		// Clear the harness's catch-all and draw this round's routes.
		var rs []routes.Route
		seen := map[netip.Prefix]bool{}
		for range 12 {
			p := netip.PrefixFrom(addr(), bits[rng.IntN(4)]).Masked()
			if seen[p] {
				continue
			}
			seen[p] = true
			r := routes.Route{Prefix: p}
			switch rng.IntN(4) {
			case 0, 1:
				r.Flags, r.Ifindex = routes.FlagLocalWorkload, ifindex[names[rng.IntN(3)]]
			case 2:
				r.Flags = routes.FlagLocalHost
			default:
				r.Flags, r.NextHop = routes.FlagRemoteWorkload, remote
			}
			rs = append(rs, r)
		}
		if _, err := h.d.Routes().Sync(rs); err != nil {
			t.Fatal(err)
		}
		table, err := routes.NewTable(rs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 200 {
			src := netip.AddrPortFrom(addr(), uint16(1024+round*200+i))
			name := names[rng.IntN(len(names))]
			want := bpf.ReasonAcceptedByPolicy
			if name == "rpfhost" && !routes.HostSourceAllowed(table, src.Addr()) ||
				name != "rpfhost" && !routes.RPFAllows(table, src.Addr(), ifindex[name]) {
				want = bpf.ReasonDroppedRPF
			}
			frame := testpkt.MustBytes(t, tcp(src, server, testpkt.SYN, nil))
			before := h.counters(ifindex[name], bpf.HookIngress)
			var ret uint32
			if err := ns.Do(func() (err error) { ret, err = h.runAt(progIngress, frame, ifindex[name]); return }); err != nil {
				t.Fatal(err)
			}
			got := reasonDelta(before, h.counters(ifindex[name], bpf.HookIngress))
			if ret != verdictOf(want) || len(got) != 1 || got[want] != 1 {
				t.Fatalf("round %d: %s at %s: verdict %d, counters %v; the model says %v\nroutes %v",
					round, src, name, ret, got, want, rs)
			}
			if want == bpf.ReasonDroppedRPF {
				dropped++
			} else {
				allowed++
				key, _ := ctKeyOf(testpkt.ProtoTCP, src, server)
				h.d.Conntrack().Delete(conntrack.Key(key))
			}
		}
	}
	t.Logf("%d packets passed the reverse-path checks, %d dropped", allowed, dropped)
	if allowed < 100 || dropped < 100 {
		t.Errorf("%d passed and %d dropped: the random routes do not exercise both outcomes", allowed, dropped)
	}
}
