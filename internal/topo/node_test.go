package topo_test

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestNodeRoutesBetweenWorkloads: two workloads on one node reach each
// other over TCP through the node's namespace, as pods do through a CNI.
func TestNodeRoutesBetweenWorkloads(t *testing.T) {
	testNodeRoutes(t, "10.65.0.1", "10.65.0.2")
}

// TestNodeRoutesBetweenIPv6Workloads is TestNodeRoutesBetweenWorkloads in
// IPv6.
func TestNodeRoutesBetweenIPv6Workloads(t *testing.T) {
	testNodeRoutes(t, "fd65::1", "fd65::2")
}

func testNodeRoutes(t *testing.T, addrA, addrB string) {
	node := testutil.NewNode(t)
	a, err := node.AddWorkload("a", netip.MustParseAddr(addrA))
	if err != nil {
		t.Fatal(err)
	}
	b, err := node.AddWorkload("b", netip.MustParseAddr(addrB))
	if err != nil {
		t.Fatal(err)
	}
	server := netip.AddrPortFrom(b.Addr, 7000).String()
	var l net.Listener
	if err := b.NS.Do(func() (err error) { l, err = net.Listen("tcp", server); return }); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	err = a.NS.Do(func() error {
		c, err := net.DialTimeout("tcp", server, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("hi")); err != nil {
			return err
		}
		buf := make([]byte, 2)
		_, err = io.ReadFull(c, buf)
		return err
	})
	if err != nil {
		t.Fatalf("a to b: %v", err)
	}
	if a.HostIfindex == 0 || b.HostIfindex == 0 || a.HostIfindex == b.HostIfindex {
		t.Errorf("host ifindexes %d and %d", a.HostIfindex, b.HostIfindex)
	}
}
