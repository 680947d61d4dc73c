package datapath

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// atkNet6 is the IPv6 addressing of the IPv6 attack tests: three
// workloads on veths that enforce IPv6 and a host interface, with a
// policy that allows TCP and UDP and denies the rest (ICMPv6 included),
// so that an ICMPv6 error passes only as related.
type atkNet6 struct {
	e                      *atkEnv
	pod1, pod2, pod3, node netip.Addr
}

// atkTCPUDP allows TCP and UDP as rules id and id+1.
func atkTCPUDP(id uint64) polprog.Rules {
	return atkRules(id+9,
		polprog.Rule{ID: id, Action: polprog.ActionAllow, Protocol: "tcp"},
		polprog.Rule{ID: id + 1, Action: polprog.ActionAllow, Protocol: "udp"})
}

func atkNewNet6(t *testing.T, cfg func(*Interface)) *atkNet6 {
	e := atkNewEnv(t, "atk6p1", "atk6p2", "atk6p3", "atk6hif")
	n := &atkNet6{e: e,
		pod1: netip.MustParseAddr("2001:db8:8::1"), pod2: netip.MustParseAddr("2001:db8:8::2"),
		pod3: netip.MustParseAddr("2001:db8:8::3"), node: netip.MustParseAddr("2001:db8:ff::1"),
	}
	for name, a := range map[string]netip.Addr{"atk6p1": n.pod1, "atk6p2": n.pod2, "atk6p3": n.pod3} {
		e.route(routes.Route{Prefix: netip.PrefixFrom(a, 128), Flags: routes.FlagLocalWorkload, Ifindex: e.idx(name)})
		c := Interface{Kind: Workload, Ingress: atkTCPUDP(100), Egress: atkTCPUDP(200)}
		if cfg != nil {
			cfg(&c)
		}
		e.set(name, c)
	}
	e.route(routes.Route{Prefix: netip.PrefixFrom(n.node, 128), Flags: routes.FlagLocalHost})
	e.set("atk6hif", Interface{Kind: Host, Ingress: atkHostRules(atkTCPUDP(300)), Egress: atkHostRules(atkTCPUDP(400))})
	return n
}

func atkTCP6(tb testing.TB, src, dst netip.AddrPort, f testpkt.TCPFlags, payload int) []byte {
	return testpkt.MustBytes(tb, testpkt.TCPv6(src, dst, f, make([]byte, payload)))
}

// handshake establishes client -> server between two workload
// interfaces, each packet crossing the sender's TC ingress hook and the
// receiver's TC egress hook.
func (n *atkNet6) handshake(t *testing.T, client, server netip.AddrPort, cif, sif string) {
	t.Helper()
	for i, s := range []struct {
		frame    []byte
		from, to string
	}{
		{atkTCP6(t, client, server, testpkt.SYN, 0), cif, sif},
		{atkTCP6(t, server, client, testpkt.SYN|testpkt.ACK, 0), sif, cif},
		{atkTCP6(t, client, server, testpkt.ACK, 0), cif, sif},
	} {
		want := bpf.ReasonAcceptedEstablished
		if i == 0 {
			want = bpf.ReasonAcceptedByPolicy
		}
		if !n.e.expect("handshake leaves", s.from, bpf.HookIngress, s.frame, want) ||
			!n.e.expect("handshake arrives", s.to, bpf.HookEgress, s.frame, want) {
			t.FailNow()
		}
	}
}

