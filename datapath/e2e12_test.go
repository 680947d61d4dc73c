package datapath

// Issue 12, "Topology and tests": each item and the test that covers it.
//
//   - Topology helper (node namespace, workloads over veth, a "remote node"
//     namespace, routes and addresses, removal by name): internal/topo
//     (Node, AddWorkload) with testutil.NewNode, NewNetNS and ConnectVeth
//     for the remote namespace (TestHostEndpointRealTraffic,
//     TestE2E12NodePortRemote). Most existing tests attach with TCX
//     directly (attachTCX); the hitless tests and the tests here go
//     through the attach package.
//   - Policy, allowed TCP passes, denied fails, replies pass, counters
//     move: TestRealTraffic (IPv4), TestRealTrafficIPv6 (TCP only). TCP,
//     UDP and ICMP echo, v4 and v6, with the deciding rule's RuleHits:
//     TestE2E12Policy (e2e12_policy_test.go).
//   - Host-endpoint policy on traffic to the node:
//     TestHostEndpointRealTraffic (IPv4 and IPv6).
//   - Every backend of a frontend reached: TestRealServiceTraffic (TC NAT,
//     both reached) and TestSockConnectBalancing (connect-time LB, both
//     reached). Distribution within a binomial bound: TestE2E12Distribution
//     (TC NAT), TestE2E12SockDistribution (connect-time LB).
//   - UDP request and reply through a frontend: TestRealServiceTraffic,
//     TestSockConnectBalancing.
//   - No backends gives "connection refused" at once, TCP ECONNREFUSED and
//     UDP port unreachable: TestRealServiceTraffic (TC NAT, ClusterIP),
//     TestSockConnectBalancing (connect-time), TestE2E12NodePortRemote
//     (a NodePort from the remote node).
//   - NodePort from the remote node (TCP and UDP, both families), ETP
//     Local keeps the client address: TestE2E12NodePortRemote; ETP
//     Cluster to a backend on another node, source-NATed:
//     TestE2E12NodePortElsewhere (both families, the stack fallback, a
//     FIB lookup's failure counted as a drop, and the uplink's policy
//     denying the translated flow). Neither needs accept_local.
//   - Affinity holds across connections through TC NAT:
//     TestE2E12Affinity.

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// e2e12Attach attaches d's TC programs to the named interfaces of ns
// through the attach package (pins in a private bpffs), detaching them
// by name in tb.Cleanup.
func e2e12Attach(tb testing.TB, ns *topo.NS, d *Datapath, ifnames ...string) {
	tb.Helper()
	a, err := attach.Open(testutil.TempBPFFS(tb))
	if err != nil {
		tb.Fatal(err)
	}
	for _, ifname := range ifnames {
		err := ns.Do(func() error {
			if _, err := a.AttachTC(ifname, attach.Ingress, d.TCIngress()); err != nil {
				return err
			}
			_, err := a.AttachTC(ifname, attach.Egress, d.TCEgress())
			return err
		})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			ns.Do(func() error {
				a.DetachTC(ifname, attach.Ingress)
				return a.DetachTC(ifname, attach.Egress)
			})
		})
	}
}

// e2e12Workloads opens a datapath for node, allows everything at each
// workload's interface and attaches it there, with each workload routed
// to its interface.
func e2e12Workloads(tb testing.TB, node *topo.Node) *Datapath {
	tb.Helper()
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	var names []string
	for _, w := range node.Workloads {
		if err := d.SetInterface(w.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules, Ingress: allowAllRules}); err != nil {
			tb.Fatal(err)
		}
		if err := d.Routes().Put(workloadRoute(netip.PrefixFrom(w.Addr, w.Addr.BitLen()).String(), uint32(w.HostIfindex))); err != nil {
			tb.Fatal(err)
		}
		names = append(names, w.HostIfname)
	}
	e2e12Attach(tb, node.NS, d, names...)
	return d
}

// e2e12ServePeer answers every TCP connection on addr in ns with name and
// the client address it sees ("name addr:port"), until the test ends.
func e2e12ServePeer(tb testing.TB, ns *topo.NS, addr, name string) {
	tb.Helper()
	var l net.Listener
	if err := ns.Do(func() (err error) { l, err = net.Listen("tcp", addr); return }); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s", name, c.RemoteAddr())
			c.Close()
		}
	}()
}

