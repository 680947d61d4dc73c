package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/topo"
)

// atk2EchoNet is two workloads: pod1 may send anything and receive
// nothing (its Ingress policy is a tier that denies all); pod2 allows
// everything both ways. The only ICMP that may reach pod1 is therefore
// the reply to an echo pod1 sent, or an error related to one of its
// flows.
type atk2EchoNet struct {
	e          *atkEnv
	pod1, pod2 netip.Addr
}

// atk2PolicyEnd is the deny-all rule ID of pod1's Ingress policy.
const atk2PolicyEnd = 9109

func atk2NewEchoNet(t *testing.T) *atk2EchoNet {
	e := atkNewEnv(t, "atk2p1", "atk2p2")
	n := &atk2EchoNet{e: e, pod1: netip.MustParseAddr("10.88.0.1"), pod2: netip.MustParseAddr("10.88.0.2")}
	e.route(atkLocal(n.pod1, e.idx("atk2p1")))
	e.route(atkLocal(n.pod2, e.idx("atk2p2")))
	e.set("atk2p1", Interface{Kind: Workload, Egress: atkAllowAll(9100), Ingress: atkRules(atk2PolicyEnd)})
	e.set("atk2p2", Interface{Kind: Workload, Egress: atkAllowAll(9200), Ingress: atkAllowAll(9300)})
	return n
}

// ping has pod1 ping pod2 with identifier id and pod2 reply: the request
// is allowed by policy at both hooks it crosses, the reply passes as
// established at both.
func (n *atk2EchoNet) ping(t *testing.T, id uint16) bool {
	t.Helper()
	req := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod1, n.pod2, id, 1, false))
	rep := testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod2, n.pod1, id, 1, true))
	e := n.e
	return e.expect(fmt.Sprintf("id %#x: pod1's request leaves", id), "atk2p1", bpf.HookIngress, req, bpf.ReasonAcceptedByPolicy) &&
		e.expect(fmt.Sprintf("id %#x: pod1's request reaches pod2", id), "atk2p2", bpf.HookEgress, req, bpf.ReasonAcceptedByPolicy) &&
		e.expect(fmt.Sprintf("id %#x: pod2's reply leaves", id), "atk2p2", bpf.HookIngress, rep, bpf.ReasonAcceptedEstablished) &&
		e.expect(fmt.Sprintf("id %#x: pod2's reply reaches pod1", id), "atk2p1", bpf.HookEgress, rep, bpf.ReasonAcceptedEstablished)
}

// atk2ICMPFrom2 are ICMP messages pod2 may send pod1 that are neither a
// reply to pod1's echo nor an error related to a flow of pod1: each must
// meet pod1's Ingress policy, which denies it.
func atk2ICMPFrom2(t *testing.T, n *atk2EchoNet, id uint16) []struct {
	name  string
	frame []byte
} {
	msg := func(typ, code uint8, rest [4]byte, data []byte) []byte {
		p := testpkt.ICMPv4Error(n.pod2, n.pod1, typ, code, data)
		p.ICMPv4.Rest = rest
		return testpkt.MustBytes(t, p)
	}
	// An echo reply of pod2's own, to a request pod1 never sent.
	unrelatedQuote := testpkt.Quote(testpkt.MustBytes(t, testpkt.UDPv4(netip.AddrPortFrom(n.pod1, 1), netip.AddrPortFrom(n.pod2, 2), nil)))
	return []struct {
		name  string
		frame []byte
	}{
		{"an echo request with the same identifier", testpkt.MustBytes(t, testpkt.ICMPv4Echo(n.pod2, n.pod1, id, 7, false))},
		{"a redirect to a gateway of pod2's choice", msg(testpkt.ICMPv4Redirect, 1, [4]byte{10, 88, 0, 2}, unrelatedQuote)},
		{"a timestamp request (type 13)", msg(13, 0, [4]byte{}, make([]byte, 12))},
		{"an address-mask reply (type 18)", msg(18, 0, [4]byte{}, []byte{255, 255, 0, 0})},
		{"a router advertisement (type 9)", msg(9, 0, [4]byte{1, 2, 0, 30}, []byte{10, 88, 0, 2, 0, 0, 0, 1})},
		{"a destination unreachable quoting no flow, 1000 bytes", msg(testpkt.ICMPv4DestUnreachable, 3, [4]byte{}, testpkt.PadQuote(unrelatedQuote, 1000))},
		{"an unassigned ICMP type (200)", msg(200, 0, [4]byte{}, []byte("payload smuggled as ICMP"))},
	}
}

