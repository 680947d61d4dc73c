package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
)

// XDP verdicts the programs return.
const (
	xdpDrop = 1
	xdpPass = 2
)

// openXDP opens a small datapath for the XDP tests.
func openXDP(tb testing.TB) *Datapath {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	d, err := Open(Options{ConntrackEntries: 1 << 12, PolicySlots: 256, IPSetEntries: 16, MaxInterfaces: 32, RouteEntries: 64})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// xdpTiers deny SSH from 10.0.0.0/8 (rule 501), DNS over UDP from
// 2001:db8::/32 (502) and ICMPv6 from there (503), allow TCP port 80 from
// 10.9.0.0/16 (504, before 501 matters for nothing: other port), and pass
// the rest.
var xdpTiers = []polprog.Tier{{Name: "untracked", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Name: "p", Rules: []polprog.Rule{
	{ID: 504, Action: polprog.ActionAllow, Protocol: "tcp", SrcNets: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, DstPorts: []polprog.PortRange{polprog.Port(80)}},
	{ID: 501, Action: polprog.ActionDeny, Protocol: "tcp", SrcNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, DstPorts: []polprog.PortRange{polprog.Port(22)}},
	{ID: 502, Action: polprog.ActionDeny, Protocol: "udp", SrcNets: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}, DstPorts: []polprog.PortRange{polprog.Port(53)}},
	{ID: 503, Action: polprog.ActionDeny, Protocol: "icmpv6", SrcNets: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}},
}}}}}

// runXDP runs the XDP program on frame as if it arrived at lo, which the
// kernel names in a test run's context.
func runXDP(tb testing.TB, d *Datapath, frame []byte) uint32 {
	tb.Helper()
	ret, err := d.XDP().Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		tb.Fatalf("run xdp: %v", err)
	}
	return ret
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestXDPNarratives: at a host interface with XDP tiers, what they deny is
// dropped and counted as dropped by policy at the interface's ingress,
// with the rule's hit; what they allow or pass, malformed packets, later
// fragments and neighbour discovery pass to TC uncounted; both families.
func TestXDPNarratives(t *testing.T) {
	d := openXDP(t)
	if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: xdpTiers}); err != nil {
		t.Fatal(err)
	}
	v4 := func(src, dst string) testpkt.Packet { return testpkt.TCPv4(ap(src), ap(dst), testpkt.SYN, nil) }
	frag := func(p testpkt.Packet, off uint16, more bool) testpkt.Packet {
		p.IPv4.FragOffset, p.IPv4.MoreFragments = off, more
		return p
	}
	badIHL := v4("10.1.1.1:1000", "192.0.2.1:22")
	badIHL.IPv4.IHL = 4
	vlan := v4("10.1.1.1:1000", "192.0.2.1:22")
	vlan.Eth.VLANs = []testpkt.VLANTag{{TPID: testpkt.TPID8021Q, VID: 7}}
	cases := []struct {
		name  string
		frame []byte
		want  uint32
		rule  uint64 // the deciding rule whose hit is counted; 0: none
	}{
		{"v4 denied", testpkt.MustBytes(t, v4("10.1.1.1:1000", "192.0.2.1:22")), xdpDrop, 501},
		{"v4 other port passes", testpkt.MustBytes(t, v4("10.1.1.1:1000", "192.0.2.1:23")), xdpPass, 0},
		{"v4 other source passes", testpkt.MustBytes(t, v4("192.168.1.1:1000", "192.0.2.1:22")), xdpPass, 0},
		{"v4 allowed passes", testpkt.MustBytes(t, v4("10.9.1.1:1000", "192.0.2.1:80")), xdpPass, 504},
		{"v4 first fragment denied", testpkt.MustBytes(t, frag(v4("10.1.1.1:1000", "192.0.2.1:22"), 0, true)), xdpDrop, 501},
		{"v4 later fragment passes", testpkt.MustBytes(t, frag(v4("10.1.1.1:1000", "192.0.2.1:22"), 8, false)), xdpPass, 0},
		{"v4 truncated TCP passes", testpkt.Truncate(testpkt.MustBytes(t, v4("10.1.1.1:1000", "192.0.2.1:22")), testpkt.EthLen+testpkt.IPv4MinLen+10), xdpPass, 0},
		{"v4 bad IHL passes", testpkt.MustBytes(t, badIHL), xdpPass, 0},
		{"v4 VLAN passes", testpkt.MustBytes(t, vlan), xdpPass, 0},
		{"v6 denied", testpkt.MustBytes(t, testpkt.UDPv6(ap("[2001:db8::1]:1000"), ap("[2001:db9::1]:53"), nil)), xdpDrop, 502},
		{"v6 other port passes", testpkt.MustBytes(t, testpkt.UDPv6(ap("[2001:db8::1]:1000"), ap("[2001:db9::1]:54"), nil)), xdpPass, 0},
		{"v6 echo denied", testpkt.MustBytes(t, testpkt.ICMPv6Echo(netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db9::1"), 1, 1, false)), xdpDrop, 503},
		{"v6 neighbour discovery passes", testpkt.MustBytes(t, testpkt.NDRouterSolicit(netip.MustParseAddr("2001:db8::5"))), xdpPass, 0},
		{"v6 truncated passes", testpkt.Truncate(testpkt.MustBytes(t, testpkt.UDPv6(ap("[2001:db8::1]:1000"), ap("[2001:db9::1]:53"), nil)), testpkt.EthLen+30), xdpPass, 0},
		{"runt passes", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 8, 0}, xdpPass, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := xdpCounts(t, d)
			var hitsBefore uint64
			if tc.rule != 0 {
				hitsBefore = ruleHits(t, d, tc.rule)
			}
			if got := runXDP(t, d, tc.frame); got != tc.want {
				t.Fatalf("xdp returned %d, want %d", got, tc.want)
			}
			want := map[bpf.Reason]uint64{}
			if tc.want == xdpDrop {
				want[bpf.ReasonDroppedByPolicy] = 1
			}
			if diff := cmp.Diff(want, diffCounts(before, xdpCounts(t, d))); diff != "" {
				t.Errorf("ingress counters (-want +got):\n%s", diff)
			}
			if tc.rule != 0 {
				if got := ruleHits(t, d, tc.rule) - hitsBefore; got != 1 {
					t.Errorf("rule %d counted %d hits, want 1", tc.rule, got)
				}
			}
		})
	}
}

