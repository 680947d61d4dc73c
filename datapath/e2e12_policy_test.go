package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/polprog"
)

// e2e12Tries is how many times an allowed exchange is tried before it
// fails: the first packets to a workload may wait on the node's ARP or
// neighbour discovery.
const e2e12Tries = 3

// e2e12ServerPolicy is the server's ingress policy of TestE2E12Policy:
// UDP to 53 (rule 100), TCP to 80 (rule 102) and, if icmp is set, echo
// requests of proto (rule 101) are allowed; the tier's end denies the
// rest as rule 109.
func e2e12ServerPolicy(proto string, echoType uint8, icmp bool) polprog.Rules {
	rules := []polprog.Rule{
		{ID: 100, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(53)}},
		{ID: 102, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}},
	}
	if icmp {
		rules = append(rules, polprog.Rule{ID: 101, Action: polprog.ActionAllow, Protocol: proto, ICMP: &polprog.ICMPMatch{Type: echoType}})
	}
	return polprog.Rules{Tiers: []polprog.Tier{{Name: "default", EndRuleID: 109, Policies: []polprog.Policy{{Name: "srv", Rules: rules}}}}}
}

// TestE2E12Policy runs workload policy on real UDP, TCP and ICMP echo, in
// both families: the server's ingress policy allows UDP to one port, TCP
// to one port and echo requests; those exchanges complete (their replies
// pass as established) and the rule that allowed each counts a hit; UDP
// and TCP to other ports, and echo requests once the policy no longer
// allows them, get no answer and count hits of the tier's end; the
// server's counters show the replies established and the requests
// dropped by policy.
func TestE2E12Policy(t *testing.T) {
	for _, fam := range []struct {
		name, client, server, icmpNet, icmpProto string
		echo, echoReply                          uint8
	}{
		{"ipv4", "10.112.3.1", "10.112.3.2", "ip4:icmp", "icmp", 8, 0},
		{"ipv6", "fd00:112:3::1", "fd00:112:3::2", "ip6:ipv6-icmp", "icmpv6", 128, 129},
	} {
		t.Run(fam.name, func(t *testing.T) {
			node, client, server := nodePair(t, fam.client, fam.server)
			d := e2e12Workloads(t, node)
			if err := d.SetInterface(server.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules,
				Ingress: e2e12ServerPolicy(fam.icmpProto, fam.echo, true)}); err != nil {
				t.Fatal(err)
			}
			for _, port := range []uint16{53, 54} {
				e2e12EchoUDP(t, server.NS, netip.AddrPortFrom(server.Addr, port).String())
			}
			for _, port := range []uint16{80, 81} {
				e2e12ServePeer(t, server.NS, netip.AddrPortFrom(server.Addr, port).String(), "srv")
			}
			hits := func(id uint64) uint64 {
				n, err := d.RuleHits().Get(id)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			udp := func(port uint16) func() error {
				return func() error { return e2e12UDPOnce(client.NS, netip.AddrPortFrom(server.Addr, port).String()) }
			}
			tcp := func(port uint16) func() error {
				return func() error {
					return client.NS.Do(func() error {
						c, err := net.DialTimeout("tcp", netip.AddrPortFrom(server.Addr, port).String(), 500*time.Millisecond)
						if err != nil {
							return err
						}
						return c.Close()
					})
				}
			}
			// Each case pings with its own identifier: conntrack tracks an
			// echo flow by it, and a later request of a tracked one passes
			// as established whatever the policy.
			ping := func(id uint16) func() error {
				return func() error { return e2e12PingOnce(client.NS, fam.icmpNet, server.Addr, id, fam.echo, fam.echoReply) }
			}
			for _, c := range []struct {
				name   string
				do     func() error
				ok     bool
				ruleID uint64
				// icmpOff replaces the server's policy with one that no
				// longer allows echo requests first.
				icmpOff bool
			}{
				{name: "UDP to the allowed port", do: udp(53), ok: true, ruleID: 100},
				{name: "TCP to the allowed port", do: tcp(80), ok: true, ruleID: 102},
				{name: "echo request, allowed", do: ping(0x1201), ok: true, ruleID: 101},
				{name: "UDP to another port", do: udp(54), ruleID: 109},
				{name: "TCP to another port", do: tcp(81), ruleID: 109},
				{name: "echo request, no longer allowed", do: ping(0x1202), ruleID: 109, icmpOff: true},
			} {
				if c.icmpOff {
					if err := d.SetInterface(server.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules,
						Ingress: e2e12ServerPolicy(fam.icmpProto, fam.echo, false)}); err != nil {
						t.Fatal(err)
					}
				}
				before := hits(c.ruleID)
				err := c.do()
				for try := 1; c.ok && err != nil && try < e2e12Tries; try++ {
					err = c.do()
				}
				if (err == nil) != c.ok {
					t.Errorf("%s: %v, want success %v", c.name, err, c.ok)
				}
				if got := hits(c.ruleID) - before; got < 1 {
					t.Errorf("%s: rule %d hit %d times, want at least once", c.name, c.ruleID, got)
				}
			}
			// The replies of the three allowed exchanges left the server
			// as established; the three denied requests were dropped by
			// its policy.
			srv, err := d.Counters(server.HostIfindex)
			if err != nil {
				t.Fatal(err)
			}
			if srv.Egress[bpf.ReasonAcceptedEstablished] < 3 || srv.Ingress[bpf.ReasonDroppedByPolicy] < 3 {
				t.Errorf("server counters: ingress %v, egress %v; want at least 3 established replies and 3 policy drops",
					srv.Ingress.NonZero(), srv.Egress.NonZero())
			}
		})
	}
}

// e2e12EchoUDP echoes every UDP datagram on addr in ns until the test
// ends.
func e2e12EchoUDP(tb testing.TB, ns *topo.NS, addr string) {
	tb.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return }); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

// e2e12UDPOnce sends one datagram from ns to addr and waits up to 500 ms
// for it to be echoed.
func e2e12UDPOnce(ns *topo.NS, addr string) error {
	return ns.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := c.Write([]byte("q")); err != nil {
			return err
		}
		buf := make([]byte, 8)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:n]) != "q" {
			return fmt.Errorf("echo %q, want %q", buf[:n], "q")
		}
		return nil
	})
}

// e2e12PingOnce sends one echo request (type echo, identifier id) from ns to dst on a
// raw socket of network (net.ListenPacket's "ip4:icmp" or
// "ip6:ipv6-icmp") and waits up to 500 ms for its reply (type reply,
// same identifier and sequence). The kernel fills in an ICMPv6 checksum;
// an ICMP one is computed here.
func e2e12PingOnce(ns *topo.NS, network string, dst netip.Addr, id uint16, echo, reply uint8) error {
	return ns.Do(func() error {
		c, err := net.ListenPacket(network, "")
		if err != nil {
			return err
		}
		defer c.Close()
		const seq = 1
		msg := []byte{echo, 0, 0, 0, byte(id >> 8), byte(id), 0, seq, 's', 'l', 'u', 'i', 'c', 'e'}
		if dst.Is4() {
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		}
		if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return err
			}
			// A raw socket sees every ICMP message of the namespace; only
			// the server's reply to this request counts.
			src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			if n >= 8 && src.Unmap() == dst && buf[0] == reply && binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
				return nil
			}
			if n >= 1 && src.Unmap() == dst && buf[0] != reply {
				return errors.New("unexpected ICMP message from the server")
			}
		}
	})
}

// icmpChecksum is the Internet checksum of b (RFC 1071), with b's
// checksum field zero.
func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
