package datapath

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// lbNet is an lbHarness with four interfaces in a network namespace of
// the test's: the client's workload (lbc), the backend's (lbb), an
// attacker's (lbx, whose policy allows ports 80 and 8080 only), and a
// host interface (lbh). Routes name each workload's address at its
// interface and nothing else.
type lbNet struct {
	*lbHarness
	ns  *testutil.NetNS
	ifx map[string]uint32
}

func newLBNet(t *testing.T) *lbNet {
	h := newLBHarness(t)
	n := &lbNet{lbHarness: h, ns: testutil.NewNetNS(t), ifx: map[string]uint32{}}
	allow := h.setPolicy(allowDstPorts(lbPorts...))
	strict := h.setPolicy(allowDstPorts(80, 8080))
	for i, name := range []string{"lbc", "lbb", "lbx", "lbh"} {
		if err := n.ns.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			t.Fatal(err)
		}
		l, err := n.ns.Handle.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		n.ifx[name] = uint32(l.Attrs().Index)
		flags, slots := bpf.IfaceWorkload|bpf.IfaceReady|bpf.IfaceEnforceIPv6, stubSlots{allow, allow}
		if name == "lbh" {
			flags = bpf.IfaceHost | bpf.IfaceReady | bpf.IfaceEnforceIPv6
		}
		if name == "lbx" {
			slots = stubSlots{strict, strict}
		}
		h.setIface(n.ifx[name], flags, slots, uint32(2+i))
	}
	var rs []routes.Route
	for p, name := range map[string]string{
		"10.8.1.1/32": "lbc", "10.8.2.1/32": "lbb", "10.8.3.1/32": "lbx",
		"fd08:1::1/128": "lbc", "fd08:2::1/128": "lbb", "fd08:3::1/128": "lbx",
	} {
		rs = append(rs, workloadRoute(p, n.ifx[name]))
	}
	if _, err := h.d.Routes().Sync(rs); err != nil {
		t.Fatal(err)
	}
	return n
}

// at runs p at an interface's hook, checks the verdict and the one
// reason that hook counted, and returns the frame as it left.
func (n *lbNet) at(what, iface string, hook bpf.Hook, p testpkt.Packet, verdict uint32, reason bpf.Reason) []byte {
	n.t.Helper()
	frame := testpkt.MustBytes(n.t, p)
	ifindex := n.ifx[iface]
	before := n.counters(ifindex, hook)
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+512), Context: skbCtx{Ifindex: ifindex, IngressIfindex: ifindex}}
	var ret uint32
	if err := n.ns.Do(func() (err error) { ret, err = n.program(hookProg(hook)).Run(opts); return }); err != nil {
		n.t.Fatalf("%s: run: %v", what, err)
	}
	delta := reasonDelta(before, n.counters(ifindex, hook))
	if ret != verdict {
		n.t.Errorf("%s at %s: verdict %d, want %d (counted %v)", what, iface, ret, verdict, delta)
	}
	if diff := cmp.Diff(map[bpf.Reason]uint64{reason: 1}, delta); diff != "" {
		n.t.Errorf("%s at %s: counters (-want +got):\n%s", what, iface, diff)
	}
	return opts.DataOut
}

// same is at for a packet that must leave the program unchanged.
func (n *lbNet) same(what, iface string, hook bpf.Hook, p testpkt.Packet, verdict uint32, reason bpf.Reason) {
	n.t.Helper()
	if out := n.at(what, iface, hook, p, verdict, reason); !bytes.Equal(out, testpkt.MustBytes(n.t, p)) {
		n.t.Errorf("%s at %s: the program changed the frame", what, iface)
	}
}

