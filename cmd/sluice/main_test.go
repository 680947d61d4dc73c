package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/ipsets"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// The agent's configuration: a client and two backends of a Maglev
// ClusterIP service, and a UDP service with affinity. The server admits
// TCP 8080 from the client's IP set (rule 11), denies TCP 8081 (rule 12)
// and admits UDP 53 (rule 13); anything else is denied by the tier's end,
// rule 99.
var (
	clientAddr  = netip.MustParseAddr("10.131.0.1")
	serverAddr  = netip.MustParseAddr("10.131.0.2")
	server2Addr = netip.MustParseAddr("10.131.0.3")
	webVIP      = netip.MustParseAddr("10.96.131.1")
	dnsVIP      = netip.MustParseAddr("10.96.131.2")
)

const clientSet = 0x100

var allowAll = polprog.Rules{Tiers: []polprog.Tier{{Name: "default",
	Policies: []polprog.Policy{{Name: "all", Rules: []polprog.Rule{{ID: 1, Action: polprog.ActionAllow}}}}}}}

var serverPolicy = polprog.Rules{Tiers: []polprog.Tier{{Name: "default", EndRuleID: 99, Policies: []polprog.Policy{{
	Name: "server", Rules: []polprog.Rule{
		{ID: 11, Action: polprog.ActionAllow, Protocol: "tcp", SrcIPSets: []uint64{clientSet}, DstPorts: []polprog.PortRange{polprog.Port(8080)}},
		{ID: 12, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(8081)}},
		{ID: 13, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(53)}},
	}}}}}}

var services = map[string]nat.Service{
	"web": {Frontends: []nat.Frontend{{Addr: webVIP, Port: 80, Protocol: nat.ProtoTCP}}, Maglev: true,
		Backends: []nat.Backend{{Addr: serverAddr, Port: 8080, Local: true}, {Addr: server2Addr, Port: 8080, Local: true}}},
	"dns": {Frontends: []nat.Frontend{{Addr: dnsVIP, Port: 53, Protocol: nat.ProtoUDP}}, Affinity: 30 * time.Second,
		Backends: []nat.Backend{{Addr: serverAddr, Port: 53, Local: true}}},
}

// agent is a running datapath with pins and debug files, and what it
// serves.
type agent struct {
	d                        *datapath.Datapath
	node                     *topo.Node
	client, server, server2  *topo.Workload
	pinDir, debugDir         string
	webBackend, dnsBackend   string // the backends that answered
	webClient                netip.AddrPort
	deniedClient, allowedCli netip.AddrPort
}

