package datapath

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// packetCase is one packet run at lo and what it should do.
type packetCase struct {
	name     string
	hook     bpf.Hook
	frame    []byte
	wantRet  uint32
	want     map[bpf.Reason]uint64
	wantCT   *bpf.CTKey // an entry that must exist afterwards
	wantNoCT *bpf.CTKey // an entry that must not
	arrange  func(h *harness)
}

func (h *harness) runCase(t *testing.T, c packetCase) {
	t.Helper()
	if c.arrange != nil {
		c.arrange(h)
	}
	before := h.counters(loIfindex, c.hook)
	ret := h.run(hookProg(c.hook), c.frame)
	if ret != c.wantRet {
		t.Errorf("%s: verdict %d, want %d", c.name, ret, c.wantRet)
	}
	if diff := cmp.Diff(c.want, reasonDelta(before, h.counters(loIfindex, c.hook))); diff != "" {
		t.Errorf("%s: counters (-want +got):\n%s", c.name, diff)
	}
	if c.wantCT != nil {
		if _, ok := h.ctEntry(*c.wantCT); !ok {
			t.Errorf("%s: no conntrack entry %+v", c.name, *c.wantCT)
		}
	}
	if c.wantNoCT != nil {
		if _, ok := h.ctEntry(*c.wantNoCT); ok {
			t.Errorf("%s: unexpected conntrack entry %+v", c.name, *c.wantNoCT)
		}
	}
}

func one(r bpf.Reason) map[bpf.Reason]uint64 { return map[bpf.Reason]uint64{r: 1} }

func keyPtr(proto uint8, src, dst netip.AddrPort) *bpf.CTKey {
	k, _ := ctKeyOf(proto, src, dst)
	return &k
}