// TestAttackIPv6 is a hostile workload with CAP_NET_RAW against IPv6
// enforcement: it sends with other workloads', the node's and unrouted
// IPv6 sources (the reverse-path check drops them), IPv4-mapped sources
// and destinations that would alias IPv4 flows, forged ICMPv6 errors
// quoting another workload's flow, an over-long chain and a hop-by-hop
// header hiding behind another, fragments, and router messages. None
// changes the victim's entry, and the victim's flow keeps passing.
func TestAttackIPv6(t *testing.T) {
	n := atkNewNet6(t, nil)
	e := n.e
	ap := netip.AddrPortFrom
	client, server := ap(n.pod1, 40000), ap(n.pod2, 80)
	n.handshake(t, client, server, "atk6p1", "atk6p2")
	key, _ := ctKeyOf(testpkt.ProtoTCP, client, server)
	before, ok := e.ctEntry(key)
	if !ok {
		t.Fatal("no entry for the victim's flow")
	}
	syn := atkTCP6(t, client, server, testpkt.SYN, 0)
	withExt := func(src netip.AddrPort, ext ...testpkt.IPv6Ext) []byte {
		p := testpkt.TCPv6(src, server, testpkt.SYN, nil)
		p.IPv6.Ext = ext
		return testpkt.MustBytes(t, p)
	}
	mine := ap(n.pod3, 1000)
	linkLocal := netip.MustParseAddr("fe80::3")
	ra := testpkt.NDRouterAdvert(linkLocal, testpkt.AllNodesAddr, testpkt.RouterAdvert{Lifetime: 1800})
	redirect := testpkt.NDRedirect(linkLocal, n.pod1, n.pod3, n.pod2)
	forged := func(src, dst netip.Addr, quoted []byte) []byte {
		return testpkt.MustBytes(t, testpkt.ICMPv6TooBig(src, dst, 1280, testpkt.QuoteIPv6(quoted)))
	}
	cases := []struct {
		name, iface string
		frame       []byte
		want        bpf.Reason
	}{
		{"pod3 sends a SYN of pod1's flow", "atk6p3", syn, bpf.ReasonDroppedRPF},
		{"pod3 sends pod2's reply", "atk6p3", atkTCP6(t, server, client, testpkt.ACK, 0), bpf.ReasonDroppedRPF},
		{"pod1 sends as pod2", "atk6p1", atkTCP6(t, server, client, testpkt.SYN, 0), bpf.ReasonDroppedRPF},
		{"pod3 sends from an unrouted address", "atk6p3", atkTCP6(t, ap(netip.MustParseAddr("2001:db8:9::1"), 1), server, testpkt.SYN, 0), bpf.ReasonDroppedRPF},
		{"pod3 sends from the node's address", "atk6p3", atkTCP6(t, ap(n.node, 1), server, testpkt.SYN, 0), bpf.ReasonDroppedRPF},
		{"pod3 sends from its own link-local address", "atk6p3", atkTCP6(t, ap(linkLocal, 1), server, testpkt.SYN, 0), bpf.ReasonDroppedRPF},
		{"pod3 sends from ::", "atk6p3", atkTCP6(t, ap(netip.IPv6Unspecified(), 1), server, testpkt.SYN, 0), bpf.ReasonDroppedRPF},
		{"pod3 sends from a mapped pod1", "atk6p3", atkTCP6(t, ap(netip.MustParseAddr("::ffff:10.8.0.1"), 40000), server, testpkt.SYN, 0), bpf.ReasonDroppedIPv4Mapped},
		{"pod3 sends to a mapped address", "atk6p3", atkTCP6(t, mine, ap(netip.MustParseAddr("::ffff:10.8.0.2"), 80), testpkt.SYN, 0), bpf.ReasonDroppedIPv4Mapped},
		{"pod3 forges a packet too big about pod1's flow to pod1", "atk6p3", forged(n.pod3, n.pod1, syn), bpf.ReasonDroppedByPolicy},
		{"pod3 forges it from pod2", "atk6p3", forged(n.pod2, n.pod1, syn), bpf.ReasonDroppedRPF},
		{"pod3 forges an error about pod2's replies", "atk6p3", forged(n.pod3, n.pod2, atkTCP6(t, server, client, testpkt.ACK, 0)), bpf.ReasonDroppedByPolicy},
		{"pod3 sends a 9-header chain", "atk6p3", withExt(mine, testpkt.RepeatExt(testpkt.ExtDestOpts(nil), 9)...), bpf.ReasonDroppedIPv6ChainLong},
		{"pod3 hides hop-by-hop behind a header", "atk6p3", withExt(mine, testpkt.ExtDestOpts(nil), testpkt.ExtHopByHop(nil)), bpf.ReasonDroppedIPv6Ext},
		{"pod3 sends a type 0 routing header", "atk6p3", withExt(mine, testpkt.ExtRoutingType0(1, n.pod2)), bpf.ReasonDroppedIPv6Ext},
		{"pod3 sends a first fragment", "atk6p3", withExt(mine, testpkt.ExtFragment(0, true, 1)), bpf.ReasonDroppedFragment},
		{"pod3 sends a later fragment", "atk6p3", withExt(mine, testpkt.ExtFragment(8, false, 1)), bpf.ReasonDroppedFragment},
		{"pod3 advertises itself as router", "atk6p3", testpkt.MustBytes(t, ra), bpf.ReasonDroppedND},
		// ND to an address the node forwards to is no link message: it
		// meets the reverse-path check, which its link-local source fails.
		{"pod3 redirects pod1", "atk6p3", testpkt.MustBytes(t, redirect), bpf.ReasonDroppedRPF},
		{"pod3 solicits a neighbour", "atk6p3", testpkt.MustBytes(t, testpkt.NDNeighborSolicit(linkLocal, n.pod1)), bpf.ReasonNDPassed},
		{"pod3 answers for pod1, to pod1", "atk6p3", testpkt.MustBytes(t, testpkt.NDNeighborAdvert(linkLocal, n.pod1, n.pod1, testpkt.NAFlagOverride)), bpf.ReasonDroppedRPF},
		{"pod3 answers the node's solicitation", "atk6p3", testpkt.MustBytes(t, testpkt.NDNeighborAdvert(linkLocal, netip.MustParseAddr("fe80::1"), n.pod3, testpkt.NAFlagOverride)), bpf.ReasonNDPassed},
		{"pod3's own SYN", "atk6p3", atkTCP6(t, mine, server, testpkt.SYN, 0), bpf.ReasonAcceptedByPolicy},
	}
	for _, c := range cases {
		e.expect(c.name, c.iface, bpf.HookIngress, c.frame, c.want)
	}
	// The node's router, not a workload, may send pod1 a packet too big
	// about its flow: it passes pod1's egress hook as related.
	e.expect("the node's packet too big to pod1", "atk6p1", bpf.HookEgress, forged(n.node, n.pod1, syn), bpf.ReasonAcceptedRelated)
	e.expect("the same error at pod2", "atk6p2", bpf.HookEgress, forged(n.node, n.pod1, syn), bpf.ReasonDroppedByPolicy)

	after, _ := e.ctEntry(key)
	if diff := cmp.Diff(before, after, ctCmp); diff != "" {
		t.Errorf("attacks changed the victim's entry (-before +after):\n%s", diff)
	}
	e.expect("victim's data leaves pod1", "atk6p1", bpf.HookIngress, atkTCP6(t, client, server, testpkt.ACK, 10), bpf.ReasonAcceptedEstablished)
	e.expect("victim's reply reaches pod1", "atk6p1", bpf.HookEgress, atkTCP6(t, server, client, testpkt.ACK, 10), bpf.ReasonAcceptedEstablished)
}

