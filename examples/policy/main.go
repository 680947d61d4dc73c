// Command policy applies network policy from a file to a workload and
// explains each verdict twice: from the kernel's record and from the
// pure-Go reference evaluator.
//
// It reads tiers, policies and rules (a polprog.Rules in JSON: actions,
// end actions and port ranges by name, CIDRs as text) and makes them the
// ingress policy of a server workload, on a node whose client workload
// may send anything. The client then tries a set of TCP, UDP and ICMP
// flows against the server. For each flow it prints whether it passed,
// what polprog.Evaluate decides for its first packet (the verdict and
// the deciding rule), and which rules' hit counters moved in the kernel
// (Datapath.RuleHits), side by side; then the server's counters. It
// fails if the kernel and the evaluator disagree on any flow. It removes
// everything it made.
//
// Run it as root on Linux 6.6 or later from the repository root, with
// the example's policy or your own:
//
//	go run ./examples/policy
//	go run ./examples/policy -policy my-policy.json
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

var policyFile = flag.String("policy", "examples/policy/policy.json", "the server's ingress policy: a polprog.Rules in JSON")

func main() {
	flag.Parse()
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// prefix starts the name of every namespace the example makes, and of its
// bpffs.
const prefix = "slpol-"

var (
	clientAddr = netip.MustParseAddr("10.71.0.1")
	serverAddr = netip.MustParseAddr("10.71.0.2")
)

// allowAll is the client's egress policy. Its rule has no ID, so it
// counts no hits: every hit that moves is the server's policy's.
var allowAll = polprog.Rules{Tiers: []polprog.Tier{{
	Name:     "default",
	Policies: []polprog.Policy{{Name: "all", Rules: []polprog.Rule{{Action: polprog.ActionAllow}}}},
}}}

// readPolicy reads a polprog.Rules from the JSON file at path. A field
// the Rules do not have is an error, so that a misspelt match is not
// silently a wildcard; so is a policy the compiler would refuse.
func readPolicy(path string) (polprog.Rules, *polprog.Evaluator, error) {
	f, err := os.Open(path)
	if err != nil {
		return polprog.Rules{}, nil, err
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var rules polprog.Rules
	if err := dec.Decode(&rules); err != nil {
		return polprog.Rules{}, nil, fmt.Errorf("policy %s: %w", path, err)
	}
	eval, err := polprog.NewEvaluator(rules)
	if err != nil {
		return polprog.Rules{}, nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return rules, eval, nil
}

func run(out io.Writer) (err error) {
	policy, eval, err := readPolicy(*policyFile)
	if err != nil {
		return err
	}
	// A run killed halfway leaves its namespaces and its bpffs: remove
	// them by name.
	topo.DeleteNS(prefix+"node", prefix+"client", prefix+"server")
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
	client, err := node.AddWorkload("client", clientAddr)
	if err != nil {
		return err
	}
	server, err := node.AddWorkload("server", serverAddr)
	if err != nil {
		return err
	}

	var dp *datapath.Datapath
	defer func() {
		if derr := node.NS.Do(func() error { return detach(pinDir, client, server) }); err == nil {
			err = derr
		}
	}()
	err = node.NS.Do(func() (err error) {
		dp, err = startDatapath(pinDir, map[*topo.Workload]datapath.Interface{
			client: {Kind: datapath.Workload, Egress: allowAll},
			server: {Kind: datapath.Workload, Ingress: policy},
		})
		return err
	})
	if err != nil {
		return err
	}
	defer dp.Close()
	if err := serve(server, flows); err != nil {
		return err
	}

	fmt.Fprintf(out, "policy %s on server %s's ingress, flows from client %s\n", *policyFile, server.Addr, client.Addr)
	fmt.Fprintf(out, "  %-18s %-7s %-34s %s\n", "flow", "result", "polprog.Evaluate", "kernel: rule hits that moved")
	disagree := 0
	for i, f := range flows {
		srcPort := uint16(40000 + i)
		want := eval.Evaluate(nil, f.packet(client.Addr, srcPort, server.Addr))
		before, err := dp.RuleHits().All()
		if err != nil {
			return err
		}
		sent := client.NS.Do(func() error { return f.try(client.Addr, srcPort, server.Addr) })
		after, err := dp.RuleHits().All()
		if err != nil {
			return err
		}
		moved := movedHits(before, after)
		result, agreement := "passed", "agree"
		if sent != nil {
			result = "denied"
		}
		if !agrees(want, sent == nil, moved) {
			agreement = "DISAGREE"
			disagree++
		}
		model := fmt.Sprintf("%s, rule %d", want.Verdict, want.RuleID)
		if len(want.Hits) > 1 {
			model += fmt.Sprintf(" (hits %s)", ids(want.Hits))
		}
		fmt.Fprintf(out, "  %-18s %-7s %-34s %-10s %s\n", f.name(), result, model, ids(moved), agreement)
	}
	c, err := dp.Counters(server.HostIfindex)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "server counters\n  received: %v\n  sent:     %v\n", c.Ingress.NonZero(), c.Egress.NonZero())
	if disagree > 0 {
		return fmt.Errorf("the kernel and polprog.Evaluate disagree on %d of %d flows", disagree, len(flows))
	}
	fmt.Fprintf(out, "the kernel agrees with polprog.Evaluate on all %d flows\n", len(flows))
	return nil
}

// startDatapath opens the datapath, routes each workload to its interface,
// configures the interfaces and attaches the datapath's TC programs to
// them through links pinned under pinDir, as the quickstart does.
func startDatapath(pinDir string, ifaces map[*topo.Workload]datapath.Interface) (*datapath.Datapath, error) {
	dp, err := datapath.Open(datapath.Options{})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*datapath.Datapath, error) {
		dp.Close()
		return nil, err
	}
	cfgs := map[int]datapath.Interface{}
	for w, iface := range ifaces {
		route := routes.Route{Prefix: netip.PrefixFrom(w.Addr, 32), Flags: routes.FlagLocalWorkload, Ifindex: uint32(w.HostIfindex)}
		if err := dp.Routes().Put(route); err != nil {
			return fail(err)
		}
		cfgs[w.HostIfindex] = iface
	}
	if err := dp.SetInterfaces(cfgs); err != nil {
		return fail(err)
	}
	a, err := attach.Open(pinDir)
	if err != nil {
		return fail(err)
	}
	for w := range ifaces {
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
func detach(pinDir string, workloads ...*topo.Workload) error {
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

// movedHits returns, in order, the IDs of the rules whose hits went up.
func movedHits(before, after map[uint64]uint64) []uint64 {
	var moved []uint64
	for id, n := range after {
		if n > before[id] {
			moved = append(moved, id)
		}
	}
	slices.Sort(moved)
	return moved
}

// agrees reports whether a flow's outcome in the kernel matches the
// reference decision for its first packet: it passed exactly when the
// decision allows, and the rules whose hits moved are the decision's
// (retransmissions repeat the same hits, so the IDs are compared as a
// set).
func agrees(want polprog.Decision, passed bool, moved []uint64) bool {
	hits := slices.Clone(want.Hits)
	slices.Sort(hits)
	return passed == (want.Verdict == polprog.VerdictAllow) && slices.Equal(slices.Compact(hits), moved)
}

// ids formats rule IDs as "1001 1002", or "-" for none.
func ids(ids []uint64) string {
	if len(ids) == 0 {
		return "-"
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, " ")
}
