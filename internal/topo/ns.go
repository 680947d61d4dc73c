// Package topo builds network topologies out of network namespaces and
// veth pairs, for tests and examples: a namespace with its loopback up, a
// node namespace with workloads attached the way a CNI attaches pods (a
// veth per workload, a host route to it on the node, the workload's
// default route through a link-local gateway the node answers by proxy
// ARP), and a private bpffs for pins that go with the program.
// Everything is created under names the caller chooses and removed by
// those names; nothing outside the namespaces and that mount is touched.
package topo

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a named network namespace.
type NS struct {
	// Name is the namespace's name under /run/netns.
	Name string
	// Handle is a netlink handle bound to the namespace.
	Handle *netlink.Handle
	ns     netns.NsHandle
}

// NewNS creates the network namespace name with its loopback up.
func NewNS(name string) (*NS, error) {
	var ns netns.NsHandle
	var err error
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
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		netns.DeleteNamed(name)
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	n := &NS{Name: name, Handle: h, ns: ns}
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("lo up in %s: %w", name, err)
	}
	return n, nil
}

// DeleteNS deletes the named namespaces that exist, and ignores the names
// that do not: for a program to clean up after an earlier run of itself,
// by the names that run used.
func DeleteNS(names ...string) {
	for _, name := range names {
		netns.DeleteNamed(name)
	}
}

// Close deletes the namespace by its name, and with it the interfaces in
// it.
func (n *NS) Close() error {
	n.Handle.Close()
	n.ns.Close()
	if err := netns.DeleteNamed(n.Name); err != nil {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	return nil
}

// Do runs fn on an OS thread inside the namespace and returns its error.
// Sockets opened by fn stay in the namespace after Do returns, so a server
// can be started with Do and served from any goroutine.
func (n *NS) Do(fn func() error) error {
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

// Sysctl writes a sysctl inside the namespace (for example
// "net/ipv4/ip_forward"). Only per-namespace sysctls may be set this way;
// the host's are never touched.
func (n *NS) Sysctl(key, value string) error {
	err := n.Do(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
	}
	return nil
}

// AddrAdd gives the interface dev the address prefix. An IPv6 address
// skips duplicate address detection, so that it is usable at once.
func (n *NS) AddrAdd(dev string, prefix netip.Prefix) error {
	l, err := n.Handle.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", dev, n.Name, err)
	}
	addr := &netlink.Addr{IPNet: ipNet(prefix)}
	if prefix.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := n.Handle.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("address %s on %s in %s: %w", prefix, dev, n.Name, err)
	}
	return nil
}

// RouteAdd adds a route to dst out of dev, through gw if it is valid. A
// gateway outside dev's addresses needs onlink.
func (n *NS) RouteAdd(dst netip.Prefix, gw netip.Addr, dev string, onlink bool) error {
	l, err := n.Handle.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", dev, n.Name, err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst)}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	if onlink {
		r.Flags |= int(netlink.FLAG_ONLINK)
	}
	if err := n.Handle.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s dev %s in %s: %w", dst, gw, dev, n.Name, err)
	}
	return nil
}

// LinkUp brings dev up and returns its attributes.
func (n *NS) LinkUp(dev string) (*netlink.LinkAttrs, error) {
	l, err := n.Handle.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", dev, n.Name, err)
	}
	if err := n.Handle.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up in %s: %w", dev, n.Name, err)
	}
	return l.Attrs(), nil
}

// Veth creates a veth pair: name in n and peer in other (other may be n).
func (n *NS) Veth(name string, other *NS, peer string) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(int(other.ns)),
	}
	if err := n.Handle.LinkAdd(v); err != nil {
		return fmt.Errorf("add veth %s/%s: %w", name, peer, err)
	}
	return nil
}

// DeleteLink deletes the interface dev, if it exists.
func (n *NS) DeleteLink(dev string) error {
	l, err := n.Handle.LinkByName(dev)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return n.Handle.LinkDel(l)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
