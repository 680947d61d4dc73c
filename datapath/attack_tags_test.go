package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/polprog"
)

// atkUDPRule allows UDP to port as rule id.
func atkUDPRule(id uint64, port uint16) polprog.Rule {
	return polprog.Rule{ID: id, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(port)}}
}

// atkTagSets are the VLAN tag stacks a hostile workload may put in front
// of IPv4: one and two tags of every TPID the datapath knows, priority
// tags (VID 0) included, in standard and non-standard orders.
var atkTagSets = []struct {
	name string
	tags []testpkt.VLANTag
}{
	{"802.1Q VID 0", []testpkt.VLANTag{{TPID: testpkt.TPID8021Q}}},
	{"802.1Q VID 0 PCP 5", []testpkt.VLANTag{{TPID: testpkt.TPID8021Q, PCP: 5}}},
	{"802.1Q VID 100", []testpkt.VLANTag{{TPID: testpkt.TPID8021Q, VID: 100}}},
	{"802.1Q VID 4095 DEI", []testpkt.VLANTag{{TPID: testpkt.TPID8021Q, VID: 4095, DEI: true}}},
	{"802.1ad VID 0", []testpkt.VLANTag{{TPID: testpkt.TPID8021AD}}},
	{"802.1ad VID 7", []testpkt.VLANTag{{TPID: testpkt.TPID8021AD, VID: 7}}},
	{"0x9100 VID 0", []testpkt.VLANTag{{TPID: testpkt.TPIDQinQ}}},
	{"0x9100 VID 9", []testpkt.VLANTag{{TPID: testpkt.TPIDQinQ, VID: 9}}},
	{"802.1ad over 802.1Q", []testpkt.VLANTag{{TPID: testpkt.TPID8021AD, VID: 10}, {TPID: testpkt.TPID8021Q, VID: 20}}},
	{"802.1ad over 802.1Q, VID 0 both", []testpkt.VLANTag{{TPID: testpkt.TPID8021AD}, {TPID: testpkt.TPID8021Q}}},
	{"802.1Q over 802.1Q", []testpkt.VLANTag{{TPID: testpkt.TPID8021Q, VID: 1}, {TPID: testpkt.TPID8021Q, VID: 2}}},
	{"802.1Q over 802.1Q, VID 0 both", []testpkt.VLANTag{{TPID: testpkt.TPID8021Q}, {TPID: testpkt.TPID8021Q}}},
	{"0x9100 over 802.1Q", []testpkt.VLANTag{{TPID: testpkt.TPIDQinQ, VID: 4094}, {TPID: testpkt.TPID8021Q, VID: 2}}},
	{"802.1Q over 802.1ad", []testpkt.VLANTag{{TPID: testpkt.TPID8021Q, VID: 3}, {TPID: testpkt.TPID8021AD, VID: 4}}},
	{"eight tags", []testpkt.VLANTag{{TPID: testpkt.TPID8021Q, VID: 1}, {TPID: testpkt.TPID8021Q, VID: 2}, {TPID: testpkt.TPID8021Q, VID: 3},
		{TPID: testpkt.TPID8021Q, VID: 4}, {TPID: testpkt.TPID8021Q, VID: 5}, {TPID: testpkt.TPID8021Q, VID: 6},
		{TPID: testpkt.TPID8021Q, VID: 7}, {TPID: testpkt.TPID8021Q, VID: 8}}},
}

