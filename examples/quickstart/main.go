// Command quickstart is sluice's first run: it builds a node and two
// workloads in network namespaces joined by veth pairs (as a CNI wires
// pods), loads the datapath, gives the server workload a policy, sends
// allowed and denied TCP, UDP and ICMP from the client, and prints what
// passed, what was denied and by which rule, and the counters. It removes
// everything it made and exits 0.
//
// Run it as root on Linux with TCX (6.6 or later):
//
//	go run ./examples/quickstart
package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// The client may send anything; the server takes web traffic and DNS.
var (
	allowAll = polprog.Rules{Tiers: []polprog.Tier{{
		Name:     "default",
		Policies: []polprog.Policy{{Name: "all", Rules: []polprog.Rule{{ID: 1, Action: polprog.ActionAllow}}}},
	}}}
	serverPolicy = polprog.Rules{Tiers: []polprog.Tier{{
		Name: "default",
		Policies: []polprog.Policy{{Name: "server", Namespace: "demo", Rules: []polprog.Rule{
			{ID: 101, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}},
			{ID: 102, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(81)}},
			{ID: 103, Action: polprog.ActionAllow, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(53)}},
			{ID: 104, Action: polprog.ActionAllow, Protocol: "icmp", ICMP: &polprog.ICMPMatch{Type: 8}},
		}}},
		EndAction: polprog.EndDeny,
		EndRuleID: 199,
	}}}
)

// prefix starts the name of every namespace the quickstart makes.
const prefix = "slqs-"

func run(out io.Writer) error {
	// A run killed halfway leaves its namespaces: remove them by name.
	topo.DeleteNS(prefix+"node", prefix+"client", prefix+"server")
	node, err := topo.NewNode(prefix)
	if err != nil {
		return err
	}
	defer node.Close()
	client, err := node.AddWorkload("client", netip.MustParseAddr("10.70.0.1"))
	if err != nil {
		return err
	}
	server, err := node.AddWorkload("server", netip.MustParseAddr("10.70.0.2"))
	if err != nil {
		return err
	}

	var dp *datapath.Datapath
	var links []link.Link
	// The agent's part runs in the node's namespace, as an agent on a
	// node runs in the host's.
	err = node.NS.Do(func() (err error) {
		dp, links, err = startDatapath(
			endpoint{ifindex: client.HostIfindex, addr: client.Addr},
			endpoint{ifindex: server.HostIfindex, addr: server.Addr})
		return err
	})
	if err != nil {
		return err
	}
	defer dp.Close()
	for _, l := range links {
		defer l.Close()
	}

	if err := serve(server); err != nil {
		return err
	}
	fmt.Fprintf(out, "client %s -> server %s\n", client.Addr, server.Addr)
	for _, f := range flows {
		before, err := dp.RuleHits().All()
		if err != nil {
			return err
		}
		err = client.NS.Do(func() error { return f.try(server.Addr) })
		after, err2 := dp.RuleHits().All()
		if err2 != nil {
			return err2
		}
		verdict := "passed"
		if err != nil {
			verdict = "denied"
		}
		fmt.Fprintf(out, "  %-12s %-7s rule %s\n", f.name, verdict, decidingRule(before, after))
	}
	c, err := dp.Counters(server.HostIfindex)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "server counters\n  sent:     %v\n  received: %v\n", c.Egress.NonZero(), c.Ingress.NonZero())
	return nil
}

// endpoint is a workload as the agent knows it: the host side of its veth
// and its address.
type endpoint struct {
	ifindex int
	addr    netip.Addr
}

