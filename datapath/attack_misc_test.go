package datapath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
)

// atkPorted is an IPv4 packet of protocol proto whose L4 part is l4Len
// bytes, the first four of them (when there are four) the source and
// destination ports, as in TCP and UDP.
func atkPorted(tb testing.TB, proto uint8, src, dst netip.AddrPort, l4Len int) []byte {
	l4 := make([]byte, l4Len)
	if l4Len >= 4 {
		binary.BigEndian.PutUint16(l4[0:], src.Port())
		binary.BigEndian.PutUint16(l4[2:], dst.Port())
	}
	p := testpkt.Packet{Eth: testpkt.EthFrame(testpkt.EtherTypeIPv4, nil).Eth,
		IPv4: &testpkt.IPv4{Src: src.Addr(), Dst: dst.Addr(), Protocol: proto, TTL: 64}, Payload: l4}
	return testpkt.MustBytes(tb, p)
}

// TestAttackPortedProtocolsMeetTheirPortRules runs SCTP and UDP-Lite
// packets against policies whose rules match those protocols' ports, as
// polprog accepts them: a deny of one port before an allow of the rest,
// and an allow of one port before the tier's deny. Each packet must get
// the verdict and deciding rule polprog.Evaluate gives for its ports.
func TestAttackPortedProtocolsMeetTheirPortRules(t *testing.T) {
	e := atkNewEnv(t, "atkpod")
	pod := netip.AddrPortFrom(netip.MustParseAddr("10.21.0.1"), 40000)
	e.route(atkLocal(pod.Addr(), e.idx("atkpod")))
	for _, proto := range []struct {
		name string
		num  uint8
	}{{"sctp", 132}, {"udplite", 136}} {
		policies := []struct {
			name  string
			rules polprog.Rules
		}{
			{"deny port 22, allow the rest", atkRules(9,
				polprog.Rule{ID: 1, Action: polprog.ActionDeny, Protocol: proto.name, DstPorts: []polprog.PortRange{polprog.Port(22)}},
				polprog.Rule{ID: 2, Action: polprog.ActionAllow})},
			{"allow port 5000 only", atkRules(19,
				polprog.Rule{ID: 11, Action: polprog.ActionAllow, Protocol: proto.name, DstPorts: []polprog.PortRange{polprog.Port(5000)}})},
		}
		for _, pol := range policies {
			e.set("atkpod", Interface{Kind: Workload, Egress: pol.rules, Ingress: atkAllowAll(100)})
			for _, dport := range []uint16{22, 5000, 5001} {
				name := fmt.Sprintf("%s, %s: to port %d", proto.name, pol.name, dport)
				dst := netip.AddrPortFrom(netip.MustParseAddr("10.21.0.2"), dport)
				want, err := polprog.Evaluate(pol.rules, nil, polprog.Packet{Src: pod.Addr(), Dst: dst.Addr(), SrcPort: pod.Port(),
					DstPort: dport, Protocol: proto.num})
				if err != nil {
					t.Fatal(err)
				}
				wantReason := bpf.ReasonDroppedByPolicy
				if want.Verdict == polprog.VerdictAllow {
					wantReason = bpf.ReasonAcceptedByPolicy
				}
				before := e.hits(want.RuleID)
				e.expect(name, "atkpod", bpf.HookIngress, atkPorted(t, proto.num, pod, dst, 16), wantReason)
				if got := e.hits(want.RuleID) - before; got != 1 {
					t.Errorf("%s: rule %d (the model's decider) hit %d times, want once", name, want.RuleID, got)
				}
				// Forget the flow, so that the next port meets policy.
				k, _ := ctKeyOf(proto.num, pod, dst)
				e.ctDelete(k)
			}
		}
	}
}

// TestAttackReusedAddressMeetsNewPolicy follows what happens to a
// workload's address after the workload goes: pod1 has a connection to
// pod2; pod2's interface is removed and a new workload, whose ingress
// policy denies everything, gets pod2's address on a new interface. Data
// pod1 sends on the old connection is now for the new workload, and must
// meet its policy: no hook of the new interface ever approved the flow.
// (RemoveInterface forgets the flows approved at the removed interface,
// so the connection's packets meet policy everywhere again.)
func TestAttackReusedAddressMeetsNewPolicy(t *testing.T) {
	n := atkNewSpoofNet(t)
	e := n.e
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "atkp4"}, PeerName: "atkp4p"}
	if err := e.ns.Handle.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	l, err := e.ns.Handle.LinkByName("atkp4")
	if err != nil {
		t.Fatal(err)
	}
	e.ifindex["atkp4"] = uint32(l.Attrs().Index)
	client := netip.AddrPortFrom(n.pod1, 40000)
	server := netip.AddrPortFrom(n.pod2, 80)
	n.handshake(t, client, server, "atkp1", "atkp2")

	if err := e.d.RemoveInterface(int(e.idx("atkp2"))); err != nil {
		t.Fatal(err)
	}
	key, _ := ctKeyOf(testpkt.ProtoTCP, client, server)
	if v, ok := e.ctEntry(key); ok {
		t.Errorf("RemoveInterface left the flow approved at the interface: %s", atkLegs(v))
	}
	if err := e.d.Routes().Delete(netip.PrefixFrom(n.pod2, 32)); err != nil {
		t.Fatal(err)
	}
	e.route(atkLocal(n.pod2, e.idx("atkp4")))
	e.set("atkp4", Interface{Kind: Workload, Ingress: atkRules(59), Egress: atkRules(69)})

	// The flow went with pod2's interface: pod1's own policy, which
	// allows everything, decides its data again.
	data := atkTCP(t, client, server, testpkt.PSH|testpkt.ACK, 100)
	e.expect("pod1's data leaves pod1", "atkp1", bpf.HookIngress, data, bpf.ReasonAcceptedByPolicy)
	before := e.hits(59)
	e.expect("pod1's data reaches the new workload", "atkp4", bpf.HookEgress, data, bpf.ReasonDroppedByPolicy)
	if got := e.hits(59) - before; got != 1 {
		t.Errorf("the new workload's tier end (rule 59) hit %d times, want once", got)
	}
	reply := atkTCP(t, server, client, testpkt.ACK, 0)
	e.expect("the new workload answers on the old tuple", "atkp4", bpf.HookIngress, reply, bpf.ReasonDroppedByPolicy)
}

