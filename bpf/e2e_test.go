package bpf

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestRealTraffic attaches the datapath with TCX to a server's veth in a
// test namespace and sends real TCP: a connection to the allowed port
// carries data both ways (replies pass as established), a connection to
// another port never completes.
func TestRealTraffic(t *testing.T) {
	h := newHarness(t)
	client, server := testutil.NewNetNS(t), testutil.NewNetNS(t)
	_, srv := testutil.ConnectVeth(t, client, "slcli", netip.MustParsePrefix("10.10.0.1/24"),
		server, "slsrv", netip.MustParsePrefix("10.10.0.2/24"))
	const slotDenyAll = 20
	h.setPolicy(slotDenyAll, allowDstPorts())
	// Packets arriving at the server are policed (port 80 only); the
	// server opens nothing, so its egress hook allows nothing new.
	h.setIface(uint32(srv.Index), Iface{Flags: IfaceWorkload | IfaceReady, IngressPolicy: slotIngress, EgressPolicy: slotDenyAll, CounterSlot: 5})
	for _, attach := range []struct {
		prog string
		typ  ebpf.AttachType
	}{{ProgTCIngress, ebpf.AttachTCXIngress}, {ProgTCEgress, ebpf.AttachTCXEgress}} {
		var l link.Link
		err := server.Do(func() (err error) {
			l, err = link.AttachTCX(link.TCXOptions{Interface: srv.Index, Program: h.prog(attach.prog), Attach: attach.typ})
			return err
		})
		if err != nil {
			t.Fatalf("attach %s to %s: %v", attach.prog, srv.Name, err)
		}
		t.Cleanup(func() { l.Close() })
	}

	allowed := server.Listen(t, "tcp4", "10.10.0.2:80")
	blocked := server.Listen(t, "tcp4", "10.10.0.2:81")
	go echoOnce(allowed)
	go echoOnce(blocked)

	var reply []byte
	err := client.Do(func() error {
		c, err := net.DialTimeout("tcp4", "10.10.0.2:80", 5*time.Second)
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
	err = client.Do(func() error {
		c, err := net.DialTimeout("tcp4", "10.10.0.2:81", 500*time.Millisecond)
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		return nil
	})
	if err != nil {
		t.Errorf("blocked port: %v", err)
	}

	in, out := h.counters(uint32(srv.Index), HookIngress), h.counters(uint32(srv.Index), HookEgress)
	if in[ReasonAcceptedByPolicy] < 1 || in[ReasonAcceptedEstablished] < 2 || in[ReasonDroppedByPolicy] < 1 {
		t.Errorf("ingress counters: by policy %d, established %d, denied %d; want at least 1, 2, 1",
			in[ReasonAcceptedByPolicy], in[ReasonAcceptedEstablished], in[ReasonDroppedByPolicy])
	}
	if out[ReasonAcceptedEstablished] < 2 || out[ReasonDroppedByPolicy] != 0 {
		t.Errorf("egress counters: established %d, denied %d; want at least 2 and 0",
			out[ReasonAcceptedEstablished], out[ReasonDroppedByPolicy])
	}
}

// echoOnce accepts one connection and echoes 4 bytes back.
func echoOnce(l net.Listener) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err == nil {
		c.Write(buf)
	}
}
