package datapath

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
	"github.com/sluicenet/sluice/polprog"
)

// The maps hold a policy's bytecode, not its source; a tool that explains
// a verdict needs the rules. So, as Calico writes per-interface policy
// debug files under /var/run/calico/bpf/policy, a Datapath with
// Options.DebugDir writes one file per interface and hook that has a
// policy, after the interface's entry switched to it:
// <DebugDir>/policy/<ifindex>-<hook>.json, a PolicyDebug.

// Hook names of PolicyDebug.Hook and of the debug files.
const (
	DebugHookIngress = "ingress" // the TC ingress hook
	DebugHookEgress  = "egress"  // the TC egress hook
	DebugHookXDP     = "xdp"     // the XDP hook (Interface.XDP)
)

// PolicyDebug is the content of a policy debug file: what one hook of one
// interface runs, as this generation configured it.
type PolicyDebug struct {
	// Interface is the interface's name in the network namespace of the
	// caller of SetInterfaces when it was written ("" if it had none
	// there); Ifindex its index, the key of the interface maps.
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	// Hook is DebugHookIngress, DebugHookEgress or DebugHookXDP: the
	// hook, not the endpoint's point of view (a workload's egress
	// policy runs at its host-side interface's ingress hook).
	Hook string `json:"hook"`
	// Generation is the generation whose record names the program.
	Generation uint32 `json:"generation"`
	// EntrySlot is the policy's entry in the jump map (sl_policy_jumps,
	// or the XDP object's for DebugHookXDP): the slot the generation's
	// record of the interface names while this file is current. A
	// record that names another slot means the file is stale.
	EntrySlot uint32 `json:"entry_slot"`
	// Slots are every part's slot, the entry first.
	Slots []uint32 `json:"slots"`
	// Rules are the rules the program was compiled from, as the hook
	// runs them (hook-side, with ForHost set for a host interface).
	Rules polprog.Rules `json:"rules"`
	// Listing is each part's annotated assembly listing, with rule IDs.
	Listing []string `json:"listing"`
}

// PolicyDebugPath is the file of an interface's hook under debugDir.
func PolicyDebugPath(debugDir string, ifindex int, hook string) string {
	return filepath.Join(debugDir, "policy", strconv.Itoa(ifindex)+"-"+hook+".json")
}

// ReadPolicyDebug reads the debug file of an interface's hook; a missing
// file wraps os.ErrNotExist.
func ReadPolicyDebug(debugDir string, ifindex int, hook string) (PolicyDebug, error) {
	path := PolicyDebugPath(debugDir, ifindex, hook)
	b, err := os.ReadFile(path)
	if err != nil {
		return PolicyDebug{}, fmt.Errorf("read policy debug file: %w", err)
	}
	var pd PolicyDebug
	if err := json.Unmarshal(b, &pd); err != nil {
		return PolicyDebug{}, fmt.Errorf("read policy debug file %s: %w", path, err)
	}
	return pd, nil
}

// ListPolicyDebug reads every policy debug file under debugDir.
func ListPolicyDebug(debugDir string) ([]PolicyDebug, error) {
	entries, err := os.ReadDir(filepath.Join(debugDir, "policy"))
	if err != nil {
		return nil, fmt.Errorf("list policy debug files: %w", err)
	}
	var out []PolicyDebug
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		idx, hook, found := strings.Cut(name, "-")
		ifindex, err := strconv.Atoi(idx)
		if !ok || !found || err != nil {
			continue // a temporary file, or another tool's
		}
		pd, err := ReadPolicyDebug(debugDir, ifindex, hook)
		if err != nil {
			return nil, fmt.Errorf("list policy debug files: %w", err)
		}
		out = append(out, pd)
	}
	return out, nil
}