// TestAttack8SpoofNATFlow opens a NAT flow between the client's and the
// backend's interfaces, in IPv4 and IPv6, then forges its packets from
// elsewhere: the backend's reply, the frontend's translated reply, the
// client's packets to the backend and to the frontend from the
// attacker's interface; the client's packet replayed at the backend's
// interface and the backend's at the client's; the client's and the
// frontend's packets from outside the node; ICMP errors quoting the flow
// from the attacker; a refusal asked for in a victim's name. Every forgery
// is dropped as the reverse-path check or policy says, unchanged and
// untranslated, and the flow still works afterwards.
func TestAttack8SpoofNATFlow(t *testing.T) {
	for _, fam := range []struct{ name, c, f, b, x, d, none string }{
		{"ipv4", "10.8.1.1:40000", "10.96.8.1:80", "10.8.2.1:8080", "10.8.3.1", "10.8.1.2", "10.96.8.2:53"},
		{"ipv6", "[fd08:1::1]:40000", "[fd00:96:8::1]:80", "[fd08:2::1]:8080", "fd08:3::1", "fd08:1::2", "[fd00:96:8::2]:53"},
	} {
		n := newLBNet(t)
		none := netip.MustParseAddrPort(fam.none)
		n.sync(map[string]nat.Service{
			"web":  oneBackend(fam.f, fam.b, nat.ProtoTCP),
			"none": {Frontends: []nat.Frontend{{Addr: none.Addr(), Port: none.Port(), Protocol: nat.ProtoUDP}}},
		})
		in, out := bpf.HookIngress, bpf.HookEgress
		seg := func(src, dst string, fl testpkt.TCPFlags) testpkt.Packet { return tcpSeg(src, dst, fl, 100, 200) }
		wantAt := func(step string, frame []byte, src, dst string) {
			t.Helper()
			wantEndpoints(t, fam.name+" "+step, parsed(t, frame), src, dst)
		}
		wantAt("SYN", n.at("SYN", "lbc", in, seg(fam.c, fam.f, testpkt.SYN), tcActOK, bpf.ReasonAcceptedByPolicy), fam.c, fam.b)
		n.at("SYN to the backend", "lbb", out, seg(fam.c, fam.b, testpkt.SYN), tcActOK, bpf.ReasonAcceptedByPolicy)
		wantAt("SYN-ACK", n.at("SYN-ACK", "lbb", in, seg(fam.b, fam.c, testpkt.SYN|testpkt.ACK), tcActOK, bpf.ReasonAcceptedEstablished), fam.f, fam.c)
		n.at("SYN-ACK to the client", "lbc", out, seg(fam.f, fam.c, testpkt.SYN|testpkt.ACK), tcActOK, bpf.ReasonAcceptedEstablished)

		x := netip.AddrPortFrom(netip.MustParseAddr(fam.x), 40000).String()
		d := netip.AddrPortFrom(netip.MustParseAddr(fam.d), 40000).String()
		for _, fl := range []testpkt.TCPFlags{testpkt.ACK, testpkt.SYN, testpkt.RST} {
			n.same("backend's reply forged", "lbx", in, seg(fam.b, fam.c, fl), tcActShot, bpf.ReasonDroppedRPF)
			n.same("frontend's reply forged", "lbx", in, seg(fam.f, fam.c, fl), tcActShot, bpf.ReasonDroppedRPF)
			n.same("client's tuple to the backend", "lbx", in, seg(fam.c, fam.b, fl), tcActShot, bpf.ReasonDroppedRPF)
			n.same("client's tuple to the frontend", "lbx", in, seg(fam.c, fam.f, fl), tcActShot, bpf.ReasonDroppedRPF)
			n.same("client's packet at the backend's interface", "lbb", in, seg(fam.c, fam.f, fl), tcActShot, bpf.ReasonDroppedRPF)
			n.same("backend's reply at the client's interface", "lbc", in, seg(fam.b, fam.c, fl), tcActShot, bpf.ReasonDroppedRPF)
			n.same("frontend's reply at the client's interface", "lbc", in, seg(fam.f, fam.c, fl), tcActShot, bpf.ReasonDroppedRPF)
			n.same("client's packet from outside", "lbh", in, seg(fam.c, fam.f, fl), tcActShot, bpf.ReasonDroppedRPF)
			n.same("backend's reply from outside", "lbh", in, seg(fam.b, fam.c, fl), tcActShot, bpf.ReasonDroppedRPF)
			// The frontend is no address of the node's: its reply from
			// outside is policed as what it is, to port 40000.
			n.same("frontend's reply from outside", "lbh", in, seg(fam.f, fam.c, fl), tcActShot, bpf.ReasonDroppedByPolicy)
			// The backend may speak as the frontend in its own flow
			// (that is what reverse NAT makes of its packets), to no one
			// else.
			n.same("backend as the frontend to another client", "lbb", in, seg(fam.f, d, fl), tcActShot, bpf.ReasonDroppedRPF)
		}
		n.same("backend as the frontend in its flow", "lbb", in, seg(fam.f, fam.c, testpkt.ACK), tcActOK, bpf.ReasonAcceptedEstablished)
		// The attacker's own packet with the flow's ports is its own flow.
		wantAt("attacker's own SYN", n.at("attacker's own SYN", "lbx", in, seg(x, fam.f, testpkt.SYN), tcActOK, bpf.ReasonAcceptedByPolicy), x, fam.b)

		// ICMP errors from the attacker to the client quoting the flow's
		// packets, before and after DNAT: not related here, so policed,
		// and the attacker's policy allows no ICMP.
		for _, quoted := range []string{fam.f, fam.b} {
			frame := testpkt.MustBytes(t, seg(fam.c, quoted, testpkt.ACK))
			c, xa := netip.MustParseAddrPort(fam.c).Addr(), netip.MustParseAddr(fam.x)
			e := testpkt.ICMPv4Error(xa, c, 3, 4, testpkt.Quote(frame))
			if fam.name == "ipv6" {
				e = testpkt.ICMPv6TooBig(xa, c, 1280, testpkt.QuoteIPv6(frame))
			}
			n.same("error quoting the flow to "+quoted, "lbx", in, e, tcActShot, bpf.ReasonDroppedByPolicy)
		}

		// A refusal asked for in a victim's name is never built: the
		// reverse-path check comes first. In its own name the attacker is
		// answered.
		n.same("refusal for the client", "lbx", in, udp(fam.c, fam.none, []byte("q")), tcActShot, bpf.ReasonDroppedRPF)
		n.same("refusal for the backend", "lbx", in, seg(fam.b, fam.none, testpkt.SYN), tcActShot, bpf.ReasonDroppedRPF)
		n.at("refusal for the attacker", "lbx", in, udp(x, fam.none, []byte("q")), tcActRedirect, bpf.ReasonRejectedNoBackend)

		wantAt("client's ACK", n.at("client's ACK", "lbc", in, seg(fam.c, fam.f, testpkt.ACK), tcActOK, bpf.ReasonAcceptedEstablished), fam.c, fam.b)
		wantAt("backend's ACK", n.at("backend's ACK", "lbb", in, seg(fam.b, fam.c, testpkt.ACK), tcActOK, bpf.ReasonAcceptedEstablished), fam.f, fam.c)
	}
}
