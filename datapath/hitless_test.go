package datapath

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
)

// The hitless tests (issue 12) carry a TCP stream at full speed and a UDP
// stream through a service frontend (TC NAT) into a backend workload
// whose ingress policy allows them, on a node whose datapath is attached
// through package attach, and make one change each while the streams run.
// The agent that holds the datapath is either this test process or a
// child (the test binary again, TestHitlessAgent), which a test kills.

// Addresses of the hitless topology: a client, the backend every flow
// goes to, and a second backend the backends case adds and removes.
var (
	hitlessClient      = netip.MustParseAddr("10.74.0.1")
	hitlessBackend     = netip.MustParseAddr("10.74.0.2")
	hitlessBackend2    = netip.MustParseAddr("10.74.0.3")
	hitlessFrontend    = netip.MustParseAddr("10.96.74.1")
	hitlessTCPFrontend = netip.AddrPortFrom(hitlessFrontend, 80)
	hitlessUDPFrontend = netip.AddrPortFrom(hitlessFrontend, 53)
)

// Backend ports of the two services.
const (
	hitlessTCPPort = 8080
	hitlessUDPPort = 9000
)

// hitlessPolicies are two backend ingress policies that both allow the
// streams, by rules of different IDs.
var hitlessPolicies = [2]polprog.Rules{
	{Tiers: []polprog.Tier{{Name: "a", EndRuleID: 32, Policies: []polprog.Policy{{Name: "a", Rules: []polprog.Rule{
		{ID: 30, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(hitlessTCPPort)}},
		{ID: 31, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(hitlessUDPPort)}},
	}}}}}},
	{Tiers: []polprog.Tier{{Name: "b", EndRuleID: 42, Policies: []polprog.Policy{{Name: "b", Rules: []polprog.Rule{
		{ID: 40, Action: polprog.ActionAllow, Protocol: "tcp", SrcNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			DstPorts: []polprog.PortRange{polprog.Port(hitlessTCPPort)}},
		{ID: 41, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(hitlessUDPPort)}},
	}}}}}},
}

// hitlessEnv is what an agent needs to know of the node: handed to a
// child agent as JSON in hitlessAgentEnv.
type hitlessEnv struct {
	// PinDir is the datapath's, AttachDir the Attacher's.
	PinDir, AttachDir string
	// NodeNS names the node's namespace, where the agent attaches.
	NodeNS string
	// ClientIf and ServerIf are the host sides of the client's and the
	// backend's veth pairs.
	ClientIf, ServerIf hitlessIface
}

// hitlessIface is a workload's host-side interface.
type hitlessIface struct {
	Name    string
	Ifindex int
	Addr    netip.Addr
}

// hitlessAgentEnv names the variable that makes TestHitlessAgent an
// agent: its hitlessEnv.
const hitlessAgentEnv = "SLUICE_HITLESS_AGENT"

// hitlessReady is the line a child agent prints once it holds the
// datapath and the attachments.
const hitlessReady = "hitless-agent-ready"