// TestPolicyVerdicts runs packets whose verdict policy, conntrack or the
// interface state decides, in order: each case may rely on the ones before.
func TestPolicyVerdicts(t *testing.T) {
	h := newHarness(t)
	client := netip.MustParseAddrPort("10.2.0.10:41000")
	web := netip.MustParseAddrPort("10.2.0.20:80")
	other := netip.MustParseAddrPort("10.2.0.20:81")
	router := netip.MustParseAddr("10.2.0.254")
	tcp := func(src, dst netip.AddrPort, f testpkt.TCPFlags) []byte {
		return testpkt.MustBytes(t, testpkt.TCPv4(src, dst, f, nil))
	}
	syn := tcp(client, web, testpkt.SYN)
	icmpErr := func(typ, code uint8, quoted []byte) []byte {
		return testpkt.MustBytes(t, testpkt.ICMPv4Error(router, client.Addr(), typ, code, testpkt.Quote(quoted)))
	}
	untracked := tcp(client, netip.MustParseAddrPort("10.2.0.30:80"), testpkt.SYN)

	cases := []packetCase{
		{name: "new flow allowed", hook: bpf.HookIngress, frame: syn, wantRet: tcActOK,
			want: one(bpf.ReasonAcceptedByPolicy), wantCT: keyPtr(testpkt.ProtoTCP, client, web)},
		{name: "new flow denied", hook: bpf.HookIngress, frame: tcp(client, other, testpkt.SYN), wantRet: tcActShot,
			want: one(bpf.ReasonDroppedByPolicy), wantNoCT: keyPtr(testpkt.ProtoTCP, client, other)},
		{name: "reply of allowed flow", hook: bpf.HookEgress, frame: tcp(web, client, testpkt.SYN|testpkt.ACK), wantRet: tcActOK,
			want: one(bpf.ReasonAcceptedEstablished)},
		{name: "reply of denied flow", hook: bpf.HookEgress, frame: tcp(other, client, testpkt.SYN|testpkt.ACK), wantRet: tcActShot,
			want: one(bpf.ReasonDroppedByPolicy)},
		{name: "unreachable quoting tracked flow", hook: bpf.HookEgress, frame: icmpErr(testpkt.ICMPv4DestUnreachable, 1, syn),
			wantRet: tcActOK, want: one(bpf.ReasonAcceptedRelated)},
		{name: "fragmentation needed quoting tracked flow", hook: bpf.HookEgress, frame: icmpErr(testpkt.ICMPv4DestUnreachable, 4, syn),
			wantRet: tcActOK, want: one(bpf.ReasonAcceptedRelated)},
		{name: "time exceeded quoting tracked flow", hook: bpf.HookEgress,
			frame:   testpkt.MustBytes(t, testpkt.ICMPv4Error(router, client.Addr(), testpkt.ICMPv4TimeExceeded, 0, testpkt.Quote(syn))),
			wantRet: tcActOK, want: one(bpf.ReasonAcceptedRelated)},
		// The client's packets enter at lo's ingress hook: an error on its
		// way to the client does not come from there, and goes to policy
		// (which allows port 0 at lo).
		{name: "error at the hook the flow's own packets enter goes to policy", hook: bpf.HookIngress,
			frame:   testpkt.MustBytes(t, testpkt.ICMPv4Error(router, client.Addr(), testpkt.ICMPv4TimeExceeded, 0, testpkt.Quote(syn))),
			wantRet: tcActOK, want: one(bpf.ReasonAcceptedByPolicy)},
		{name: "error quoting untracked flow goes to policy", hook: bpf.HookEgress, frame: icmpErr(testpkt.ICMPv4DestUnreachable, 1, untracked),
			arrange: func(h *harness) { h.putPolicy(h.lo.egress, allowDstPorts(80)) },
			wantRet: tcActShot, want: one(bpf.ReasonDroppedByPolicy)},
		{name: "error sent to the quoted packet's destination goes to policy", hook: bpf.HookEgress,
			frame:   testpkt.MustBytes(t, testpkt.ICMPv4Error(router, web.Addr(), testpkt.ICMPv4DestUnreachable, 1, testpkt.Quote(syn))),
			wantRet: tcActShot, want: one(bpf.ReasonDroppedByPolicy)},
		{name: "established skips a policy that now denies", hook: bpf.HookIngress, frame: tcp(client, web, testpkt.ACK),
			arrange: func(h *harness) { h.putPolicy(h.lo.ingress, allowDstPorts()) },
			wantRet: tcActOK, want: one(bpf.ReasonAcceptedEstablished)},
		{name: "SYN seen again runs policy", hook: bpf.HookIngress, frame: syn,
			wantRet: tcActShot, want: one(bpf.ReasonDroppedByPolicy)},
		{name: "missing policy slot drops", hook: bpf.HookIngress, frame: tcp(client, netip.MustParseAddrPort("10.2.0.21:80"), testpkt.SYN),
			arrange: func(h *harness) { h.clearPolicy(h.lo.ingress) },
			wantRet: tcActShot, want: one(bpf.ReasonDroppedNoPolicy)},
		{name: "missing policy slot does not stop established", hook: bpf.HookIngress, frame: tcp(client, web, testpkt.ACK),
			wantRet: tcActOK, want: one(bpf.ReasonAcceptedEstablished)},
		{name: "mid-flow TCP goes through policy", hook: bpf.HookIngress, frame: tcp(client, netip.MustParseAddrPort("10.2.0.22:80"), testpkt.ACK),
			arrange: func(h *harness) { h.putPolicy(h.lo.ingress, allowDstPorts(80)) },
			wantRet: tcActOK, want: one(bpf.ReasonAcceptedByPolicy), wantCT: keyPtr(testpkt.ProtoTCP, client, netip.MustParseAddrPort("10.2.0.22:80"))},
		{name: "mid-flow TCP dropped when configured", hook: bpf.HookIngress, frame: tcp(client, netip.MustParseAddrPort("10.2.0.23:80"), testpkt.ACK),
			arrange: func(h *harness) { h.setLo(bpf.IfaceWorkload | bpf.IfaceReady | bpf.IfaceDropMidFlow) },
			wantRet: tcActShot, want: one(bpf.ReasonDroppedMidFlow)},
		{name: "SYN allowed with mid-flow drop", hook: bpf.HookIngress, frame: tcp(client, netip.MustParseAddrPort("10.2.0.23:80"), testpkt.SYN),
			wantRet: tcActOK, want: one(bpf.ReasonAcceptedByPolicy)},
		{name: "interface not ready", hook: bpf.HookIngress, frame: tcp(client, web, testpkt.ACK),
			arrange: func(h *harness) { h.setLo(bpf.IfaceWorkload) },
			wantRet: tcActShot, want: one(bpf.ReasonDroppedNotReady)},
		{name: "no interface state", hook: bpf.HookEgress, frame: tcp(web, client, testpkt.ACK),
			arrange: func(h *harness) {
				if err := h.d.ifaceMap.Delete(uint32(loIfindex)); err != nil {
					t.Fatal(err)
				}
			},
			wantRet: tcActShot, want: one(bpf.ReasonDroppedNoIface)},
	}
	for _, c := range cases {
		h.runCase(t, c)
	}
}