// TestAttack2EchoIdentifierZero: the design keys an echo by its
// identifier on the requester's side only, "so a reply passes but a
// request in the other direction meets policy", and never tracks other
// ICMP messages, "which would otherwise let every later ICMP message
// between two addresses pass as established". Identifier 0 (any process
// with CAP_NET_RAW can send it, and some stacks do) gives the requester's
// side the port 0 that the other side always gets, so the key is the same
// in both directions, and it is also the key every non-echo ICMP message
// between the two addresses is looked up by. After pod1 pings pod2 once
// with identifier 0, each message pod2 sends to pod1 here must still meet
// pod1's Ingress policy (DROPPED_BY_POLICY, its deny rule hit), as it
// does after a ping with identifier 0x4242.
func TestAttack2EchoIdentifierZero(t *testing.T) {
	for _, id := range []uint16{0x4242, 0} {
		t.Run(fmt.Sprintf("identifier %#x", id), func(t *testing.T) {
			n := atk2NewEchoNet(t)
			e := n.e
			e.t = t
			if !n.ping(t, id) {
				t.FailNow()
			}
			for _, m := range atk2ICMPFrom2(t, n, id) {
				// pod2's own egress policy allows everything: the message
				// leaves pod2 either way.
				if ret := e.runAt(progIngress, m.frame, "atk2p2"); ret != tcActOK {
					t.Errorf("pod2 sends %s: verdict %d at its own hook, want TC_ACT_OK", m.name, ret)
					continue
				}
				before := e.hits(atk2PolicyEnd)
				e.expect(m.name+" reaches pod1", "atk2p1", bpf.HookEgress, m.frame, bpf.ReasonDroppedByPolicy)
				if got := e.hits(atk2PolicyEnd) - before; got != 1 {
					t.Errorf("%s reaches pod1: pod1's deny rule hit %d times, want once", m.name, got)
				}
			}
		})
	}
}

// atk2ICMPSocket is a raw ICMP socket opened inside a workload.
type atk2ICMPSocket struct {
	fd int
}

func atk2OpenICMP(t *testing.T, w *topo.Workload) *atk2ICMPSocket {
	t.Helper()
	s := &atk2ICMPSocket{}
	err := w.NS.Do(func() (err error) {
		s.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		t.Fatalf("raw ICMP socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(s.fd) })
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return s
}

// send sends an ICMP message of type typ with bytes 4-7 rest and data.
func (s *atk2ICMPSocket) send(t *testing.T, dst netip.Addr, typ uint8, rest [4]byte, data []byte) {
	t.Helper()
	msg := append([]byte{typ, 0, 0, 0, rest[0], rest[1], rest[2], rest[3]}, data...)
	binary.BigEndian.PutUint16(msg[2:], testpkt.Checksum(msg))
	if err := unix.Sendto(s.fd, msg, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		t.Fatalf("send ICMP type %d to %s: %v", typ, dst, err)
	}
}

// received drains the socket and reports whether an ICMP message of type
// typ from src arrived.
func (s *atk2ICMPSocket) received(src netip.Addr, typ uint8) bool {
	buf := make([]byte, 2048)
	got := false
	for {
		n, from, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil {
			return got
		}
		sa, ok := from.(*unix.SockaddrInet4)
		if !ok || n < 20 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		if netip.AddrFrom4(sa.Addr) == src && n > ihl && buf[ihl] == typ {
			got = true
		}
	}
}

// TestAttack2EchoIdentifierZeroRealTraffic is TestAttack2EchoIdentifierZero
// on real traffic: pod1, which may receive nothing, pings pod2 once with
// identifier 0 from a raw socket, and pod2's kernel replies. Before and
// after that ping, a timestamp request pod2 sends pod1 must meet pod1's
// Ingress policy and never reach pod1.
func TestAttack2EchoIdentifierZeroRealTraffic(t *testing.T) {
	node, pod1, pod2 := nodePair(t, "10.93.0.1", "10.93.0.2")
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.SetInterfaces(map[int]Interface{
		pod1.HostIfindex: {Kind: Workload, Egress: allowAllRules, Ingress: denyAllRules},
		pod2.HostIfindex: {Kind: Workload, Egress: allowAllRules, Ingress: allowAllRules},
	})
	if err != nil {
		t.Fatal(err)
	}
	attachWorkload(t, node, d, pod1)
	attachWorkload(t, node, d, pod2)
	sock1, sock2 := atk2OpenICMP(t, pod1), atk2OpenICMP(t, pod2)
	const timestampRequest = 13
	timestamp := func(step string, wantDenied uint64) {
		t.Helper()
		sock2.send(t, pod1.Addr, timestampRequest, [4]byte{0x12, 0x34, 0, 1}, make([]byte, 12))
		if got := atkWaitCounter(t, d, pod1.HostIfindex, false, bpf.ReasonDroppedByPolicy, wantDenied); got != wantDenied {
			t.Errorf("%s: pod1's Ingress policy denied %d messages, want %d", step, got, wantDenied)
		}
		if sock1.received(pod2.Addr, timestampRequest) {
			t.Errorf("%s: pod2's timestamp request reached pod1", step)
		}
	}
	timestamp("before the ping", 1)
	sock1.send(t, pod2.Addr, testpkt.ICMPv4EchoRequest, [4]byte{0, 0, 0, 1}, []byte("ping"))
	if got := atkWaitCounter(t, d, pod1.HostIfindex, false, bpf.ReasonAcceptedEstablished, 1); got != 1 {
		t.Fatalf("pod2's echo reply reached pod1 as established %d times, want 1", got)
	}
	if !sock1.received(pod2.Addr, testpkt.ICMPv4EchoReply) {
		t.Fatal("pod1 got no echo reply")
	}
	timestamp("after the ping", 2)
}
