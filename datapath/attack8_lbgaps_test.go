package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
)

// Findings of attack8 whose fixes lie outside lb.h, rewrite.h and
// reject.h (in datapath.c or related.h): each test states the outcome the
// fix must give, and skips until then.

// TestAttack8RefusalCrossesEgress: at a host interface sl_refuse sends its
// answer with bpf_redirect to the interface's egress, so the answer meets
// that interface's TC egress hook as a new flow from the frontend to the
// client's port. There a policy that does not allow that port (any
// default deny) used to drop the RST, and one that does let sl_tc_allow
// track it as a normal flow under the client's tuple to the frontend,
// whose packets then skipped the service stage even after the service
// had backends again. The answer carries SL_MARK_REFUSAL now, and the
// egress hook passes it as it is, untracked, and clears the mark.
func TestAttack8RefusalCrossesEgress(t *testing.T) {
	h := newLBHarness(t)
	// lo as a host interface: its clients are outside the node.
	for _, p := range []string{"0.0.0.0/0", "::/0"} {
		if err := h.d.routes.Delete(netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	h.setIface(loIfindex, bpf.IfaceHost|bpf.IfaceReady|bpf.IfaceEnforceIPv6, h.lo, loCounterSlot)
	h.fourRefusing()
	const front, backend = "10.96.0.3:80", "10.1.0.3:8080"
	f := netip.MustParseAddrPort(front)
	// Port 40001: the egress policy does not allow it; port 40002: it
	// does.
	h.putPolicy(h.lo.egress, allowDstPorts(append(append([]uint16(nil), lbPorts...), 40002)...))
	// run runs p on frame with skb->mark set to mark, and returns the
	// verdict, the packet and the mark as the program left them.
	run := func(p prog, frame []byte, mark uint32) (uint32, []byte, skbCtx) {
		t.Helper()
		out := make([]byte, 2048)
		var ctxOut [48]uint32 // struct __sk_buff, whole
		ret, err := h.program(p).Run(&ebpf.RunOptions{Data: frame, DataOut: out,
			Context: skbCtx{Mark: mark, Ifindex: loIfindex, IngressIfindex: loIfindex}, ContextOut: &ctxOut})
		if err != nil {
			t.Fatal(err)
		}
		return ret, out, skbCtx{Mark: ctxOut[2]}
	}
	for _, client := range []string{"10.0.0.7:40001", "10.0.0.7:40002"} {
		before := h.counters(loIfindex, bpf.HookEgress)
		ret, rst, ctx := run(progIngress, testpkt.MustBytes(t, tcpSeg(client, front, testpkt.SYN, 1000, 0)), 0)
		if ret != tcActRedirect || ctx.Mark == 0 {
			t.Fatalf("%s: refusal verdict %d, mark %#x; want a redirect with a mark", client, ret, ctx.Mark)
		}
		ret, _, ctx = run(progEgress, rst, ctx.Mark)
		if ret != tcActOK || ctx.Mark != 0 {
			t.Errorf("%s: the RST at the egress hook: verdict %d, mark %#x after; want passed, the mark cleared", client, ret, ctx.Mark)
		}
		want := map[bpf.Reason]uint64{bpf.ReasonRefusalPassed: 1}
		if diff := cmp.Diff(want, reasonDelta(before, h.counters(loIfindex, bpf.HookEgress))); diff != "" {
			t.Errorf("%s: egress counters (-want +got):\n%s", client, diff)
		}
		key, _ := ctKeyOf(nat.ProtoTCP, netip.MustParseAddrPort(client), f)
		if v, ok := h.ctEntry(key); ok {
			t.Errorf("%s: the RST left a %v entry under the client's tuple to the frontend", client, v.Type)
		}
	}
	h.sync(map[string]nat.Service{"tcp": oneBackend(front, backend, nat.ProtoTCP)})
	h.setRoute(workloadRoute("10.1.0.0/16", 99))
	for _, client := range []string{"10.0.0.7:40001", "10.0.0.7:40002"} {
		got := h.counted(bpf.HookIngress, tcpSeg(client, front, testpkt.SYN, 2000, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		wantEndpoints(t, client+"'s next SYN once the service has a backend", got, client, backend)
	}
}

// TestAttack8ErrorsOfNATFlows: an ICMP error related to a NAT flow
// passes as related but is not translated. An error about the client's
// translated packet (a router's "fragmentation needed" between the node
// and the backend, or the backend's port unreachable) reaches the client
// quoting client -> backend, which matches none of its sockets (it sent to
// the frontend): path MTU discovery of services fails and UDP clients time
// out instead of seeing the refusal, and the backend's address leaks. An
// error from the client about the backend's translated reply goes to the
// frontend's address untranslated instead of to the backend.
func TestAttack8ErrorsOfNATFlows(t *testing.T) {
	h := newLBHarness(t)
	const client, front, backend = "10.0.0.100:41000", "10.96.0.100:53", "10.1.0.100:5353"
	h.sync(map[string]nat.Service{"dns": oneBackend(front, backend, nat.ProtoUDP)})
	h.counted(bpf.HookIngress, udp(client, front, []byte("q")), tcActOK, bpf.ReasonAcceptedByPolicy)
	h.counted(bpf.HookEgress, udp(client, backend, []byte("q")), tcActOK, bpf.ReasonAcceptedByPolicy)
	c, f, b := netip.MustParseAddrPort(client), netip.MustParseAddrPort(front), netip.MustParseAddrPort(backend)
	sent := testpkt.MustBytes(t, udp(client, backend, []byte("q")))
	got := h.counted(bpf.HookIngress, testpkt.ICMPv4Error(b.Addr(), c.Addr(), 3, 3, testpkt.Quote(sent)), tcActOK, bpf.ReasonAcceptedRelated)
	if got.IPv4.Src != f.Addr() || got.ICMPv4.BadChecksum {
		t.Errorf("the backend's port unreachable reaches the client from %v (ICMP checksum bad %v), want from the frontend %v", got.IPv4.Src, got.ICMPv4.BadChecksum, f.Addr())
	}
	// The quote is the IPv4 header and 8 bytes of UDP: too short for
	// Parse (the header's total length counts the payload), so its
	// destination and port are read where they sit.
	q := got.Payload
	if len(q) < 28 || netip.AddrFrom4([4]byte(q[16:20])) != f.Addr() || binary.BigEndian.Uint16(q[22:24]) != f.Port() ||
		testpkt.Checksum(q[:20]) != 0 {
		t.Errorf("the error's quote %x does not name the frontend %v the client sent to, with a valid header checksum", q, f)
	}
}

// TestAttack8FragmentedDatagramToFrontend: where fragments pass, a
// datagram's first fragment to a frontend used to be DNATed to the
// backend while its later fragments, which carry no ports, passed to the
// frontend's address untranslated: the backend never reassembled the
// datagram. Until fragments are tracked and translated like their first,
// a first fragment to a frontend is dropped, counted.
func TestAttack8FragmentedDatagramToFrontend(t *testing.T) {
	h := newLBHarness(t)
	h.setIface(loIfindex, bpf.IfaceWorkload|bpf.IfaceReady|bpf.IfaceEnforceIPv6|bpf.IfacePassFragments, h.lo, loCounterSlot)
	h.sync(map[string]nat.Service{"dns": oneBackend("10.96.0.110:53", "10.1.0.110:5353", nat.ProtoUDP)})
	first := udp("10.0.0.110:33000", "10.96.0.110:53", make([]byte, 64))
	first.IPv4.MoreFragments, first.IPv4.ID = true, 77
	h.untouched("first fragment", bpf.HookIngress, first, tcActShot, bpf.ReasonDroppedFragment)
	later := udp("10.0.0.110:33000", "10.96.0.110:53", nil)
	later.UDP = nil
	later.IPv4.Protocol, later.IPv4.ID, later.IPv4.FragOffset, later.Payload = testpkt.ProtoUDP, 77, 9, make([]byte, 16)
	// A later fragment has no ports to find the frontend by: it passes,
	// to the frontend's address, where it completes no datagram since its
	// first fragment never passed.
	h.untouched("later fragment", bpf.HookIngress, later, tcActOK, bpf.ReasonFragmentPassed)
}

// TestAttack8AffinityBeforePolicy: sl_lb_choose used to record a
// client's affinity before policy decided the packet, so a client policy
// denies could fill the affinity LRU from many source addresses and evict
// other clients' affinities. The allow continuation records it now.
func TestAttack8AffinityBeforePolicy(t *testing.T) {
	h := newLBHarness(t)
	svc := oneBackend("10.96.0.120:80", "10.1.0.120:9999", nat.ProtoTCP)
	svc.Affinity = 60e9
	h.sync(map[string]nat.Service{"denied": svc})
	h.counted(bpf.HookIngress, tcpSeg("10.0.0.120:40000", "10.96.0.120:80", testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedByPolicy)
	var v svcLookup
	v.read(t, h, "10.96.0.120:80")
	key := bpf.AffinityKey{SvcID: v.svc.ID, Client: netip.MustParseAddr("10.0.0.120").As16()}
	var aff bpf.Affinity
	if err := h.d.state.affinity.Lookup(&key, &aff); err == nil {
		t.Errorf("a client policy denied has an affinity to backend %d", aff.BackendID)
	}
}
