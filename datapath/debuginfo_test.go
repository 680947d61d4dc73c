package datapath

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/maps"
	"github.com/sluicenet/sluice/polprog"
)

// TestPolicyDebugFiles: with Options.DebugDir, each hook's file appears
// once its interface's entry names the program, holds the rules and the
// listing of what runs there and the slot the record names, is rewritten
// when the policy changes and left alone when it does not, and goes with
// the XDP policy and with the interface.
func TestPolicyDebugFiles(t *testing.T) {
	node, client, server := nodePair(t, "10.133.0.1", "10.133.0.2")
	dir := t.TempDir()
	d, err := Open(Options{DebugDir: dir, ConntrackEntries: 1 << 10, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	deny := polprog.Rules{Tiers: []polprog.Tier{{Name: "t", EndRuleID: 9, Policies: []polprog.Policy{{Name: "p",
		Rules: []polprog.Rule{{ID: 7, Action: polprog.ActionAllow, Protocol: "tcp"}}}}}}}
	set := func(cfgs map[int]Interface) {
		t.Helper()
		// In the interfaces' namespace, so that the files name them.
		if err := node.NS.Do(func() error { return d.SetInterfaces(cfgs) }); err != nil {
			t.Fatal(err)
		}
	}
	// check compares the files of an interface with its entry.
	check := func(ifindex int, name string, want map[string]polprog.Rules, wantIDs map[string]string) {
		t.Helper()
		entry, err := d.InterfaceEntry(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		rec := entry.Records[0]
		for hook, rules := range want {
			pd, err := ReadPolicyDebug(dir, ifindex, hook)
			if err != nil {
				t.Fatal(err)
			}
			slot := rec.Ingress
			if hook == DebugHookEgress {
				slot = rec.Egress
			}
			if hook == DebugHookXDP {
				xe, err := d.XDPEntry(ifindex)
				if err != nil {
					t.Fatal(err)
				}
				slot = xe.Records[0].Ingress
			}
			wantRules, _ := json.Marshal(rules)
			gotRules, _ := json.Marshal(pd.Rules)
			got := PolicyDebug{Interface: pd.Interface, Ifindex: pd.Ifindex, Hook: pd.Hook, Generation: pd.Generation, EntrySlot: pd.EntrySlot}
			if diff := cmp.Diff(PolicyDebug{Interface: name, Ifindex: ifindex, Hook: hook, Generation: rec.Generation, EntrySlot: slot}, got); diff != "" {
				t.Errorf("interface %d hook %s (-want +got):\n%s", ifindex, hook, diff)
			}
			if diff := cmp.Diff(string(wantRules), string(gotRules)); diff != "" {
				t.Errorf("interface %d hook %s rules (-want +got):\n%s", ifindex, hook, diff)
			}
			if len(pd.Slots) == 0 || pd.Slots[0] != slot || !strings.Contains(strings.Join(pd.Listing, ""), wantIDs[hook]) {
				t.Errorf("interface %d hook %s: slots %v, listing without %q", ifindex, hook, pd.Slots, wantIDs[hook])
			}
		}
	}
	set(map[int]Interface{
		client.HostIfindex: {Kind: Workload, Egress: allowAllRules},
		server.HostIfindex: {Kind: Workload, Ingress: deny},
	})
	// A workload's Egress runs at the TC ingress hook, its Ingress at egress.
	check(server.HostIfindex, server.HostIfname, map[string]polprog.Rules{DebugHookIngress: {}, DebugHookEgress: deny},
		map[string]string{DebugHookEgress: "id 7"})
	check(client.HostIfindex, client.HostIfname, map[string]polprog.Rules{DebugHookIngress: allowAllRules, DebugHookEgress: {}},
		map[string]string{DebugHookIngress: "id 1"})

	// A changed hook's file follows; the unchanged one stays as it was.
	before, err := os.ReadFile(PolicyDebugPath(dir, server.HostIfindex, DebugHookIngress))
	if err != nil {
		t.Fatal(err)
	}
	set(map[int]Interface{server.HostIfindex: {Kind: Workload, Ingress: allowAllRules}})
	check(server.HostIfindex, server.HostIfname, map[string]polprog.Rules{DebugHookEgress: allowAllRules}, map[string]string{DebugHookEgress: "id 1"})
	after, err := os.ReadFile(PolicyDebugPath(dir, server.HostIfindex, DebugHookIngress))
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("the unchanged hook's file was rewritten")
	}

	// An XDP policy has its file while the interface has one.
	xdp := []polprog.Tier{{Name: "x", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Name: "p",
		Rules: []polprog.Rule{{ID: 5, Action: polprog.ActionDeny, Protocol: "udp"}}}}}}
	set(map[int]Interface{client.HostIfindex: {Kind: Host, XDP: xdp}})
	check(client.HostIfindex, client.HostIfname, map[string]polprog.Rules{DebugHookXDP: {ForHost: true, PreDNATTiers: xdp},
		DebugHookIngress: {ForHost: true}, DebugHookEgress: {ForHost: true}}, map[string]string{DebugHookXDP: "id 5"})
	set(map[int]Interface{client.HostIfindex: {Kind: Host}})
	if _, err := ReadPolicyDebug(dir, client.HostIfindex, DebugHookXDP); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("XDP file after the XDP policy went: %v", err)
	}

	// The files go with the interface, and no temporary file is left.
	if err := d.RemoveInterface(client.HostIfindex); err != nil {
		t.Fatal(err)
	}
	files, err := ListPolicyDebug(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.Ifindex == client.HostIfindex {
			t.Errorf("removed interface's file %s is left", f.Hook)
		}
	}
	names, _ := filepath.Glob(filepath.Join(dir, "policy", "*"))
	if len(names) != 2 {
		t.Errorf("files %v, want the server's two", names)
	}
}

// TestPinnedParams: every map PinnedParams describes opens read-only from
// the pins of a datapath, at the version it pinned.
func TestPinnedParams(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.TempBPFFS(t), "pins")
	d, err := Open(Options{PinDir: pinDir, ConntrackEntries: 1 << 10, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	params, err := PinnedParams(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	// Every registry pin (name_vN) the datapath made is one PinnedParams
	// describes, so a map added to the registry cannot be left out.
	pins, err := filepath.Glob(filepath.Join(pinDir, "*_v[0-9]*"))
	if err != nil {
		t.Fatal(err)
	}
	described := map[string]bool{}
	for _, p := range params {
		described[fmt.Sprintf("%s_v%d", p.Name, p.Version)] = true
	}
	for _, pin := range pins {
		if !described[filepath.Base(pin)] {
			t.Errorf("pin %s is not described by PinnedParams", filepath.Base(pin))
		}
	}
	if len(params) != len(pins) {
		t.Errorf("%d maps described, %d registry pins: %v", len(params), len(pins), pins)
	}
	for name, p := range params {
		m, err := maps.OpenPinned(p)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		m.Close()
	}
	if _, ok := params[bpf.MapIfaces]; !ok {
		t.Error("no interface map")
	}
}