// TestXDPInterfaces: an interface without XDP tiers, or without an entry,
// passes everything; XDP tiers on a workload are an error; replacing and
// removing the XDP tiers switches the program's behaviour and frees the
// old policy's slots.
func TestXDPInterfaces(t *testing.T) {
	d := openXDP(t)
	denied := testpkt.MustBytes(t, testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:22"), testpkt.SYN, nil))
	if got := runXDP(t, d, denied); got != xdpPass {
		t.Fatalf("no entry: xdp returned %d, want pass", got)
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Workload, XDP: xdpTiers}); err == nil {
		t.Fatal("XDP tiers on a workload were accepted")
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Host}); err != nil {
		t.Fatal(err)
	}
	if got := runXDP(t, d, denied); got != xdpPass {
		t.Fatalf("no XDP tiers: xdp returned %d, want pass", got)
	}
	free := d.xdpSlots.free
	if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: xdpTiers}); err != nil {
		t.Fatal(err)
	}
	if got := runXDP(t, d, denied); got != xdpDrop {
		t.Fatalf("with XDP tiers: xdp returned %d, want drop", got)
	}
	entry, err := d.XDPEntry(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	tcEntry, err := d.InterfaceEntry(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if entry.CounterSlot != tcEntry.CounterSlot {
		t.Errorf("XDP counter slot %d, TC's %d", entry.CounterSlot, tcEntry.CounterSlot)
	}
	// Another policy that allows SSH from 10/8: the switch is one write.
	allowAll := []polprog.Tier{{Name: "t", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Rules: []polprog.Rule{{ID: 9, Action: polprog.ActionAllow}}}}}}
	if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: allowAll}); err != nil {
		t.Fatal(err)
	}
	if got := runXDP(t, d, denied); got != xdpPass {
		t.Fatalf("replaced XDP tiers: xdp returned %d, want pass", got)
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Host}); err != nil {
		t.Fatal(err)
	}
	if got := d.xdpSlots.free; got != free {
		t.Errorf("%d free XDP slots after removing the XDP tiers, %d before", got, free)
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: xdpTiers}); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveInterface(loIfindex); err != nil {
		t.Fatal(err)
	}
	if got := runXDP(t, d, denied); got != xdpPass {
		t.Fatalf("removed interface: xdp returned %d, want pass", got)
	}
	if got := d.xdpSlots.free; got != free {
		t.Errorf("%d free XDP slots after RemoveInterface, %d before", got, free)
	}
}

