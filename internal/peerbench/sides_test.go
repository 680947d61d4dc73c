package peerbench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// peer is one dataplane under test.
type peer struct {
	// name is the column's name in the results.
	name string
	// code ends the side's name prefix, so that sides of one run differ.
	code byte
	// tools are the executables the peer needs; it is skipped without
	// them.
	tools []string
	// sock puts the client in the cgroup with connect-time balancing.
	sock bool
	// conntrack says the node's netfilter conntrack is flushed before each
	// batch, as the reference run did.
	conntrack bool
	// program loads the services into the side's node.
	program func(tb testing.TB, s *side, svcs []svc) error
}

// baseline is the floor: the client connects straight to a server's
// address through a node without rules.
const baseline = "none"

var peers = []peer{
	{name: baseline, code: 'b', program: func(testing.TB, *side, []svc) error { return nil }},
	{name: "sluice-tc", code: 't', program: func(tb testing.TB, s *side, svcs []svc) error { return programSluice(tb, s, svcs, allowAll, false) }},
	{name: "sluice-sock", code: 'c', sock: true, program: func(tb testing.TB, s *side, svcs []svc) error { return programSluice(tb, s, svcs, allowAll, true) }},
	{name: "iptables-legacy", code: 'l', conntrack: true, tools: []string{"iptables-legacy-restore"},
		program: func(_ testing.TB, s *side, svcs []svc) error {
			return s.restore(iptablesRules(svcs), "iptables-legacy-restore")
		}},
	{name: "iptables-nft", code: 'n', conntrack: true, tools: []string{"iptables-nft-restore"},
		program: func(_ testing.TB, s *side, svcs []svc) error {
			return s.restore(iptablesRules(svcs), "iptables-nft-restore")
		}},
	{name: "nftables", code: 'f', conntrack: true, tools: []string{"nft"},
		program: func(_ testing.TB, s *side, svcs []svc) error { return s.restore(nftRules(svcs), "nft", "-f", "-") }},
}

// installOnce installs the peers' tools with apt, once per process.
var installOnce sync.Once

