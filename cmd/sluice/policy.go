package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/polprog"
)

// policyOut is one hook's policy as its debug file and the interface's
// record give it.
type policyOut struct {
	Interface  string `json:"interface"`
	Ifindex    int    `json:"ifindex"`
	Hook       string `json:"hook"`
	Generation uint32 `json:"generation"`
	EntrySlot  uint32 `json:"entry_slot"`
	// RecordSlot is the slot the generation's record of the interface
	// names; Stale says why the file does not describe what runs, if
	// it does not.
	RecordSlot uint32        `json:"record_slot"`
	Stale      string        `json:"stale,omitempty"`
	Rules      polprog.Rules `json:"rules"`
	Listing    []string      `json:"listing"`
}

// hookPolicy reads the debug file of an interface's hook and checks it
// against the interface's record in the pinned maps.
func (c *cli) hookPolicy(ifindex int, hook string) (policyOut, error) {
	if c.debugDir == "" {
		return policyOut{}, errors.New("no debug directory: give -debug-dir, the agent's datapath.Options.DebugDir")
	}
	pd, err := datapath.ReadPolicyDebug(c.debugDir, ifindex, hook)
	if errors.Is(err, os.ErrNotExist) {
		return policyOut{}, fmt.Errorf("no policy debug record for interface %d, hook %s, in %s (is the agent's datapath.Options.DebugDir this directory, and the interface configured?)",
			ifindex, hook, c.debugDir)
	}
	if err != nil {
		return policyOut{}, err
	}
	out := policyOut{Interface: pd.Interface, Ifindex: pd.Ifindex, Hook: pd.Hook, Generation: pd.Generation,
		EntrySlot: pd.EntrySlot, Rules: pd.Rules, Listing: pd.Listing}
	name := bpf.MapIfaces
	if hook == datapath.DebugHookXDP {
		name = bpf.MapXDPIfaces
	}
	m, err := typed[uint32, bpf.Iface](c, name)
	if err != nil {
		return policyOut{}, err
	}
	entry, err := m.Lookup(uint32(ifindex))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return policyOut{}, fmt.Errorf("no record of interface %d in %s: the interface is not configured (its debug file %s is stale)",
			ifindex, name, datapath.PolicyDebugPath(c.debugDir, ifindex, hook))
	}
	if err != nil {
		return policyOut{}, err
	}
	found := false
	for _, r := range entry.Records {
		if r.Generation != pd.Generation {
			continue
		}
		found = true
		out.RecordSlot = r.Ingress
		if hook == datapath.DebugHookEgress {
			out.RecordSlot = r.Egress
		}
	}
	switch {
	case !found:
		out.Stale = fmt.Sprintf("the interface has no record of generation %d (records of generations %d and %d)",
			pd.Generation, entry.Records[0].Generation, entry.Records[1].Generation)
	case out.RecordSlot != pd.EntrySlot:
		out.Stale = fmt.Sprintf("generation %d's record names entry slot %d, the file slot %d", pd.Generation, out.RecordSlot, pd.EntrySlot)
	}
	return out, nil
}

// hookNames checks -hook.
func hookNames(hook string) ([]string, error) {
	switch hook {
	case "":
		return []string{datapath.DebugHookIngress, datapath.DebugHookEgress, datapath.DebugHookXDP}, nil
	case datapath.DebugHookIngress, datapath.DebugHookEgress, datapath.DebugHookXDP:
		return []string{hook}, nil
	}
	return nil, fmt.Errorf("-hook %q: want ingress, egress or xdp", hook)
}

func (c *cli) policy(args []string) error {
	fs := c.subFlags("policy")
	iface := fs.String("iface", "", "the interface, by name or index")
	hook := fs.String("hook", "", "the hook: ingress, egress (TC) or xdp; every hook with a policy if empty")
	if err := parse(fs, args); err != nil {
		return err
	}
	hooks, err := hookNames(*hook)
	if err != nil {
		return err
	}
	ifindex, _, err := c.resolveIface(*iface)
	if err != nil {
		return err
	}
	out := []policyOut{}
	for _, h := range hooks {
		if *hook == "" && h == datapath.DebugHookXDP && c.debugDir != "" {
			// Most interfaces have no XDP policy, and no file for it.
			if _, err := os.Stat(datapath.PolicyDebugPath(c.debugDir, ifindex, h)); err != nil {
				continue
			}
		}
		p, err := c.hookPolicy(ifindex, h)
		if err != nil {
			return err
		}
		out = append(out, p)
	}
	if c.output == "json" {
		return c.emit(out, nil, nil)
	}
	for _, p := range out {
		fmt.Fprintf(c.stdout, "interface %s (ifindex %d), hook %s, generation %d, entry slot %d\n",
			dash(p.Interface), p.Ifindex, p.Hook, p.Generation, p.EntrySlot)
		if p.Stale != "" {
			fmt.Fprintf(c.stdout, "STALE: %s\n", p.Stale)
		}
		for i, l := range p.Listing {
			fmt.Fprintf(c.stdout, "; part %d\n%s", i, l)
			if !strings.HasSuffix(l, "\n") {
				fmt.Fprintln(c.stdout)
			}
		}
	}
	return nil
}