// e2e12Ask connects from ns to addr n times and returns each answer of
// e2e12ServePeer: the backend's name and the client address it saw.
func e2e12Ask(ns interface{ Do(func() error) error }, addr string, n int) ([][2]string, error) {
	var answers [][2]string
	err := ns.Do(func() error {
		for i := range n {
			c, err := net.DialTimeout("tcp", addr, 3*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d to %s: %w", i, addr, err)
			}
			c.SetDeadline(time.Now().Add(3 * time.Second))
			b, err := io.ReadAll(c)
			c.Close()
			if err != nil {
				return fmt.Errorf("connection %d to %s: %w", i, addr, err)
			}
			var name, peer string
			if _, err := fmt.Sscanf(string(b), "%s %s", &name, &peer); err != nil {
				return fmt.Errorf("connection %d to %s: answer %q: %w", i, addr, b, err)
			}
			answers = append(answers, [2]string{name, peer})
		}
		return nil
	})
	return answers, err
}

// TestE2E12NodePortRemote: a client in a "remote node" namespace, routed
// to the node over its uplink (a host interface with the datapath
// attached), reaches a NodePort's backend workload through the node's
// address, in both families, with the external traffic policy Cluster
// and Local; with Local the backend sees the client's own address. UDP
// gets its answer through the NodePort, and a NodePort without backends
// refuses TCP at once and answers UDP with a port unreachable; with ETP
// Local, so does TCP to one whose only backend is on another node.
// accept_local stays 0: the backend's reply, whose source the workload
// interface's ingress hook translates to the node's address, is routed by
// that hook (sl_fib_redirect) rather than by the stack, which would drop
// it as a martian.
func TestE2E12NodePortRemote(t *testing.T) {
	for _, fam := range []struct{ name, backend, node, remote string }{
		{"ipv4", "10.112.0.2", "192.168.112.1/24", "192.168.112.2/24"},
		{"ipv6", "fd00:112::2", "fd00:112:ff::1/64", "fd00:112:ff::2/64"},
	} {
		for _, etpLocal := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/etp-local=%v", fam.name, etpLocal), func(t *testing.T) {
				testE2E12NodePortRemote(t, fam.backend, netip.MustParsePrefix(fam.node), netip.MustParsePrefix(fam.remote), etpLocal)
			})
		}
	}
}

