package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/polprog"
)

// The agent's topology: a client and two backends on one node, a service
// frontend for TCP and one for UDP.
var (
	clientAddr   = netip.MustParseAddr("10.77.0.1")
	serverAddr   = netip.MustParseAddr("10.77.0.2")
	server2Addr  = netip.MustParseAddr("10.77.0.3")
	frontendAddr = netip.MustParseAddr("10.96.77.1")
)

const (
	tcpPort, udpPort         = 8080, 9000
	deniedTCPPort            = 8081
	frontendTCP, frontendUDP = 80, 53
	metricsAddr              = "127.0.0.1:9477"
)

// backendPolicy allows the service ports by rules first, last and end:
// two policies of different rule IDs (first+0, +1, end +9) allow the same
// traffic, so a change between them keeps the stream and shows in the
// rule hits.
func backendPolicy(first uint64, srcNets ...netip.Prefix) polprog.Rules {
	return polprog.Rules{Tiers: []polprog.Tier{{Name: "backends", EndRuleID: first + 9, Policies: []polprog.Policy{{
		Name: "svc", Namespace: "agent-test", Rules: []polprog.Rule{
			{ID: first, Action: polprog.ActionAllow, Protocol: "tcp", SrcNets: srcNets, DstPorts: []polprog.PortRange{polprog.Port(tcpPort)}},
			{ID: first + 1, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(udpPort)}},
		}}}}}}
}

// The client may send anything and is sent nothing new; backends send
// nothing new.
var (
	allowAll = polprog.Rules{Tiers: []polprog.Tier{{Name: "all", Policies: []polprog.Policy{{Name: "all",
		Rules: []polprog.Rule{{ID: 1, Action: polprog.ActionAllow}}}}}}}
	denyAll = polprog.Rules{NoMatchRuleID: 2}
)

// testState is the state the test writes: the client and the backends
// given, their policies, and both services to those backends.
func testState(client *topo.Workload, policy polprog.Rules, backends ...*topo.Workload) State {
	s := State{
		Interfaces: map[string]InterfaceState{client.HostIfname: {Kind: "workload", Egress: allowAll, Ingress: denyAll}},
		Endpoints:  []Endpoint{{Interface: client.HostIfname, Addrs: []netip.Addr{client.Addr}}},
		Services: map[string]Service{
			"web": {Frontends: []Frontend{{Addr: frontendAddr, Port: frontendTCP, Protocol: "tcp"}}},
			"dns": {Frontends: []Frontend{{Addr: frontendAddr, Port: frontendUDP, Protocol: "udp"}}},
		},
	}
	for _, b := range backends {
		s.Interfaces[b.HostIfname] = InterfaceState{Kind: "workload", Ingress: policy, Egress: denyAll}
		s.Endpoints = append(s.Endpoints, Endpoint{Interface: b.HostIfname, Addrs: []netip.Addr{b.Addr}})
		for name, port := range map[string]uint16{"web": tcpPort, "dns": udpPort} {
			svc := s.Services[name]
			svc.Backends = append(svc.Backends, Backend{Addr: b.Addr, Port: port, Local: true})
			s.Services[name] = svc
		}
	}
	return s
}

