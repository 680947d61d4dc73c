package testutil

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"

	"github.com/sluicenet/sluice/internal/topo"
)

// NetNS is a named network namespace created for one test.
type NetNS struct {
	*topo.NS
}

var nsCounter atomic.Uint32

// NewNetNS creates a named network namespace with its loopback up. It is
// deleted, by the name it was created under, in tb.Cleanup.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	RequirePrivileged(tb)
	ns, err := topo.NewNS(fmt.Sprintf("sl-%d-%d", os.Getpid(), nsCounter.Add(1)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := ns.Close(); err != nil {
			tb.Error(err)
		}
	})
	return &NetNS{ns}
}

// NewNode creates a node namespace for workloads (topo.NewNode) under a
// name unique to the test, and deletes all it made in tb.Cleanup. The
// prefix is 9 characters whatever the process ID and the number of nodes
// so far, so that a workload named with up to 5 leaves its host-side
// interface name (prefix, name, "h") within the kernel's 15.
func NewNode(tb testing.TB) *topo.Node {
	tb.Helper()
	RequirePrivileged(tb)
	n, err := topo.NewNode(fmt.Sprintf("s%04x%03x-", os.Getpid()&0xffff, nsCounter.Add(1)&0xfff))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Error(err)
		}
	})
	return n
}

// Listen opens a listener inside the namespace (network "tcp", "tcp4", ...)
// and closes it in tb.Cleanup.
func (n *NetNS) Listen(tb testing.TB, network, addr string) net.Listener {
	tb.Helper()
	var l net.Listener
	if err := n.Do(func() (err error) { l, err = net.Listen(network, addr); return }); err != nil {
		tb.Fatalf("listen %s %s in %s: %v", network, addr, n.Name, err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// ListenPacket opens a packet socket ("udp", "udp4", ...) inside the
// namespace and closes it in tb.Cleanup.
func (n *NetNS) ListenPacket(tb testing.TB, network, addr string) net.PacketConn {
	tb.Helper()
	var c net.PacketConn
	if err := n.Do(func() (err error) { c, err = net.ListenPacket(network, addr); return }); err != nil {
		tb.Fatalf("listen %s %s in %s: %v", network, addr, n.Name, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Veth is one end of a veth pair inside a test namespace.
type Veth struct {
	NS     *NetNS
	Name   string
	Index  int
	Addr   netip.Prefix
	HWAddr net.HardwareAddr
}

// ConnectVeth joins a and b with a veth pair named nameA (in a) and nameB (in
// b), gives each end its address and brings both up. Deleting the namespaces
// removes the pair; it is also deleted by name in tb.Cleanup in case a
// namespace outlives the test.
func ConnectVeth(tb testing.TB, a *NetNS, nameA string, addrA netip.Prefix, b *NetNS, nameB string, addrB netip.Prefix) (*Veth, *Veth) {
	tb.Helper()
	if err := a.NS.Veth(nameA, b.NS, nameB); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { a.DeleteLink(nameA) })
	return setupEnd(tb, a, nameA, addrA), setupEnd(tb, b, nameB, addrB)
}

func setupEnd(tb testing.TB, n *NetNS, name string, addr netip.Prefix) *Veth {
	tb.Helper()
	if addr.IsValid() {
		if err := n.AddrAdd(name, addr); err != nil {
			tb.Fatal(err)
		}
	}
	attrs, err := n.LinkUp(name)
	if err != nil {
		tb.Fatal(err)
	}
	return &Veth{NS: n, Name: name, Index: attrs.Index, Addr: addr, HWAddr: attrs.HardwareAddr}
}

// AddRoute adds a route to dst in the namespace, through gw if it is valid,
// otherwise directly out of dev.
func (n *NetNS) AddRoute(tb testing.TB, dst netip.Prefix, gw netip.Addr, dev string) {
	tb.Helper()
	if err := n.RouteAdd(dst, gw, dev, false); err != nil {
		tb.Fatal(err)
	}
}

// Sysctl writes a sysctl inside the namespace (for example
// "net/ipv4/ip_forward"). Only per-namespace sysctls may be set this way;
// the host's are never touched.
func (n *NetNS) Sysctl(tb testing.TB, key, value string) {
	tb.Helper()
	if err := n.NS.Sysctl(key, value); err != nil {
		tb.Fatal(err)
	}
}
