package datapath

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// TestHostEndpointRealTraffic puts host-endpoint policy on the node's
// uplink, a veth to a "remote" namespace: TCP from the remote to the
// node's own address is decided by the normal host tiers (the routes map
// marks the address as the host's), and TCP the node forwards to one of
// its workloads by the apply-on-forward tiers, as polprog.Evaluate says;
// in both families.
func TestHostEndpointRealTraffic(t *testing.T) {
	for _, fam := range []hostEndpointFamily{
		{name: "ipv4", network: "tcp4", web: "10.69.0.2", webNet: "10.69.0.0/24", node: "192.168.69.1/24", remote: "192.168.69.2/24"},
		{name: "ipv6", network: "tcp6", web: "fd00:69::2", webNet: "fd00:69::/64", node: "fd00:69:ff::1/64", remote: "fd00:69:ff::2/64"},
	} {
		t.Run(fam.name, func(t *testing.T) { testHostEndpointRealTraffic(t, fam) })
	}
}

// hostEndpointFamily is one family's addresses of
// TestHostEndpointRealTraffic: the workload's, the net the remote routes
// to the node, the uplink's two ends.
type hostEndpointFamily struct {
	name, network, web, webNet, node, remote string
}

func testHostEndpointRealTraffic(t *testing.T, fam hostEndpointFamily) {
	testutil.RequirePrivileged(t)
	node := testutil.NewNode(t)
	webAddr := netip.MustParseAddr(fam.web)
	web, err := node.AddWorkload("web", webAddr)
	if err != nil {
		t.Fatal(err)
	}
	remote := testutil.NewNetNS(t)
	nodeNS := &testutil.NetNS{NS: node.NS}
	nodeAddr, remoteAddr := netip.MustParsePrefix(fam.node), netip.MustParsePrefix(fam.remote)
	uplink, _ := testutil.ConnectVeth(t, nodeNS, "slup", nodeAddr, remote, "eth0", remoteAddr)
	remote.AddRoute(t, netip.MustParsePrefix(fam.webNet), nodeAddr.Addr(), "eth0")

	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, r := range []routes.Route{
		{Prefix: netip.PrefixFrom(nodeAddr.Addr(), nodeAddr.Addr().BitLen()), Flags: routes.FlagLocalHost},
		{Prefix: netip.PrefixFrom(webAddr, webAddr.BitLen()), Flags: routes.FlagLocalWorkload, Ifindex: uint32(web.HostIfindex)},
	} {
		if err := d.Routes().Put(r); err != nil {
			t.Fatal(err)
		}
	}
	tcpTo := func(id uint64, port uint16) polprog.Rule {
		return polprog.Rule{ID: id, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(port)}}
	}
	hostIngress := polprog.Rules{
		Tiers:               []polprog.Tier{{Name: "host", EndRuleID: 19, Policies: []polprog.Policy{{Rules: []polprog.Rule{tcpTo(10, 7022)}}}}},
		ApplyOnForwardTiers: []polprog.Tier{{Name: "forward", EndRuleID: 29, Policies: []polprog.Policy{{Rules: []polprog.Rule{tcpTo(20, 8080)}}}}},
	}
	hostEgress := polprog.Rules{Tiers: []polprog.Tier{{Name: "out", Policies: []polprog.Policy{{Rules: []polprog.Rule{{ID: 30, Action: polprog.ActionAllow}}}}}}}
	if err := d.SetInterface(uplink.Index, Interface{Kind: Host, Ingress: hostIngress, Egress: hostEgress}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(web.HostIfindex, Interface{Kind: Workload, Ingress: allowAllRules, Egress: allowAllRules}); err != nil {
		t.Fatal(err)
	}
	attachWorkload(t, node, d, web)
	attachTCX(t, node.NS, d, uplink.Index)

	listenIn := func(ns interface{ Do(func() error) error }, addr string) {
		var l net.Listener
		if err := ns.Do(func() (err error) { l, err = net.Listen(fam.network, addr); return }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	at := func(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }
	listenIn(node.NS, at(nodeAddr.Addr(), 7022)) // the host's own service
	listenIn(node.NS, at(nodeAddr.Addr(), 8080))
	listenIn(web.NS, at(webAddr, 7022))
	listenIn(web.NS, at(webAddr, 8080))

	hits := func(id uint64) uint64 {
		n, err := d.RuleHits().Get(id)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, c := range []struct {
		name   string
		dst    string
		ok     bool
		ruleID uint64
	}{
		{"to the host, allowed by its normal tier", at(nodeAddr.Addr(), 7022), true, 10},
		{"to the host, the normal tier's end denies", at(nodeAddr.Addr(), 8080), false, 19},
		{"forwarded, allowed by apply-on-forward", at(webAddr, 8080), true, 20},
		{"forwarded, apply-on-forward's end denies", at(webAddr, 7022), false, 29},
	} {
		before := hits(c.ruleID)
		err := remote.Do(func() error {
			conn, err := net.DialTimeout(fam.network, c.dst, 500*time.Millisecond)
			if err != nil {
				return err
			}
			return conn.Close()
		})
		if (err == nil) != c.ok {
			t.Errorf("%s: connect: %v, want success %v", c.name, err, c.ok)
		}
		var netErr net.Error
		if err != nil && !(errors.As(err, &netErr) && netErr.Timeout()) {
			t.Errorf("%s: connect failed with %v, want a timeout (a silent drop)", c.name, err)
		}
		if got := hits(c.ruleID) - before; got < 1 {
			t.Errorf("%s: rule %d hit %d times, want at least once", c.name, c.ruleID, got)
		}
	}
	ctrs, err := d.Counters(uplink.Index)
	if err != nil {
		t.Fatal(err)
	}
	if ctrs.Ingress[bpf.ReasonAcceptedByPolicy] < 2 || ctrs.Ingress[bpf.ReasonDroppedByPolicy] < 2 {
		t.Errorf("uplink ingress counters %v: want at least 2 allowed and 2 denied", ctrs.Ingress.NonZero())
	}
}