// startDatapath is what an agent does: it opens the datapath, tells it
// where the workloads are, gives each workload its policies, and attaches
// the datapath's two programs to their interfaces.
func startDatapath(client, server endpoint) (*datapath.Datapath, []link.Link, error) {
	// embed:start
	dp, err := datapath.Open(datapath.Options{})
	if err != nil {
		return nil, nil, err
	}
	// Where each workload lives: the reverse-path check lets a workload
	// send only from its own addresses.
	for _, w := range []endpoint{client, server} {
		route := routes.Route{Prefix: netip.PrefixFrom(w.addr, 32), Flags: routes.FlagLocalWorkload, Ifindex: uint32(w.ifindex)}
		if err := dp.Routes().Put(route); err != nil {
			dp.Close()
			return nil, nil, err
		}
	}
	// Policies in the workloads' own terms, make-before-break: what each
	// may send (Egress), what it accepts (Ingress).
	err = dp.SetInterfaces(map[int]datapath.Interface{
		client.ifindex: {Kind: datapath.Workload, Egress: allowAll},
		server.ifindex: {Kind: datapath.Workload, Ingress: serverPolicy},
	})
	if err != nil {
		dp.Close()
		return nil, nil, err
	}
	// One program per TC hook, attached to every interface.
	var links []link.Link
	for _, w := range []endpoint{client, server} {
		for _, hook := range []struct {
			prog   *ebpf.Program
			attach ebpf.AttachType
		}{{dp.TCIngress(), ebpf.AttachTCXIngress}, {dp.TCEgress(), ebpf.AttachTCXEgress}} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: w.ifindex, Program: hook.prog, Attach: hook.attach})
			if err != nil {
				for _, l := range links {
					l.Close()
				}
				dp.Close()
				return nil, nil, err
			}
			links = append(links, l)
		}
	}
	// The first start of an agent settles at once; a restarted one, once
	// it has moved every link to its programs.
	if err := dp.Settle(); err != nil {
		dp.Close()
		return nil, nil, err
	}
	// embed:end
	return dp, links, nil
}

// decidingRule names the rules whose hits went up, by ID.
func decidingRule(before, after map[uint64]uint64) string {
	s := ""
	for id, n := range after {
		if n > before[id] && id != 1 { // 1 is the client's allow-all
			s += fmt.Sprintf("%d ", id)
		}
	}
	if s == "" {
		return "- (conntrack)"
	}
	return s
}

// flow is one exchange the client tries.
type flow struct {
	name string
	try  func(server netip.Addr) error
}

var flows = []flow{
	{"tcp/80", func(s netip.Addr) error { return tcpEcho(s, 80) }},
	{"tcp/81", func(s netip.Addr) error { return tcpEcho(s, 81) }},
	{"tcp/8080", func(s netip.Addr) error { return tcpEcho(s, 8080) }},
	{"udp/53", func(s netip.Addr) error { return udpEcho(s, 53) }},
	{"udp/54", func(s netip.Addr) error { return udpEcho(s, 54) }},
	{"icmp echo", ping},
}

// serve answers on every port the flows try.
func serve(server *topo.Workload) error {
	return server.NS.Do(func() error {
		for _, port := range []int{80, 81, 8080} {
			l, err := net.Listen("tcp4", fmt.Sprintf("%s:%d", server.Addr, port))
			if err != nil {
				return err
			}
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() { io.Copy(c, c); c.Close() }()
				}
			}()
		}
		for _, port := range []int{53, 54} {
			c, err := net.ListenPacket("udp4", fmt.Sprintf("%s:%d", server.Addr, port))
			if err != nil {
				return err
			}
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := c.ReadFrom(buf)
					if err != nil {
						return
					}
					c.WriteTo(buf[:n], from)
				}
			}()
		}
		return nil
	})
}

const timeout = 500 * time.Millisecond

func tcpEcho(server netip.Addr, port uint16) error {
	c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(server, port).String(), timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c)
}

func udpEcho(server netip.Addr, port uint16) error {
	c, err := net.Dial("udp4", netip.AddrPortFrom(server, port).String())
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c)
}

func echo(c net.Conn) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	_, err := io.ReadFull(c, buf)
	return err
}

// ping sends one ICMP echo request on a raw socket and waits for the reply.
func ping(server netip.Addr) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_ICMP)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	req := []byte{8, 0, 0, 0, 0x51, 0x51, 0, 1} // echo request, id 0x5151, seq 1
	sum := checksum(req)
	req[2], req[3] = byte(sum>>8), byte(sum)
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrInet4{Addr: server.As4()}); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		// A raw socket returns the IP header too.
		if ihl := int(buf[0]&0x0f) * 4; n >= ihl+8 && buf[ihl] == 0 && buf[ihl+4] == 0x51 {
			return nil
		}
	}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