// TestAttackIPv6Interfaces checks the per-interface IPv6 settings against
// a workload: DropND drops its neighbour discovery; PassFragments passes
// its later fragments only from its own address; and an interface with
// IPv6Drop drops IPv6 (IPv6Pass passes it unchecked), IPv4 unaffected.
func TestAttackIPv6Interfaces(t *testing.T) {
	ap := netip.AddrPortFrom
	for _, c := range []struct {
		name string
		cfg  func(*Interface)
		want map[string]bpf.Reason
	}{
		{"drop nd", func(c *Interface) { c.DropND = true }, map[string]bpf.Reason{
			"ns": bpf.ReasonDroppedND, "later fragment": bpf.ReasonDroppedFragment, "spoofed later fragment": bpf.ReasonDroppedFragment, "syn": bpf.ReasonAcceptedByPolicy}},
		{"pass fragments", func(c *Interface) { c.PassFragments = true }, map[string]bpf.Reason{
			"ns": bpf.ReasonNDPassed, "later fragment": bpf.ReasonFragmentPassed, "spoofed later fragment": bpf.ReasonDroppedRPF, "syn": bpf.ReasonAcceptedByPolicy}},
		{"not enforced", func(c *Interface) { c.IPv6 = IPv6Drop }, map[string]bpf.Reason{
			"ns": bpf.ReasonDroppedIPv6, "later fragment": bpf.ReasonDroppedIPv6, "spoofed later fragment": bpf.ReasonDroppedIPv6, "syn": bpf.ReasonDroppedIPv6}},
		{"passed unchecked", func(c *Interface) { c.IPv6 = IPv6Pass }, map[string]bpf.Reason{
			"ns": bpf.ReasonIPv6Passed, "later fragment": bpf.ReasonIPv6Passed, "spoofed later fragment": bpf.ReasonIPv6Passed, "syn": bpf.ReasonIPv6Passed}},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := atkNewNet6(t, c.cfg)
			frag := func(src netip.Addr) []byte {
				p := testpkt.TCPv6(ap(src, 1), ap(n.pod2, 80), testpkt.ACK, nil)
				p.IPv6.Ext = []testpkt.IPv6Ext{testpkt.ExtFragment(8, true, 9)}
				return testpkt.MustBytes(t, p)
			}
			frames := map[string][]byte{
				"ns":                     testpkt.MustBytes(t, testpkt.NDNeighborSolicit(netip.MustParseAddr("fe80::3"), n.pod1)),
				"later fragment":         frag(n.pod3),
				"spoofed later fragment": frag(n.pod1),
				"syn":                    atkTCP6(t, ap(n.pod3, 1), ap(n.pod2, 80), testpkt.SYN, 0),
			}
			for name, frame := range frames {
				n.e.expect(name, "atk6p3", bpf.HookIngress, frame, c.want[name])
			}
		})
	}
}
