package datapath

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/sluicenet/sluice/nat"
)

// serveName answers every TCP connection on l with name and every UDP
// datagram on pc with name, until they close.
func serveName(l net.Listener, pc net.PacketConn, name string) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(name))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name), from)
		}
	}()
}

// TestRealServiceTraffic runs the service stage on real sockets: a client
// workload's TCP connections and UDP requests to a ClusterIP reach both
// backend workloads of the node (each answers with its name, through the
// reverse translation), and a service without backends refuses a TCP
// connection at once and answers UDP with a port unreachable; with the
// interfaces' established packets routed by the host, and redirected
// past it (Interface.RedirectLocal).
func TestRealServiceTraffic(t *testing.T) {
	for _, fam := range []struct {
		name, tcp, udp, client, srv1, srv2, frontend, empty string
	}{
		{"ipv4", "tcp4", "udp4", "10.67.0.1", "10.67.0.2", "10.67.0.3", "10.96.67.1", "10.96.67.2"},
		{"ipv6", "tcp6", "udp6", "fd00:67::1", "fd00:67::2", "fd00:67::3", "fd00:96::67:1", "fd00:96::67:2"},
	} {
		for _, redirect := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/redirect-local=%v", fam.name, redirect), func(t *testing.T) {
				testRealServiceTraffic(t, redirect, fam.tcp, fam.udp, fam.client, fam.srv1, fam.srv2, fam.frontend, fam.empty)
			})
		}
	}
}

