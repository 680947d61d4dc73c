package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/maps"
	"github.com/sluicenet/sluice/nat"
)

// cli is one invocation: its global flags and the maps it opened.
type cli struct {
	pinDir, debugDir, output string
	stdout, stderr           io.Writer

	params map[string]maps.Params
	opened map[string]*ebpf.Map
}

// close closes every map the invocation opened.
func (c *cli) close() {
	for _, m := range c.opened {
		m.Close()
	}
}

// open opens a registry map read-only, by its name in the objects (or
// datapath.RegistryConntrack). Its errors name the map and what is
// missing.
func (c *cli) open(name string) (*ebpf.Map, error) {
	if m, ok := c.opened[name]; ok {
		return m, nil
	}
	if c.pinDir == "" {
		return nil, errors.New("no pin directory: give -pin-dir, the agent's datapath.Options.PinDir")
	}
	if c.params == nil {
		if _, err := os.Stat(c.pinDir); err != nil {
			return nil, fmt.Errorf("pin directory %s: %w (is the agent running with this datapath.Options.PinDir?)", c.pinDir, err)
		}
		params, err := datapath.PinnedParams(c.pinDir)
		if err != nil {
			return nil, err
		}
		c.params, c.opened = params, map[string]*ebpf.Map{}
	}
	p, ok := c.params[name]
	if !ok {
		return nil, fmt.Errorf("map %s is not in this binary's registry", name)
	}
	m, err := maps.OpenPinned(p)
	switch {
	case errors.Is(err, maps.ErrNotPinned):
		hint := "is the agent running with this pin directory?"
		// The agent example keeps the datapath's pins in a subdirectory.
		if _, serr := os.Stat(filepath.Join(c.pinDir, "datapath", fmt.Sprintf("%s_v%d", name, p.Version))); serr == nil {
			hint = "the datapath's pins are in " + filepath.Join(c.pinDir, "datapath") + ": give that as -pin-dir"
		}
		return nil, fmt.Errorf("map %s_v%d is not pinned in %s (%s): %w", name, p.Version, c.pinDir, hint, err)
	case errors.Is(err, maps.ErrOtherVersion):
		return nil, fmt.Errorf("map %s: this binary reads layout version %d, the agent pinned another (upgrade or downgrade sluice to the agent's version): %w", name, p.Version, err)
	case err != nil:
		return nil, err
	}
	c.opened[name] = m
	return m, nil
}

// typed opens a registry map as a maps.Map.
func typed[K, V any](c *cli, name string) (*maps.Map[K, V], error) {
	m, err := c.open(name)
	if err != nil {
		return nil, err
	}
	return maps.New[K, V](m)
}

// perCPU opens a per-CPU registry map as a maps.PerCPUMap.
func perCPU[K, V any](c *cli, name string) (*maps.PerCPUMap[K, V], error) {
	m, err := c.open(name)
	if err != nil {
		return nil, err
	}
	return maps.NewPerCPU[K, V](m)
}

// natTable is a nat.Table over the load-balancing maps, read-only: it is
// only ever asked to read (Adopted, BackendID).
func (c *cli) natTable() (*nat.Table, error) {
	var m nat.Maps
	for _, e := range []struct {
		to   **ebpf.Map
		name string
	}{
		{&m.Services, bpf.MapServices}, {&m.Slots, bpf.MapBackendSlots}, {&m.Backends, bpf.MapBackends},
		{&m.Ranges, bpf.MapServiceRanges}, {&m.Members, "sl_members"}, {&m.Maglev, "sl_maglev"},
		{&m.Affinity, bpf.MapAffinity},
	} {
		var err error
		if *e.to, err = c.open(e.name); err != nil {
			return nil, err
		}
	}
	return nat.NewTable(m)
}

// meta is the registry's record of generations.
func (c *cli) meta() (bpf.Meta, error) {
	m, err := typed[uint32, bpf.Meta](c, "sl_meta")
	if err != nil {
		return bpf.Meta{}, err
	}
	return m.Lookup(0)
}

// emit writes v as JSON, or the table: a header and rows of cells.
func (c *cli) emit(v any, header []string, rows [][]string) error {
	if c.output == "json" {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

// ifaceNames are the interfaces' names by index, from the policy debug
// files (the agent's network namespace, which need not be the CLI's).
func (c *cli) ifaceNames() map[int]string {
	names := map[int]string{}
	if c.debugDir == "" {
		return names
	}
	files, _ := datapath.ListPolicyDebug(c.debugDir)
	for _, f := range files {
		if f.Interface != "" {
			names[f.Ifindex] = f.Interface
		}
	}
	return names
}

// resolveIface turns -iface's NAME or INDEX into an index and a name.
func (c *cli) resolveIface(s string) (int, string, error) {
	if s == "" {
		return 0, "", errors.New("-iface is required")
	}
	names := c.ifaceNames()
	if idx, err := strconv.Atoi(s); err == nil && idx > 0 {
		return idx, names[idx], nil
	}
	for idx, name := range names {
		if name == s {
			return idx, name, nil
		}
	}
	if ifc, err := net.InterfaceByName(s); err == nil {
		return ifc.Index, s, nil
	}
	if c.debugDir == "" {
		return 0, "", fmt.Errorf("interface %q: no such interface here, and no -debug-dir to find its name in", s)
	}
	return 0, "", fmt.Errorf("interface %q: no such interface here, and no policy debug file in %s names it", s, c.debugDir)
}

// dash is "-" for an empty cell.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