// xdpCounts reads lo's ingress counters.
func xdpCounts(tb testing.TB, d *Datapath) HookCounters {
	tb.Helper()
	c, err := d.Counters(loIfindex)
	if err != nil {
		tb.Fatal(err)
	}
	return c.Ingress
}

func diffCounts(before, after HookCounters) map[bpf.Reason]uint64 {
	var c HookCounters
	for r := range after {
		c[r] = after[r] - before[r]
	}
	return c.NonZero()
}

// TestXDPDifferential holds the XDP program to polprog.Evaluate of the
// interface's XDP tiers (as pre-DNAT tiers of a host endpoint) on random
// tiers and random packets of both families: the program drops exactly
// what Evaluate denies, and counts each drop.
func TestXDPDifferential(t *testing.T) {
	d := openXDP(t)
	policies, packets := 20, 300
	if testing.Short() {
		policies = 5
	}
	verdicts := map[string]int{}
	for seed := uint64(0); seed < uint64(policies); seed++ {
		r := rand.New(rand.NewPCG(seed, 11))
		tiers := randomXDPTiers(r)
		if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: tiers}); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		rules := polprog.Rules{ForHost: true, PreDNATTiers: tiers}
		for i := 0; i < packets; i++ {
			pkt, frame := randomXDPPacket(t, r)
			want, err := polprog.Evaluate(rules, nil, pkt)
			if err != nil {
				t.Fatal(err)
			}
			before := xdpCounts(t, d)
			got := runXDP(t, d, frame)
			wantRet := uint32(xdpPass)
			if want.Verdict == polprog.VerdictDeny {
				wantRet = xdpDrop
			}
			if got != wantRet {
				t.Fatalf("seed %d, packet %d %+v: xdp returned %d, Evaluate %+v", seed, i, pkt, got, want)
			}
			dropped := xdpCounts(t, d)[bpf.ReasonDroppedByPolicy] - before[bpf.ReasonDroppedByPolicy]
			if (dropped == 1) != (got == xdpDrop) || dropped > 1 {
				t.Fatalf("seed %d, packet %d: %d drops counted for return %d", seed, i, dropped, got)
			}
			fam := "v6"
			if pkt.Src.Is4() {
				fam = "v4"
			}
			verdicts[fam+"/"+want.Verdict.String()]++
		}
	}
	t.Logf("verdicts %v", verdicts)
	for _, k := range []string{"v4/allow", "v4/deny", "v6/allow", "v6/deny"} {
		if verdicts[k] < policies*packets/50 {
			t.Errorf("only %d cases were %s: %v", verdicts[k], k, verdicts)
		}
	}
}

// Address pools of the random packets and rules: a few /16s of each
// family, so that prefixes match often.
var (
	xdpAddrs4 = []string{"10.1.0.0", "10.2.0.0", "192.0.2.0"}
	xdpAddrs6 = []string{"2001:db8:1::", "2001:db8:2::", "fd00::"}
	xdpPorts  = []uint16{22, 53, 80, 443, 8080}
)

func randomAddr(r *rand.Rand, v6 bool) netip.Addr {
	pool := xdpAddrs4
	if v6 {
		pool = xdpAddrs6
	}
	a := netip.MustParseAddr(pool[r.IntN(len(pool))]).As16()
	a[15] = byte(r.IntN(4))
	a[13] = byte(r.IntN(2))
	if v6 {
		return netip.AddrFrom16(a)
	}
	return netip.AddrFrom16(a).Unmap()
}

func randomPrefix(r *rand.Rand, v6 bool) netip.Prefix {
	bits := []int{8, 16, 24, 31}[r.IntN(4)]
	if v6 {
		bits = []int{16, 48, 120, 127}[r.IntN(4)]
	}
	p, _ := randomAddr(r, v6).Prefix(bits)
	return p
}

