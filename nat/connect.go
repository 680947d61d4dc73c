package nat

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// This file is the reference model of connect-time load balancing
// (bpf/sock.c): the backend a socket's connect, or unconnected UDP
// sendmsg, to a frontend is sent to. It is Choose with the stand-ins
// lb.h gives for what a socket does not have yet at connect.

// ConnectFlow is a socket's connect or unconnected sendmsg as connect-time
// balancing sees it.
type ConnectFlow struct {
	// Socket is the socket's cookie (SO_COOKIE): it takes the client's
	// place in the hash (ConnectHash).
	Socket uint64
	// NetNS is the cookie of the socket's network namespace
	// (SO_NETNS_COOKIE): whom affinity is kept for.
	NetNS uint64
	// Source is the address the flow leaves from: a sendmsg's own
	// (IP_PKTINFO, IPV6_PKTINFO), else the one the socket is bound to; the
	// zero Addr or an unspecified address when it has neither.
	Source netip.Addr
	// Dest is the address and port connected or sent to. An IPv4-mapped
	// IPv6 address (an IPv6 socket's IPv4 peer) is its IPv4 address.
	Dest netip.AddrPort
	// Protocol is the socket's protocol (ProtoTCP, ProtoUDP).
	Protocol uint8
	// ToNode says Dest's address is one of this node's (its route has
	// routes.FlagLocalHost), where NodePort frontends answer.
	ToNode bool
}

// SocketAddr returns the address that stands for a socket's or a network
// namespace's cookie at connect time, as lb.h's sl_lb_sock_addr writes
// it: the discard-only prefix 100::/64 (RFC 6666), which no real client
// uses, then the cookie, big-endian.
func SocketAddr(cookie uint64) netip.Addr {
	var b [16]byte
	b[0] = 0x01
	binary.BigEndian.PutUint64(b[8:], cookie)
	return netip.AddrFrom16(b)
}

// ConnectHash is the hash connect-time balancing chooses by: FlowHash of
// a flow from SocketAddr(Socket), port 0, to Dest. A socket has no source
// port at connect and often no source address; its cookie keeps one
// socket on one backend and spreads sockets over the group.
func ConnectHash(flow ConnectFlow) uint32 {
	return FlowHash(Flow{Client: netip.AddrPortFrom(SocketAddr(flow.Socket), 0), Dest: flow.dest(), Protocol: flow.Protocol})
}

// dest is Dest with an IPv4-mapped address unmapped.
func (flow ConnectFlow) dest() netip.AddrPort {
	return netip.AddrPortFrom(flow.Dest.Addr().Unmap(), flow.Dest.Port())
}

// client returns whom source ranges are decided for: the source
// (known), else SocketAddr(NetNS), which no range holds.
func (flow ConnectFlow) client() (netip.Addr, bool) {
	src := flow.Source.Unmap()
	if src.IsValid() && !src.IsUnspecified() {
		return src, true
	}
	return SocketAddr(flow.NetNS), false
}

// frontendFlow is the Flow whose frontend lookup (findFrontend) is the
// connect's: to Dest, from Source or the family's unspecified
// address.
func (flow ConnectFlow) frontendFlow() Flow {
	d := flow.dest()
	src, known := flow.client()
	if !known || src.Is4() != d.Addr().Is4() {
		src = netip.IPv6Unspecified()
		if d.Addr().Is4() {
			src = netip.IPv4Unspecified()
		}
	}
	return Flow{Client: netip.AddrPortFrom(src, 0), Dest: d, Protocol: flow.Protocol, ToNode: flow.ToNode}
}

// ChooseConnect returns what connect-time balancing does with flow among
// services; aff is the affinity record of flow's network namespace
// (SocketAddr(NetNS)) for the service it reaches, and now is
// CLOCK_MONOTONIC. It is Choose with three inputs replaced, as a socket
// has them at connect:
//
//   - the hash is ConnectHash (the socket's cookie for the client);
//   - affinity is kept for the network namespace (SocketAddr(NetNS)),
//     never for Source, which any socket can choose (IP_FREEBIND);
//   - source ranges are decided on Source; a socket without
//     one gets ReasonSourceUnknown: its connect is left untranslated, for
//     the TC service stage, which sees its packets' source.
//
// ReasonNoBackend fails the connect or sendmsg with ECONNREFUSED, and
// ReasonSourceRange with EPERM.
func ChooseConnect(services map[string]Service, flow ConnectFlow, aff *AffinityRecord, now time.Duration) Choice {
	name, f, ok := findFrontend(services, flow.frontendFlow())
	if !ok {
		return Choice{}
	}
	client, known := flow.client()
	return choose(name, services[name], f, client, known, ConnectHash(flow), aff, now)
}

// ExplainConnect returns what connect-time balancing does with flow at
// time now (CLOCK_MONOTONIC), by ChooseConnect over the services the Table
// programmed and the affinity record in the kernel.
func (t *Table) ExplainConnect(flow ConnectFlow, now time.Duration) (Choice, error) {
	client, known := flow.client()
	return t.explain(flow.frontendFlow(), client, known, SocketAddr(flow.NetNS), ConnectHash(flow), now)
}
