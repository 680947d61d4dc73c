package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
)

// connectClientEnv makes TestConnectClient a client: it connects to the
// TCP frontend and prints which backend answered and the peer its socket
// shows.
const connectClientEnv = "SLUICE_AGENT_CONNECT_CLIENT"

// nodeAddr is the node's own address in TestAgentCgroup, the source of
// its processes' connections.
var nodeAddr = netip.MustParseAddr("10.77.255.1")

// TestAgentCgroup: with -cgroup, a process of the cgroup in the node's
// namespace, which has no route to the frontend, reaches the service's
// backend, because connect-time balancing translated its connect; a
// process outside the cgroup cannot. A SIGKILLed agent's successor takes
// the cgroup links over in place, and one started without -cgroup
// detaches them.
func TestAgentCgroup(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildAgent(t)
	node := testutil.NewNode(t)
	server, err := node.AddWorkload("s1", serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	serveWorkload(t, server, "s1", tcpPort, udpPort, nil)
	// The node's address sits on its loopback: the source Linux picks for
	// its connections to the workloads, which have no address of the
	// node's on their veths.
	if err := node.NS.AddrAdd("lo", netip.PrefixFrom(nodeAddr, 32)); err != nil {
		t.Fatal(err)
	}

	bpffs := testutil.TempBPFFS(t)
	pinDir := filepath.Join(bpffs, "agent")
	cgroup := testutil.TempCgroup(t)
	t.Cleanup(func() {
		// Before the cgroup goes (cleanups run last first), and after the
		// agents are killed: our links on it, by its path.
		a, err := attach.Open(filepath.Join(pinDir, "attach"))
		if err != nil {
			t.Error(err)
			return
		}
		list, _ := a.List()
		for _, at := range list {
			if at.Cgroup == "" {
				continue
			}
			typ, _ := at.Hook.AttachType()
			if err := a.DetachCgroup(cgroup, typ); err != nil {
				t.Error(err)
			}
		}
	})
	statePath := filepath.Join(t.TempDir(), "state.json")
	s := State{
		Interfaces: map[string]InterfaceState{server.HostIfname: {Kind: "workload", Ingress: backendPolicy(30), Egress: denyAll}},
		Endpoints:  []Endpoint{{Interface: server.HostIfname, Addrs: []netip.Addr{server.Addr}}},
		Routes:     []Route{{Prefix: netip.PrefixFrom(nodeAddr, 32), Kind: "local-host"}},
		Services: map[string]Service{"web": {
			Frontends: []Frontend{{Addr: frontendAddr, Port: frontendTCP, Protocol: "tcp"}},
			Backends:  []Backend{{Addr: server.Addr, Port: tcpPort, Local: true}},
		}},
	}
	writeState(t, statePath, s)
	args := []string{"-state", statePath, "-pin-dir", pinDir, "-listen", metricsAddr}

	gen := 0.0
	// Two agents with -cgroup, the second taking over the first's links;
	// then one without it, which detaches them.
	for round, withCgroup := range []bool{true, true, false} {
		a := args
		if withCgroup {
			a = append(slices.Clip(args), "-cgroup", cgroup)
		}
		p := startAgent(t, node.NS, bin, a...)
		m := waitMetrics(t, node.NS, metricsAddr, p, "agent settled", func(m metrics) bool {
			return m["sluice_generation"] > gen && m["sluice_settled"] == 1 && m["sluice_last_apply_success"] == 1
		})
		gen = m["sluice_generation"]
		balanced := "backend=s1 peer=" + netip.AddrPortFrom(frontendAddr, frontendTCP).String()
		out, err := connectClient(t, node.NS, cgroup)
		if withCgroup && (err != nil || out != balanced) {
			t.Errorf("round %d: a client in the cgroup: %q, %v\n%s", round, out, err, p.logText())
		}
		if !withCgroup && err == nil {
			t.Errorf("round %d: without -cgroup a client in the cgroup reached the frontend: %q", round, out)
		}
		out, err = connectClient(t, node.NS, "")
		if err == nil {
			t.Errorf("round %d: a client outside the cgroup reached the frontend: %q", round, out)
		}
		var cgroupLinks int
		err = node.NS.Do(func() error {
			a, err := attach.Open(filepath.Join(pinDir, "attach"))
			if err != nil {
				return err
			}
			list, err := a.List()
			for _, at := range list {
				if at.Cgroup != "" {
					cgroupLinks++
				}
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		if withCgroup {
			want = 8
		}
		if cgroupLinks != want {
			t.Errorf("round %d: %d cgroup links, want %d", round, cgroupLinks, want)
		}
		p.stop(syscall.SIGKILL)
	}
}

// connectClient runs TestConnectClient as a process in ns, in cgroup if
// it is not empty, and returns what it printed.
func connectClient(t *testing.T, ns *topo.NS, cgroup string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestConnectClient$")
	cmd.Env = append(os.Environ(), connectClientEnv+"=1")
	if cgroup != "" {
		fd, err := syscall.Open(cgroup, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		// The process starts in the cgroup (CLONE_INTO_CGROUP): its
		// first connect already meets the cgroup's hooks.
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := ns.Do(cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "backend=") {
			return line, err
		}
	}
	return strings.TrimSpace(out.String()), fmt.Errorf("%v: %s", err, out.String())
}

// TestConnectClient is the client process of TestAgentCgroup.
func TestConnectClient(t *testing.T) {
	if os.Getenv(connectClientEnv) == "" {
		t.Skip("run by TestAgentCgroup as its client process")
	}
	c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(frontendAddr, frontendTCP).String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	name, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("backend=%s peer=%s\n", strings.TrimSpace(name), c.RemoteAddr())
}
