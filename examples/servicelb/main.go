// Command servicelb shows sluice's service load balancing over many
// connections, and nat's model predicting each one.
//
// It builds a node with three client workloads and four backend
// workloads in network namespaces (each backend answers a connection
// with its name), loads the datapath, attaches it through pinned links,
// and programs three ClusterIP services over the backends:
//
//   - random: no affinity, no Maglev: the backend at the hash of the
//     connection's addresses, ports and protocol, so each connection
//     from another source port lands anywhere;
//   - sticky: ClientIP affinity, each client kept on the backend of its
//     first connection;
//   - maglev: Maglev consistent hashing, backends weighted 1, 1, 2 and 4.
//
// Every client connects to every service many times, each time from a
// source port of its choosing, so that before each connection
// nat.Table.Explain (the pure-Go model of the datapath's choice,
// nat.Choose, over the services programmed and the kernel's affinity
// records) predicts its backend: every choice is deterministic once the
// connection's addresses and ports are known, the hash too. It
// prints a few connections of each service (-all: every one), then the
// distribution per backend next to the model's, and fails if any
// connection went elsewhere than predicted. It removes everything it
// made.
//
// Run it as root on Linux 6.6 or later from the repository root:
//
//	go run ./examples/servicelb [-all]
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

var showAll = flag.Bool("all", false, "print every connection with its prediction, not only each service's first few")