// missingTools returns the tools of p that are not installed. With
// install (SLUICE_PEERBENCH=1), missing tools are first installed with
// apt-get.
func missingTools(tb testing.TB, p peer, install bool) []string {
	var missing []string
	for _, t := range p.tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 || !install {
		return missing
	}
	installOnce.Do(func() {
		for _, args := range [][]string{{"update"}, {"install", "-y", "--no-install-recommends", "iptables", "nftables", "ipset"}} {
			cmd := exec.Command("apt-get", args...)
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			if out, err := cmd.CombinedOutput(); err != nil {
				tb.Logf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	return missingTools(tb, p, false)
}

// side is one peer's topology: a client namespace, a node namespace
// that forwards (where the peer's rules live, and only there) and the
// server namespaces, each server listening on backendPort and
// lastBackendPort (TCP) and draining floodPort (UDP).
type side struct {
	peer   peer
	node   *topo.Node
	client *topo.Workload
	// cgroup holds the side's client processes.
	cgroup string
	// services is a sluice side's service table (nil for the others),
	// kept so that BenchmarkServiceConnectPaired can switch it by Sync.
	services *nat.Table
	// closers undo the setup, last first.
	closers []func() error
}

// sidePrefix starts every name a side makes: "pb", the process's id (so
// concurrent runs differ) and the peer's code.
func sidePrefix(p peer) string { return fmt.Sprintf("pb%04x%c", os.Getpid()&0xffff, p.code) }

// openSide is newSide with the client in sock when p balances at connect
// time and in plain otherwise, failing tb on an error and closing the side
// when tb ends.
func openSide(tb testing.TB, p peer, svcs []svc, plain, sock string) *side {
	tb.Helper()
	cgroup := plain
	if p.sock {
		cgroup = sock
	}
	s, err := newSide(tb, p, svcs, cgroup)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// newSide builds p's topology and programs svcs into it. cgroup is where
// its clients run. The caller closes it.
func newSide(tb testing.TB, p peer, svcs []svc, cgroup string) (_ *side, err error) {
	prefix := sidePrefix(p)
	node, err := topo.NewNode(prefix)
	if err != nil {
		return nil, err
	}
	s := &side{peer: p, node: node, cgroup: cgroup}
	s.closers = append(s.closers, node.Close)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.client, err = node.AddWorkload("c", clientAddr); err != nil {
		return nil, err
	}
	for k := 1; k <= servers; k++ {
		w, err := node.AddWorkload(fmt.Sprintf("s%d", k), serverAddr(k))
		if err != nil {
			return nil, err
		}
		for _, port := range []uint16{backendPort, lastBackendPort} {
			var l net.Listener
			if err := w.NS.Do(func() (err error) {
				l, err = net.Listen("tcp4", netip.AddrPortFrom(w.Addr, port).String())
				return err
			}); err != nil {
				return nil, err
			}
			s.closers = append(s.closers, l.Close)
			go acceptLoop(l)
		}
		var pc net.PacketConn
		if err := w.NS.Do(func() (err error) {
			pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(w.Addr, floodPort).String())
			return err
		}); err != nil {
			return nil, err
		}
		s.closers = append(s.closers, pc.Close)
		go drainLoop(pc)
	}
	if err := p.program(tb, s, svcs); err != nil {
		return nil, fmt.Errorf("%s: program %d services: %w", p.name, len(svcs), err)
	}
	return s, nil
}

// acceptLoop accepts and closes connections until l closes. The client
// measures connect alone, but a full accept queue would drop its SYNs.
func acceptLoop(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// drainLoop reads datagrams until pc closes, so that a flood meets a
// listening socket (no ICMP errors back) as in the reference run.
func drainLoop(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		if _, _, err := pc.ReadFrom(buf); err != nil {
			return
		}
	}
}

// Close removes everything the side made, by name.
func (s *side) Close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	s.closers = nil
	return errors.Join(errs...)
}

// targets are the destinations of the side's client: the first and the
// last service, or for the baseline a server's own address.
func (s *side) targets(svcs []svc) []netip.AddrPort {
	if s.peer.name == baseline {
		return []netip.AddrPort{netip.AddrPortFrom(serverAddr(1), backendPort)}
	}
	return []netip.AddrPort{
		netip.AddrPortFrom(svcs[0].ip, servicePort),
		netip.AddrPortFrom(svcs[len(svcs)-1].ip, servicePort),
	}
}

// flushConntrack empties the node's netfilter conntrack table, for a
// peer that uses it.
func (s *side) flushConntrack() {
	if s.peer.conntrack {
		// An error means no table yet, which is as empty.
		s.node.NS.Handle.ConntrackTableFlush(netlink.ConntrackTable)
	}
}

// restore runs a rule loader inside the node's namespace (never the
// host's) with input on its standard input.
func (s *side) restore(input string, tool ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", s.node.NS.Name}, tool...)...)
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", tool[0], err, out)
	}
	return nil
}

// allowAll is the policy of every interface of the sluice sides.
var allowAll = polprog.Rules{Tiers: []polprog.Tier{{
	Name:     "default",
	Policies: []polprog.Policy{{Name: "all", Rules: []polprog.Rule{{ID: 1, Action: polprog.ActionAllow}}}},
}}}

// programSluice opens a datapath with svcs, attaches its TC programs to
// every interface of the node with attach.AttachTC, and with sock its
// connect-time programs to the side's cgroup. client is the policy of
// traffic from the client's workload interface; every other policy
// allows all.
func programSluice(tb testing.TB, s *side, svcs []svc, client polprog.Rules, sock bool) error {
	d, err := datapath.Open(datapath.Options{ConntrackEntries: 1 << 16, MaxInterfaces: 16, PolicySlots: 1024})
	if err != nil {
		return err
	}
	s.closers = append(s.closers, d.Close)
	a, err := attach.Open(testutil.TempBPFFS(tb))
	if err != nil {
		return err
	}
	for _, w := range s.node.Workloads {
		egress := allowAll
		if w == s.client {
			egress = client
		}
		if err := d.SetInterface(w.HostIfindex, datapath.Interface{Kind: datapath.Workload, Egress: egress, Ingress: allowAll}); err != nil {
			return err
		}
		r := routes.Route{Prefix: netip.PrefixFrom(w.Addr, w.Addr.BitLen()), Flags: routes.FlagLocalWorkload, Ifindex: uint32(w.HostIfindex)}
		if err := d.Routes().Put(r); err != nil {
			return err
		}
		for _, h := range []struct {
			dir  attach.Direction
			prog func() *ebpf.Program
		}{{attach.Ingress, d.TCIngress}, {attach.Egress, d.TCEgress}} {
			if err := s.node.NS.Do(func() error { _, err := a.AttachTC(w.HostIfname, h.dir, h.prog()); return err }); err != nil {
				return err
			}
			s.closers = append(s.closers, func() error {
				return s.node.NS.Do(func() error { return a.DetachTC(w.HostIfname, h.dir) })
			})
		}
	}
	s.services = d.Services()
	if err := s.services.Sync(sluiceServices(svcs)); err != nil {
		return err
	}
	if !sock {
		return nil
	}
	for _, p := range d.SockPrograms().All() {
		if _, err := a.AttachCgroup(s.cgroup, p.Attach, p.Program); err != nil {
			return err
		}
		s.closers = append(s.closers, func() error { return a.DetachCgroup(s.cgroup, p.Attach) })
	}
	return nil
}