// randomXDPTiers makes one or two tiers of up to six rules each over the
// pools, with deny, allow and pass rules and both end actions.
func randomXDPTiers(r *rand.Rand) []polprog.Tier {
	var tiers []polprog.Tier
	id := uint64(1000)
	for ti := 0; ti < 1+r.IntN(2); ti++ {
		var rules []polprog.Rule
		for i := 0; i < 1+r.IntN(6); i++ {
			id++
			rule := polprog.Rule{ID: id, Action: []polprog.Action{polprog.ActionDeny, polprog.ActionDeny, polprog.ActionAllow, polprog.ActionPass}[r.IntN(4)]}
			rule.Protocol = []string{"", "tcp", "udp", "icmp", "icmpv6"}[r.IntN(5)]
			if r.IntN(2) == 0 {
				rule.SrcNets = []netip.Prefix{randomPrefix(r, r.IntN(2) == 0)}
			}
			if r.IntN(3) == 0 {
				rule.NotDstNets = []netip.Prefix{randomPrefix(r, r.IntN(2) == 0)}
			}
			if (rule.Protocol == "tcp" || rule.Protocol == "udp") && r.IntN(2) == 0 {
				rule.DstPorts = []polprog.PortRange{polprog.Port(xdpPorts[r.IntN(len(xdpPorts))])}
			}
			rules = append(rules, rule)
		}
		end := polprog.EndPass
		if r.IntN(3) == 0 {
			end = polprog.EndDeny
		}
		id++
		tiers = append(tiers, polprog.Tier{Name: fmt.Sprint("t", ti), EndAction: end, EndRuleID: id,
			Policies: []polprog.Policy{{Name: "p", Rules: rules}}})
	}
	return tiers
}

// randomXDPPacket makes a TCP, UDP or ICMP(v6) echo packet of either
// family from the pools, with the Packet that Evaluate sees of it.
func randomXDPPacket(tb testing.TB, r *rand.Rand) (polprog.Packet, []byte) {
	v6 := r.IntN(2) == 0
	src, dst := randomAddr(r, v6), randomAddr(r, v6)
	sport, dport := uint16(1024+r.IntN(4)), xdpPorts[r.IntN(len(xdpPorts))]
	pkt := polprog.Packet{Src: src, Dst: dst}
	var p testpkt.Packet
	switch r.IntN(3) {
	case 0:
		pkt.Protocol, pkt.SrcPort, pkt.DstPort = 6, sport, dport
		if v6 {
			p = testpkt.TCPv6(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), testpkt.SYN, nil)
		} else {
			p = testpkt.TCPv4(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), testpkt.SYN, nil)
		}
	case 1:
		pkt.Protocol, pkt.SrcPort, pkt.DstPort = 17, sport, dport
		if v6 {
			p = testpkt.UDPv6(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), nil)
		} else {
			p = testpkt.UDPv4(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), nil)
		}
	default:
		if v6 {
			pkt.Protocol, pkt.ICMPType = 58, 128
			p = testpkt.ICMPv6Echo(src, dst, 7, 1, false)
		} else {
			pkt.Protocol, pkt.ICMPType = 1, 8
			p = testpkt.ICMPv4Echo(src, dst, 7, 1, false)
		}
	}
	return pkt, testpkt.MustBytes(tb, p)
}