// atkVLANPusher is a TC program that puts a VLAN tag (VID vid) into the
// skb of every IPv4 packet, as a VLAN device does before its lower
// device's TC egress hook, and hands every packet on to the next TCX
// program. Other packets (the node's IPv6 neighbour discovery) keep no
// tag, so that only the test's datagrams are counted DROPPED_VLAN.
func atkVLANPusher(tb testing.TB, vid int32) *ebpf.Program {
	tb.Helper()
	// Both in network order, as the skb holds and the helper takes them.
	wire := func(v uint16) int32 {
		var b [2]byte
		binary.BigEndian.PutUint16(b[:], v)
		return int32(binary.NativeEndian.Uint16(b[:]))
	}
	protocol := int16(unsafe.Offsetof(atkSkbHead{}.Protocol))
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "atk_vlan_push",
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			// R1 is the skb.
			asm.LoadMem(asm.R2, asm.R1, protocol, asm.Word),
			asm.JNE.Imm(asm.R2, wire(0x0800), "next"),
			asm.Mov.Imm(asm.R2, wire(0x8100)),
			asm.Mov.Imm(asm.R3, vid),
			asm.FnSkbVlanPush.Call(),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("next"), // TCX_NEXT
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		tb.Fatalf("load VLAN pusher: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// atkSkbHead is the head of struct __sk_buff, for the offset of protocol.
type atkSkbHead struct {
	Len, PktType, Mark, QueueMapping, Protocol uint32
}

// TestAttackSkbVLANAtEgress puts a tag into the skb (skb->vlan_present)
// ahead of the datapath at a workload's TC egress hook, as a VLAN device
// would, and sends real UDP to the workload: every datagram is counted
// DROPPED_VLAN there and none arrives, though policy allows them, while
// the same datagrams arrive once the tag is gone.
func TestAttackSkbVLANAtEgress(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := testutil.NewNode(t)
	cli, err := node.AddWorkload("cli", netip.MustParseAddr("10.79.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := node.AddWorkload("srv", netip.MustParseAddr("10.79.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, ifindex := range []int{cli.HostIfindex, srv.HostIfindex} {
		if err := d.SetInterface(ifindex, Interface{Kind: Workload, Ingress: atkAllowAll(1), Egress: atkAllowAll(3)}); err != nil {
			t.Fatal(err)
		}
	}
	atkAttachTCX(t, node, d, cli)
	atkAttachTCX(t, node, d, srv)
	// The node knows the server's MAC already: its ARP requests would
	// be tagged too, and the datagrams would never be sent.
	srvMAC, _ := atkMACs(t, node, srv)
	neigh := &netlink.Neigh{LinkIndex: srv.HostIfindex, IP: srv.Addr.AsSlice(), HardwareAddr: srvMAC,
		State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4}
	if err := node.NS.Handle.NeighAdd(neigh); err != nil {
		t.Fatal(err)
	}
	var pusher link.Link
	err = node.NS.Do(func() (err error) {
		pusher, err = link.AttachTCX(link.TCXOptions{Interface: srv.HostIfindex, Program: atkVLANPusher(t, 0),
			Attach: ebpf.AttachTCXEgress, Anchor: link.Head()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pusher.Close()
	conn := (&testutil.NetNS{NS: srv.NS}).ListenPacket(t, "udp4", "10.79.0.2:5300")

	send := func(payload string, count int) {
		err := cli.NS.Do(func() error {
			c, err := net.Dial("udp4", "10.79.0.2:5300")
			if err != nil {
				return err
			}
			defer c.Close()
			for range count {
				if _, err := c.Write([]byte(payload)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	before, err := d.Counters(srv.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	const tagged = 5
	send("tagged", tagged)
	want := before.Ingress[bpf.ReasonDroppedVLAN] + tagged
	if got := atkWaitCounter(t, d, srv.HostIfindex, false, bpf.ReasonDroppedVLAN, want); got != want {
		t.Errorf("DROPPED_VLAN at the server's TC egress: %d more, want %d", got-before.Ingress[bpf.ReasonDroppedVLAN], tagged)
	}
	if err := pusher.Close(); err != nil {
		t.Fatal(err)
	}
	send("untagged", 1)
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
			deadline = time.Now().Add(200 * time.Millisecond)
		}
	}
	if diff := cmp.Diff([]string{"untagged"}, got); diff != "" {
		t.Errorf("datagrams the server received (-want +got):\n%s", diff)
	}
}
