// Command quickstart is sluice's first run: it builds a node and five
// workloads in network namespaces joined by veth pairs (as a CNI wires
// pods), loads the datapath and attaches it through pinned links (package
// attach), and shows its two halves:
//
//   - policy: the server workload has a policy; the client sends allowed
//     and denied TCP, UDP and ICMP to it, and the quickstart prints what
//     passed, what was denied and by which rule, and the counters;
//   - a service: a ClusterIP in front of three backend workloads, each
//     answering with its name; the client connects to it several times,
//     and the quickstart prints which backend served each connection.
//
// It removes everything it made and exits 0. Run it as root on Linux 6.6
// or later (TCX; attach falls back to a clsact qdisc without it):
//
//	go run ./examples/quickstart
package main

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// The client may send anything; the server takes web traffic and DNS; the
// service's backends take their port.
var (
	allowAll = polprog.Rules{Tiers: []polprog.Tier{{
		Name:     "default",
		Policies: []polprog.Policy{{Name: "all", Rules: []polprog.Rule{{ID: 1, Action: polprog.ActionAllow}}}},
	}}}
	serverPolicy = polprog.Rules{Tiers: []polprog.Tier{{
		Name: "default",
		Policies: []polprog.Policy{{Name: "server", Namespace: "demo", Rules: []polprog.Rule{
			{ID: 101, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}},
			{ID: 102, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(81)}},
			{ID: 103, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(53)}},
			{ID: 104, Action: polprog.ActionAllow, Protocol: "icmp", ICMP: &polprog.ICMPMatch{Type: 8}},
		}}},
		EndAction: polprog.EndDeny,
		EndRuleID: 199,
	}}}
	backendPolicy = polprog.Rules{Tiers: []polprog.Tier{{
		Name: "default",
		Policies: []polprog.Policy{{Name: "web", Namespace: "demo", Rules: []polprog.Rule{
			{ID: 201, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(backendPort)}},
		}}},
		EndAction: polprog.EndDeny,
		EndRuleID: 299,
	}}}
)

// The service: a ClusterIP port in front of the backends' port.
const backendPort = 8080

var clusterIP = netip.AddrPortFrom(netip.MustParseAddr("10.96.70.1"), 80)

// prefix starts the name of every namespace the quickstart makes, and
// of its bpffs.
const prefix = "slqs-"

// connections is how many times the client connects to the service.
const connections = 12

func run(out io.Writer) (err error) {
	// A run killed halfway leaves its namespaces and its bpffs: remove
	// them by name. An agent pins under /sys/fs/bpf, so that its successor
	// finds the links; the quickstart takes everything with it.
	names := []string{"client", "server", "web-1", "web-2", "web-3"}
	for _, name := range names {
		topo.DeleteNS(prefix + name)
	}
	topo.DeleteNS(prefix + "node")
	pinDir := filepath.Join(os.TempDir(), prefix+"bpffs")
	if err := topo.MountBPFFS(pinDir); err != nil {
		return err
	}
	defer topo.UnmountBPFFS(pinDir)
	node, err := topo.NewNode(prefix)
	if err != nil {
		return err
	}
	defer node.Close()
	// Policies in the workloads' own terms: what each may send (Egress),
	// what it accepts (Ingress).
	policies := map[string]datapath.Interface{
		"client": {Kind: datapath.Workload, Egress: allowAll},
		"server": {Kind: datapath.Workload, Ingress: serverPolicy},
	}
	var workloads []endpoint
	for i, name := range names {
		w, err := node.AddWorkload(name, netip.AddrFrom4([4]byte{10, 70, 0, byte(i + 1)}))
		if err != nil {
			return err
		}
		iface, ok := policies[name]
		if !ok {
			iface = datapath.Interface{Kind: datapath.Workload, Ingress: backendPolicy}
		}
		workloads = append(workloads, endpoint{name: name, ifname: w.HostIfname, ifindex: w.HostIfindex, addr: w.Addr, iface: iface})
	}
	client, server, backends := node.Workloads[0], node.Workloads[1], workloads[2:]
	web := nat.Service{Frontends: []nat.Frontend{{Addr: clusterIP.Addr(), Port: clusterIP.Port(), Protocol: nat.ProtoTCP}}}
	for _, b := range backends {
		web.Backends = append(web.Backends, nat.Backend{Addr: b.addr, Port: backendPort, Local: true})
	}

	var dp *datapath.Datapath
	// The agent's part runs in the node's namespace, as an agent on a
	// node runs in the host's. Its links are pinned: they stay attached
	// after it exits, until they are detached by name.
	defer func() {
		if derr := node.NS.Do(func() error { return detach(pinDir, workloads) }); err == nil {
			err = derr
		}
	}()
	err = node.NS.Do(func() (err error) {
		dp, err = startDatapath(pinDir, workloads, web)
		return err
	})
	if err != nil {
		return err
	}
	defer dp.Close()

	if err := serve(server); err != nil {
		return err
	}
	fmt.Fprintf(out, "policy: client %s -> server %s\n", client.Addr, server.Addr)
	for _, f := range flows {
		before, err := dp.RuleHits().All()
		if err != nil {
			return err
		}
		err = client.NS.Do(func() error { return f.try(server.Addr) })
		after, err2 := dp.RuleHits().All()
		if err2 != nil {
			return err2
		}
		verdict := "passed"
		if err != nil {
			verdict = "denied"
		}
		fmt.Fprintf(out, "  %-12s %-7s rule %s\n", f.name, verdict, decidingRule(before, after))
	}
	c, err := dp.Counters(server.HostIfindex)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "server counters\n  sent:     %v\n  received: %v\n", c.Egress.NonZero(), c.Ingress.NonZero())

	for i, w := range node.Workloads[2:] {
		if err := serveName(w, backends[i].name); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "service: client %s -> ClusterIP %s, backends", client.Addr, clusterIP)
	for _, b := range backends {
		fmt.Fprintf(out, " %s (%s)", b.name, netip.AddrPortFrom(b.addr, backendPort))
	}
	fmt.Fprintln(out)
	served := map[string]int{}
	for i := range connections {
		var from, name string
		err := client.NS.Do(func() (err error) {
			from, name, err = askName(clusterIP)
			return err
		})
		if err != nil {
			return fmt.Errorf("connection %d: %w", i+1, err)
		}
		served[name]++
		fmt.Fprintf(out, "  connection %2d from %s: served by %s\n", i+1, from, name)
	}
	fmt.Fprint(out, "connections per backend:")
	for _, b := range backends {
		fmt.Fprintf(out, " %s %d", b.name, served[b.name])
	}
	fmt.Fprintln(out)
	return nil
}

