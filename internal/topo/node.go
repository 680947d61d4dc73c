package topo

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Gateway is the link-local address a workload's default route points at,
// as in Calico: each workload has a permanent neighbour entry for it with
// the MAC of its host-side interface, so workloads need no per-node
// gateway address and the node answers no ARP for it.
var Gateway = netip.MustParseAddr("169.254.1.1")

// Gateway6 is Gateway for IPv6 workloads: a link-local address with a
// permanent neighbour entry, as Calico's fe80::1 is.
var Gateway6 = netip.MustParseAddr("fe80::1")

// Node is a node's network namespace with workloads attached.
type Node struct {
	// NS is the node's namespace: the host side of every workload's veth
	// lives here, with a /32 route to the workload.
	NS *NS
	// Workloads in the order they were added.
	Workloads []*Workload
	prefix    string
}

// Workload is a workload namespace joined to its node by a veth pair.
type Workload struct {
	// NS is the workload's namespace; its end of the pair is "eth0".
	NS *NS
	// Addr is the workload's address (on eth0, as a /32).
	Addr netip.Addr
	// HostIfname and HostIfindex name the host side of the pair, in the
	// node's namespace: where the datapath attaches.
	HostIfname  string
	HostIfindex int
}

// NewNode creates the namespace prefix+"node", with IP forwarding on, for
// workloads added with AddWorkload. Every name it creates starts with
// prefix.
func NewNode(prefix string) (*Node, error) {
	ns, err := NewNS(prefix + "node")
	if err != nil {
		return nil, err
	}
	n := &Node{NS: ns, prefix: prefix}
	if err := ns.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// AddWorkload creates the namespace prefix+name with address addr,
// joined to the node by a veth pair whose host side is prefix+name+"h".
// An IPv6 workload turns IPv6 forwarding on in the node's namespace, and
// duplicate address detection off in both namespaces (inside them only),
// so that its addresses are usable at once.
func (n *Node) AddWorkload(name string, addr netip.Addr) (*Workload, error) {
	ns, err := NewNS(n.prefix + name)
	if err != nil {
		return nil, err
	}
	if addr.Is6() {
		if err := n.enableIPv6(ns); err != nil {
			ns.Close()
			return nil, fmt.Errorf("workload %s: %w", name, err)
		}
	}
	w := &Workload{NS: ns, Addr: addr, HostIfname: n.prefix + name + "h"}
	if err := n.attach(w); err != nil {
		ns.Close()
		return nil, fmt.Errorf("workload %s: %w", name, err)
	}
	n.Workloads = append(n.Workloads, w)
	return w, nil
}

func (n *Node) attach(w *Workload) error {
	if err := n.NS.Veth(w.HostIfname, w.NS, "eth0"); err != nil {
		return err
	}
	host, err := n.NS.LinkUp(w.HostIfname)
	if err != nil {
		return err
	}
	w.HostIfindex = host.Index
	if err := n.NS.RouteAdd(netip.PrefixFrom(w.Addr, w.Addr.BitLen()), netip.Addr{}, w.HostIfname, false); err != nil {
		return err
	}
	if err := w.NS.AddrAdd("eth0", netip.PrefixFrom(w.Addr, w.Addr.BitLen())); err != nil {
		return err
	}
	eth0, err := w.NS.LinkUp("eth0")
	if err != nil {
		return err
	}
	gateway, family, anywhere := Gateway, netlink.FAMILY_V4, netip.MustParsePrefix("0.0.0.0/0")
	if w.Addr.Is6() {
		gateway, family, anywhere = Gateway6, netlink.FAMILY_V6, netip.MustParsePrefix("::/0")
	}
	gw := &netlink.Neigh{LinkIndex: eth0.Index, IP: gateway.AsSlice(), HardwareAddr: host.HardwareAddr,
		State: netlink.NUD_PERMANENT, Family: family}
	if err := w.NS.Handle.NeighAdd(gw); err != nil {
		return fmt.Errorf("neighbour %s in %s: %w", gateway, w.NS.Name, err)
	}
	if w.Addr.Is4() {
		if err := w.NS.RouteAdd(netip.PrefixFrom(Gateway, 32), netip.Addr{}, "eth0", false); err != nil {
			return err
		}
	}
	return w.NS.RouteAdd(anywhere, gateway, "eth0", false)
}

// enableIPv6 readies the node's namespace and a new workload's for IPv6:
// forwarding on in the node's, duplicate address detection off in both
// (new interfaces take the "default" settings).
func (n *Node) enableIPv6(workload *NS) error {
	for _, s := range []struct {
		ns       *NS
		key, val string
	}{
		{n.NS, "net/ipv6/conf/all/forwarding", "1"},
		{n.NS, "net/ipv6/conf/default/accept_dad", "0"},
		{n.NS, "net/ipv6/conf/all/accept_dad", "0"},
		{workload, "net/ipv6/conf/default/accept_dad", "0"},
		{workload, "net/ipv6/conf/all/accept_dad", "0"},
	} {
		if err := s.ns.Sysctl(s.key, s.val); err != nil {
			return err
		}
	}
	return nil
}

// Close deletes every namespace the node made, by name.
func (n *Node) Close() error {
	var errs []error
	for _, w := range n.Workloads {
		errs = append(errs, w.NS.Close())
	}
	errs = append(errs, n.NS.Close())
	return errors.Join(errs...)
}
