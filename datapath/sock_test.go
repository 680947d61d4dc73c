package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/routes"
)

// sockFamily is one family's addresses for the connect-time tests.
type sockFamily struct {
	name                                     string
	node, client, b1, b2, clusterIP, emptyIP string
	tcp, udp                                 string
}

var sockFamilies = []sockFamily{
	{"ipv4", "10.69.255.1", "10.69.0.1", "10.69.0.2", "10.69.0.3", "10.96.69.1", "10.96.69.2", "tcp4", "udp4"},
	{"ipv6", "fd00:69:ff::1", "fd00:69::1", "fd00:69::2", "fd00:69::3", "fd00:96::69:1", "fd00:96::69:2", "tcp6", "udp6"},
}

// sockEnv is a node with a client workload and two backend workloads
// (b1, b2, each answering TCP and UDP on port 8080 with its name), the
// datapath's TC programs on every workload interface, and connect-time
// balancing attached to a cgroup of the test: processes in it stand for
// the host's, those in its child pod for the client workload's.
type sockEnv struct {
	d              *Datapath
	node           *topo.Node
	client         *topo.Workload
	cgroup, pod    string
	fam            sockFamily
	backendsByName map[string]netip.Addr
}

// The ports of the web service's frontends and backends.
const (
	sockTCPPort, sockUDPPort         = 80, 53
	sockNodeTCPPort, sockNodeUDPPort = 30080, 30053
	sockBackendPort                  = 8080
)

func newSockEnv(t testing.TB, fam sockFamily) *sockEnv {
	t.Helper()
	testutil.RequirePrivileged(t)
	addr := netip.MustParseAddr
	e := &sockEnv{fam: fam, node: testutil.NewNode(t), backendsByName: map[string]netip.Addr{"b1": addr(fam.b1), "b2": addr(fam.b2)}}
	var err error
	if e.client, err = e.node.AddWorkload("cli", addr(fam.client)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"b1", "b2"} {
		if _, err := e.node.AddWorkload(name, e.backendsByName[name]); err != nil {
			t.Fatal(err)
		}
	}
	// The host's own address, the source of its processes' connections
	// and where its NodePorts answer.
	nodeAddr := addr(fam.node)
	if err := e.node.NS.AddrAdd("lo", netip.PrefixFrom(nodeAddr, nodeAddr.BitLen())); err != nil {
		t.Fatal(err)
	}
	if e.d, err = Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.d.Close() })
	if err := e.d.Routes().Put(routes.Route{Prefix: netip.PrefixFrom(nodeAddr, nodeAddr.BitLen()), Flags: routes.FlagLocalHost}); err != nil {
		t.Fatal(err)
	}
	for _, w := range e.node.Workloads {
		if err := e.d.SetInterface(w.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules, Ingress: allowAllRules}); err != nil {
			t.Fatal(err)
		}
		attachWorkload(t, e.node, e.d, w)
	}
	for _, w := range e.node.Workloads[1:] {
		name := w.NS.Name[len(w.NS.Name)-2:]
		var l net.Listener
		var pc net.PacketConn
		ap := netip.AddrPortFrom(w.Addr, sockBackendPort).String()
		if err := w.NS.Do(func() (err error) {
			if l, err = net.Listen(fam.tcp, ap); err != nil {
				return err
			}
			pc, err = net.ListenPacket(fam.udp, ap)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close(); pc.Close() })
		serveName(l, pc, name)
	}
	if err := e.d.Services().Sync(e.services()); err != nil {
		t.Fatal(err)
	}
	e.cgroup = testutil.TempCgroup(t)
	e.pod = filepath.Join(e.cgroup, "pod")
	if err := os.Mkdir(e.pod, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(e.pod) })
	attachSock(t, e.cgroup, e.d)
	return e
}