// TestContinuationWithoutPendingPacket runs the continuations directly, as
// if something other than the datapath's policy reached them.
func TestContinuationWithoutPendingPacket(t *testing.T) {
	h := newHarness(t)
	frame := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.3.0.1:1"), netip.MustParseAddrPort("10.3.0.2:80"), testpkt.SYN, nil))
	// Without a pending packet the continuation knows no interface: it
	// counts in slot 0.
	for _, p := range []prog{progAllow, progDeny} {
		before := h.counters(0, bpf.HookIngress)
		if ret := h.run(p, frame); ret != tcActShot {
			t.Errorf("program %d: verdict %d, want TC_ACT_SHOT", p, ret)
		}
		if diff := cmp.Diff(one(bpf.ReasonDroppedBadHandoff), reasonDelta(before, h.counters(0, bpf.HookIngress))); diff != "" {
			t.Errorf("program %d: counters (-want +got):\n%s", p, diff)
		}
	}
}

// TestAllowContinuationNeedsAllowVerdict checks that the allow
// continuation does not accept a packet whose state says policy did not
// allow it, and that it consumes the pending packet either way.
func TestAllowContinuationNeedsAllowVerdict(t *testing.T) {
	h := newHarness(t)
	// A policy that jumps to the allow continuation but leaves policy_rc
	// at bpf.PolicyNone.
	h.putPolicy(h.lo.ingress, stubPolicyRaw(bpf.ContAllow, bpf.PolicyNone))
	frame := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.3.0.1:1"), netip.MustParseAddrPort("10.3.0.2:80"), testpkt.SYN, nil))
	before := h.counters(loIfindex, bpf.HookIngress)
	if ret := h.run(progIngress, frame); ret != tcActShot {
		t.Errorf("verdict %d, want TC_ACT_SHOT", ret)
	}
	if diff := cmp.Diff(one(bpf.ReasonDroppedBadHandoff), reasonDelta(before, h.counters(loIfindex, bpf.HookIngress))); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	var pending []bpf.Pending
	if err := h.d.objs.SlPendingMap.Lookup(uint32(0), &pending); err != nil {
		t.Fatal(err)
	}
	for cpu, p := range pending {
		if p.Ifindex != 0 {
			t.Errorf("CPU %d: pending packet left behind: %+v", cpu, p)
		}
	}
}

// TestCounterSlotPastArray checks that an interface whose counter slot
// the counters map was not sized for counts in slot 0 instead of nowhere.
func TestCounterSlotPastArray(t *testing.T) {
	h := newHarness(t)
	h.setIface(loIfindex, bpf.IfaceWorkload|bpf.IfaceReady, h.lo, h.d.state.counters.MaxEntries())
	frame := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.3.0.1:1"), netip.MustParseAddrPort("10.3.0.2:80"), testpkt.SYN, nil))
	before := h.counters(0, bpf.HookEgress)
	if ret := h.run(progEgress, frame); ret != tcActOK {
		t.Errorf("verdict %d, want TC_ACT_OK", ret)
	}
	if diff := cmp.Diff(one(bpf.ReasonAcceptedByPolicy), reasonDelta(before, h.counters(0, bpf.HookEgress))); diff != "" {
		t.Errorf("slot 0 counters (-want +got):\n%s", diff)
	}
}
