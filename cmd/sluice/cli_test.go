package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/maps"
)

// TestCLI runs every command against a running datapath that carried
// real traffic, in JSON (decoded and checked against what the test
// configured and sent, and against the datapath's own readings) and as a
// table.
func TestCLI(t *testing.T) {
	a := newAgent(t)
	ap := netip.AddrPortFrom

	t.Run("conntrack", func(t *testing.T) {
		var all []ctEntry
		a.cliJSON(t, &all, "conntrack")
		var web *ctEntry
		for i, e := range all {
			if e.Type == "nat_rev" && e.Orig == ap(webVIP, 80).String() && e.Client == a.webClient.String() {
				web = &all[i]
			}
		}
		if web == nil {
			t.Fatalf("no nat_rev entry of the web flow from %s in %+v", a.webClient, all)
		}
		if web.Backend != a.webBackend {
			t.Errorf("web flow's entry names backend %s, the client was answered by %s", web.Backend, a.webBackend)
		}
		var denied []ctEntry
		a.cliJSON(t, &denied, "conntrack", "-port", "8081", "-proto", "tcp")
		want := []string{a.deniedClient.String(), ap(serverAddr, 8081).String()}
		if len(denied) != 1 || !slices.Contains(want, denied[0].A) || !slices.Contains(want, denied[0].B) || denied[0].State != "tcp-syn-sent" {
			t.Errorf("entries of port 8081: %+v, want the denied flow %v in tcp-syn-sent", denied, want)
		}
		var server []ctEntry
		a.cliJSON(t, &server, "conntrack", "-addr", server2Addr.String())
		for _, e := range server {
			if !strings.HasPrefix(e.A, server2Addr.String()+":") && !strings.HasPrefix(e.B, server2Addr.String()+":") {
				t.Errorf("entry %+v does not have %s", e, server2Addr)
			}
		}
		if table := a.cli(t, "conntrack"); !strings.Contains(table, "PROTO") || !strings.Contains(table, "nat_rev") {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("services", func(t *testing.T) {
		var got []serviceOut
		a.cliJSON(t, &got, "services")
		byFrontend := map[string]serviceOut{}
		for _, s := range got {
			for _, f := range s.Frontends {
				byFrontend[ap(netip.MustParseAddr(f.Addr), f.Port).String()+"/"+f.Protocol] = s
			}
			s.ID = 0
		}
		web, dns := byFrontend[ap(webVIP, 80).String()+"/tcp"], byFrontend[ap(dnsVIP, 53).String()+"/udp"]
		for _, s := range []*serviceOut{&web, &dns} {
			s.ID = 0
			for i := range s.Backends {
				if s.Backends[i].ID == 0 {
					t.Errorf("backend %+v has no ID", s.Backends[i])
				}
				s.Backends[i].ID = 0
			}
		}
		diffJSON(t, "web service", serviceOut{Maglev: true, SourceRanges: []string{},
			Frontends: []frontendOut{{Addr: webVIP.String(), Port: 80, Protocol: "tcp", Kind: "cluster-ip", Flags: "maglev"}},
			Backends:  []backendOut{{Addr: serverAddr.String(), Port: 8080, Local: true}, {Addr: server2Addr.String(), Port: 8080, Local: true}}}, web)
		diffJSON(t, "dns service", serviceOut{AffinitySeconds: 30, SourceRanges: []string{},
			Frontends: []frontendOut{{Addr: dnsVIP.String(), Port: 53, Protocol: "udp", Kind: "cluster-ip", Flags: "affinity"}},
			Backends:  []backendOut{{Addr: serverAddr.String(), Port: 53, Local: true}}}, dns)
		if len(got) != 2 {
			t.Errorf("%d services, want 2", len(got))
		}
		if table := a.cli(t, "services"); !strings.Contains(table, ap(webVIP, 80).String()+"/tcp") || !strings.Contains(table, "yes") {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("affinity", func(t *testing.T) {
		var got []affinityOut
		a.cliJSON(t, &got, "affinity")
		if len(got) != 1 || got[0].Client != clientAddr.String() || got[0].Backend != a.dnsBackend {
			t.Errorf("affinities %+v, want the client's to %s", got, a.dnsBackend)
		}
		if table := a.cli(t, "affinity"); !strings.Contains(table, a.dnsBackend) {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("ipsets", func(t *testing.T) {
		var got []ipsetOut
		a.cliJSON(t, &got, "ipsets")
		diffJSON(t, "IP sets", []ipsetOut{{ID: "0x100", Nets: []string{clientAddr.String() + "/32"}, NamedPorts: []string{}}}, got)
		if table := a.cli(t, "ipsets"); !strings.Contains(table, "0x100") {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("routes", func(t *testing.T) {
		var got []routeOut
		a.cliJSON(t, &got, "routes")
		var want []routeOut
		for _, w := range a.node.Workloads {
			want = append(want, routeOut{Prefix: w.Addr.String() + "/32", Flags: "local_workload", Ifindex: uint32(w.HostIfindex)})
		}
		diffJSON(t, "routes", want, got)
		if table := a.cli(t, "routes"); !strings.Contains(table, "local_workload") {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("ifaces", func(t *testing.T) {
		var got []ifaceOut
		a.cliJSON(t, &got, "ifaces")
		if len(got) != 3 {
			t.Fatalf("%d interfaces, want 3: %+v", len(got), got)
		}
		for _, o := range got {
			entry, err := a.d.InterfaceEntry(o.Ifindex)
			if err != nil {
				t.Fatal(err)
			}
			r := entry.Records[0]
			want := ifaceOut{Ifindex: o.Ifindex, Name: o.Name, CounterSlot: entry.CounterSlot, XDP: []recordOut{},
				Records: []recordOut{{Generation: r.Generation, Settled: true, Flags: r.Flags.String(), IngressSlot: r.Ingress, EgressSlot: r.Egress}}}
			diffJSON(t, "interface "+strconv.Itoa(o.Ifindex), want, o)
			pd, err := datapath.ReadPolicyDebug(a.debugDir, o.Ifindex, "egress")
			if err != nil {
				t.Fatal(err)
			}
			if pd.Interface != o.Name || pd.EntrySlot != r.Egress || pd.Generation != r.Generation {
				t.Errorf("interface %d: debug file %s gen %d slot %d, record %s gen %d slot %d", o.Ifindex, pd.Interface, pd.Generation, pd.EntrySlot, o.Name, r.Generation, r.Egress)
			}
		}
		if table := a.cli(t, "ifaces"); !strings.Contains(table, a.server.HostIfname) || !strings.Contains(table, "(settled)") {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("counters", func(t *testing.T) {
		var got []counterOut
		a.cliJSON(t, &got, "counters")
		find := func(ifindex int, hook, reason string) uint64 {
			for _, c := range got {
				if c.Ifindex == ifindex && c.Hook == hook && c.Reason == reason {
					return c.Packets
				}
			}
			return 0
		}
		dropped := find(a.server.HostIfindex, "egress", "dropped_by_policy")
		if want := a.counterOf(t, a.server, bpf.HookEgress, bpf.ReasonDroppedByPolicy); dropped == 0 || dropped != want {
			t.Errorf("server's egress hook dropped_by_policy: %d, the datapath says %d", dropped, want)
		}
		if n := find(a.client.HostIfindex, "ingress", "accepted_by_policy"); n == 0 {
			t.Errorf("client's ingress hook accepted nothing by policy: %+v", got)
		}
		for _, c := range got {
			if strings.HasPrefix(c.Reason, "Reason(") {
				t.Errorf("a counter without a reason's name: %+v", c)
			}
		}
		if table := a.cli(t, "counters"); !strings.Contains(table, "dropped_by_policy") {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("hits", func(t *testing.T) {
		var got []hitOut
		a.cliJSON(t, &got, "hits")
		hits := map[uint64]uint64{}
		for _, h := range got {
			hits[h.RuleID] = h.Hits
		}
		want, err := a.d.RuleHits().All()
		if err != nil {
			t.Fatal(err)
		}
		diffJSON(t, "rule hits", want, hits)
		for _, id := range []uint64{1, 11, 12, 13} {
			if hits[id] == 0 {
				t.Errorf("rule %d has no hits: %v", id, hits)
			}
		}
		if table := a.cli(t, "hits"); !strings.Contains(table, "RULE") {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("policy", func(t *testing.T) {
		for _, iface := range []string{a.server.HostIfname, strconv.Itoa(a.server.HostIfindex)} {
			var got []policyOut
			a.cliJSON(t, &got, "policy", "-iface", iface, "-hook", "egress")
			if len(got) != 1 {
				t.Fatalf("-iface %s: %d policies, want 1", iface, len(got))
			}
			p := got[0]
			want, _ := json.Marshal(serverPolicy)
			rules, _ := json.Marshal(p.Rules)
			diffJSON(t, "server's rules", string(want), string(rules))
			if p.Stale != "" || p.RecordSlot != p.EntrySlot || p.Interface != a.server.HostIfname || p.Hook != "egress" {
				t.Errorf("policy %+v", p)
			}
			if listing := strings.Join(p.Listing, ""); !strings.Contains(listing, "id 11") || !strings.Contains(listing, "id 12") {
				t.Errorf("listing without the rule IDs:\n%s", listing)
			}
		}
		var both []policyOut
		a.cliJSON(t, &both, "policy", "-iface", a.client.HostIfname)
		if len(both) != 2 || both[0].Hook != "ingress" || both[1].Hook != "egress" {
			t.Errorf("client's policies: %+v", both)
		}
		if table := a.cli(t, "policy", "-iface", a.server.HostIfname); !strings.Contains(table, "id 12") || !strings.Contains(table, "hook egress") {
			t.Errorf("table:\n%s", table)
		}
	})

	t.Run("explain", func(t *testing.T) { testExplain(t, a) })
	t.Run("errors", func(t *testing.T) { testAgentErrors(t, a) })
}

// explainJSON runs explain and decodes it.
func (a *agent) explainJSON(t *testing.T, iface, dir, proto string, src, dst netip.AddrPort) explainOut {
	t.Helper()
	var out explainOut
	a.cliJSON(t, &out, "explain", "-iface", iface, "-dir", dir, "-proto", proto, "-src", src.String(), "-dst", dst.String())
	return out
}

// testExplain holds explain to what the kernel did: the backend it
// recorded and gave a flow, the flows it passed and dropped, the rule
// that decided.
func testExplain(t *testing.T, a *agent) {
	ap := netip.AddrPortFrom
	cli, srv := a.client.HostIfname, a.server.HostIfname

	// The tracked web flow, where the client sends it: established, to
	// the backend the kernel recorded, which is the model's choice too.
	web := a.explainJSON(t, cli, "ingress", "tcp", a.webClient, ap(webVIP, 80))
	if !web.Conntrack.Found || !web.Conntrack.Passes || web.Conntrack.Backend != a.webBackend {
		t.Errorf("web flow's conntrack: %+v, want established to %s", web.Conntrack, a.webBackend)
	}
	if web.Service == nil || !web.Service.Known || web.Service.Recorded != a.webBackend || web.Service.Backend != a.webBackend ||
		web.Service.Reason != "maglev" || web.Service.MaglevTable != a.webBackend {
		t.Errorf("web flow's service: %+v, want the recorded and Maglev backend %s", web.Service, a.webBackend)
	}
	diffJSON(t, "web flow's outcome", outcomeOut{Reason: "accepted_established", Passes: true, DNAT: a.webBackend, Tracked: true}, web.Outcome)

	// Its replies, where the backend sends them: established, from the
	// frontend.
	backend := netip.MustParseAddrPort(a.webBackend)
	beIface := a.server.HostIfname
	if backend.Addr() == server2Addr {
		beIface = a.server2.HostIfname
	}
	reply := a.explainJSON(t, beIface, "ingress", "tcp", backend, a.webClient)
	diffJSON(t, "web flow's reply", outcomeOut{Reason: "accepted_established", Passes: true, Tracked: true, ReplyFrom: ap(webVIP, 80).String()}, reply.Outcome)

	// A new web flow: explain predicts its backend, then the kernel
	// gives it one.
	fresh := ap(clientAddr, 45000)
	pred := a.explainJSON(t, cli, "ingress", "tcp", fresh, ap(webVIP, 80))
	if pred.Conntrack.Found || pred.Service == nil || pred.Policy == nil || pred.Policy.Verdict != "allow" || pred.Policy.RuleID != 1 {
		t.Fatalf("new web flow: %+v", pred)
	}
	got := a.dialFrom(t, fresh, ap(webVIP, 80))
	if pred.Outcome.DNAT != got || pred.Service.Backend != got || pred.Outcome.Reason != "accepted_by_policy" {
		t.Errorf("explain predicted %+v (service %+v), the kernel gave the flow %s", pred.Outcome, pred.Service, got)
	}
	if after := a.explainJSON(t, cli, "ingress", "tcp", fresh, ap(webVIP, 80)); after.Conntrack.Backend != got {
		t.Errorf("after the connection, conntrack says %+v, the kernel gave %s", after.Conntrack, got)
	}

	// The denied flow at the server's hook: rule 12, as the kernel's
	// hits and drops say (TestCLI/hits, counters).
	denied := a.explainJSON(t, srv, "egress", "tcp", a.deniedClient, ap(serverAddr, 8081))
	if denied.Policy == nil || denied.Policy.Verdict != "deny" || denied.Policy.RuleID != 12 || denied.Outcome.Reason != "dropped_by_policy" ||
		!denied.Conntrack.Found || denied.Conntrack.Passes {
		t.Errorf("denied flow: %+v", denied)
	}

	// The allowed direct flow: established at the server; a new flow of
	// the client is allowed by rule 11 through the IP set, one of an
	// address outside it denied by the default rule.
	if allowed := a.explainJSON(t, srv, "egress", "tcp", a.allowedCli, ap(serverAddr, 8080)); allowed.Outcome.Reason != "accepted_established" {
		t.Errorf("allowed flow: %+v", allowed.Outcome)
	}
	if n := a.explainJSON(t, srv, "egress", "tcp", ap(clientAddr, 45002), ap(serverAddr, 8080)); n.Policy == nil || n.Policy.RuleID != 11 || n.Outcome.Reason != "accepted_by_policy" {
		t.Errorf("new flow to 8080: %+v", n)
	}
	if n := a.explainJSON(t, srv, "egress", "tcp", ap(server2Addr, 45003), ap(serverAddr, 8080)); n.Policy == nil || n.Policy.RuleID != 99 || n.Outcome.Reason != "dropped_by_policy" {
		t.Errorf("flow from outside the IP set: %+v", n)
	}

	// Affinity: the client's record names the DNS backend.
	dns := a.explainJSON(t, cli, "ingress", "udp", ap(clientAddr, 45004), ap(dnsVIP, 53))
	if dns.Service == nil || dns.Service.Reason != "affinity" || dns.Service.Affinity == nil || dns.Service.Affinity.Backend != a.dnsBackend ||
		dns.Outcome.DNAT != a.dnsBackend {
		t.Errorf("dns flow: %+v, service %+v", dns.Outcome, dns.Service)
	}

	// A spoofed source fails the reverse-path check.
	spoof := a.explainJSON(t, cli, "ingress", "tcp", ap(netip.MustParseAddr("10.131.0.9"), 1), ap(serverAddr, 8080))
	if spoof.Routes.ReversePath != "fails" || spoof.Outcome.Reason != "dropped_rpf" {
		t.Errorf("spoofed flow: %+v %+v", spoof.Routes, spoof.Outcome)
	}

	table := a.cli(t, "explain", "-iface", srv, "-dir", "egress", "-proto", "tcp", "-src", a.deniedClient.String(), "-dst", ap(serverAddr, 8081).String())
	for _, want := range []string{"STEP", "conntrack", "policy", "deny", "rule 12", "dropped_by_policy"} {
		if !strings.Contains(table, want) {
			t.Errorf("table without %q:\n%s", want, table)
		}
	}
}

// dialFrom connects from the client's src to dst and returns the backend
// that answered.
func (a *agent) dialFrom(t *testing.T, src, dst netip.AddrPort) string {
	t.Helper()
	names := map[string]string{"srv": netip.AddrPortFrom(serverAddr, 8080).String(), "srv2": netip.AddrPortFrom(server2Addr, 8080).String()}
	var name []byte
	err := a.client.NS.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(src)}
		c, err := d.Dial("tcp4", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		name, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names[string(name)]
}

// testAgentErrors: what the CLI says when the debug files are missing,
// stale or another interface's.
func testAgentErrors(t *testing.T, a *agent) {
	runErr := func(args ...string) string {
		var out, errOut bytes.Buffer
		err := run(append([]string{"-pin-dir", a.pinDir}, args...), &out, &errOut)
		if err == nil {
			t.Fatalf("sluice %v succeeded:\n%s", args, out.String())
		}
		return err.Error()
	}
	srv := a.server.HostIfname
	idx := strconv.Itoa(a.server.HostIfindex)
	explain := []string{"explain", "-iface", idx, "-dir", "egress", "-src", a.deniedClient.String(), "-dst", netip.AddrPortFrom(serverAddr, 8081).String()}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no debug dir", []string{"policy", "-iface", idx}, "no debug directory: give -debug-dir"},
		{"no debug record", []string{"-debug-dir", t.TempDir(), "policy", "-iface", idx, "-hook", "egress"},
			"no policy debug record for interface " + idx + ", hook egress"},
		{"explain without debug record", append([]string{"-debug-dir", t.TempDir()}, explain...), "no policy debug record"},
		{"unknown interface", []string{"-debug-dir", a.debugDir, "policy", "-iface", "nosuch0"}, `interface "nosuch0": no such interface`},
	} {
		if got := runErr(tt.args...); !strings.Contains(got, tt.want) {
			t.Errorf("%s: %q, want it to say %q", tt.name, got, tt.want)
		}
	}

	// A stale file: its slot is not the one the record names.
	stale := t.TempDir()
	pd, err := datapath.ReadPolicyDebug(a.debugDir, a.server.HostIfindex, "egress")
	if err != nil {
		t.Fatal(err)
	}
	pd.EntrySlot += 7
	b, _ := json.Marshal(pd)
	if err := os.MkdirAll(filepath.Join(stale, "policy"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(datapath.PolicyDebugPath(stale, a.server.HostIfindex, "egress"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	var got []policyOut
	var out, errOut bytes.Buffer
	if err := run([]string{"-pin-dir", a.pinDir, "-debug-dir", stale, "-o", "json", "policy", "-iface", srv, "-hook", "egress"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	wantStale := fmt.Sprintf("generation %d's record names entry slot %d, the file slot %d", pd.Generation, pd.EntrySlot-7, pd.EntrySlot)
	if len(got) != 1 || got[0].Stale != wantStale {
		t.Errorf("stale file: %+v, want %q", got, wantStale)
	}
	if msg := runErr(append([]string{"-debug-dir", stale}, explain...)...); !strings.Contains(msg, "is stale: "+wantStale) {
		t.Errorf("explain with a stale file: %s", msg)
	}
	// A file of an interface without a record.
	pd.Ifindex = 99999
	b, _ = json.Marshal(pd)
	if err := os.WriteFile(datapath.PolicyDebugPath(stale, 99999, "egress"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if msg := runErr("-debug-dir", stale, "policy", "-iface", "99999", "-hook", "egress"); !strings.Contains(msg, "no record of interface 99999 in sl_ifaces") {
		t.Errorf("file without a record: %s", msg)
	}
}

// TestErrors: what the CLI says without a pin directory, without a map,
// and with a map of another layout version.
func TestErrors(t *testing.T) {
	testutil.RequirePrivileged(t)
	runErr := func(args ...string) string {
		var out, errOut bytes.Buffer
		err := run(args, &out, &errOut)
		if err == nil {
			t.Fatalf("sluice %v succeeded:\n%s", args, out.String())
		}
		return err.Error()
	}
	empty := testutil.TempBPFFS(t)
	other := testutil.TempBPFFS(t)
	params, err := datapath.PinnedParams(other)
	if err != nil {
		t.Fatal(err)
	}
	p := params[bpf.MapRoutes]
	p.Version = 9
	m, _, err := maps.OpenOrCreate(p)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no pin dir", []string{"routes"}, "no pin directory: give -pin-dir"},
		{"missing pin dir", []string{"-pin-dir", empty + "/nosuch", "routes"}, "pin directory " + empty + "/nosuch"},
		{"map not pinned", []string{"-pin-dir", empty, "routes"}, "map sl_routes_v1 is not pinned in " + empty},
		{"another version", []string{"-pin-dir", other, "routes"},
			"this binary reads layout version 1, the agent pinned another (upgrade or downgrade sluice to the agent's version): " +
				"open pinned map " + other + "/sl_routes_v1: map pinned at another layout version: pinned at version [9], this reader knows version 1"},
		{"bad output", []string{"-o", "yaml", "routes"}, `-o "yaml"`},
		{"unknown command", []string{"-pin-dir", empty, "frobnicate"}, `unknown command "frobnicate"`},
		{"bad hook", []string{"-pin-dir", empty, "policy", "-iface", "1", "-hook", "tc"}, `-hook "tc"`},
		{"bad dir", []string{"-pin-dir", empty, "explain", "-iface", "1", "-dir", "up"}, `-dir "up"`},
	} {
		if got := runErr(tt.args...); !strings.Contains(got, tt.want) {
			t.Errorf("%s: %q, want it to say %q", tt.name, got, tt.want)
		}
	}
}
