// Command sluice is the debug CLI of a running sluice datapath: it reads the
// maps the agent pinned (datapath.Options.PinDir) and the policy debug
// files it writes (datapath.Options.DebugDir), and never creates or
// changes either. Every command prints a table, or JSON with -o json.
//
//	sluice -pin-dir DIR [-debug-dir DIR] [-o table|json] COMMAND [flags]
//
// Commands:
//
//	conntrack [-addr A] [-port P] [-proto tcp|udp|N]  conntrack entries
//	services                  frontends with their backends, kinds, flags,
//	                          source ranges, affinity and Maglev
//	affinity                  client affinities
//	ipsets                    IP set members
//	routes                    the routes map
//	ifaces                    interface entries: records per generation,
//	                          flags, policy slots, XDP slots
//	counters                  packets by interface, hook and reason
//	hits                      per-rule hits
//	policy -iface NAME|INDEX [-hook ingress|egress|xdp]
//	                          the interface's rules and program listing
//	explain -iface NAME|INDEX -dir ingress|egress -proto tcp|udp
//	        -src A:P -dst B:P what the datapath does with that packet at
//	                          that TC hook, and why
//
// Explain walks a packet through the datapath's steps with the library's
// reference models over the maps' contents: the interface's record, the
// conntrack entry the flow has (state, NAT, backend: what the kernel
// recorded when it decided the flow), the routes (reverse-path check, host
// flags), the service stage (nat.Choose over the services read back from
// the maps, the client's affinity record, the kernel's Maglev table), and
// the policy (polprog.Evaluate over the debug file's rules and the IP set
// map's members). A debug file whose entry slot is not the one the
// interface's record names is stale and is refused.
//
// Errors name what is missing: the pin directory, a map that is not pinned,
// a map pinned at another layout version than this binary reads (both
// versions), an interface without a record or without a debug file.
//
// An example session against an agent with PinDir /sys/fs/bpf/sluice and
// DebugDir /run/sluice, whose client workload (10.131.0.1, host side
// clih) reached a Maglev service 10.96.131.1:80 and was denied by rule 12
// at the server (10.131.0.2, host side srvh):
//
//	# alias sl='sluice -pin-dir /sys/fs/bpf/sluice -debug-dir /run/sluice'
//	# sl services
//	ID  FRONTEND            KIND        FLAGS     AFFINITY  MAGLEV  SOURCE RANGES  BACKENDS
//	2   10.96.131.1:80/tcp  cluster-ip  maglev    -         yes     -              10.131.0.2:8080 (local) 10.131.0.3:8080 (local)
//	# sl conntrack -port 8081
//	PROTO  A                 B                 TYPE    STATE         FLAGS  A->B                          B->A             ORIG  BACKEND
//	tcp    10.131.0.1:40812  10.131.0.2:8081   normal  tcp-syn-sent  0      1 pkts syn|ingress_ok if 2/0  0 pkts 0 if 0/0  -     -
//	# sl explain -iface srvh -dir egress -proto tcp -src 10.131.0.1:40812 -dst 10.131.0.2:8081
//	STEP       WHAT
//	interface  srvh (ifindex 3), TC egress, generation 1 record: workload|ready|enforce_ipv6
//	conntrack  normal tcp 10.131.0.1:40812 <-> 10.131.0.2:8081, tcp-syn-sent: the flow was not approved at this hook; its packets here go to policy
//	policy     deny 10.131.0.2:8081 by rule 12 (egress policy file: generation 1, entry slot 3)
//	verdict    dropped_by_policy
//	# sl explain -iface clih -dir ingress -proto tcp -src 10.131.0.1:45000 -dst 10.96.131.1:80
//	STEP       WHAT
//	interface  clih (ifindex 2), TC ingress, generation 1 record: workload|ready|enforce_ipv6
//	conntrack  no entry: a new flow
//	routes     source 10.131.0.1: 10.131.0.1/32 local_workload ifindex 2; reverse-path check passes
//	routes     destination 10.96.131.1: no route
//	service    service 2 at 10.96.131.1:80/tcp: backend 10.131.0.3:8080 by maglev
//	policy     allow 10.131.0.3:8080 by rule 1 (ingress policy file: generation 1, entry slot 0)
//	verdict    accepted_by_policy: DNAT to 10.131.0.3:8080
//	# sl policy -iface srvh -hook egress
//	interface srvh (ifindex 3), hook egress, generation 1, entry slot 3
//	; part 0
//	...
//	         ; rule tier default/server#1: deny, id 12
//	...
//
// A workload's egress policy runs at its host-side interface's TC ingress
// hook, and its ingress policy at the TC egress hook: -dir and -hook name
// the hook.
//
// The same with -o json prints one object per command for scripts.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "sluice:", err)
		}
		os.Exit(1)
	}
}

// command is one subcommand: it parses its own flags from args and writes
// its result.
type command struct {
	summary string
	run     func(c *cli, args []string) error
}

var commands = map[string]command{
	"conntrack": {"conntrack entries, filtered by -addr, -port, -proto", (*cli).conntrack},
	"services":  {"frontends with their backends", (*cli).services},
	"affinity":  {"client affinities", (*cli).affinity},
	"ipsets":    {"IP set members", (*cli).ipsets},
	"routes":    {"the routes map", (*cli).routes},
	"ifaces":    {"interface entries and their records", (*cli).ifaces},
	"counters":  {"packets by interface, hook and reason", (*cli).counters},
	"hits":      {"per-rule hits", (*cli).hits},
	"policy":    {"an interface's policy listing with rule IDs", (*cli).policy},
	"explain":   {"what the datapath does with a packet, and why", (*cli).explain},
}

// run is the CLI: args without the program name. Tests drive it
// in-process.
func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sluice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &cli{stdout: stdout, stderr: stderr}
	fs.StringVar(&c.pinDir, "pin-dir", "", "the agent's datapath.Options.PinDir (required)")
	fs.StringVar(&c.debugDir, "debug-dir", "", "the agent's datapath.Options.DebugDir (policy, explain)")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice [flags] command [command flags]\n\nflags:")
		fs.PrintDefaults()
		fmt.Fprintln(stderr, "\ncommands:")
		names := make([]string, 0, len(commands))
		for name := range commands {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			fmt.Fprintf(stderr, "  %-10s %s\n", name, commands[name].summary)
		}
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.output != "table" && c.output != "json" {
		return fmt.Errorf("-o %q: want table or json", c.output)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	cmd, ok := commands[fs.Arg(0)]
	if !ok {
		fs.Usage()
		return fmt.Errorf("unknown command %q", fs.Arg(0))
	}
	defer c.close()
	if err := cmd.run(c, fs.Args()[1:]); err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	return nil
}

// subFlags is a subcommand's flag set, writing its errors to stderr.
func (c *cli) subFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	return fs
}

// parse parses a subcommand's flags and refuses arguments beyond them.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return nil
}
