package datapath

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
)

// The port choice of source NAT (sl_snat_pick) and the packets of
// source-NATed flows: ports the host's own flows hold, ranges of one port
// and at the top of the port space, settings the datapath cannot use, a
// family without an address, retransmitted SYNs, sources that claim the
// node's address, answers from elsewhere, and affinity.

const (
	a9Front   = "10.0.0.100:30080"
	a9Backend = "10.2.0.9:8080"
)

// setSNATPorts replaces the harness's SNAT range.
//
// The setting goes straight into the datapath's map: what is under test
// is the datapath's arithmetic over any range, and SNATMap.Set refuses
// ranges the host's own sockets may use (TestCheckHostPorts).
func (h *lbHarness) setSNATPorts(min, max uint16) {
	h.t.Helper()
	v := bpf.SNAT{Addr4: snatNode4.As16(), Addr6: snatNode6.As16(), PortMin: min, PortMax: max}
	if err := h.d.state.snat.Put(uint32(0), v); err != nil {
		h.t.Fatal(err)
	}
}

// snatSYN sends client's SYN to front, expects it DNATed to backend and
// source-NATed, and returns its new source.
func (h *lbHarness) snatSYN(client, front, backend string) netip.AddrPort {
	h.t.Helper()
	got := h.counted(bpf.HookIngress, tcpSeg(client, front, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
	src, dst := endpoints(h.t, got)
	want := snatNode4
	if src.Addr().Is6() {
		want = snatNode6
	}
	if src.Addr() != want || dst.String() != backend {
		h.t.Fatalf("SYN of %s left as %v -> %v, want from the node's %v to %s", client, src, dst, want, backend)
	}
	return src
}

// TestAttack9SNATHostFlowsTakePorts: a port the host's own tracked flow
// to the backend uses (approved leaving by the host interface) is not
// given to a client, whichever of the two the flow's hash picks first;
// the host's flows to another backend port or of another protocol on the
// same port take nothing. With both ports held, a client is refused,
// counted, and its SYN left as it was.
func TestAttack9SNATHostFlowsTakePorts(t *testing.T) {
	for _, held := range []uint16{snatPortMin, snatPortMax} {
		h := newSNATHarness(t)
		h.sync(snatSvc(a9Backend, nat.ProtoTCP))
		at := func(p uint16) string { return netip.AddrPortFrom(snatNode4, p).String() }
		free := uint16(snatPortMin + snatPortMax - int(held))
		h.counted(bpf.HookEgress, tcpSeg(at(held), a9Backend, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		h.counted(bpf.HookEgress, tcpSeg(at(free), "10.2.0.9:8081", testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		h.counted(bpf.HookEgress, udp(at(free), a9Backend, []byte("x")), tcActOK, bpf.ReasonAcceptedByPolicy)
		for i, client := range []string{"203.0.113.1:1000", "203.0.113.2:1000", "203.0.113.3:1000", "203.0.113.4:1000"} {
			if i == 0 {
				if got := h.snatSYN(client, a9Front, a9Backend); got.Port() != free {
					t.Errorf("host holds %d: client got port %d, want %d", held, got.Port(), free)
				}
				continue
			}
			h.untouched(client, bpf.HookIngress, tcpSeg(client, a9Front, testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedNATFailed)
			h.noNAT(nat.ProtoTCP, client, a9Front, a9Backend)
		}
	}
}

// TestAttack9SNATOnePort: a range of one port, at the top of the port
// space or not, gives it to the first client of a backend and refuses the
// next; a client of another backend gets it too; the first client's
// retransmitted SYN keeps it. A range ending at 65535 never wraps to 0 or
// below its start, and the whole port space from 1 hands out ports in it.
func TestAttack9SNATOnePort(t *testing.T) {
	for _, r := range [][2]uint16{{61000, 61000}, {65535, 65535}, {65534, 65535}, {1, 65535}} {
		h := newSNATHarness(t)
		h.setSNATPorts(r[0], r[1])
		svcs := snatSvc(a9Backend, nat.ProtoTCP)
		other := nodePort("10.2.0.10:8080", false)
		other.Frontends[0].Port = 30081
		svcs["other"] = other
		h.sync(svcs)
		span := int(r[1]) - int(r[0]) + 1
		seen := map[uint16]bool{}
		for i := 0; i < min(span, 3); i++ {
			client := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), uint16(2000+i)).String()
			p := h.snatSYN(client, a9Front, a9Backend).Port()
			if p < r[0] || p > r[1] || seen[p] {
				t.Errorf("range %d-%d: client %d got port %d (taken before: %v)", r[0], r[1], i, p, seen[p])
			}
			seen[p] = true
		}
		if span <= 2 {
			h.untouched("range full", bpf.HookIngress, tcpSeg("203.0.113.99:9", a9Front, testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedNATFailed)
		}
		p := h.snatSYN("203.0.113.10:2000", "10.0.0.100:30081", "10.2.0.10:8080").Port()
		if p < r[0] || p > r[1] {
			t.Errorf("range %d-%d: client of another backend got port %d", r[0], r[1], p)
		}
		if span == 1 && p != r[0] {
			t.Errorf("range %d-%d: client of another backend got %d, want the range's one port", r[0], r[1], p)
		}
		first := h.counted(bpf.HookIngress, tcpSeg("203.0.113.10:2000", a9Front, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		if src, _ := endpoints(t, first); !seen[src.Port()] || src.Addr() != snatNode4 {
			t.Errorf("range %d-%d: retransmitted SYN left from %v, want its flow's port", r[0], r[1], src)
		}
	}
}

// TestAttack9SNATUnusableSetting: a setting written past nat.SNATMap's
// checks (port_min 0, an empty range) refuses flows that need source NAT,
// counted, rather than handing out port 0 or a port past the range.
func TestAttack9SNATUnusableSetting(t *testing.T) {
	for _, r := range [][2]uint16{{0, 100}, {0, 0}, {61001, 61000}} {
		h := newSNATHarness(t)
		h.sync(snatSvc(a9Backend, nat.ProtoTCP))
		v := bpf.SNAT{Addr4: snatNode4.As16(), Addr6: snatNode6.As16(), PortMin: r[0], PortMax: r[1]}
		if err := h.d.state.snat.Put(uint32(0), v); err != nil {
			t.Fatal(err)
		}
		h.untouched("ports "+netip.AddrPortFrom(snatNode4, r[0]).String(), bpf.HookIngress, tcpSeg("203.0.113.5:999", a9Front, testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedNATFailed)
		h.noNAT(nat.ProtoTCP, "203.0.113.5:999", a9Front, a9Backend)
	}
}

// TestAttack9SNATFamilyWithoutAddress: a family whose SNAT address is
// unset is not source-NATed (as nat.SNAT documents): the client keeps its
// address and the flow's entry is not marked SNAT, while the other
// family's flows are.
func TestAttack9SNATFamilyWithoutAddress(t *testing.T) {
	for _, fam := range []struct {
		setting                        nat.SNAT
		client, front, backend, natted string
	}{
		{nat.SNAT{IPv4: snatNode4}, "[2001:db8::5]:4000", "[fd00::100]:30080", "[fd00:2::9]:8080", "203.0.113.5:4000"},
		{nat.SNAT{IPv6: snatNode6}, "203.0.113.5:4000", a9Front, a9Backend, "[2001:db8::5]:4000"},
	} {
		h := newSNATHarness(t)
		if err := h.d.SNAT().Set(fam.setting); err != nil {
			t.Fatal(err)
		}
		h.sync(map[string]nat.Service{"v4": nodePort(a9Backend, false), "v6": nodePort("[fd00:2::9]:8080", false)})
		got := h.counted(bpf.HookIngress, tcpSeg(fam.client, fam.front, testpkt.SYN, 1, 0), tcActOK, bpf.ReasonAcceptedByPolicy)
		wantEndpoints(t, "unset family", got, fam.client, fam.backend)
		key, _ := ctKeyOf(nat.ProtoTCP, netip.MustParseAddrPort(fam.client), netip.MustParseAddrPort(fam.backend))
		if v, ok := h.ctEntry(key); !ok || v.Type != bpf.CTNATRev || v.Flags&bpf.CTFSNAT != 0 {
			t.Errorf("unset family: entry %+v (found %v), want NAT_REV without SNAT", v, ok)
		}
		otherFront, otherBackend := "[fd00::100]:30080", "[fd00:2::9]:8080"
		if netip.MustParseAddrPort(fam.natted).Addr().Is4() {
			otherFront, otherBackend = a9Front, a9Backend
		}
		h.snatSYN(fam.natted, otherFront, otherBackend)
	}
}

// TestAttack9SNATRetransmittedSYN: a retransmitted SYN of a source-NATed
// flow keeps its port and address, after another client took the other
// port and after the SNAT setting moved to another address and range: the
// flow is the entries', not the setting's. It goes through policy again
// (a SYN is never passed as established) and adds no entry.
func TestAttack9SNATRetransmittedSYN(t *testing.T) {
	for _, fam := range snatFams {
		h := newA9Harness(t)
		h.sync(snatSvc(fam.backend, nat.ProtoTCP))
		wire := h.snatFlow(nat.ProtoTCP, fam.client, fam.front, fam.backend, false)
		c := netip.MustParseAddrPort(fam.client)
		second := netip.AddrPortFrom(c.Addr(), c.Port()+1).String()
		if p := h.snatSYN(second, fam.front, fam.backend); p == wire {
			t.Fatalf("%s: second client got the first's %v", fam.name, p)
		}
		n := h.ctCount()
		for _, step := range []string{"after the other port went", "after the setting moved"} {
			if step == "after the setting moved" {
				if err := h.d.SNAT().Set(nat.SNAT{IPv4: netip.MustParseAddr("10.0.0.101"), IPv6: netip.MustParseAddr("fd00::101"), PortMin: 62000, PortMax: 62000}); err != nil {
					t.Fatal(err)
				}
			}
			got := h.counted(bpf.HookIngress, snatPacket(nat.ProtoTCP, fam.client, fam.front, false, false), tcActOK, bpf.ReasonAcceptedByPolicy)
			wantEndpoints(t, fam.name+": retransmitted SYN "+step, got, wire.String(), fam.backend)
		}
		if got := h.ctCount(); got != n {
			t.Errorf("%s: %d entries after the retransmissions, want %d", fam.name, got, n)
		}
	}
}

// ctCount is the number of conntrack entries.
func (h *lbHarness) ctCount() int {
	h.t.Helper()
	var k bpf.CTKey
	var v bpf.CTValue
	n := 0
	it := h.d.state.ct.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// TestAttack9SNATAnswersFromElsewhere: a segment to the node's SNAT port
// from another address, or from the backend's address but another port,
// is no answer of the flow: it is not translated to the client but goes
// to policy, which allows no port of the SNAT range, and is dropped as it
// came. The backend's own answer still reaches the client.
func TestAttack9SNATAnswersFromElsewhere(t *testing.T) {
	for _, fam := range snatFams {
		h := newA9Harness(t)
		h.sync(snatSvc(fam.backend, nat.ProtoTCP))
		wire := h.snatFlow(nat.ProtoTCP, fam.client, fam.front, fam.backend, false)
		b := netip.MustParseAddrPort(fam.backend)
		for _, from := range []netip.AddrPort{
			netip.AddrPortFrom(netip.MustParseAddr(fam.router), b.Port()),
			netip.AddrPortFrom(b.Addr(), b.Port()+1),
		} {
			h.untouched(fam.name+" from "+from.String(), bpf.HookIngress, tcpSeg(from.String(), wire.String(), testpkt.ACK, 501, 101), tcActShot, bpf.ReasonDroppedByPolicy)
		}
		got := h.counted(bpf.HookIngress, tcpSeg(fam.backend, wire.String(), testpkt.ACK, 501, 101), tcActOK, bpf.ReasonAcceptedEstablished)
		wantEndpoints(t, fam.name+": backend's answer", got, fam.front, fam.client)
	}
}

// TestAttack9SNATSpoofedNode: a packet entering by the host interface
// from the node's own address is forged. Addressed to the NodePort, or a
// SYN on the flow's wire tuple (node:port -> backend), the reverse-path
// check drops it as it came.
func TestAttack9SNATSpoofedNode(t *testing.T) {
	for _, fam := range snatFams {
		h := newA9Harness(t)
		h.sync(snatSvc(fam.backend, nat.ProtoTCP))
		wire := h.snatFlow(nat.ProtoTCP, fam.client, fam.front, fam.backend, false)
		h.untouched(fam.name+": node's address to the NodePort", bpf.HookIngress, tcpSeg(wire.String(), fam.front, testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedRPF)
		h.untouched(fam.name+": SYN on the wire tuple", bpf.HookIngress, tcpSeg(wire.String(), fam.backend, testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedRPF)
	}
}

// TestAttack9SNATSpoofedNodeMidFlow: a segment that is not a SYN, entering
// by the host interface from the node's address and SNAT port to the
// backend (the flow's tuple after translation), finds the flow's reverse
// entry under its own key, in the client's direction, whose leg was
// approved entering here (for the client's packets before translation).
// It used to pass as established, untranslated, without the reverse-path
// check: anyone outside who guessed the SNAT port (a range of a few
// thousand) injected into the flow to the backend as the node. Such a
// packet only ever leaves the node, so at an ingress hook it meets the
// reverse-path check, which drops the node's own address.
func TestAttack9SNATSpoofedNodeMidFlow(t *testing.T) {
	for _, fam := range snatFams {
		h := newA9Harness(t)
		h.sync(snatSvc(fam.backend, nat.ProtoTCP))
		wire := h.snatFlow(nat.ProtoTCP, fam.client, fam.front, fam.backend, false)
		h.untouched(fam.name, bpf.HookIngress, tcpSeg(wire.String(), fam.backend, testpkt.ACK|testpkt.PSH, 101, 501), tcActShot, bpf.ReasonDroppedRPF)
	}
}

// TestAttack9SNATAffinityAfterPolicy: a source-NATed client policy
// denies records no affinity and holds no SNAT port; an allowed one's
// affinity is recorded under its own address, not the node's it left
// from.
func TestAttack9SNATAffinityAfterPolicy(t *testing.T) {
	h := newSNATHarness(t)
	h.setSNATPorts(61000, 61000)
	denied := oneBackend("10.96.0.77:80", "10.2.0.77:9999", nat.ProtoTCP)
	allowed := oneBackend("10.96.0.78:80", "10.2.0.78:8080", nat.ProtoTCP)
	for _, s := range []*nat.Service{&denied, &allowed} {
		s.Affinity = 60e9
		s.Backends[0].Local = false
	}
	h.sync(map[string]nat.Service{"denied": denied, "allowed": allowed})
	const client = "203.0.113.77:5000"
	for i := 0; i < 2; i++ {
		h.counted(bpf.HookIngress, tcpSeg(client, "10.96.0.77:80", testpkt.SYN, 1, 0), tcActShot, bpf.ReasonDroppedByPolicy)
	}
	h.noNAT(nat.ProtoTCP, client, "10.96.0.77:80", "10.2.0.77:9999")
	held, _ := ctKeyOf(nat.ProtoTCP, netip.MustParseAddrPort("10.0.0.100:61000"), netip.MustParseAddrPort("10.2.0.77:9999"))
	if v, ok := h.ctEntry(held); ok {
		t.Errorf("a denied flow holds the SNAT port: %+v", v)
	}
	var dv, av svcLookup
	dv.read(t, h, "10.96.0.77:80")
	av.read(t, h, "10.96.0.78:80")
	c := netip.MustParseAddr("203.0.113.77").As16()
	var aff bpf.Affinity
	if err := h.d.state.affinity.Lookup(&bpf.AffinityKey{SvcID: dv.svc.ID, Client: c}, &aff); err == nil {
		t.Errorf("a client policy denied has an affinity to backend %d", aff.BackendID)
	}
	wire := h.snatSYN(client, "10.96.0.78:80", "10.2.0.78:8080")
	if wire.Port() != 61000 {
		t.Errorf("allowed client got port %d, want the range's one", wire.Port())
	}
	id, _ := h.d.Services().BackendID(netip.MustParseAddrPort("10.2.0.78:8080"))
	var got []uint32
	for _, who := range [][16]byte{c, snatNode4.As16()} {
		var a bpf.Affinity
		if err := h.d.state.affinity.Lookup(&bpf.AffinityKey{SvcID: av.svc.ID, Client: who}, &a); err == nil {
			got = append(got, a.BackendID)
		} else {
			got = append(got, 0)
		}
	}
	if diff := cmp.Diff([]uint32{id, 0}, got); diff != "" {
		t.Errorf("affinity of (client, node) (-want +got):\n%s", diff)
	}
}