// writeDebugInfo writes the debug files of the hooks whose programs the
// change replaced, after its entries switched, and removes the XDP file
// of an interface left without an XDP policy. Without Options.DebugDir it
// does nothing.
func (d *Datapath) writeDebugInfo(c *change) error {
	dir := d.opts.DebugDir
	if dir == "" {
		return nil
	}
	name := ""
	if ifc, err := net.InterfaceByIndex(int(c.ifindex)); err == nil {
		name = ifc.Name
	}
	var errs []error
	for h, compiled := range c.compile {
		if compiled != nil {
			errs = append(errs, writePolicyDebug(dir, name, int(c.ifindex), bpf.Hook(h).String(),
				d.generation, c.next.hooks[h].prog, c.rules[h], compiled))
		}
	}
	switch {
	case c.compileXDP != nil:
		errs = append(errs, writePolicyDebug(dir, name, int(c.ifindex), DebugHookXDP,
			d.generation, c.next.xdp.prog, c.next.xdp.rules, c.compileXDP))
	case c.next.xdp.prog == nil:
		errs = append(errs, removeIfExists(PolicyDebugPath(dir, int(c.ifindex), DebugHookXDP)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("debug files of interface %d: %w", c.ifindex, err)
	}
	return nil
}

// removeDebugInfo removes a removed interface's debug files.
func (d *Datapath) removeDebugInfo(ifindex uint32) error {
	if d.opts.DebugDir == "" {
		return nil
	}
	var errs []error
	for _, hook := range []string{DebugHookIngress, DebugHookEgress, DebugHookXDP} {
		errs = append(errs, removeIfExists(PolicyDebugPath(d.opts.DebugDir, int(ifindex), hook)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("debug files of interface %d: %w", ifindex, err)
	}
	return nil
}

// writePolicyDebug writes one debug file atomically: a reader sees the
// previous file or the new one, never a part.
func writePolicyDebug(dir, name string, ifindex int, hook string, gen uint32, prog *polprog.Program, rules polprog.Rules, compiled *polprog.Compiled) error {
	pd := PolicyDebug{Interface: name, Ifindex: ifindex, Hook: hook, Generation: gen,
		EntrySlot: prog.EntrySlot(), Slots: prog.Slots(), Rules: rules}
	for _, part := range compiled.Parts {
		l, err := part.Listing()
		if err != nil {
			return err
		}
		pd.Listing = append(pd.Listing, l)
	}
	b, err := json.MarshalIndent(pd, "", "  ")
	if err != nil {
		return err
	}
	path := PolicyDebugPath(dir, ifindex, hook)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Registry names of the maps PinnedParams describes beside the objects'
// own map names (bpf.Map*).
const (
	// RegistryConntrack is the live conntrack table, pinned as sl_ct_v<N>;
	// the object holds only its template, inside sl_ct_tables.
	RegistryConntrack = ctName
)

// PinnedParams describes the maps of the registry under pinDir as this
// build of the datapath pins them, by name (the objects' bpf.Map* names,
// and RegistryConntrack): each one's layout and version, for a reader
// that opens them with maps.OpenPinned. Capacities are the objects'
// defaults, not the running datapath's, which OpenPinned ignores.
func PinnedParams(pinDir string) (map[string]maps.Params, error) {
	spec, err := bpf.LoadSpec()
	if err != nil {
		return nil, err
	}
	sock, err := bpf.LoadSockSpec()
	if err != nil {
		return nil, err
	}
	xdp, err := bpf.LoadXDPSpec()
	if err != nil {
		return nil, err
	}
	var specs bpf.Specs
	var sockSpecs bpf.SockSpecs
	var xdpSpecs bpf.XDPSpecs
	for _, a := range []struct {
		spec *ebpf.CollectionSpec
		to   any
	}{{spec, &specs}, {sock, &sockSpecs}, {xdp, &xdpSpecs}} {
		if err := a.spec.Assign(a.to); err != nil {
			return nil, fmt.Errorf("registry: assign specs: %w", err)
		}
	}
	out := map[string]maps.Params{}
	for _, r := range registryMaps(&specs, &sockSpecs, &xdpSpecs) {
		out[r.spec.Name] = maps.ParamsFromSpec(r.spec, r.version, pinDir)
	}
	if specs.SlCtTables.InnerMap == nil {
		return nil, fmt.Errorf("registry: no conntrack template in %s", bpf.MapConntrackTables)
	}
	ct := maps.ParamsFromSpec(specs.SlCtTables.InnerMap, ctVersion, pinDir)
	ct.Name = ctName
	out[RegistryConntrack] = ct
	return out, nil
}