func newAgent(t *testing.T) *agent {
	testutil.RequirePrivileged(t)
	a := &agent{node: testutil.NewNode(t), pinDir: filepath.Join(testutil.TempBPFFS(t), "pins"), debugDir: t.TempDir()}
	var err error
	for _, w := range []struct {
		to   **topo.Workload
		name string
		addr netip.Addr
	}{{&a.client, "cli", clientAddr}, {&a.server, "srv", serverAddr}, {&a.server2, "srv2", server2Addr}} {
		if *w.to, err = a.node.AddWorkload(w.name, w.addr); err != nil {
			t.Fatal(err)
		}
	}
	a.d, err = datapath.Open(datapath.Options{PinDir: a.pinDir, DebugDir: a.debugDir, ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.d.Close() })
	for _, w := range a.node.Workloads {
		r := routes.Route{Prefix: netip.PrefixFrom(w.Addr, 32), Flags: routes.FlagLocalWorkload, Ifindex: uint32(w.HostIfindex)}
		if err := a.d.Routes().Put(r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.d.IPSets().Sync(ipsets.Members{clientSet: {Nets: []netip.Prefix{netip.PrefixFrom(clientAddr, 32)}}}); err != nil {
		t.Fatal(err)
	}
	if err := a.d.Services().Sync(services); err != nil {
		t.Fatal(err)
	}
	// In the node's namespace, as an agent runs: the debug files name
	// the interfaces as it sees them.
	err = a.node.NS.Do(func() error {
		return a.d.SetInterfaces(map[int]datapath.Interface{
			a.client.HostIfindex:  {Kind: datapath.Workload, Egress: allowAll},
			a.server.HostIfindex:  {Kind: datapath.Workload, Ingress: serverPolicy},
			a.server2.HostIfindex: {Kind: datapath.Workload, Ingress: allowAll},
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range a.node.Workloads {
		for _, h := range []struct {
			prog *ebpf.Program
			typ  ebpf.AttachType
		}{{a.d.TCIngress(), ebpf.AttachTCXIngress}, {a.d.TCEgress(), ebpf.AttachTCXEgress}} {
			var l link.Link
			if err := a.node.NS.Do(func() (err error) {
				l, err = link.AttachTCX(link.TCXOptions{Interface: w.HostIfindex, Program: h.prog, Attach: h.typ})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}
	}
	if err := a.d.Settle(); err != nil {
		t.Fatal(err)
	}
	a.serve(t)
	a.traffic(t)
	return a
}

// serve answers TCP 8080 and 8081 and UDP 53 with the server's name.
func (a *agent) serve(t *testing.T) {
	for _, s := range []struct {
		w     *topo.Workload
		name  string
		tcp   []int
		udp53 bool
	}{{a.server, "srv", []int{8080, 8081}, true}, {a.server2, "srv2", []int{8080}, false}} {
		err := s.w.NS.Do(func() error {
			for _, port := range s.tcp {
				l, err := net.Listen("tcp4", fmt.Sprintf("%s:%d", s.w.Addr, port))
				if err != nil {
					return err
				}
				t.Cleanup(func() { l.Close() })
				go func() {
					for {
						c, err := l.Accept()
						if err != nil {
							return
						}
						fmt.Fprint(c, s.name)
						c.Close()
					}
				}()
			}
			if !s.udp53 {
				return nil
			}
			pc, err := net.ListenPacket("udp4", s.w.Addr.String()+":53")
			if err != nil {
				return err
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 64)
				for {
					_, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo([]byte(s.name), from)
				}
			}()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// traffic sends the client's flows: TCP to the web service and to the
// server's 8080 (allowed) and 8081 (denied), UDP to the DNS service.
func (a *agent) traffic(t *testing.T) {
	names := map[string]string{"srv": netip.AddrPortFrom(serverAddr, 8080).String(), "srv2": netip.AddrPortFrom(server2Addr, 8080).String()}
	err := a.client.NS.Do(func() error {
		ask := func(network, addr string) (string, netip.AddrPort, error) {
			c, err := net.DialTimeout(network, addr, 3*time.Second)
			if err != nil {
				return "", netip.AddrPort{}, err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if network == "udp4" {
				if _, err := c.Write([]byte("q")); err != nil {
					return "", netip.AddrPort{}, err
				}
			}
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if err != nil && err != io.EOF {
				return "", netip.AddrPort{}, err
			}
			return string(buf[:n]), netip.MustParseAddrPort(c.LocalAddr().String()), nil
		}
		name, local, err := ask("tcp4", netip.AddrPortFrom(webVIP, 80).String())
		if err != nil {
			return fmt.Errorf("web service: %w", err)
		}
		a.webBackend, a.webClient = names[name], local
		if name, _, err = ask("udp4", netip.AddrPortFrom(dnsVIP, 53).String()); err != nil || name != "srv" {
			return fmt.Errorf("dns service: %q, %v", name, err)
		}
		a.dnsBackend = netip.AddrPortFrom(serverAddr, 53).String()
		if name, a.allowedCli, err = ask("tcp4", netip.AddrPortFrom(serverAddr, 8080).String()); err != nil || name != "srv" {
			return fmt.Errorf("server 8080: %q, %v", name, err)
		}
		// The denied connection: its SYNs are dropped, so the dial
		// gives up; its source port is what the kernel tracked.
		d := net.Dialer{Timeout: 500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: clientAddr.AsSlice(), Port: 40812}}
		if c, err := d.Dial("tcp4", netip.AddrPortFrom(serverAddr, 8081).String()); err == nil {
			c.Close()
			return fmt.Errorf("connection to 8081 was not denied")
		}
		a.deniedClient = netip.AddrPortFrom(clientAddr, 40812)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if a.webBackend == "" {
		t.Fatal("web service answered with no known backend name")
	}
}

// cli runs the CLI against the agent and returns its standard output.
func (a *agent) cli(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	all := append([]string{"-pin-dir", a.pinDir, "-debug-dir", a.debugDir}, args...)
	if err := run(all, &out, &errOut); err != nil {
		t.Fatalf("sluice %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String()
}

// cliJSON runs the CLI with -o json and decodes its output into v.
func (a *agent) cliJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := a.cli(t, append([]string{"-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("sluice %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (a *agent) hostName(w *topo.Workload) string { return w.HostIfname }

// counterOf is the datapath's own count of a reason at an interface's
// TC hook.
func (a *agent) counterOf(t *testing.T, w *topo.Workload, hook bpf.Hook, r bpf.Reason) uint64 {
	t.Helper()
	c, err := a.d.Counters(w.HostIfindex)
	if err != nil {
		t.Fatal(err)
	}
	// A workload's Ingress counters are its host-side interface's TC
	// egress hook.
	if hook == bpf.HookEgress {
		return c.Ingress[r]
	}
	return c.Egress[r]
}

func diffJSON(t *testing.T, what string, want, got any) {
	t.Helper()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}
