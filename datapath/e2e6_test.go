package datapath

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sluicenet/sluice/bpf"
)

// TestRealTrafficIPv6 is TestRealTraffic in IPv6, at interfaces that
// enforce it: TCP to the allowed port carries data both ways, TCP to
// another port never connects, the node's neighbour discovery with the
// workloads passes and is counted, and no IPv6 packet is dropped whole.
func TestRealTrafficIPv6(t *testing.T) {
	node, client, server := nodePair(t, "fd66::1", "fd66::2")
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetInterface(client.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(server.HostIfindex, Interface{Kind: Workload, Ingress: allowTCPPort(80, 10)}); err != nil {
		t.Fatal(err)
	}
	attachWorkload(t, node, d, client)
	attachWorkload(t, node, d, server)

	for _, port := range []string{"80", "81"} {
		var l net.Listener
		if err := server.NS.Do(func() (err error) { l, err = net.Listen("tcp6", "[fd66::2]:"+port); return }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go echoOnce(l)
	}
	var reply []byte
	err = client.NS.Do(func() error {
		c, err := net.DialTimeout("tcp6", "[fd66::2]:80", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		reply = make([]byte, 4)
		_, err = io.ReadFull(c, reply)
		return err
	})
	if err != nil || string(reply) != "ping" {
		t.Fatalf("allowed port: reply %q, %v", reply, err)
	}
	err = client.NS.Do(func() error {
		c, err := net.DialTimeout("tcp6", "[fd66::2]:81", 500*time.Millisecond)
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		return nil
	})
	if err != nil {
		t.Errorf("blocked port: %v", err)
	}

	srv, err := d.Counters(server.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := d.Counters(client.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Ingress[bpf.ReasonAcceptedByPolicy] < 1 || srv.Ingress[bpf.ReasonAcceptedEstablished] < 2 || srv.Ingress[bpf.ReasonDroppedByPolicy] < 1 {
		t.Errorf("server ingress counters %v: want at least 1 allowed, 2 established, 1 denied", srv.Ingress.NonZero())
	}
	if srv.Egress[bpf.ReasonAcceptedEstablished] < 2 || srv.Egress.Dropped() != 0 {
		t.Errorf("server egress counters %v: want at least 2 established and no drop", srv.Egress.NonZero())
	}
	if cli.Egress[bpf.ReasonAcceptedByPolicy] < 2 || cli.Egress.Dropped() != 0 {
		t.Errorf("client egress counters %v: want at least 2 allowed and no drop", cli.Egress.NonZero())
	}
	// The node resolved both workloads' addresses: its solicitation left
	// through each host-side interface and the advertisement came back.
	for name, c := range map[string]Counters{"server": srv, "client": cli} {
		if c.Ingress[bpf.ReasonNDPassed] < 1 || c.Egress[bpf.ReasonNDPassed] < 1 {
			t.Errorf("%s: neighbour discovery passed %d in, %d out; want both at least 1", name, c.Ingress[bpf.ReasonNDPassed], c.Egress[bpf.ReasonNDPassed])
		}
		if n := c.Ingress[bpf.ReasonDroppedIPv6] + c.Egress[bpf.ReasonDroppedIPv6]; n != 0 {
			t.Errorf("%s: %d IPv6 packets dropped whole", name, n)
		}
	}
}