func testE2E12NodePortRemote(t *testing.T, backend string, nodeAddr, remoteAddr netip.Prefix, etpLocal bool) {
	testutil.RequirePrivileged(t)
	node := testutil.NewNode(t)
	web, err := node.AddWorkload("web", netip.MustParseAddr(backend))
	if err != nil {
		t.Fatal(err)
	}
	remote := testutil.NewNetNS(t)
	uplink, _ := testutil.ConnectVeth(t, &testutil.NetNS{NS: node.NS}, "sl12up", nodeAddr, remote, "eth0", remoteAddr)

	d := e2e12Workloads(t, node)
	if err := d.Routes().Put(routes.Route{Prefix: netip.PrefixFrom(nodeAddr.Addr(), nodeAddr.Addr().BitLen()), Flags: routes.FlagLocalHost}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(uplink.Index, Interface{Kind: Host, Ingress: allowAllRules, Egress: allowAllRules}); err != nil {
		t.Fatal(err)
	}
	e2e12Attach(t, node.NS, d, uplink.Name)
	e2e12NoAcceptLocal(t, node.NS, uplink.Name, web.HostIfname)
	backendAP := netip.AddrPortFrom(web.Addr, 8080).String()
	svc := nodePort(backendAP, true)
	svc.ExternalLocal = etpLocal
	anyAddr := svc.Frontends[0].Addr
	svc.Frontends = append(svc.Frontends, nat.Frontend{Addr: anyAddr, Port: 30053, Protocol: nat.ProtoUDP, NodePort: true, External: true})
	empty := nat.Service{ExternalLocal: etpLocal, Frontends: []nat.Frontend{
		{Addr: anyAddr, Port: 30081, Protocol: nat.ProtoTCP, NodePort: true, External: true},
		{Addr: anyAddr, Port: 30054, Protocol: nat.ProtoUDP, NodePort: true, External: true},
	}}
	// elsewhere's only backend is on another node: with ETP Local a
	// client from outside has no backend to reach.
	elsewhere := nat.Service{ExternalLocal: etpLocal,
		Frontends: []nat.Frontend{{Addr: anyAddr, Port: 30082, Protocol: nat.ProtoTCP, NodePort: true, External: true}},
		Backends:  []nat.Backend{{Addr: e2e12Elsewhere(anyAddr), Port: 8080}}}
	if err := d.Services().Sync(map[string]nat.Service{"np": svc, "empty": empty, "elsewhere": elsewhere}); err != nil {
		t.Fatal(err)
	}
	e2e12ServePeer(t, web.NS, backendAP, "web")
	e2e12EchoUDP(t, web.NS, backendAP)

	answers, err := e2e12Ask(remote, netip.AddrPortFrom(nodeAddr.Addr(), 30080).String(), 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range answers {
		if a[0] != "web" {
			t.Errorf("answer from %q, want web", a[0])
		}
		peer, err := netip.ParseAddrPort(a[1])
		if err != nil {
			t.Fatal(err)
		}
		if etpLocal && peer.Addr().Unmap() != remoteAddr.Addr() {
			t.Errorf("with ETP Local the backend saw client %v, want %v", peer, remoteAddr.Addr())
		}
	}
	err = e2e12UDPOnce(remote.NS, netip.AddrPortFrom(nodeAddr.Addr(), 30053).String())
	for try := 1; err != nil && try < e2e12Tries; try++ {
		err = e2e12UDPOnce(remote.NS, netip.AddrPortFrom(nodeAddr.Addr(), 30053).String())
	}
	if err != nil {
		t.Errorf("UDP through the NodePort: %v", err)
	}
	refused := []uint16{30081}
	if etpLocal {
		refused = append(refused, 30082)
	}
	for _, port := range refused {
		err = remote.Do(func() error {
			// Refused at once: a timeout would take the whole 3 s.
			_, err := net.DialTimeout("tcp", netip.AddrPortFrom(nodeAddr.Addr(), port).String(), 3*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				return fmt.Errorf("TCP to NodePort %d without backends to reach: %v, want connection refused", port, err)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	if err := e2e12UDPOnce(remote.NS, netip.AddrPortFrom(nodeAddr.Addr(), 30054).String()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP to a NodePort without backends: %v, want connection refused (a port unreachable)", err)
	}
}

// e2e12Elsewhere is an address of a backend on another node, of the
// family of addr.
func e2e12Elsewhere(addr netip.Addr) netip.Addr {
	if addr.Is4() {
		return netip.MustParseAddr("10.112.9.9")
	}
	return netip.MustParseAddr("fd00:112:9::9")
}

// binomialBound is the range in which a binomial count of n trials of
// probability p falls but with a chance below about 1e-9 (6 standard
// deviations), so a correct balancer fails a test practically never.
func binomialBound(n int, p float64) (lo, hi int) {
	mean, sd := float64(n)*p, math.Sqrt(float64(n)*p*(1-p))
	return int(math.Floor(mean - 6*sd)), int(math.Ceil(mean + 6*sd))
}

// e2e12Family is one family's addresses for the three-backend tests:
// a workload prefix (client .1, backends .2 to .4) and a ClusterIP.
type e2e12Family struct{ name, prefix, clusterIP string }

var e2e12Families = []e2e12Family{
	{"ipv4", "10.112.1.", "10.96.112.1"},
	{"ipv6", "fd00:112:1::", "fd00:96::112:1"},
}

// e2e12ThreeBackends builds a node with a client workload and three
// backend workloads (b1 to b3, answering as e2e12ServePeer on port 8080),
// the datapath attached to them, and a ClusterIP on port 80 whose
// service is svc with those backends; it returns the client and the
// frontend.
func e2e12ThreeBackends(t *testing.T, fam e2e12Family, svc nat.Service) (*topo.Workload, string) {
	t.Helper()
	node, client, b1 := nodePair(t, fam.prefix+"1", fam.prefix+"2")
	b2, err := node.AddWorkload("b2", netip.MustParseAddr(fam.prefix+"3"))
	if err != nil {
		t.Fatal(err)
	}
	b3, err := node.AddWorkload("b3", netip.MustParseAddr(fam.prefix+"4"))
	if err != nil {
		t.Fatal(err)
	}
	d := e2e12Workloads(t, node)
	svc.Frontends = []nat.Frontend{{Addr: netip.MustParseAddr(fam.clusterIP), Port: 80, Protocol: nat.ProtoTCP}}
	for i, w := range []*topo.Workload{b1, b2, b3} {
		svc.Backends = append(svc.Backends, nat.Backend{Addr: w.Addr, Port: 8080, Local: true})
		e2e12ServePeer(t, w.NS, netip.AddrPortFrom(w.Addr, 8080).String(), fmt.Sprintf("b%d", i+1))
	}
	if err := d.Services().Sync(map[string]nat.Service{"web": svc}); err != nil {
		t.Fatal(err)
	}
	return client, netip.AddrPortFrom(netip.MustParseAddr(fam.clusterIP), 80).String()
}

// TestE2E12Distribution: a client workload's connections to a ClusterIP
// with three backend workloads, through TC NAT, reach every backend, each
// with a share within a binomial bound of a third, in both families.
func TestE2E12Distribution(t *testing.T) {
	const conns = 240
	for _, fam := range e2e12Families {
		t.Run(fam.name, func(t *testing.T) {
			client, frontend := e2e12ThreeBackends(t, fam, nat.Service{})
			answers, err := e2e12Ask(client.NS, frontend, conns)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			for _, a := range answers {
				got[a[0]]++
			}
			t.Logf("connections per backend: %v", got)
			lo, hi := binomialBound(conns, 1.0/3)
			for _, name := range []string{"b1", "b2", "b3"} {
				if got[name] < lo || got[name] > hi {
					t.Errorf("backend %s got %d of %d connections, want %d to %d", name, got[name], conns, lo, hi)
				}
			}
		})
	}
}

// TestE2E12Affinity: with session affinity, every connection of a client
// workload to a ClusterIP with three backends reaches the backend its
// first one did, through TC NAT, in both families. Without affinity 30
// connections would all land on one backend with a chance of 3^-29.
func TestE2E12Affinity(t *testing.T) {
	for _, fam := range e2e12Families {
		t.Run(fam.name, func(t *testing.T) {
			client, frontend := e2e12ThreeBackends(t, fam, nat.Service{Affinity: time.Hour})
			answers, err := e2e12Ask(client.NS, frontend, 30)
			if err != nil {
				t.Fatal(err)
			}
			for i, a := range answers {
				if a[0] != answers[0][0] {
					t.Errorf("connection %d reached %s, the first reached %s", i, a[0], answers[0][0])
				}
			}
		})
	}
}

// TestE2E12SockDistribution: a pod's TCP connections to a ClusterIP with
// two backends, balanced at connect time (newSockEnv), reach each backend
// with a share within a binomial bound of a half, in both families.
func TestE2E12SockDistribution(t *testing.T) {
	const conns = 200
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			dest := netip.AddrPortFrom(netip.MustParseAddr(fam.clusterIP), sockTCPPort)
			ops := make([]sockOp, conns)
			for i := range ops {
				ops[i] = sockOp{Kind: sockTCP, Dest: dest}
			}
			got := map[string]int{}
			for i, r := range runSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, ops) {
				if r.Errno != 0 {
					t.Fatalf("connection %d: %v", i, r.Errno)
				}
				got[r.Reply]++
			}
			t.Logf("connections per backend: %v", got)
			lo, hi := binomialBound(conns, 0.5)
			for name := range e.backendsByName {
				if got[name] < lo || got[name] > hi {
					t.Errorf("backend %s got %d of %d connections, want %d to %d", name, got[name], conns, lo, hi)
				}
			}
		})
	}
}

// TestE2E12NodePortElsewhere: with ETP Cluster, a client in the remote
// namespace reaches a NodePort whose only backend is on another node (a
// second address of the remote namespace, past the uplink), in both
// families: the node source-NATs the flow to its own address, so the
// backend sees the node as the client, and the reply returns to the
// client from the NodePort. accept_local stays 0 on every interface: the
// uplink's ingress hook, which translates both directions, routes the
// translated packets itself (sl_fib_redirect), so the node's stack
// forwards none of them, which its forwarding counter shows. A packet the
// hook leaves to the stack takes it as before this path existed, and
// needs accept_local there: the fallback sub-test source-NATs to a node
// address the routes map does not name as the node's, so the hook does
// not route those packets itself (sl_fib_redirect's answer to a source it
// does not know as the node's). A FIB lookup that fails is a drop,
// counted: with IPv6 forwarding off on the uplink alone, the stack would
// still forward (it consults the namespace's setting), but the lookup
// answers "forwarding disabled" for the interface, and the hook drops the
// source-NATed SYN as dropped_fib_no_route rather than hand it on. A
// policy of the uplink that denies the translated flow still denies it,
// at the egress hook the redirected packets cross.
func TestE2E12NodePortElsewhere(t *testing.T) {
	for _, c := range []struct {
		name, node, remote, backend string
		// fallback source-NATs to a second node address without a
		// FlagLocalHost route, with accept_local on the uplink.
		fallback bool
		// fibOff turns IPv6 forwarding off on the uplink alone: the FIB
		// lookup answers "forwarding disabled", and the hook drops the
		// flow's SYN, counted, though the stack, which consults the
		// namespace's setting, would forward it.
		fibOff bool
		// deny gives the uplink an Egress policy that denies TCP to the
		// backend's port.
		deny bool
	}{
		{name: "ipv4", node: "192.168.113.1/24", remote: "192.168.113.2/24", backend: "192.168.113.3:8080"},
		{name: "ipv6", node: "fd00:113::1/64", remote: "fd00:113::2/64", backend: "[fd00:113::3]:8080"},
		{name: "ipv4/stack-fallback", node: "192.168.113.1/24", remote: "192.168.113.2/24", backend: "192.168.113.3:8080", fallback: true},
		{name: "ipv6/fib-forwarding-off", node: "fd00:113::1/64", remote: "fd00:113::2/64", backend: "[fd00:113::3]:8080", fibOff: true},
		{name: "ipv4/denied", node: "192.168.113.1/24", remote: "192.168.113.2/24", backend: "192.168.113.3:8080", deny: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			testE2E12NodePortElsewhere(t, netip.MustParsePrefix(c.node), netip.MustParsePrefix(c.remote),
				netip.MustParseAddrPort(c.backend), c.fallback, c.fibOff, c.deny)
		})
	}
}

func testE2E12NodePortElsewhere(t *testing.T, nodeAddr, remoteAddr netip.Prefix, backend netip.AddrPort, fallback, fibOff, deny bool) {
	testutil.RequirePrivileged(t)
	node := testutil.NewNode(t)
	remote := testutil.NewNetNS(t)
	v6 := nodeAddr.Addr().Is6()
	if v6 {
		// No IPv6 workload turned it on (topo.Node.AddWorkload).
		if err := node.NS.Sysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
			t.Fatal(err)
		}
	}
	uplink, _ := testutil.ConnectVeth(t, &testutil.NetNS{NS: node.NS}, "sl12up", nodeAddr, remote, "eth0", remoteAddr)
	if err := remote.AddrAdd("eth0", netip.PrefixFrom(backend.Addr(), backend.Addr().BitLen())); err != nil {
		t.Fatal(err)
	}
	snat := nat.SNAT{IPv4: nodeAddr.Addr(), PortMin: 61000, PortMax: 61099}
	if v6 {
		snat.IPv4, snat.IPv6 = netip.Addr{}, nodeAddr.Addr()
	}
	e2e12NoAcceptLocal(t, node.NS, uplink.Name)
	if fibOff {
		if err := node.NS.Sysctl("net/ipv6/conf/"+uplink.Name+"/forwarding", "0"); err != nil {
			t.Fatal(err)
		}
	}
	if fallback {
		snat.IPv4 = netip.MustParseAddr("192.168.113.4")
		if err := node.NS.AddrAdd(uplink.Name, netip.PrefixFrom(snat.IPv4, 32)); err != nil {
			t.Fatal(err)
		}
		if err := node.NS.Sysctl("net/ipv4/conf/"+uplink.Name+"/accept_local", "1"); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Routes().Put(routes.Route{Prefix: netip.PrefixFrom(nodeAddr.Addr(), nodeAddr.Addr().BitLen()), Flags: routes.FlagLocalHost}); err != nil {
		t.Fatal(err)
	}
	if err := d.SNAT().Set(snat); err != nil {
		t.Fatal(err)
	}
	egress := allowAllRules
	if deny {
		egress = polprog.Rules{Tiers: []polprog.Tier{{Name: "default", Policies: []polprog.Policy{{Name: "up", Rules: []polprog.Rule{
			{ID: 7, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(backend.Port())}},
			{ID: 8, Action: polprog.ActionAllow},
		}}}}}}
	}
	if err := d.SetInterface(uplink.Index, Interface{Kind: Host, Ingress: allowAllRules, Egress: egress}); err != nil {
		t.Fatal(err)
	}
	e2e12Attach(t, node.NS, d, uplink.Name)
	if err := d.Services().Sync(map[string]nat.Service{"np": nodePort(backend.String(), false)}); err != nil {
		t.Fatal(err)
	}
	e2e12ServePeer(t, remote.NS, backend.String(), "far")
	forwardedBefore := e2e12Forwarded(t, node.NS, v6)
	frontend := netip.AddrPortFrom(nodeAddr.Addr(), 30080).String()
	if deny || fibOff {
		err := remote.Do(func() error {
			c, err := net.DialTimeout("tcp", frontend, time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			t.Error("a flow the uplink's Egress policy or its FIB lookup refuses was connected")
		}
		up, err := d.Counters(uplink.Index)
		if err != nil {
			t.Fatal(err)
		}
		if fibOff {
			if up.Ingress[bpf.ReasonDroppedFIBNoRoute] == 0 || up.Ingress[bpf.ReasonAcceptedByPolicy] != 0 {
				t.Errorf("uplink ingress counters %v: want the SYNs dropped as dropped_fib_no_route, none accepted", up.Ingress.NonZero())
			}
			if forwarded := e2e12Forwarded(t, node.NS, v6) - forwardedBefore; forwarded != 0 {
				t.Errorf("the node's stack forwarded %d packets; want none: the hook drops them", forwarded)
			}
			return
		}
		hits, err := d.RuleHits().Get(7)
		if err != nil {
			t.Fatal(err)
		}
		if up.Egress[bpf.ReasonDroppedByPolicy] == 0 || hits == 0 {
			t.Errorf("uplink egress counters %v, deny rule hits %d: want the SYN dropped by policy", up.Egress.NonZero(), hits)
		}
		return
	}
	answers, err := e2e12Ask(remote, frontend, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range answers {
		peer, err := netip.ParseAddrPort(a[1])
		if err != nil {
			t.Fatal(err)
		}
		if a[0] != "far" || peer.Addr().Unmap() != snat.IPv4.Unmap() && peer.Addr().Unmap() != snat.IPv6 {
			t.Errorf("answer from %s, which saw client %v; want far, seeing the node %v", a[0], peer, snat)
		}
	}
	forwarded := e2e12Forwarded(t, node.NS, v6) - forwardedBefore
	if fallback && forwarded == 0 {
		t.Errorf("with the hook leaving the packets to the stack, the node's stack forwarded none; want the client's")
	}
	if !fallback && forwarded != 0 {
		t.Errorf("the node's stack forwarded %d packets; want none: the uplink's hook redirects them", forwarded)
	}
}

// e2e12NoAcceptLocal fails the test unless accept_local is 0 in ns,
// for all, default and each named interface: what these tests show
// works without it.
func e2e12NoAcceptLocal(t *testing.T, ns *topo.NS, ifnames ...string) {
	t.Helper()
	for _, name := range append([]string{"all", "default"}, ifnames...) {
		var b []byte
		err := ns.Do(func() (err error) {
			b, err = os.ReadFile("/proc/sys/net/ipv4/conf/" + name + "/accept_local")
			return
		})
		if err != nil {
			t.Fatal(err)
		}
		if v := strings.TrimSpace(string(b)); v != "0" {
			t.Fatalf("net.ipv4.conf.%s.accept_local is %s in %s; these tests need it 0", name, v, ns.Name)
		}
	}
}

// e2e12Forwarded returns how many packets the stack of ns has forwarded
// in the family: IpForwDatagrams (net/snmp) or Ip6OutForwDatagrams
// (net/snmp6), read through /proc/thread-self: /proc/net follows the
// process's first thread, which is not in ns.
func e2e12Forwarded(t *testing.T, ns *topo.NS, v6 bool) uint64 {
	t.Helper()
	var n uint64
	err := ns.Do(func() error {
		if v6 {
			b, err := os.ReadFile("/proc/thread-self/net/snmp6")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "Ip6OutForwDatagrams" {
					n, err = strconv.ParseUint(f[1], 10, 64)
					return err
				}
			}
			return errors.New("no Ip6OutForwDatagrams in /proc/net/snmp6")
		}
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Ip:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i, name := range names {
				if name == "ForwDatagrams" && i < len(f) {
					n, err = strconv.ParseUint(f[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no Ip ForwDatagrams in /proc/net/snmp")
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
