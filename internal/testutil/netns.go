package testutil

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetNS is a named network namespace created for one test.
type NetNS struct {
	// Name is the namespace's name under /run/netns.
	Name string
	// Handle is a netlink handle bound to the namespace.
	Handle *netlink.Handle
	ns     netns.NsHandle
}

var nsCounter atomic.Uint32

// NewNetNS creates a named network namespace with its loopback up. It is
// deleted, by the name it was created under, in tb.Cleanup.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	RequirePrivileged(tb)
	name := fmt.Sprintf("sl-%d-%d", os.Getpid(), nsCounter.Add(1))

	var (
		ns  netns.NsHandle
		err error
	)
	// netns.NewNamed moves the calling thread into the new namespace, so it
	// runs on a locked thread that is moved back before being released.
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, gerr := netns.Get()
		if gerr != nil {
			err = gerr
			return
		}
		defer orig.Close()
		ns, err = netns.NewNamed(name)
		if serr := netns.Set(orig); serr != nil && err == nil {
			err = serr
		}
	}()
	<-done
	if err != nil {
		tb.Fatalf("create netns %s: %v", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		netns.DeleteNamed(name)
		tb.Fatalf("netlink handle in %s: %v", name, err)
	}
	n := &NetNS{Name: name, Handle: h, ns: ns}
	tb.Cleanup(func() {
		h.Close()
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("delete netns %s: %v", name, err)
		}
	})
	lo, err := h.LinkByName("lo")
	if err != nil {
		tb.Fatalf("lo in %s: %v", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		tb.Fatalf("lo up in %s: %v", name, err)
	}
	return n
}

// Do runs fn on an OS thread inside the namespace and returns its error.
// Sockets opened by fn stay in the namespace after Do returns, so a server
// can be started with Do and served from any goroutine.
func (n *NetNS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime discards a locked thread
			// when its goroutine exits, so it never runs other code in the
			// wrong namespace.
			errc <- fmt.Errorf("leave netns %s: %w", n.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
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
	la := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: nameA},
		PeerName:      nameB,
		PeerNamespace: netlink.NsFd(int(b.ns)),
	}
	if err := a.Handle.LinkAdd(la); err != nil {
		tb.Fatalf("add veth %s/%s: %v", nameA, nameB, err)
	}
	tb.Cleanup(func() {
		if l, err := a.Handle.LinkByName(nameA); err == nil {
			a.Handle.LinkDel(l)
		}
	})
	ea := setupEnd(tb, a, nameA, addrA)
	eb := setupEnd(tb, b, nameB, addrB)
	return ea, eb
}

func setupEnd(tb testing.TB, n *NetNS, name string, addr netip.Prefix) *Veth {
	tb.Helper()
	l, err := n.Handle.LinkByName(name)
	if err != nil {
		tb.Fatalf("find %s in %s: %v", name, n.Name, err)
	}
	if addr.IsValid() {
		ipn := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), addr.Addr().BitLen())}
		if err := n.Handle.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
			tb.Fatalf("address %s on %s: %v", addr, name, err)
		}
	}
	if err := n.Handle.LinkSetUp(l); err != nil {
		tb.Fatalf("set %s up: %v", name, err)
	}
	return &Veth{NS: n, Name: name, Index: l.Attrs().Index, Addr: addr, HWAddr: l.Attrs().HardwareAddr}
}

// AddRoute adds a route to dst in the namespace, through gw if it is valid,
// otherwise directly out of dev.
func (n *NetNS) AddRoute(tb testing.TB, dst netip.Prefix, gw netip.Addr, dev string) {
	tb.Helper()
	l, err := n.Handle.LinkByName(dev)
	if err != nil {
		tb.Fatalf("find %s in %s: %v", dev, n.Name, err)
	}
	r := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
	}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	}
	if err := n.Handle.RouteAdd(r); err != nil {
		tb.Fatalf("route %s via %s dev %s in %s: %v", dst, gw, dev, n.Name, err)
	}
}

// Sysctl writes a sysctl inside the namespace (for example
// "net/ipv4/ip_forward"). Only per-namespace sysctls may be set this way;
// the host's are never touched.
func (n *NetNS) Sysctl(tb testing.TB, key, value string) {
	tb.Helper()
	err := n.Do(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
	if err != nil {
		tb.Fatalf("sysctl %s=%s in %s: %v", key, value, n.Name, err)
	}
}
