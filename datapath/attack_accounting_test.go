package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
)

// atkLegCount is what a leg should hold: its packets and their bytes.
type atkLegCount struct{ Packets, Bytes uint64 }

// atkLegCounts reads both legs of an entry as seen from the client.
func atkLegCounts(v bpf.CTValue, clientDir bpf.CTDir) (fromClient, fromServer atkLegCount) {
	c, s := atkLegOf(&v, clientDir), atkLegOf(&v, 1-clientDir)
	return atkLegCount{uint64(c.Packets), c.Bytes}, atkLegCount{uint64(s.Packets), s.Bytes}
}

// TestAttackAccountingOnce runs flows between every kind of end the
// datapath knows through each hook of ours they cross, with
// BPF_PROG_TEST_RUN at veths: workload to workload (the sender's TC
// ingress, then the receiver's TC egress), node to workload and workload
// to node (one hook), workload to the outside and back through a host
// interface, the outside to a workload, and the node's own traffic through
// the host interface. Every packet must be counted once on its leg,
// however many hooks it crossed and however many of them ran policy
// (retransmitted SYNs run it again), with its bytes.
func TestAttackAccountingOnce(t *testing.T) {
	n := atkNewSpoofNet(t)
	e := n.e
	ext := netip.MustParseAddr("203.0.113.9")
	// path lists the hooks a packet crosses, in order: interface name
	// and hook; "" stands for the node, which has no hook of its own.
	type hop struct {
		iface string
		hook  bpf.Hook
	}
	in := func(i string) hop { return hop{i, bpf.HookIngress} }
	out := func(i string) hop { return hop{i, bpf.HookEgress} }
	flows := []struct {
		name           string
		proto          uint8
		client, server netip.AddrPort
		request, reply []hop
	}{
		{"UDP pod1 to pod2", testpkt.ProtoUDP, netip.AddrPortFrom(n.pod1, 50001), netip.AddrPortFrom(n.pod2, 53),
			[]hop{in("atkp1"), out("atkp2")}, []hop{in("atkp2"), out("atkp1")}},
		{"TCP pod1 to pod2", testpkt.ProtoTCP, netip.AddrPortFrom(n.pod1, 50002), netip.AddrPortFrom(n.pod2, 80),
			[]hop{in("atkp1"), out("atkp2")}, []hop{in("atkp2"), out("atkp1")}},
		{"TCP pod2 to pod1 (client is B)", testpkt.ProtoTCP, netip.AddrPortFrom(n.pod2, 50003), netip.AddrPortFrom(n.pod1, 80),
			[]hop{in("atkp2"), out("atkp1")}, []hop{in("atkp1"), out("atkp2")}},
		{"UDP node to pod2", testpkt.ProtoUDP, netip.AddrPortFrom(n.node, 50004), netip.AddrPortFrom(n.pod2, 53),
			[]hop{out("atkp2")}, []hop{in("atkp2")}},
		{"TCP node to pod2", testpkt.ProtoTCP, netip.AddrPortFrom(n.node, 50005), netip.AddrPortFrom(n.pod2, 80),
			[]hop{out("atkp2")}, []hop{in("atkp2")}},
		{"UDP pod2 to node", testpkt.ProtoUDP, netip.AddrPortFrom(n.pod2, 50006), netip.AddrPortFrom(n.node, 53),
			[]hop{in("atkp2")}, []hop{out("atkp2")}},
		{"UDP pod1 to the outside", testpkt.ProtoUDP, netip.AddrPortFrom(n.pod1, 50007), netip.AddrPortFrom(ext, 53),
			[]hop{in("atkp1"), out("atkhif")}, []hop{in("atkhif"), out("atkp1")}},
		{"TCP the outside to pod1", testpkt.ProtoTCP, netip.AddrPortFrom(ext, 50008), netip.AddrPortFrom(n.pod1, 80),
			[]hop{in("atkhif"), out("atkp1")}, []hop{in("atkp1"), out("atkhif")}},
		{"UDP node to the outside", testpkt.ProtoUDP, netip.AddrPortFrom(n.node, 50009), netip.AddrPortFrom(ext, 53),
			[]hop{out("atkhif")}, []hop{in("atkhif")}},
		{"TCP the outside to node", testpkt.ProtoTCP, netip.AddrPortFrom(ext, 50010), netip.AddrPortFrom(n.node, 22),
			[]hop{in("atkhif")}, []hop{out("atkhif")}},
	}
	type pkt struct {
		fromClient bool
		flags      testpkt.TCPFlags
		payload    int
	}
	tcpSeq := []pkt{{true, testpkt.SYN, 0}, {true, testpkt.SYN, 0}, {false, testpkt.SYN | testpkt.ACK, 0}, {true, testpkt.ACK, 0},
		{true, testpkt.PSH | testpkt.ACK, 100}, {false, testpkt.PSH | testpkt.ACK, 1400}, {false, testpkt.PSH | testpkt.ACK, 3},
		{true, testpkt.FIN | testpkt.ACK, 0}, {false, testpkt.FIN | testpkt.ACK, 0}, {true, testpkt.ACK, 0}}
	udpSeq := []pkt{{true, 0, 10}, {true, 0, 100}, {false, 0, 20}, {true, 0, 500}, {false, 0, 1400}, {true, 0, 1000}, {false, 0, 0}}

	for _, f := range flows {
		seq := udpSeq
		if f.proto == testpkt.ProtoTCP {
			seq = tcpSeq
		}
		var wantC, wantS atkLegCount
		seen := map[hop]bool{}
		for i, p := range seq {
			src, dst, path := f.client, f.server, f.request
			if !p.fromClient {
				src, dst, path = f.server, f.client, f.reply
			}
			var frame []byte
			if f.proto == testpkt.ProtoTCP {
				frame = atkTCP(t, src, dst, p.flags, p.payload)
			} else {
				frame = testpkt.MustBytes(t, testpkt.UDPv4(src, dst, make([]byte, p.payload)))
			}
			for _, h := range path {
				// The request's first packet at each hook of its path
				// goes to policy, as does a SYN; the rest is established.
				want := bpf.ReasonAcceptedEstablished
				if p.fromClient && (!seen[h] || p.flags == testpkt.SYN) {
					want = bpf.ReasonAcceptedByPolicy
				}
				seen[h] = true
				e.expect(fmt.Sprintf("%s: packet %d at %s %s", f.name, i, h.iface, h.hook), h.iface, h.hook, frame, want)
			}
			if p.fromClient {
				wantC.Packets++
				wantC.Bytes += uint64(len(frame))
			} else {
				wantS.Packets++
				wantS.Bytes += uint64(len(frame))
			}
		}
		key, clientDir := ctKeyOf(f.proto, f.client, f.server)
		v, ok := e.ctEntry(key)
		if !ok {
			t.Errorf("%s: no conntrack entry", f.name)
			continue
		}
		gotC, gotS := atkLegCounts(v, clientDir)
		if diff := cmp.Diff([]atkLegCount{wantC, wantS}, []atkLegCount{gotC, gotS}); diff != "" {
			t.Errorf("%s: legs [client's, server's] (-want +got):\n%s", f.name, diff)
		}
	}
}

