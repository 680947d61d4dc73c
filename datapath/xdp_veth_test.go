package datapath

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/polprog"
)

// denyUDPPort is an XDP tier denying UDP to port with rule ID id and
// passing the rest.
func denyUDPPort(port uint16, id uint64) []polprog.Tier {
	return []polprog.Tier{{Name: "untracked", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Name: "deny", Rules: []polprog.Rule{
		{ID: id, Action: polprog.ActionDeny, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(port)}},
	}}}}}
}

// allowAllHost allows everything at a host interface, wherever it goes.
var allowAllHost = polprog.Rules{Profiles: []polprog.Policy{{Name: "all", Rules: []polprog.Rule{{ID: 2, Action: polprog.ActionAllow}}}}}

// xdpNode is a node whose client workload's host-side interface is
// treated as a host interface with XDP tiers (denying UDP to port 9999),
// attached through package attach (XDP in the mode the driver allows, the
// TC programs with TCX), and a server workload behind it.
func xdpNode(t testing.TB, mode attach.XDPMode, cfg Interface) (d *Datapath, node *topo.Node, client, server *topo.Workload, detach func()) {
	t.Helper()
	node, client, server = nodePair(t, "10.67.0.1", "10.67.0.2")
	d = openXDP(t)
	if err := d.SetInterface(client.HostIfindex, cfg); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(server.HostIfindex, Interface{Kind: Workload, Ingress: allowAllRules, Egress: allowAllRules}); err != nil {
		t.Fatal(err)
	}
	// No route makes the client a local workload: as a host interface's
	// peer it is somewhere off the node.
	attachTCX(t, node.NS, d, client.HostIfindex)
	attachWorkload(t, node, d, server)
	a, err := attach.Open(testutil.TempBPFFS(t))
	if err != nil {
		t.Fatal(err)
	}
	var ifname string
	err = node.NS.Do(func() error {
		l, err := net.InterfaceByIndex(client.HostIfindex)
		if err != nil {
			return err
		}
		ifname = l.Name
		at, err := a.AttachXDP(ifname, d.XDP(), mode)
		t.Logf("attached in %s", at.Mode)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	detached := false
	detach = func() {
		if detached {
			return
		}
		detached = true
		if err := node.NS.Do(func() error { return a.DetachXDP(ifname) }); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(detach)
	return d, node, client, server, detach
}

// xdpHostConfig is the client-side host interface of the XDP tests: XDP
// tiers that deny UDP to port 9999 (rule 77), TC policy that allows all.
var xdpHostConfig = Interface{Kind: Host, Ingress: allowAllHost, Egress: allowAllHost, XDP: denyUDPPort(9999, 77)}

// TestXDPAttached: through a real veth, UDP the XDP tiers deny never
// reaches the server and is counted as dropped by policy at the host
// interface's ingress, at XDP (the TC ingress hook never sees it); UDP to
// another port arrives, decided by TC. Native and generic mode.
func TestXDPAttached(t *testing.T) {
	for _, mode := range []attach.XDPMode{attach.XDPNative, attach.XDPGeneric} {
		t.Run(mode.String(), func(t *testing.T) {
			d, _, client, server, _ := xdpNode(t, mode, xdpHostConfig)
			var conns [2]net.PacketConn
			for i, port := range []string{"9998", "9999"} {
				err := server.NS.Do(func() (err error) {
					conns[i], err = net.ListenPacket("udp4", "10.67.0.2:"+port)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				defer conns[i].Close()
			}
			before, err := d.Counters(client.HostIfindex)
			if err != nil {
				t.Fatal(err)
			}
			const sent = 20
			err = client.NS.Do(func() error {
				for _, port := range []string{"9998", "9999"} {
					c, err := net.Dial("udp4", "10.67.0.2:"+port)
					if err != nil {
						return err
					}
					for i := 0; i < sent; i++ {
						if _, err := c.Write([]byte("x")); err != nil {
							return err
						}
					}
					c.Close()
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := received(t, conns[0], sent); got != sent {
				t.Errorf("port 9998: %d of %d datagrams arrived", got, sent)
			}
			if got := received(t, conns[1], 1); got != 0 {
				t.Errorf("port 9999: %d datagrams arrived through the XDP deny", got)
			}
			after, err := d.Counters(client.HostIfindex)
			if err != nil {
				t.Fatal(err)
			}
			diff := diffCounts(before.Ingress, after.Ingress)
			if diff[bpf.ReasonDroppedByPolicy] != sent {
				t.Errorf("ingress counted %v, want %d dropped by policy", diff, sent)
			}
			if diff[bpf.ReasonAcceptedByPolicy]+diff[bpf.ReasonAcceptedEstablished] < sent {
				t.Errorf("ingress counted %v, want %d accepted at TC", diff, sent)
			}
			if n := ruleHits(t, d, 77); n != sent {
				t.Errorf("rule 77 hit %d times, want %d", n, sent)
			}
		})
	}
}

// received counts the datagrams that arrive on c, up to max, waiting a
// moment for each.
func received(t *testing.T, c net.PacketConn, max int) int {
	t.Helper()
	buf := make([]byte, 64)
	n := 0
	for n < max {
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, _, err := c.ReadFrom(buf); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
		n++
	}
	return n
}