// atkEncapsulations are frames that hide an IPv4 packet (ip, from its
// header on) behind an EtherType other than IPv4, or that carry an
// EtherType nobody listed: each must be dropped as DROPPED_ETHERTYPE.
func atkEncapsulations(ip []byte) []struct {
	name string
	p    testpkt.Packet
} {
	mpls := append([]byte{0x00, 0x06, 0x41, 0x40}, ip...) // label 100, bottom of stack, TTL 64
	twoLabels := append([]byte{0x00, 0x06, 0x40, 0x40, 0x00, 0x01, 0x01, 0x40}, ip...)
	pppoe := make([]byte, 8, 8+len(ip))
	pppoe[0], pppoe[1] = 0x11, 0x00 // version 1, type 1, session data
	binary.BigEndian.PutUint16(pppoe[2:], 0x1234)
	binary.BigEndian.PutUint16(pppoe[4:], uint16(2+len(ip)))
	binary.BigEndian.PutUint16(pppoe[6:], 0x0021) // PPP: IPv4
	pppoe = append(pppoe, ip...)
	raw8023 := func(length uint16, payload []byte) testpkt.Packet {
		return testpkt.EthFrame(length, payload)
	}
	return []struct {
		name string
		p    testpkt.Packet
	}{
		{"MPLS unicast", testpkt.EthFrame(testpkt.EtherTypeMPLSUnicast, mpls)},
		{"MPLS unicast, two labels", testpkt.EthFrame(testpkt.EtherTypeMPLSUnicast, twoLabels)},
		{"MPLS multicast", testpkt.EthFrame(testpkt.EtherTypeMPLSMulticast, mpls)},
		{"PPPoE session", testpkt.EthFrame(testpkt.EtherTypePPPoESession, pppoe)},
		{"PPPoE discovery", testpkt.EthFrame(testpkt.EtherTypePPPoEDiscovery, pppoe)},
		{"LLC/SNAP carrying IPv4", testpkt.LLCSNAPFrame(testpkt.EtherTypeIPv4, ip)},
		{"LLC/SNAP carrying ARP", testpkt.LLCSNAPFrame(testpkt.EtherTypeARP, make([]byte, testpkt.ARPv4Len))},
		{"802.3 length then raw IPv4", raw8023(uint16(len(ip)), ip)},
		{"802.3 length 0", raw8023(0, ip)},
		{"802.3 length 1500", raw8023(testpkt.MaxLength8023, ip)},
		{"EtherType 0x0600", testpkt.EthFrame(testpkt.EtherTypeMin, ip)},
		{"EtherType 0x0801", testpkt.EthFrame(0x0801, ip)},
		{"EtherType 0x88b5 (experimental)", testpkt.EthFrame(0x88b5, ip)},
		{"EtherType 0x8137 (IPX)", testpkt.EthFrame(0x8137, ip)},
		{"EtherType 0x894f (NSH)", testpkt.EthFrame(0x894f, ip)},
		{"EtherType 0x6558 (transparent bridging)", testpkt.EthFrame(0x6558, ip)},
		{"EtherType 0xffff", testpkt.EthFrame(0xffff, ip)},
	}
}