// services are web (a ClusterIP and NodePorts, TCP and UDP, over b1 and
// b2) and empty (a ClusterIP without backends).
func (e *sockEnv) services() map[string]nat.Service {
	addr := netip.MustParseAddr
	cluster, empty := addr(e.fam.clusterIP), addr(e.fam.emptyIP)
	wild := netip.IPv4Unspecified()
	if cluster.Is6() {
		wild = netip.IPv6Unspecified()
	}
	web := nat.Service{Frontends: []nat.Frontend{
		{Addr: cluster, Port: sockTCPPort, Protocol: nat.ProtoTCP},
		{Addr: cluster, Port: sockUDPPort, Protocol: nat.ProtoUDP},
		{Addr: wild, Port: sockNodeTCPPort, Protocol: nat.ProtoTCP, NodePort: true, External: true},
		{Addr: wild, Port: sockNodeUDPPort, Protocol: nat.ProtoUDP, NodePort: true, External: true},
	}}
	for _, name := range []string{"b1", "b2"} {
		web.Backends = append(web.Backends, nat.Backend{Addr: e.backendsByName[name], Port: sockBackendPort, Local: true})
	}
	return map[string]nat.Service{
		"web": web,
		"empty": {Frontends: []nat.Frontend{{Addr: empty, Port: sockTCPPort, Protocol: nat.ProtoTCP},
			{Addr: empty, Port: sockUDPPort, Protocol: nat.ProtoUDP}}},
	}
}

// balancedOps are the operations of one client that a service balances:
// n of each kind to the ClusterIP and to the node's NodePorts, and for
// IPv4 TCP and unconnected UDP from an IPv6 socket to the IPv4-mapped
// ClusterIP.
func (e *sockEnv) balancedOps(n int) []sockOp {
	ap := func(a string, port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(a), port) }
	var ops []sockOp
	for range n {
		ops = append(ops,
			sockOp{Kind: sockTCP, Dest: ap(e.fam.clusterIP, sockTCPPort)},
			sockOp{Kind: sockUDPConnected, Dest: ap(e.fam.clusterIP, sockUDPPort)},
			sockOp{Kind: sockUDPUnconnected, Dest: ap(e.fam.clusterIP, sockUDPPort)},
			sockOp{Kind: sockTCP, Dest: ap(e.fam.node, sockNodeTCPPort)},
			sockOp{Kind: sockUDPUnconnected, Dest: ap(e.fam.node, sockNodeUDPPort)},
		)
		if e.fam.name == "ipv4" {
			ops = append(ops, sockOp{Kind: sockTCP, Dest: ap(e.fam.clusterIP, sockTCPPort), V6: true},
				sockOp{Kind: sockUDPUnconnected, Dest: ap(e.fam.clusterIP, sockUDPPort), V6: true})
		}
	}
	return ops
}

// checkBalanced asserts that each balanced operation reached a backend,
// that its socket showed the frontend (getpeername, recvfrom) and held
// the backend in its storage, and that every kind of operation to every
// frontend reached both backends.
func (e *sockEnv) checkBalanced(t *testing.T, who string, ops []sockOp, res []sockResult) {
	t.Helper()
	type kind struct {
		kind string
		dest netip.AddrPort
		v6   bool
	}
	seen := map[kind]map[string]bool{}
	for i, r := range res {
		op := ops[i]
		desc := fmt.Sprintf("%s: %s to %v (v6 socket %v)", who, op.Kind, op.Dest, op.V6)
		be, ok := e.backendsByName[r.Reply]
		if r.Errno != 0 || !ok {
			t.Errorf("%s: errno %v, reply %q: want a backend's name", desc, r.Errno, r.Reply)
			continue
		}
		k := kind{op.Kind, op.Dest, op.V6}
		if seen[k] == nil {
			seen[k] = map[string]bool{}
		}
		seen[k][r.Reply] = true
		if op.Kind != sockUDPUnconnected && r.Peer != op.Dest {
			t.Errorf("%s: getpeername %v, want the frontend", desc, r.Peer)
		}
		if op.Kind != sockTCP && r.From != op.Dest {
			t.Errorf("%s: recvfrom %v, want the frontend", desc, r.From)
		}
		entry := r.NAT.Entries[0]
		got := netip.AddrPortFrom(netip.AddrFrom16(entry.Backend).Unmap(), entry.BackendPort)
		if !r.HasNAT || got != netip.AddrPortFrom(be, sockBackendPort) || entry.FrontendPort != op.Dest.Port() {
			t.Errorf("%s: socket storage %v (%v), want backend %s %v", desc, r.NAT, r.HasNAT, r.Reply, be)
		}
	}
	for k, names := range seen {
		if len(names) != 2 {
			t.Errorf("%s: %s to %v (v6 socket %v) reached only %v", who, k.kind, k.dest, k.v6, names)
		}
	}
}