func main() {
	flag.Parse()
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// prefix starts the name of every namespace the example makes, and of its
// bpffs.
const prefix = "sllb-"

const (
	// backendPort is where every backend answers.
	backendPort = 8080
	// perClient is how many connections each client makes to each
	// service, and shown how many of each service's are printed.
	perClient = 30
	shown     = 4
)

var (
	clients  = []string{"c1", "c2", "c3"}
	backends = []string{"be-1", "be-2", "be-3", "be-4"}
	// weights are the maglev service's backend weights, in backends'
	// order.
	weights = []uint16{1, 1, 2, 4}
)

// allowAll lets every workload send and receive anything.
var allowAll = polprog.Rules{Tiers: []polprog.Tier{{
	Name:     "default",
	Policies: []polprog.Policy{{Name: "all", Rules: []polprog.Rule{{Action: polprog.ActionAllow}}}},
}}}

// services returns the three services over the backend workloads, and
// their frontends by name, in the order they are tried.
func services(be []*topo.Workload) (map[string]nat.Service, []string) {
	frontend := func(last byte) []nat.Frontend {
		return []nat.Frontend{{Addr: netip.AddrFrom4([4]byte{10, 96, 72, last}), Port: 80, Protocol: nat.ProtoTCP}}
	}
	random := nat.Service{Frontends: frontend(1)}
	sticky := nat.Service{Frontends: frontend(2), Affinity: time.Minute}
	maglev := nat.Service{Frontends: frontend(3), Maglev: true}
	for i, w := range be {
		b := nat.Backend{Addr: w.Addr, Port: backendPort, Local: true}
		random.Backends = append(random.Backends, b)
		sticky.Backends = append(sticky.Backends, b)
		b.Weight = weights[i]
		maglev.Backends = append(maglev.Backends, b)
	}
	return map[string]nat.Service{"random": random, "sticky": sticky, "maglev": maglev}, []string{"random", "sticky", "maglev"}
}

func run(out io.Writer) (err error) {
	// A run killed halfway leaves its namespaces and its bpffs: remove
	// them by name.
	topo.DeleteNS(prefix + "node")
	for _, name := range append(slices.Clone(clients), backends...) {
		topo.DeleteNS(prefix + name)
	}
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
	var cl, be []*topo.Workload
	for i, name := range clients {
		w, err := node.AddWorkload(name, netip.AddrFrom4([4]byte{10, 72, 0, byte(1 + i)}))
		if err != nil {
			return err
		}
		cl = append(cl, w)
	}
	backendName := map[netip.Addr]string{}
	for i, name := range backends {
		w, err := node.AddWorkload(name, netip.AddrFrom4([4]byte{10, 72, 0, byte(11 + i)}))
		if err != nil {
			return err
		}
		if err := serveName(w, name); err != nil {
			return err
		}
		be = append(be, w)
		backendName[w.Addr] = name
	}
	svcs, order := services(be)

	var dp *datapath.Datapath
	defer func() {
		if derr := node.NS.Do(func() error { return detach(pinDir, node.Workloads) }); err == nil {
			err = derr
		}
	}()
	err = node.NS.Do(func() (err error) {
		dp, err = startDatapath(pinDir, node.Workloads, svcs)
		return err
	})
	if err != nil {
		return err
	}
	defer dp.Close()

	wrong := 0
	port := uint16(40000)
	for _, name := range order {
		svc := svcs[name]
		front := netip.AddrPortFrom(svc.Frontends[0].Addr, svc.Frontends[0].Port)
		fmt.Fprintf(out, "service %s %s: %d connections from %d clients\n", name, front, perClient*len(cl), len(cl))
		tally := newTally()
		for range perClient {
			for _, c := range cl {
				from := netip.AddrPortFrom(c.Addr, port)
				port++
				// The model's prediction comes first: it reads the
				// client's affinity record as the kernel left it.
				now, err := monotonic()
				if err != nil {
					return err
				}
				want, err := dp.Services().Explain(nat.Flow{Client: from, Dest: front, Protocol: nat.ProtoTCP}, now)
				if err != nil {
					return err
				}
				var got string
				if err := c.NS.Do(func() (err error) { got, err = askName(from, front); return err }); err != nil {
					return fmt.Errorf("%s: connection from %s: %w", name, from, err)
				}
				predicted := backendName[want.Backend.Addr]
				tally.add(c.NS.Name[len(prefix):], got, predicted, want.Reason)
				if got != predicted || want.Service != name {
					wrong++
					fmt.Fprintf(out, "  MISPREDICTED %s -> %s: served by %s, nat.Explain: %s %s (%s)\n", from, front, got, want.Service, predicted, want.Reason)
				} else if tally.flows <= shown || *showAll {
					fmt.Fprintf(out, "  %s -> %s: served by %s, nat.Explain: %s (%s)\n", from, front, got, predicted, want.Reason)
				}
			}
		}
		tally.print(out, name, svc)
	}
	if wrong > 0 {
		return fmt.Errorf("%d connections served elsewhere than nat's model predicted", wrong)
	}
	fmt.Fprintf(out, "every connection went to the backend nat's model predicted\n")
	return nil
}

// tally counts one service's connections: served and predicted per
// backend, the model's reasons, and each client's backends.
type tally struct {
	flows     int
	served    map[string]int
	predicted map[string]int
	reasons   map[nat.Reason]int
	byClient  map[string]map[string]int
}

func newTally() *tally {
	return &tally{served: map[string]int{}, predicted: map[string]int{}, reasons: map[nat.Reason]int{}, byClient: map[string]map[string]int{}}
}

func (t *tally) add(client, served, predicted string, reason nat.Reason) {
	t.flows++
	t.served[served]++
	t.predicted[predicted]++
	t.reasons[reason]++
	if t.byClient[client] == nil {
		t.byClient[client] = map[string]int{}
	}
	t.byClient[client][served]++
}

func (t *tally) print(out io.Writer, name string, svc nat.Service) {
	var total uint16
	for _, b := range svc.Backends {
		total += max(b.Weight, 1)
	}
	fmt.Fprintf(out, "  %-6s %9s %9s", "", "served", "predicted")
	if svc.Maglev {
		fmt.Fprintf(out, "  %s", "weight")
	}
	fmt.Fprintln(out)
	for i, b := range backends {
		fmt.Fprintf(out, "  %-6s %9d %9d", b, t.served[b], t.predicted[b])
		if svc.Maglev {
			w := max(svc.Backends[i].Weight, 1)
			fmt.Fprintf(out, "  %d (%d%%)", w, 100*int(w)/int(total))
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintf(out, "  reasons:")
	for _, r := range []nat.Reason{nat.ReasonHash, nat.ReasonMaglev, nat.ReasonAffinity} {
		if t.reasons[r] > 0 {
			fmt.Fprintf(out, " %s %d", r, t.reasons[r])
		}
	}
	fmt.Fprintln(out)
	if svc.Affinity > 0 {
		for _, c := range clients {
			fmt.Fprintf(out, "  client %s:", c)
			for _, b := range backends {
				if n := t.byClient[c][b]; n > 0 {
					fmt.Fprintf(out, " %s %d", b, n)
				}
			}
			fmt.Fprintln(out)
		}
	}
}

// monotonic is CLOCK_MONOTONIC, the clock of the datapath's affinity
// records (bpf_ktime_get_coarse_ns).
func monotonic() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("CLOCK_MONOTONIC: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

// startDatapath opens the datapath, routes each workload to its
// interface, lets each send and receive anything, programs the services
// and attaches the datapath's TC programs through links pinned under
// pinDir, as the quickstart does.
func startDatapath(pinDir string, workloads []*topo.Workload, svcs map[string]nat.Service) (*datapath.Datapath, error) {
	dp, err := datapath.Open(datapath.Options{})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*datapath.Datapath, error) {
		dp.Close()
		return nil, err
	}
	cfgs := map[int]datapath.Interface{}
	for _, w := range workloads {
		route := routes.Route{Prefix: netip.PrefixFrom(w.Addr, 32), Flags: routes.FlagLocalWorkload, Ifindex: uint32(w.HostIfindex)}
		if err := dp.Routes().Put(route); err != nil {
			return fail(err)
		}
		cfgs[w.HostIfindex] = datapath.Interface{Kind: datapath.Workload, Ingress: allowAll, Egress: allowAll}
	}
	if err := dp.SetInterfaces(cfgs); err != nil {
		return fail(err)
	}
	if err := dp.Services().Sync(svcs); err != nil {
		return fail(err)
	}
	a, err := attach.Open(pinDir)
	if err != nil {
		return fail(err)
	}
	for _, w := range workloads {
		if _, err := a.AttachTC(w.HostIfname, attach.Ingress, dp.TCIngress()); err != nil {
			return fail(err)
		}
		if _, err := a.AttachTC(w.HostIfname, attach.Egress, dp.TCEgress()); err != nil {
			return fail(err)
		}
	}
	if err := dp.Settle(); err != nil {
		return fail(err)
	}
	return dp, nil
}

// detach removes what startDatapath attached, by interface name.
func detach(pinDir string, workloads []*topo.Workload) error {
	a, err := attach.Open(pinDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, w := range workloads {
		for _, dir := range []attach.Direction{attach.Ingress, attach.Egress} {
			if err := a.DetachTC(w.HostIfname, dir); err != nil && !errors.Is(err, attach.ErrNotAttached) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