// TestAttackTagsAndEncapsulations runs frames a hostile workload (or host)
// can send at both TC hooks of a workload and of a host interface: VLAN
// tags in front of IPv4 that policy allows and denies (even of a flow
// already established) are DROPPED_VLAN, IPv4 hidden in MPLS, PPPoE or
// LLC/SNAP and unknown EtherTypes are DROPPED_ETHERTYPE, ARP passes as
// NON_IP_PASSED unless DropNonIP drops it; none reaches policy (no rule
// hit moves) or conntrack (the flow's entry is untouched).
func TestAttackTagsAndEncapsulations(t *testing.T) {
	e := atkNewEnv(t, "atkpod", "atkhif")
	pod := netip.MustParseAddr("10.20.0.1")
	peer := netip.MustParseAddr("10.20.0.2")
	e.route(atkLocal(pod, e.idx("atkpod")))
	podCfg := Interface{Kind: Workload, Egress: atkRules(11, atkUDPRule(10, 5300)), Ingress: atkRules(21, atkUDPRule(20, 5300))}
	hifCfg := Interface{Kind: Host, Ingress: atkHostRules(atkRules(31, atkUDPRule(30, 5300))), Egress: atkHostRules(atkRules(41, atkUDPRule(40, 5300)))}
	e.set("atkpod", podCfg)
	e.set("atkhif", hifCfg)
	ruleIDs := []uint64{10, 11, 20, 21, 30, 31, 40, 41}

	sides := []struct {
		iface    string
		hook     bpf.Hook
		src, dst netip.Addr
		sport    uint16
	}{
		{"atkpod", bpf.HookIngress, pod, peer, 40001},
		{"atkpod", bpf.HookEgress, peer, pod, 40002},
		{"atkhif", bpf.HookIngress, peer, pod, 40003},
		{"atkhif", bpf.HookEgress, pod, peer, 40004},
	}
	for _, s := range sides {
		side := fmt.Sprintf("%s %s", s.iface, s.hook)
		udp := func(dport uint16) testpkt.Packet {
			return testpkt.UDPv4(netip.AddrPortFrom(s.src, s.sport), netip.AddrPortFrom(s.dst, dport), []byte("hidden from policy"))
		}
		allowed := testpkt.MustBytes(t, udp(5300))
		if !e.expect(side+": untagged allowed datagram", s.iface, s.hook, allowed, bpf.ReasonAcceptedByPolicy) {
			continue
		}
		key, _ := ctKeyOf(testpkt.ProtoUDP, netip.AddrPortFrom(s.src, s.sport), netip.AddrPortFrom(s.dst, 5300))
		entryBefore, ok := e.ctEntry(key)
		if !ok {
			t.Fatalf("%s: no conntrack entry for the allowed datagram", side)
		}
		hitsBefore := map[uint64]uint64{}
		for _, id := range ruleIDs {
			hitsBefore[id] = e.hits(id)
		}

		for _, dport := range []uint16{5300, 5301} {
			for _, ts := range atkTagSets {
				p := udp(dport)
				p.Eth.VLANs = ts.tags
				e.expect(fmt.Sprintf("%s: %s, UDP to %d", side, ts.name, dport), s.iface, s.hook, testpkt.MustBytes(t, p), bpf.ReasonDroppedVLAN)
			}
			ip := testpkt.MustBytes(t, udp(dport))[testpkt.EthLen:]
			for _, enc := range atkEncapsulations(ip) {
				e.expect(fmt.Sprintf("%s: %s, UDP to %d", side, enc.name, dport), s.iface, s.hook, testpkt.MustBytes(t, enc.p), bpf.ReasonDroppedEtherType)
			}
		}
		arp, err := testpkt.ARPRequest(testpkt.DefaultSrcMAC, s.src, s.dst)
		if err != nil {
			t.Fatal(err)
		}
		e.expect(side+": ARP request", s.iface, s.hook, testpkt.MustBytes(t, arp), bpf.ReasonNonIPPassed)
		taggedARP := arp.Clone()
		taggedARP.Eth.VLANs = []testpkt.VLANTag{{TPID: testpkt.TPID8021Q}}
		e.expect(side+": ARP behind a priority tag", s.iface, s.hook, testpkt.MustBytes(t, taggedARP), bpf.ReasonDroppedVLAN)

		for _, id := range ruleIDs {
			if got := e.hits(id); got != hitsBefore[id] {
				t.Errorf("%s: rule %d hit %d times by frames that must never reach policy", side, id, got-hitsBefore[id])
			}
		}
		entryAfter, _ := e.ctEntry(key)
		if diff := cmp.Diff(entryBefore, entryAfter, ctCmp); diff != "" {
			t.Errorf("%s: tagged and encapsulated frames changed the flow's entry (-before +after):\n%s", side, diff)
		}
		e.expect(side+": the flow itself still passes", s.iface, s.hook, allowed, bpf.ReasonAcceptedEstablished)
	}

	podCfg.DropNonIP, hifCfg.DropNonIP = true, true
	e.set("atkpod", podCfg)
	e.set("atkhif", hifCfg)
	for _, s := range sides {
		side := fmt.Sprintf("%s %s, DropNonIP", s.iface, s.hook)
		arp, err := testpkt.ARPRequest(testpkt.DefaultSrcMAC, s.src, s.dst)
		if err != nil {
			t.Fatal(err)
		}
		e.expect(side+": ARP request", s.iface, s.hook, testpkt.MustBytes(t, arp), bpf.ReasonDroppedNonIP)
		lldp := testpkt.EthFrame(testpkt.EtherTypeLLDP, []byte{0x02, 0x07, 0x04, 0x02, 0, 0, 0, 0, 1, 0x00, 0x00})
		e.expect(side+": LLDP", s.iface, s.hook, testpkt.MustBytes(t, lldp), bpf.ReasonDroppedNonIP)
		p := testpkt.UDPv4(netip.AddrPortFrom(s.src, s.sport), netip.AddrPortFrom(s.dst, 5300), nil)
		p.Eth.VLANs = []testpkt.VLANTag{{TPID: testpkt.TPID8021Q}}
		e.expect(side+": priority-tagged IPv4", s.iface, s.hook, testpkt.MustBytes(t, p), bpf.ReasonDroppedVLAN)
	}
}