// TestAgent runs the agent binary on a node: the state's flows pass and a
// denied one fails; a change of the file (another policy allowing the
// stream, a new backend with its interface) applies while a TCP stream
// runs; a SIGKILLed agent's successor on the same pins takes over; a bad
// file is rejected and the last good state stays; and the stream has lost
// no byte at the end.
func TestAgent(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildAgent(t)
	node := testutil.NewNode(t)
	client, err := node.AddWorkload("cl", clientAddr)
	if err != nil {
		t.Fatal(err)
	}
	server, err := node.AddWorkload("s1", serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	server2, err := node.AddWorkload("s2", server2Addr)
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan streamResult, 64)
	serveWorkload(t, server, "s1", tcpPort, udpPort, results)
	serveWorkload(t, server2, "s2", tcpPort, udpPort, nil)
	var denied net.Listener
	if err := server.NS.Do(func() (err error) {
		denied, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", serverAddr, deniedTCPPort))
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer denied.Close()

	pinDir := filepath.Join(testutil.TempBPFFS(t), "agent")
	statePath := filepath.Join(t.TempDir(), "state.json")
	debugDir := t.TempDir()
	args := []string{"-state", statePath, "-pin-dir", pinDir, "-listen", metricsAddr, "-debug-dir", debugDir}
	writeState(t, statePath, testState(client, backendPolicy(30), server))

	first := startAgent(t, node.NS, bin, args...)
	m := waitMetrics(t, node.NS, metricsAddr, first, "first agent settled", func(m metrics) bool {
		return m["sluice_settled"] == 1 && m["sluice_last_apply_success"] == 1
	})
	if n := m[series("sluice_applies_total", "result", "error")]; n != 0 {
		t.Fatalf("the first agent failed %v applies:\n%s", n, first.logText())
	}
	gen := m["sluice_generation"]
	if got := backendsReached(t, client, 1); got["s1"] == 0 || len(got) != 1 {
		t.Fatalf("connections through the frontend reached %v, want s1 only", got)
	}
	checkUDP(t, client, "s1")
	checkDenied(t, client, node.NS, 39)

	// The stream goes through the frontend, to s1, the only backend yet.
	var conn net.Conn
	if err := client.NS.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(frontendAddr, frontendTCP).String(), 5*time.Second)
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if name, err := bufio.NewReader(conn).ReadString('\n'); err != nil || name != "s1\n" {
		t.Fatalf("stream's backend: %q, %v", name, err)
	}
	st := startStream(conn)
	st.waitProgress(t, 0, "start")
	base := waitMetrics(t, node.NS, metricsAddr, first, "scrape", func(metrics) bool { return true })

	t.Run("change", func(t *testing.T) {
		before := waitMetrics(t, node.NS, metricsAddr, first, "scrape", func(metrics) bool { return true })
		n, _ := st.progress()
		writeState(t, statePath, testState(client, backendPolicy(40, netip.MustParsePrefix("10.0.0.0/8")), server, server2))
		after := waitMetrics(t, node.NS, metricsAddr, first, "change applied", func(m metrics) bool {
			return m[series("sluice_applies_total", "result", "ok")] > before[series("sluice_applies_total", "result", "ok")]
		})
		if after["sluice_last_apply_success"] != 1 || after["sluice_interfaces"] != 3 {
			t.Fatalf("after the change: success %v, interfaces %v", after["sluice_last_apply_success"], after["sluice_interfaces"])
		}
		// Only what changed was written: s1's policy and the new s2, the
		// two services' backends, s2's route and links.
		checkWrites(t, before, after, map[string]float64{"interfaces": 2, "services": 2, "routes": 1, "links": 2})
		if got := backendsReached(t, client, 2); got["s1"] == 0 || got["s2"] == 0 {
			t.Errorf("connections through the frontend reached %v, want s1 and s2", got)
		}
		checkUDP(t, client, "s1", "s2")
		checkDenied(t, client, node.NS, 49)
		st.waitProgress(t, n, "change")
		moved := waitMetrics(t, node.NS, metricsAddr, first, "scrape", func(metrics) bool { return true })
		if moved[series("sluice_rule_hits_total", "rule_id", "40")] == 0 {
			t.Errorf("rule 40 of the new policy has no hits")
		}
		k := series("sluice_packets_total", "interface", server.HostIfname, "hook", "ingress", "reason", "accepted_by_policy")
		if moved[k] <= before[k] {
			t.Errorf("%s did not move: %v, then %v", k, before[k], moved[k])
		}
	})

	// The debug CLI reads the agent's pins and debug files: it explains
	// the denied flow by the new policy's end rule.
	t.Run("cli", func(t *testing.T) {
		cli := buildCLI(t)
		var out []byte
		err := node.NS.Do(func() (err error) {
			out, err = exec.Command(cli, "-pin-dir", filepath.Join(pinDir, "datapath"), "-debug-dir", debugDir,
				"explain", "-iface", server.HostIfname, "-dir", "egress", "-proto", "tcp",
				"-src", netip.AddrPortFrom(clientAddr, 40000).String(), "-dst", netip.AddrPortFrom(serverAddr, deniedTCPPort).String()).CombinedOutput()
			return err
		})
		if err != nil || !strings.Contains(string(out), "by rule 49") || !strings.Contains(string(out), "dropped_by_policy") {
			t.Errorf("sluice explain: %v\n%s", err, out)
		}
		t.Logf("sluice explain:\n%s", out)
	})

	t.Run("restart", func(t *testing.T) {
		n, _ := st.progress()
		if err := first.stop(syscall.SIGKILL); err == nil {
			t.Fatal("the SIGKILLed agent exited cleanly")
		}
		// No agent runs: the pinned programs go on enforcing.
		st.waitProgress(t, n, "no agent")
		checkDenied(t, client, nil, 0)
		second := startAgent(t, node.NS, bin, args...)
		t.Cleanup(func() {
			second.stop(syscall.SIGKILL)
			if t.Failed() {
				t.Logf("first agent's log:\n%s\nsecond agent's log:\n%s", first.logText(), second.logText())
			}
		})
		m := waitMetrics(t, node.NS, metricsAddr, second, "second agent settled", func(m metrics) bool {
			return m["sluice_generation"] > gen && m["sluice_settled"] == 1 && m["sluice_last_apply_success"] == 1
		})
		if n := m[series("sluice_applies_total", "result", "error")]; n != 0 {
			t.Fatalf("the second agent failed %v applies", n)
		}
		// A new process configures every interface for its generation and
		// moves every link, but finds the routes and members in place.
		checkWrites(t, metrics{}, m, map[string]float64{"interfaces": 3, "services": 2, "links": 6})
		if m["sluice_interfaces"] != 3 || m["sluice_services"] != 2 {
			t.Errorf("the second agent has %v interfaces and %v services, want 3 and 2", m["sluice_interfaces"], m["sluice_services"])
		}
		n, _ = st.progress()
		st.waitProgress(t, n, "after takeover")
		if got := backendsReached(t, client, 2); got["s1"] == 0 || got["s2"] == 0 {
			t.Errorf("connections through the frontend reached %v, want s1 and s2", got)
		}
		checkDenied(t, client, node.NS, 49)

		t.Run("bad-state", func(t *testing.T) {
			before := waitMetrics(t, node.NS, metricsAddr, second, "scrape", func(metrics) bool { return true })
			errs := series("sluice_applies_total", "result", "error")
			bad := testState(client, backendPolicy(60), server, server2)
			bad.Interfaces[server2.HostIfname] = InterfaceState{Kind: "workloud"}
			// Written in place this time, not renamed over.
			b, err := json.Marshal(bad)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(statePath, b, 0o600); err != nil {
				t.Fatal(err)
			}
			m := waitMetrics(t, node.NS, metricsAddr, second, "bad file reported", func(m metrics) bool {
				return m[errs] > before[errs]
			})
			checkWrites(t, before, m, nil)
			if m["sluice_last_apply_success"] != 0 {
				t.Errorf("sluice_last_apply_success %v after a bad file, want 0", m["sluice_last_apply_success"])
			}
			field := fmt.Sprintf("interfaces[%q].kind", server2.HostIfname)
			if log := second.logText(); !strings.Contains(log, field) {
				t.Errorf("the agent's log does not name %s:\n%s", field, log)
			}
			// The last good state: policy 40, both backends.
			if got := backendsReached(t, client, 2); got["s1"] == 0 || got["s2"] == 0 {
				t.Errorf("connections through the frontend reached %v, want s1 and s2", got)
			}
			checkDenied(t, client, node.NS, 49)
		})

		// An agent that starts on a bad file does not settle: the one it
		// replaces goes on enforcing until the file is good again.
		rt := t
		t.Run("bad-start", func(t *testing.T) {
			second.stop(syscall.SIGKILL)
			// The third agent outlives this sub-test.
			third := startAgent(rt, node.NS, bin, args...)
			rt.Cleanup(func() {
				if rt.Failed() {
					t.Logf("third agent's log:\n%s", third.logText())
				}
			})
			second = third
			m := waitMetrics(t, node.NS, metricsAddr, third, "bad file reported", func(m metrics) bool {
				return m[series("sluice_applies_total", "result", "error")] > 0
			})
			if m["sluice_settled"] != 0 || m["sluice_interfaces"] != 0 {
				t.Errorf("on a bad file the agent settled (%v) or configured %v interfaces", m["sluice_settled"], m["sluice_interfaces"])
			}
			if got := backendsReached(t, client, 2); got["s1"] == 0 || got["s2"] == 0 {
				t.Errorf("connections through the frontend reached %v, want s1 and s2", got)
			}
			checkDenied(t, client, node.NS, 49)
			n, _ := st.progress()
			st.waitProgress(t, n, "bad start")
			writeState(t, statePath, testState(client, backendPolicy(40, netip.MustParsePrefix("10.0.0.0/8")), server, server2))
			waitMetrics(t, node.NS, metricsAddr, third, "settled on the good file", func(m metrics) bool {
				return m["sluice_settled"] == 1 && m["sluice_last_apply_success"] == 1 && m["sluice_interfaces"] == 3
			})
			checkDenied(t, client, node.NS, 49)
		})

		end := waitMetrics(t, node.NS, metricsAddr, second, "scrape", func(metrics) bool { return true })
		checkDrops(t, base, end, server.HostIfname, client.HostIfname, server.HostIfname, server2.HostIfname)

		sent, err := st.stop()
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		select {
		case r := <-results:
			if r.err != nil || r.corrupt >= 0 || r.bytes != sent {
				t.Errorf("stream: sent %d bytes, the server read %d (error %v, first wrong byte at %d)", sent, r.bytes, r.err, r.corrupt)
			}
			t.Logf("stream: %d bytes, none lost; longest pause between reads %v", r.bytes, r.maxGap)
		case <-time.After(30 * time.Second):
			t.Fatal("the server did not see the stream end")
		}

		if err := second.stop(syscall.SIGTERM); err != nil {
			t.Errorf("SIGTERM: %v\n%s", err, second.logText())
		}
		// SIGTERM leaves the links pinned and the programs enforcing.
		var list []attach.Attachment
		if err := node.NS.Do(func() error {
			a, err := attach.Open(filepath.Join(pinDir, "attach"))
			if err == nil {
				list, err = a.List()
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if len(list) != 6 {
			t.Errorf("after SIGTERM %d attachments are pinned, want 6: %v", len(list), list)
		}
		checkDenied(t, client, nil, 0)
		if got := backendsReached(t, client, 2); got["s1"] == 0 || got["s2"] == 0 {
			t.Errorf("after SIGTERM connections through the frontend reached %v, want s1 and s2", got)
		}
	})
}

// backendsReached connects to the TCP frontend until it has seen want
// backends (or 40 connections) and counts the connections by backend.
func backendsReached(t *testing.T, client *topo.Workload, want int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < 40 && len(got) < want; i++ {
		err := client.NS.Do(func() error {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(frontendAddr, frontendTCP).String(), 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			name, err := bufio.NewReader(c).ReadString('\n')
			got[strings.TrimSpace(name)]++
			return err
		})
		if err != nil {
			t.Fatalf("connect through the frontend: %v", err)
		}
	}
	return got
}

// checkUDP sends datagrams to the UDP frontend from new sockets until
// each of the backends named has answered.
func checkUDP(t *testing.T, client *topo.Workload, backends ...string) {
	t.Helper()
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < len(backends); i++ {
		err := client.NS.Do(func() error {
			c, err := net.Dial("udp4", netip.AddrPortFrom(frontendAddr, frontendUDP).String())
			if err != nil {
				return err
			}
			defer c.Close()
			buf := make([]byte, 64)
			for try := 0; try < 5; try++ {
				c.Write([]byte("ping"))
				c.SetReadDeadline(time.Now().Add(time.Second))
				n, err := c.Read(buf)
				if err == nil {
					seen[string(buf[:n])] = true
					return nil
				}
			}
			return errors.New("no answer")
		})
		if err != nil {
			t.Fatalf("UDP through the frontend: %v", err)
		}
	}
	for _, b := range backends {
		if !seen[b] {
			t.Errorf("UDP through the frontend reached %v, not %s", seen, b)
		}
	}
}

// checkDenied connects to the server's denied port: the connection must
// fail. With a node namespace given it then checks that the denying rule
// (the tier's end rule endRule) counted it, from the agent's metrics.
func checkDenied(t *testing.T, client *topo.Workload, node *topo.NS, endRule uint64) {
	t.Helper()
	k := series("sluice_rule_hits_total", "rule_id", fmt.Sprint(endRule))
	var before metrics
	if node != nil {
		var err error
		if before, err = scrape(node, metricsAddr); err != nil {
			t.Fatal(err)
		}
	}
	err := client.NS.Do(func() error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(serverAddr, deniedTCPPort).String(), 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil {
		t.Fatalf("the denied port %d accepted a connection", deniedTCPPort)
	}
	if node == nil {
		return
	}
	after, err := scrape(node, metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if after[k] <= before[k] {
		t.Errorf("the denied connection did not count on rule %d: %v, then %v", endRule, before[k], after[k])
	}
}

// checkWrites compares the growth of sluice_apply_writes_total between
// two scrapes with want, by object.
func checkWrites(t *testing.T, from, to metrics, want map[string]float64) {
	t.Helper()
	got := map[string]float64{}
	for _, object := range []string{"interfaces", "services", "routes", "ipset_members", "links"} {
		k := series("sluice_apply_writes_total", "object", object)
		if _, ok := to[k]; !ok {
			t.Errorf("no series %s", k)
		}
		if d := to[k] - from[k]; d != 0 {
			got[object] = d
		}
	}
	if want == nil {
		want = map[string]float64{}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("apply writes (-want +got):\n%s", diff)
	}
}

// checkDrops fails the test if, between two scrapes, any interface's
// counters or the unconfigured ones moved for a dropping reason, except
// the denied probes' policy drops at the ingress of probed, and neighbour
// discovery (IPv6 router solicitations of the workloads, dropped by
// design).
func checkDrops(t *testing.T, from, to metrics, probed string, ifaces ...string) {
	t.Helper()
	var keys []string
	for r := bpf.ReasonFirstDrop; r < bpf.ReasonCount; r++ {
		if strings.HasPrefix(r.String(), "Reason(") {
			t.Errorf("reason %d has no name: its series cannot be told from another's", int(r))
		}
		if r == bpf.ReasonDroppedND {
			continue
		}
		for _, hook := range []string{"tc_ingress", "tc_egress"} {
			keys = append(keys, series("sluice_unconfigured_packets_total", "hook", hook, "reason", r.String()))
		}
		for _, ifname := range ifaces {
			for _, hook := range []string{"ingress", "egress"} {
				if ifname == probed && hook == "ingress" && r == bpf.ReasonDroppedByPolicy {
					continue
				}
				keys = append(keys, series("sluice_packets_total", "interface", ifname, "hook", hook, "reason", r.String()))
			}
		}
	}
	for _, k := range keys {
		if _, ok := to[k]; !ok {
			t.Errorf("no series %s", k)
		} else if to[k] != from[k] {
			t.Errorf("%s moved from %v to %v", k, from[k], to[k])
		}
	}
}