// hitlessOpen opens the datapath on env's pinned state and configures it:
// the client allowed out and nothing new in, the backend the streams in
// (by policy, 0 or 1) and nothing new out, and both services with the
// given backends.
func hitlessOpen(env hitlessEnv, policy int, backends ...netip.Addr) (*Datapath, error) {
	d, err := Open(Options{PinDir: env.PinDir, ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		return nil, err
	}
	if err := hitlessConfigure(d, env, policy, backends...); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func hitlessConfigure(d *Datapath, env hitlessEnv, policy int, backends ...netip.Addr) error {
	for _, w := range []hitlessIface{env.ClientIf, env.ServerIf} {
		if err := d.Routes().Put(workloadRoute(netip.PrefixFrom(w.Addr, 32).String(), uint32(w.Ifindex))); err != nil {
			return err
		}
	}
	err := d.SetInterfaces(map[int]Interface{
		env.ClientIf.Ifindex: {Kind: Workload, Egress: allowAllRules, Ingress: denyAllRules},
		env.ServerIf.Ifindex: {Kind: Workload, Ingress: hitlessPolicies[policy], Egress: denyAllRules},
	})
	if err != nil {
		return err
	}
	return hitlessServices(d, backends...)
}

// hitlessServices syncs the two services with backends.
func hitlessServices(d *Datapath, backends ...netip.Addr) error {
	tcp := nat.Service{Frontends: []nat.Frontend{{Addr: hitlessFrontend, Port: hitlessTCPFrontend.Port(), Protocol: nat.ProtoTCP}}}
	udp := nat.Service{Frontends: []nat.Frontend{{Addr: hitlessFrontend, Port: hitlessUDPFrontend.Port(), Protocol: nat.ProtoUDP}}}
	for _, b := range backends {
		tcp.Backends = append(tcp.Backends, nat.Backend{Addr: b, Port: hitlessTCPPort, Local: true})
		udp.Backends = append(udp.Backends, nat.Backend{Addr: b, Port: hitlessUDPPort, Local: true})
	}
	return d.Services().Sync(map[string]nat.Service{"hitless-tcp": tcp, "hitless-udp": udp})
}

// hitlessAttach attaches d's programs to both interfaces, replacing in
// place what an earlier agent attached through the same AttachDir. It
// runs in the calling thread's namespace, the node's.
func hitlessAttach(env hitlessEnv, d *Datapath) error {
	a, err := attach.Open(env.AttachDir)
	if err != nil {
		return err
	}
	for _, ifname := range []string{env.ClientIf.Name, env.ServerIf.Name} {
		if _, err := a.AttachTC(ifname, attach.Ingress, d.TCIngress()); err != nil {
			return err
		}
		if _, err := a.AttachTC(ifname, attach.Egress, d.TCEgress()); err != nil {
			return err
		}
	}
	return nil
}

// hitlessNode is the topology of one hitless test, and its agent.
type hitlessNode struct {
	t                       *testing.T
	node                    *topo.Node
	client, server, server2 *topo.Workload
	env                     hitlessEnv
	// d is the datapath of an agent in this process, nil while a child
	// agent holds it.
	d *Datapath
	// agent is the child agent, if any, and agentIn its stdin, held open
	// for as long as it runs.
	agent   *exec.Cmd
	agentIn io.WriteCloser
}

// newHitlessNode builds the node, with the backends listening, and starts
// its agent: in this process, or a child one if child.
func newHitlessNode(t *testing.T, child bool) *hitlessNode {
	t.Helper()
	node, client, server := nodePair(t, hitlessClient.String(), hitlessBackend.String())
	server2, err := node.AddWorkload("s2", hitlessBackend2)
	if err != nil {
		t.Fatal(err)
	}
	bpffs := testutil.TempBPFFS(t)
	h := &hitlessNode{t: t, node: node, client: client, server: server, server2: server2, env: hitlessEnv{
		PinDir:    filepath.Join(bpffs, "sluice"),
		AttachDir: filepath.Join(bpffs, "attach"),
		NodeNS:    node.NS.Name,
		ClientIf:  hitlessIface{client.HostIfname, client.HostIfindex, client.Addr},
		ServerIf:  hitlessIface{server.HostIfname, server.HostIfindex, server.Addr},
	}}
	if err := os.Mkdir(h.env.AttachDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.killAgent()
		if h.d != nil {
			h.d.Close()
		}
	})
	if child {
		h.startAgent()
		return h
	}
	if h.d, err = hitlessOpen(h.env, 0, hitlessBackend); err != nil {
		t.Fatal(err)
	}
	if err := node.NS.Do(func() error { return hitlessAttach(h.env, h.d) }); err != nil {
		t.Fatal(err)
	}
	if err := h.d.Settle(); err != nil {
		t.Fatal(err)
	}
	return h
}

// startAgent starts a child agent and waits until it has taken over.
func (h *hitlessNode) startAgent() {
	h.t.Helper()
	env, err := json.Marshal(h.env)
	if err != nil {
		h.t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHitlessAgent$", "-test.v")
	cmd.Env = append(os.Environ(), hitlessAgentEnv+"="+string(env))
	cmd.Stderr = os.Stderr
	// The child waits on its stdin: if this process dies, so does it.
	in, err := cmd.StdinPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.agent, h.agentIn = cmd, in
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == hitlessReady {
				ready <- true
				break
			}
		}
		ready <- false
		for sc.Scan() { // keep the pipe drained
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			h.t.Fatal("the agent exited before taking over")
		}
	case <-time.After(30 * time.Second):
		h.t.Fatal("the agent did not take over in 30 s")
	}
}

// killAgent kills the child agent with SIGKILL, by its PID, and reaps it.
func (h *hitlessNode) killAgent() {
	if h.agent == nil {
		return
	}
	h.agent.Process.Kill()
	h.agent.Wait()
	h.agentIn.Close()
	h.agent, h.agentIn = nil, nil
}

// gap detaches the client's TC ingress program (where its flows are
// translated), pauses, and, if reattach, attaches the datapath's program
// again: the deliberate loss the test must be able to see.
func (h *hitlessNode) gap(pause time.Duration, reattach bool) {
	h.t.Helper()
	a, err := attach.Open(h.env.AttachDir)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.node.NS.Do(func() error { return a.DetachTC(h.env.ClientIf.Name, attach.Ingress) }); err != nil {
		h.t.Fatal(err)
	}
	time.Sleep(pause)
	if !reattach {
		return
	}
	err = h.node.NS.Do(func() error {
		_, err := a.AttachTC(h.env.ClientIf.Name, attach.Ingress, h.d.TCIngress())
		return err
	})
	if err != nil {
		h.t.Fatal(err)
	}
}

// TestHitlessAgent is a child agent when hitlessAgentEnv is set: it opens
// the pinned datapath, configures it, attaches it in the node's
// namespace, settles, says so and waits to be killed.
func TestHitlessAgent(t *testing.T) {
	v := os.Getenv(hitlessAgentEnv)
	if v == "" {
		t.Skip("run by the hitless tests as a child agent")
	}
	var env hitlessEnv
	if err := json.Unmarshal([]byte(v), &env); err != nil {
		t.Fatal(err)
	}
	d, err := hitlessOpen(env, 0, hitlessBackend)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// This goroutine's thread stays in the node's namespace: the process
	// ends with it.
	runtime.LockOSThread()
	ns, err := netns.GetFromName(env.NodeNS)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	if err := hitlessAttach(env, d); err != nil {
		t.Fatal(err)
	}
	if err := d.Settle(); err != nil {
		t.Fatal(err)
	}
	fmt.Println(hitlessReady)
	var b [1]byte
	os.Stdin.Read(b[:])
}