// atkUDPEcho answers every datagram conn receives with reply bytes of
// payload, until conn is closed.
func atkUDPEcho(conn net.PacketConn, reply int) {
	buf := make([]byte, 65536)
	out := make([]byte, reply)
	for {
		_, from, err := conn.ReadFrom(buf)
		if err != nil {
			return
		}
		conn.WriteTo(out, from)
	}
}

// atkUDPExchange sends count datagrams of size bytes from local to remote
// inside ns, waiting for each one's reply, and returns how many replies
// came back.
func atkUDPExchange(tb testing.TB, ns *topo.NS, local, remote netip.AddrPort, count, size int) int {
	tb.Helper()
	replies := 0
	err := ns.Do(func() error {
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(remote))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 65536)
		for i := range count {
			if _, err := c.Write(make([]byte, size)); err != nil {
				return fmt.Errorf("datagram %d: %w", i, err)
			}
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Read(buf); err != nil {
				return fmt.Errorf("reply %d: %w", i, err)
			}
			replies++
		}
		return nil
	})
	if err != nil {
		tb.Error(err)
	}
	return replies
}

// TestAttackAccountingRealUDP sends UDP datagrams of known count and size,
// each answered once (UDP does not retransmit), between two workloads of
// a node (each datagram crosses the sender's TC ingress and the
// receiver's TC egress), from the node to a workload (only a TC egress
// hook) and from a workload to the node (only a TC ingress hook). Each
// conntrack leg must hold exactly the datagrams sent, with their
// Ethernet frames' bytes: not double, not none.
func TestAttackAccountingRealUDP(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := testutil.NewNode(t)
	cli, err := node.AddWorkload("cli", netip.MustParseAddr("10.78.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := node.AddWorkload("srv", netip.MustParseAddr("10.78.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	nodeAddr := netip.MustParseAddr("10.78.255.1")
	if err := node.NS.AddrAdd("lo", netip.PrefixFrom(nodeAddr, 32)); err != nil {
		t.Fatal(err)
	}
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, w := range []*topo.Workload{cli, srv} {
		if err := d.SetInterface(w.HostIfindex, Interface{Kind: Workload, Ingress: atkAllowAll(1), Egress: atkAllowAll(3)}); err != nil {
			t.Fatal(err)
		}
		atkAttachTCX(t, node, d, w)
	}
	if err := d.Routes().Put(atkHostRoute(nodeAddr)); err != nil {
		t.Fatal(err)
	}
	listen := func(ns *topo.NS, addr string, reply int) {
		c := (&testutil.NetNS{NS: ns}).ListenPacket(t, "udp4", addr)
		go atkUDPEcho(c, reply)
	}
	listen(srv.NS, "10.78.0.2:5300", 700)
	listen(srv.NS, "10.78.0.2:5301", 50)
	listen(node.NS, "10.78.255.1:5302", 900)

	const eth, ipUDP = 14, 28
	exchanges := []struct {
		name          string
		ns            *topo.NS
		local, remote netip.AddrPort
		count         int
		size, reply   int
	}{
		{"workload to workload", cli.NS, netip.MustParseAddrPort("10.78.0.1:40000"), netip.MustParseAddrPort("10.78.0.2:5300"), 20, 300, 700},
		{"node to workload", node.NS, netip.MustParseAddrPort("10.78.255.1:40001"), netip.MustParseAddrPort("10.78.0.2:5301"), 15, 100, 50},
		{"workload to node", srv.NS, netip.MustParseAddrPort("10.78.0.2:40002"), netip.MustParseAddrPort("10.78.255.1:5302"), 12, 1200, 900},
	}
	for _, x := range exchanges {
		if got := atkUDPExchange(t, x.ns, x.local, x.remote, x.count, x.size); got != x.count {
			t.Errorf("%s: %d replies, want %d", x.name, got, x.count)
			continue
		}
		key, clientDir := ctKeyOf(testpkt.ProtoUDP, x.local, x.remote)
		var v bpf.CTValue
		if err := d.state.ct.Lookup(&key, &v); err != nil {
			t.Errorf("%s: conntrack entry: %v", x.name, err)
			continue
		}
		gotC, gotS := atkLegCounts(v, clientDir)
		n := uint64(x.count)
		want := []atkLegCount{{n, n * uint64(eth+ipUDP+x.size)}, {n, n * uint64(eth+ipUDP+x.reply)}}
		if diff := cmp.Diff(want, []atkLegCount{gotC, gotS}); diff != "" {
			t.Errorf("%s: legs [sender's, replier's] (-want +got):\n%s", x.name, diff)
		}
	}
}