// endpoint is a workload as the agent knows it: its name, the host side
// of its veth, its address and how the datapath treats it.
type endpoint struct {
	name    string
	ifname  string
	ifindex int
	addr    netip.Addr
	iface   datapath.Interface
}

// startDatapath is what an agent does: it opens the datapath, tells it
// where the workloads are, gives each workload its policies, programs the
// service, and attaches the datapath's two
// programs to every workload's interface through links pinned under
// pinDir. The caller detaches them (detach).
func startDatapath(pinDir string, workloads []endpoint, web nat.Service) (*datapath.Datapath, error) {
	// embed:start
	dp, err := datapath.Open(datapath.Options{})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*datapath.Datapath, error) {
		dp.Close()
		return nil, err
	}
	// Where each workload lives: the reverse-path check lets a workload
	// send only from its own addresses.
	ifaces := map[int]datapath.Interface{}
	for _, w := range workloads {
		route := routes.Route{Prefix: netip.PrefixFrom(w.addr, 32), Flags: routes.FlagLocalWorkload, Ifindex: uint32(w.ifindex)}
		if err := dp.Routes().Put(route); err != nil {
			return fail(err)
		}
		ifaces[w.ifindex] = w.iface
	}
	// Every interface's policies at once, make-before-break.
	if err := dp.SetInterfaces(ifaces); err != nil {
		return fail(err)
	}
	// Services by name; Sync makes the maps hold exactly these, and a
	// flow always meets a whole backend list.
	if err := dp.Services().Sync(map[string]nat.Service{"web": web}); err != nil {
		return fail(err)
	}
	// One program per TC hook of every interface, through links pinned
	// under pinDir: a restarted agent that opens the same directory
	// replaces their programs in place, without a moment unenforced.
	a, err := attach.Open(pinDir)
	if err != nil {
		return fail(err)
	}
	for _, w := range workloads {
		if _, err := a.AttachTC(w.ifname, attach.Ingress, dp.TCIngress()); err != nil {
			return fail(err)
		}
		if _, err := a.AttachTC(w.ifname, attach.Egress, dp.TCEgress()); err != nil {
			return fail(err)
		}
	}
	// The first start of an agent settles at once; a restarted one, once
	// it has moved every link to its programs.
	if err := dp.Settle(); err != nil {
		return fail(err)
	}
	// embed:end
	return dp, nil
}

// detach removes what startDatapath attached, by interface name; an
// interface it never reached has nothing to detach.
func detach(pinDir string, workloads []endpoint) error {
	a, err := attach.Open(pinDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, w := range workloads {
		for _, dir := range []attach.Direction{attach.Ingress, attach.Egress} {
			if err := a.DetachTC(w.ifname, dir); err != nil && !errors.Is(err, attach.ErrNotAttached) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// serveName answers every TCP connection to w's backend port with name.
func serveName(w *topo.Workload, name string) error {
	return w.NS.Do(func() error {
		l, err := net.Listen("tcp4", netip.AddrPortFrom(w.Addr, backendPort).String())
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(name))
				c.Close()
			}
		}()
		return nil
	})
}

// askName connects to addr and returns the connection's local address and
// what the other end answered.
func askName(addr netip.AddrPort) (from, name string, err error) {
	c, err := net.DialTimeout("tcp4", addr.String(), time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	b, err := io.ReadAll(c)
	return c.LocalAddr().String(), string(b), err
}
