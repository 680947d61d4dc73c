package main

import (
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// TestExplainIPv6 explains IPv6 flows as the kernel decided them: a
// ClusterIP flow's backend, and the server's policy that admits TCP 8080
// (rule 11) and denies 8081 (rule 12).
func TestExplainIPv6(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := testutil.NewNode(t)
	client, err := node.AddWorkload("cli", netip.MustParseAddr("fd00:131::1"))
	if err != nil {
		t.Fatal(err)
	}
	server, err := node.AddWorkload("srv", netip.MustParseAddr("fd00:131::2"))
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{node: node, client: client, server: server, pinDir: filepath.Join(testutil.TempBPFFS(t), "pins"), debugDir: t.TempDir()}
	a.d, err = datapath.Open(datapath.Options{PinDir: a.pinDir, DebugDir: a.debugDir, ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.d.Close() })
	policy := polprog.Rules{Tiers: []polprog.Tier{{Name: "default", EndRuleID: 99, Policies: []polprog.Policy{{Name: "server", Rules: []polprog.Rule{
		{ID: 11, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(8080)}},
		{ID: 12, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(8081)}},
	}}}}}}
	for _, w := range node.Workloads {
		if err := a.d.Routes().Put(routes.Route{Prefix: netip.PrefixFrom(w.Addr, 128), Flags: routes.FlagLocalWorkload, Ifindex: uint32(w.HostIfindex)}); err != nil {
			t.Fatal(err)
		}
	}
	vip := netip.MustParseAddr("fd00:96::131:1")
	if err := a.d.Services().Sync(map[string]nat.Service{"web": {Frontends: []nat.Frontend{{Addr: vip, Port: 80, Protocol: nat.ProtoTCP}},
		Backends: []nat.Backend{{Addr: server.Addr, Port: 8080, Local: true}}}}); err != nil {
		t.Fatal(err)
	}
	if err := node.NS.Do(func() error {
		return a.d.SetInterfaces(map[int]datapath.Interface{client.HostIfindex: {Kind: datapath.Workload, Egress: allowAll},
			server.HostIfindex: {Kind: datapath.Workload, Ingress: policy}})
	}); err != nil {
		t.Fatal(err)
	}
	for _, w := range node.Workloads {
		for _, h := range []struct {
			prog *ebpf.Program
			typ  ebpf.AttachType
		}{{a.d.TCIngress(), ebpf.AttachTCXIngress}, {a.d.TCEgress(), ebpf.AttachTCXEgress}} {
			var l link.Link
			if err := node.NS.Do(func() (err error) {
				l, err = link.AttachTCX(link.TCXOptions{Interface: w.HostIfindex, Program: h.prog, Attach: h.typ})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}
	}
	if err := a.d.Settle(); err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{"8080", "8081"} {
		var l net.Listener
		if err := server.NS.Do(func() (err error) { l, err = net.Listen("tcp6", "["+server.Addr.String()+"]:"+port); return }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("srv"))
				c.Close()
			}
		}()
	}
	ap := netip.AddrPortFrom
	dial := func(src, dst netip.AddrPort, timeout time.Duration) (string, error) {
		var b []byte
		err := client.NS.Do(func() error {
			d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(src)}
			c, err := d.Dial("tcp6", dst.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			b, err = io.ReadAll(c)
			return err
		})
		return string(b), err
	}

	web := ap(client.Addr, 47000)
	pred := a.explainJSON(t, client.HostIfname, "ingress", "tcp", web, ap(vip, 80))
	if pred.Outcome.Reason != "accepted_by_policy" || pred.Outcome.DNAT != ap(server.Addr, 8080).String() {
		t.Fatalf("new IPv6 service flow: %+v", pred.Outcome)
	}
	if name, err := dial(web, ap(vip, 80), 3*time.Second); err != nil || name != "srv" {
		t.Fatalf("IPv6 service: %q, %v", name, err)
	}
	tracked := a.explainJSON(t, client.HostIfname, "ingress", "tcp", web, ap(vip, 80))
	if !tracked.Conntrack.Passes || tracked.Conntrack.Backend != ap(server.Addr, 8080).String() {
		t.Errorf("tracked IPv6 service flow: %+v", tracked.Conntrack)
	}
	atServer := a.explainJSON(t, server.HostIfname, "egress", "tcp", web, ap(server.Addr, 8080))
	if !atServer.Conntrack.Passes || atServer.Policy != nil {
		t.Errorf("translated flow at the server: %+v", atServer)
	}

	denied := ap(client.Addr, 47001)
	if _, err := dial(denied, ap(server.Addr, 8081), 500*time.Millisecond); err == nil {
		t.Fatal("IPv6 TCP to 8081 was not denied")
	}
	d := a.explainJSON(t, server.HostIfname, "egress", "tcp", denied, ap(server.Addr, 8081))
	if d.Policy == nil || d.Policy.RuleID != 12 || d.Outcome.Reason != "dropped_by_policy" || !d.Conntrack.Found {
		t.Errorf("denied IPv6 flow: %+v, policy %+v", d.Outcome, d.Policy)
	}
	if hits, err := a.d.RuleHits().Get(12); err != nil || hits == 0 {
		t.Errorf("rule 12 hits %d (%v): the kernel did not deny by it", hits, err)
	}
	var entries []ctEntry
	a.cliJSON(t, &entries, "conntrack", "-addr", server.Addr.String(), "-port", "8081")
	if len(entries) != 1 || entries[0].State != "tcp-syn-sent" {
		t.Errorf("IPv6 entries of 8081: %+v", entries)
	}
}