// TestSockConnectBalancing runs connect-time balancing on real sockets,
// both families: a host process (in the test's cgroup, the node's
// namespace) and a pod's (in its child cgroup, the client workload's
// namespace) reach both backends of a ClusterIP and of the node's
// NodePorts by TCP, connected UDP and unconnected UDP (and, for IPv4, by
// TCP and UDP from IPv6 sockets to the IPv4-mapped ClusterIP);
// getpeername and recvfrom show the frontend; a service without backends
// refuses connect and sendto at once with ECONNREFUSED. The pod's balanced connections
// cross its interface's TC hooks as plain flows: not one conntrack entry
// is a NAT entry, and each backend's flow has a plain one.
func TestSockConnectBalancing(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			ops := e.balancedOps(24)
			empty := func(port uint16) netip.AddrPort {
				return netip.AddrPortFrom(netip.MustParseAddr(fam.emptyIP), port)
			}
			refused := []sockOp{
				{Kind: sockTCP, Dest: empty(sockTCPPort)},
				{Kind: sockUDPConnected, Dest: empty(sockUDPPort)},
				{Kind: sockUDPUnconnected, Dest: empty(sockUDPPort)},
			}
			for _, c := range []struct {
				who, cgroup, netns string
			}{{"host", e.cgroup, e.node.NS.Name}, {"pod", e.pod, e.client.NS.Name}} {
				res := runSockClient(t, c.cgroup, c.netns, e.d.state.sockNAT, append(ops, refused...))
				e.checkBalanced(t, c.who, ops, res[:len(ops)])
				for i, r := range res[len(ops):] {
					if r.Errno != syscall.ECONNREFUSED {
						t.Errorf("%s: %s to %v without backends: errno %v, want ECONNREFUSED", c.who, refused[i].Kind,
							refused[i].Dest, r.Errno)
					}
				}
			}
			e.checkPlainFlows(t)
		})
	}
}

// checkPlainFlows asserts that the conntrack table holds no NAT entry,
// and a plain entry between the client workload and each backend.
func (e *sockEnv) checkPlainFlows(t *testing.T) {
	t.Helper()
	entries, err := e.d.Conntrack().Entries()
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr(e.fam.client)
	plain := map[netip.Addr]bool{}
	for _, en := range entries {
		if typ := en.Value.EntryType(); typ != conntrack.Normal {
			t.Errorf("conntrack entry %v is of type %v: a connect-balanced flow was translated again", en.Key, typ)
			continue
		}
		a, b := en.Key.A(), en.Key.B()
		for _, pair := range [][2]netip.AddrPort{{a, b}, {b, a}} {
			if pair[0].Addr() == client && pair[1].Port() == sockBackendPort {
				plain[pair[1].Addr()] = true
			}
		}
	}
	want := map[netip.Addr]bool{e.backendsByName["b1"]: true, e.backendsByName["b2"]: true}
	if diff := cmp.Diff(want, plain); diff != "" {
		t.Errorf("backends with a plain flow from the client workload (-want +got):\n%s", diff)
	}
}

// TestSockRestart: a restarted agent's connect-time programs replace the
// previous ones in the cgroup's pinned links (attach.AttachCgroup again:
// an update in place, no moment without a program), over the same pinned service maps and the same socket
// storage, so the new generation balances what the old one programmed
// and still shows the frontend to sockets the old one balanced.
func TestSockRestart(t *testing.T) {
	testutil.RequirePrivileged(t)
	fam := sockFamilies[0]
	e := newSockEnv(t, fam)
	// newSockEnv's datapath has no pins: this test's pair share some.
	pinDir := filepath.Join(testutil.TempBPFFS(t), "sluice")
	opts := Options{PinDir: pinDir, ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64}
	old, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Services().Sync(e.services()); err != nil {
		t.Fatal(err)
	}
	// Not under e.cgroup, whose programs (e.d's) would balance too.
	cgroup := testutil.TempCgroup(t)
	links := attachSock(t, cgroup, old)
	ops := []sockOp{}
	for range 16 {
		ops = append(ops, sockOp{Kind: sockTCP, Dest: netip.AddrPortFrom(netip.MustParseAddr(fam.clusterIP), sockTCPPort)})
	}
	e.checkBalanced(t, "old generation", ops, runSockClient(t, cgroup, e.client.NS.Name, old.state.sockNAT, ops))

	next, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if a, b := mapID(t, old.state.sockNAT), mapID(t, next.state.sockNAT); a != b {
		t.Errorf("socket storage: the new generation's is map %d, the old one's %d", b, a)
	}
	links.replace(t, next)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	e.checkBalanced(t, "new generation", ops, runSockClient(t, cgroup, e.client.NS.Name, next.state.sockNAT, ops))
}

// mapID is m's kernel ID.
func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("the kernel gives no map ID")
	}
	return id
}