// atkAttachTCX routes a workload to its host-side interface and attaches
// both TC programs there with TCX; the links are closed in tb.Cleanup.
func atkAttachTCX(tb testing.TB, node *topo.Node, d *Datapath, w *topo.Workload) {
	tb.Helper()
	if err := d.Routes().Put(atkLocal(w.Addr, uint32(w.HostIfindex))); err != nil {
		tb.Fatal(err)
	}
	for _, a := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{{d.TCIngress(), ebpf.AttachTCXIngress}, {d.TCEgress(), ebpf.AttachTCXEgress}} {
		var l link.Link
		err := node.NS.Do(func() (err error) {
			l, err = link.AttachTCX(link.TCXOptions{Interface: w.HostIfindex, Program: a.prog, Attach: a.typ})
			return err
		})
		if err != nil {
			tb.Fatalf("attach to %s: %v", w.HostIfname, err)
		}
		tb.Cleanup(func() { l.Close() })
	}
}

// atkRawSend sends whole Ethernet frames out of the workload's eth0 with
// an AF_PACKET socket, as a process with CAP_NET_RAW in the workload can.
func atkRawSend(tb testing.TB, w *topo.Workload, frames [][]byte) {
	tb.Helper()
	err := w.NS.Do(func() error {
		eth0, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		for i, f := range frames {
			sa := &unix.SockaddrLinklayer{Ifindex: eth0.Index, Halen: 6}
			copy(sa.Addr[:], f[0:6])
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return fmt.Errorf("send frame %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// atkMACs returns the MAC of the workload's eth0 and of its host side.
func atkMACs(tb testing.TB, node *topo.Node, w *topo.Workload) (eth0, host net.HardwareAddr) {
	tb.Helper()
	l, err := w.NS.Handle.LinkByName("eth0")
	if err != nil {
		tb.Fatal(err)
	}
	h, err := node.NS.Handle.LinkByName(w.HostIfname)
	if err != nil {
		tb.Fatal(err)
	}
	return l.Attrs().HardwareAddr, h.Attrs().HardwareAddr
}

// atkWaitCounter polls until the counter of reason at one endpoint
// direction reaches want or a deadline passes, and returns the last value:
// frames are processed after sendto returns.
func atkWaitCounter(tb testing.TB, d *Datapath, ifindex int, egress bool, reason bpf.Reason, want uint64) uint64 {
	tb.Helper()
	var got uint64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := d.Counters(ifindex)
		if err != nil {
			tb.Fatal(err)
		}
		got = c.Ingress[reason]
		if egress {
			got = c.Egress[reason]
		}
		if got >= want || time.Now().After(deadline) {
			return got
		}
	}
}

// TestAttackTaggedFramesRealTraffic sends tagged frames from inside a
// workload with an AF_PACKET socket on its eth0. The receive path of the
// host side moves the outer tag into the skb before TC ingress runs, so
// this exercises skb->vlan_present: every tagged frame, priority tags
// (which the stack would otherwise strip and deliver) included, must be
// counted DROPPED_VLAN at the host side's TC ingress and none may reach a
// listener in the other workload, while the same datagram untagged does,
// and ARP keeps working for the TCP connection that follows.
func TestAttackTaggedFramesRealTraffic(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := testutil.NewNode(t)
	att, err := node.AddWorkload("att", netip.MustParseAddr("10.77.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	vic, err := node.AddWorkload("vic", netip.MustParseAddr("10.77.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetInterface(att.HostIfindex, Interface{Kind: Workload, Egress: atkAllowAll(1), Ingress: atkAllowAll(3)}); err != nil {
		t.Fatal(err)
	}
	vicIn := atkRules(12, atkUDPRule(10, 5300), polprog.Rule{ID: 11, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}})
	if err := d.SetInterface(vic.HostIfindex, Interface{Kind: Workload, Ingress: vicIn, Egress: atkAllowAll(20)}); err != nil {
		t.Fatal(err)
	}
	atkAttachTCX(t, node, d, att)
	atkAttachTCX(t, node, d, vic)

	udpConn := testutil.NetNS{NS: vic.NS}
	conn := udpConn.ListenPacket(t, "udp4", "10.77.0.2:5300")

	attMAC, hostMAC := atkMACs(t, node, att)
	datagram := func(payload string, tags []testpkt.VLANTag) []byte {
		p := testpkt.UDPv4(netip.MustParseAddrPort("10.77.0.1:40000"), netip.MustParseAddrPort("10.77.0.2:5300"), []byte(payload))
		p.Eth.Dst, p.Eth.Src = bytes.Clone(hostMAC), bytes.Clone(attMAC)
		p.Eth.VLANs = tags
		return testpkt.MustBytes(t, p)
	}
	var frames [][]byte
	for _, ts := range atkTagSets {
		frames = append(frames, datagram("tagged "+ts.name, ts.tags))
	}
	before, err := d.Counters(att.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	atkRawSend(t, att, frames)
	want := before.Egress[bpf.ReasonDroppedVLAN] + uint64(len(frames))
	if got := atkWaitCounter(t, d, att.HostIfindex, true, bpf.ReasonDroppedVLAN, want); got != want {
		t.Errorf("DROPPED_VLAN at the attacker's host side: %d more, want %d", got-before.Egress[bpf.ReasonDroppedVLAN], len(frames))
	}
	// The control: the same datagram untagged, through the same socket.
	atkRawSend(t, att, [][]byte{datagram("untagged", nil)})
	var got []string
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(3 * time.Second); ; {
		conn.SetReadDeadline(deadline)
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
		if string(buf[:n]) == "untagged" {
			// Give any tagged straggler a moment to show up too.
			deadline = time.Now().Add(200 * time.Millisecond)
		}
	}
	if diff := cmp.Diff([]string{"untagged"}, got); diff != "" {
		t.Errorf("datagrams the victim received (-want +got):\n%s", diff)
	}
	after, err := d.Counters(att.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if n := after.Egress[bpf.ReasonAcceptedByPolicy] - before.Egress[bpf.ReasonAcceptedByPolicy]; n != 1 {
		t.Errorf("attacker's egress accepted %d datagrams by policy, want 1 (the untagged one); counters %v", n, reasonDelta(before.Egress, after.Egress))
	}

	// ARP still works: the node resolves the victim, and a TCP
	// connection completes.
	l := (&testutil.NetNS{NS: vic.NS}).Listen(t, "tcp4", "10.77.0.2:80")
	go echoOnce(l)
	err = att.NS.Do(func() error {
		c, err := net.DialTimeout("tcp4", "10.77.0.2:80", 5*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Errorf("TCP connect after the tagged frames: %v", err)
	}
	vc, err := d.Counters(vic.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if vc.Ingress[bpf.ReasonNonIPPassed] == 0 || vc.Egress[bpf.ReasonNonIPPassed] == 0 {
		t.Errorf("victim's ARP: counters %v / %v, want ARP passed both ways", vc.Ingress.NonZero(), vc.Egress.NonZero())
	}
}