// TestXDPRestart: a second process on the same pins finds the XDP
// entry, writes its own generation's record beside the first's (whose
// XDP program still decides until it is replaced), and at Settle the
// first's record goes; the XDP arrays are pinned per generation as the
// TC ones are.
func TestXDPRestart(t *testing.T) {
	opts := Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16, PinDir: atk2PinDir(t)}
	cfg := Interface{Kind: Host, XDP: xdpTiers}
	denied := testpkt.MustBytes(t, testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:22"), testpkt.SYN, nil))
	d1 := openSmall(t, opts)
	if err := d1.SetInterface(loIfindex, cfg); err != nil {
		t.Fatal(err)
	}
	d2 := openSmall(t, opts)
	if err := d2.SetInterface(loIfindex, cfg); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Datapath{d1, d2} {
		if got := runXDP(t, d, denied); got != xdpDrop {
			t.Errorf("generation %d: xdp returned %d, want drop", d.Generation(), got)
		}
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d2.Settle(); err != nil {
		t.Fatal(err)
	}
	entry, err := d2.XDPEntry(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	var gens []uint32
	for _, r := range entry.Records {
		gens = append(gens, r.Generation)
	}
	if diff := cmp.Diff([]uint32{d2.Generation()}, slicesNonZero(gens)); diff != "" {
		t.Errorf("XDP records after Settle (-want +got):\n%s", diff)
	}
	if got := runXDP(t, d2, denied); got != xdpDrop {
		t.Errorf("after Settle: xdp returned %d, want drop", got)
	}
}

func slicesNonZero(s []uint32) []uint32 {
	var out []uint32
	for _, v := range s {
		if v != 0 {
			out = append(out, v)
		}
	}
	return out
}

// TestXDPPolicyHookOption: Options.Policy.Hook is the datapath's to set,
// per policy; Open refuses one set by the caller.
func TestXDPPolicyHookOption(t *testing.T) {
	testutil.RequirePrivileged(t)
	d, err := Open(Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16, Policy: polprog.Options{Hook: polprog.HookXDP}})
	if err == nil {
		d.Close()
		t.Fatal("Open took Policy.Hook HookXDP")
	}
}

// TestXDPReplaceUnderTraffic: while the XDP tiers are replaced over and
// over by others that deny the same packet with another rule, a packet
// run meanwhile is always dropped: it meets the old policy or the new
// one, never an empty slot.
func TestXDPReplaceUnderTraffic(t *testing.T) {
	d := openXDP(t)
	denySSH := func(id uint64) []polprog.Tier {
		return []polprog.Tier{{Name: "t", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Rules: []polprog.Rule{
			{ID: id, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(22)}}}}}}}
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: denySSH(1)}); err != nil {
		t.Fatal(err)
	}
	denied := testpkt.MustBytes(t, testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:22"), testpkt.SYN, nil))
	stop := make(chan struct{})
	result := make(chan error)
	go func() {
		runs := 0
		for {
			select {
			case <-stop:
				if runs == 0 {
					result <- fmt.Errorf("no runs")
					return
				}
				result <- nil
				return
			default:
			}
			ret, err := d.XDP().Run(&ebpf.RunOptions{Data: denied, Repeat: 64})
			if err == nil && ret != xdpDrop {
				err = fmt.Errorf("run %d: xdp returned %d", runs, ret)
			}
			if err != nil {
				result <- err
				return
			}
			runs++
		}
	}()
	var swapErr error
	for i := range 40 {
		if swapErr = d.SetInterface(loIfindex, Interface{Kind: Host, XDP: denySSH(uint64(i%2) + 1)}); swapErr != nil {
			break
		}
	}
	close(stop)
	if err := <-result; err != nil {
		t.Error(err)
	}
	if swapErr != nil {
		t.Fatal(swapErr)
	}
}

// TestXDPPolicyFailed: an XDP policy that cannot finish (its second part
// is gone from the jump map) drops the packet and counts it as a failed
// policy, failing closed as TC does; an empty entry slot passes to TC.
func TestXDPPolicyFailed(t *testing.T) {
	d := openXDP(t)
	d.opts.Policy.SplitJumps = 1
	if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: xdpTiers}); err != nil {
		t.Fatal(err)
	}
	prog := d.ifaces[loIfindex].xdp.prog
	slots := prog.Slots()
	if len(slots) < 2 {
		t.Fatalf("the XDP policy has %d parts, want several", len(slots))
	}
	denied := testpkt.MustBytes(t, testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:22"), testpkt.SYN, nil))
	if err := d.xdp.SlXdpPolicyJumps.Delete(slots[1]); err != nil {
		t.Fatal(err)
	}
	before := xdpCounts(t, d)
	if got := runXDP(t, d, denied); got != xdpDrop {
		t.Fatalf("failed policy: xdp returned %d, want drop", got)
	}
	if diff := cmp.Diff(map[bpf.Reason]uint64{bpf.ReasonDroppedPolicyFailed: 1}, diffCounts(before, xdpCounts(t, d))); diff != "" {
		t.Errorf("ingress counters (-want +got):\n%s", diff)
	}
	if err := d.xdp.SlXdpPolicyJumps.Delete(slots[0]); err != nil {
		t.Fatal(err)
	}
	before = xdpCounts(t, d)
	if got := runXDP(t, d, denied); got != xdpPass {
		t.Fatalf("empty entry slot: xdp returned %d, want pass", got)
	}
	if diff := cmp.Diff(map[bpf.Reason]uint64{}, diffCounts(before, xdpCounts(t, d))); diff != "" {
		t.Errorf("ingress counters (-want +got):\n%s", diff)
	}
}