func testRealServiceTraffic(t *testing.T, redirect bool, tcp, udp, clientAddr, srv1Addr, srv2Addr, frontendAddr, emptyAddr string) {
	ap := func(a string, port uint16) string { return netip.AddrPortFrom(netip.MustParseAddr(a), port).String() }
	node, client, srv1 := nodePair(t, clientAddr, srv1Addr)
	srv2, err := node.AddWorkload("s2", netip.MustParseAddr(srv2Addr))
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, w := range node.Workloads {
		if err := d.SetInterface(w.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules, Ingress: allowAllRules, RedirectLocal: redirect}); err != nil {
			t.Fatal(err)
		}
		attachWorkload(t, node, d, w)
	}
	frontend := netip.MustParseAddr(frontendAddr)
	svc := nat.Service{
		Frontends: []nat.Frontend{{Addr: frontend, Port: 80, Protocol: nat.ProtoTCP}, {Addr: frontend, Port: 53, Protocol: nat.ProtoUDP}},
	}
	for _, w := range []string{srv1Addr, srv2Addr} {
		svc.Backends = append(svc.Backends, nat.Backend{Addr: netip.MustParseAddr(w), Port: 8080, Local: true})
	}
	empty := nat.Service{Frontends: []nat.Frontend{{Addr: netip.MustParseAddr(emptyAddr), Port: 80, Protocol: nat.ProtoTCP},
		{Addr: netip.MustParseAddr(emptyAddr), Port: 53, Protocol: nat.ProtoUDP}}}
	if err := d.Services().Sync(map[string]nat.Service{"web": svc, "empty": empty}); err != nil {
		t.Fatal(err)
	}
	for name, w := range map[string]*struct {
		ns   interface{ Do(func() error) error }
		addr string
	}{"srv1": {srv1.NS, ap(srv1Addr, 8080)}, "srv2": {srv2.NS, ap(srv2Addr, 8080)}} {
		var l net.Listener
		var pc net.PacketConn
		if err := w.ns.Do(func() (err error) {
			if l, err = net.Listen(tcp, w.addr); err != nil {
				return err
			}
			pc, err = net.ListenPacket(udp, w.addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close(); pc.Close() })
		serveName(l, pc, name)
	}

	seen := map[string]int{}
	err = client.NS.Do(func() error {
		for i := range 40 {
			c, err := net.DialTimeout(tcp, ap(frontendAddr, 80), 3*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			c.SetDeadline(time.Now().Add(3 * time.Second))
			name, err := io.ReadAll(c)
			c.Close()
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			seen["tcp "+string(name)]++
		}
		for i := range 20 {
			c, err := net.Dial(udp, ap(frontendAddr, 53))
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 64)
			if _, err := c.Write([]byte("q")); err != nil {
				return err
			}
			n, err := c.Read(buf)
			c.Close()
			if err != nil {
				return fmt.Errorf("request %d: %w", i, err)
			}
			seen["udp "+string(buf[:n])]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("answers: %v", seen)
	for _, k := range []string{"tcp srv1", "tcp srv2", "udp srv1", "udp srv2"} {
		if seen[k] == 0 {
			t.Errorf("no %s answered: %v", k, seen)
		}
	}

	err = client.NS.Do(func() error {
		start := time.Now()
		_, err := net.DialTimeout(tcp, ap(emptyAddr, 80), 3*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("connection to a service without backends: %v, want connection refused", err)
		}
		t.Logf("refused after %v", time.Since(start))
		c, err := net.Dial(udp, ap(emptyAddr, 53))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		c.Write([]byte("q"))
		_, err = c.Read(make([]byte, 8))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("UDP to a service without backends: %v, want connection refused", err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// BenchmarkRealServiceRR measures a request and its answer (one byte each
// way) over one TCP connection from a client workload to a ClusterIP
// whose backend is a workload of the same node, with the established
// packets routed by the host and redirected past it
// (Interface.RedirectLocal), and straight to the backend's address
// without a service, in one run: µs per round trip.
func BenchmarkRealServiceRR(b *testing.B) {
	node, client, server := nodePair(b, "10.68.0.1", "10.68.0.2")
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for _, w := range node.Workloads {
		attachWorkload(b, node, d, w)
	}
	svc := oneBackend("10.96.68.1:80", "10.68.0.2:8080", nat.ProtoTCP)
	if err := d.Services().Sync(map[string]nat.Service{"rr": svc}); err != nil {
		b.Fatal(err)
	}
	var l net.Listener
	if err := server.NS.Do(func() (err error) { l, err = net.Listen("tcp4", "10.68.0.2:8080"); return }); err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	for _, mode := range []struct {
		name     string
		to       string
		redirect bool
	}{{"routed", "10.96.68.1:80", false}, {"redirect-local", "10.96.68.1:80", true}, {"no-service", "10.68.0.2:8080", false}} {
		b.Run(mode.name, func(b *testing.B) {
			for _, w := range node.Workloads {
				if err := d.SetInterface(w.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules, Ingress: allowAllRules, RedirectLocal: mode.redirect}); err != nil {
					b.Fatal(err)
				}
			}
			var c net.Conn
			if err := client.NS.Do(func() (err error) { c, err = net.DialTimeout("tcp4", mode.to, 3*time.Second); return }); err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 1)
			start := time.Now()
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N)/1000, "µs/rr")
		})
	}
}

// TestRedirectLocalSkipsRouting: with RedirectLocal, an established
// connection through a ClusterIP to a backend of the node carries data
// with the node's IP forwarding turned off (in the node's namespace):
// its packets go from interface to interface past the host's routing.
// Without it, the same connection stalls.
func TestRedirectLocalSkipsRouting(t *testing.T) {
	for _, redirect := range []bool{true, false} {
		t.Run(fmt.Sprintf("redirect-local=%v", redirect), func(t *testing.T) {
			node, client, server := nodePair(t, "10.69.0.1", "10.69.0.2")
			d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for _, w := range node.Workloads {
				if err := d.SetInterface(w.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules, Ingress: allowAllRules, RedirectLocal: redirect}); err != nil {
					t.Fatal(err)
				}
				attachWorkload(t, node, d, w)
			}
			if err := d.Services().Sync(map[string]nat.Service{"s": oneBackend("10.96.69.1:80", "10.69.0.2:8080", nat.ProtoTCP)}); err != nil {
				t.Fatal(err)
			}
			var l net.Listener
			if err := server.NS.Do(func() (err error) { l, err = net.Listen("tcp4", "10.69.0.2:8080"); return }); err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				io.Copy(c, c)
			}()
			var c net.Conn
			if err := client.NS.Do(func() (err error) { c, err = net.DialTimeout("tcp4", "10.96.69.1:80", 3*time.Second); return }); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			echo := func() error {
				c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write([]byte("ping")); err != nil {
					return err
				}
				_, err := io.ReadFull(c, make([]byte, 4))
				return err
			}
			if err := echo(); err != nil {
				t.Fatalf("echo with forwarding on: %v", err)
			}
			if err := node.NS.Sysctl("net/ipv4/ip_forward", "0"); err != nil {
				t.Fatal(err)
			}
			defer node.NS.Sysctl("net/ipv4/ip_forward", "1")
			err = echo()
			if redirect && err != nil {
				t.Errorf("echo with forwarding off, redirected: %v", err)
			}
			if !redirect && err == nil {
				t.Error("echo with forwarding off went through without the redirect: the test proves nothing")
			}
		})
	}
}
