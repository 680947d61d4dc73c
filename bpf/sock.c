//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sluice's connect-time load balancing: one object of cgroup sock_addr
 * programs, attached to a cgroup v2 path (the root's, for every process
 * of the host and its pods).
 *
 * A connect (TCP, UDP, either family) or an unconnected UDP sendmsg to a
 * service frontend is rewritten to the backend the TC service stage would
 * choose (lb.h's sl_lb_pick over the same maps, which the runtime shares
 * with the TC object), and the translation is kept in the socket's own
 * storage (sl_sock_nat); recvmsg and getpeername show the frontend again.
 * A connection balanced here leaves the socket addressed to its backend:
 * its packets need no NAT, and the TC path tracks them as a plain flow.
 *
 *   sl_sock_connect4/6:     connect()           frontend -> backend
 *   sl_sock_sendmsg4/6:     sendto() unconnected frontend -> backend
 *   sl_sock_recvmsg4/6:     recvfrom()          backend  -> frontend
 *   sl_sock_getpeername4/6: getpeername()       backend  -> frontend
 *
 * A frontend without a usable backend fails the connect or sendmsg at
 * once with ECONNREFUSED (bpf_set_retval); a source (a sendmsg's own,
 * else the bound one) outside a frontend's source ranges with EPERM. A NodePort is balanced when the
 * address connected to is one of this node's (its route says
 * SL_ROUTE_LOCAL_HOST), as Cilium does for host processes. */

/* The generic numbers: those of x86-64, arm64 and riscv, not of mips, sparc,
 * alpha or parisc, whose kernels sluice is not built for. */
#include <asm-generic/errno.h>

#include "sluice/common.h"
#include "sluice/lb.h"
#include "sluice/sock.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* The return values of a sock_addr program. */
#define SL_SOCK_REJECT	0
#define SL_SOCK_PASS	1

/* bpf_sock.state of a connected UDP socket (the kernel's TCP_ESTABLISHED). */
#define SL_SOCK_STATE_CONNECTED	1

/* sl_sock_dest reads the address and port a sock_addr hook is given
 * (user_ip4 or user_ip6, user_port) as 16 bytes and a host-order port.
 * An IPv6 socket's IPv4-mapped address is its IPv4 peer, and meets the
 * IPv4 frontend of that address. */
SL_INLINE __u16 sl_sock_dest(const struct bpf_sock_addr *ctx, bool v6, __u8 *dest)
{
	__be32 *w = (__be32 *)dest;

	if (v6) {
		w[0] = ctx->user_ip6[0];
		w[1] = ctx->user_ip6[1];
		w[2] = ctx->user_ip6[2];
		w[3] = ctx->user_ip6[3];
	} else {
		sl_addr_set4(dest, ctx->user_ip4);
	}
	return bpf_ntohs((__u16)ctx->user_port);
}

/* sl_sock_set_dest writes addr:port where sl_sock_dest read. An IPv4
 * socket cannot take an IPv6 address: false. */
SL_INLINE bool sl_sock_set_dest(struct bpf_sock_addr *ctx, bool v6, const __u8 *addr, __u16 port)
{
	const __be32 *w = (const __be32 *)addr;

	if (v6) {
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	} else {
		if (!sl_addr_is_v4(addr))
			return false;
		ctx->user_ip4 = w[3];
	}
	ctx->user_port = bpf_htons(port);
	return true;
}

/* sl_sock_storage returns the socket's storage, created if create. */
SL_INLINE struct sl_sock_nat *sl_sock_storage(struct bpf_sock *sk, bool create)
{
	return bpf_sk_storage_get(&sl_sock_nat, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
}

/* sl_sock_forget empties the socket's translations to addr:port, if it
 * has storage: a connect to addr:port replaces the socket's peer, and a
 * connected UDP socket meets only its peer (the kernel delivers no other
 * datagram to it), so such an entry, left from a sendmsg or an earlier
 * connect, would show a peer connected to directly as a frontend (or as
 * the wrong one), and have DestroyStaleSockets abort it. Other entries
 * stay: they match no datagram of the new peer, and a connect that fails
 * after this hook leaves the old peer, whose entry they may be. */
SL_INLINE void sl_sock_forget(struct bpf_sock *sk, const __u8 *addr, __u16 port)
{
	struct sl_sock_nat *st = sl_sock_storage(sk, false);

	if (!st)
		return;
	for (__u32 i = 0; i < SL_SOCK_NAT_ENTRIES; i++) {
		if (st->entries[i].backend_port == port && sl_addr_eq(st->entries[i].backend, addr))
			st->entries[i].frontend_port = 0;
	}
}

/* sl_sock_remember records in the socket's storage that frontend:fport
 * went to the chosen backend: in the entry of that frontend if it has
 * one, else in the oldest.
 * Without storage (no memory) the socket still reaches its backend, and
 * shows the backend's address to recvmsg and getpeername. */
SL_INLINE void sl_sock_remember(struct bpf_sock *sk, const __u8 *frontend, __u16 fport,
				const struct sl_lb_choice *c)
{
	struct sl_sock_nat *st = sl_sock_storage(sk, true);
	struct sl_sock_nat_entry *e = NULL;

	if (!st)
		return;
	for (__u32 i = 0; i < SL_SOCK_NAT_ENTRIES; i++) {
		if (st->entries[i].frontend_port == fport && sl_addr_eq(st->entries[i].frontend, frontend)) {
			e = &st->entries[i];
			break;
		}
	}
	if (!e) {
		e = &st->entries[st->next % SL_SOCK_NAT_ENTRIES];
		st->next++;
	}
	sl_addr_copy(e->frontend, frontend);
	sl_addr_copy(e->backend, c->be->addr);
	e->frontend_port = fport;
	e->backend_port = c->be->port;
	e->svc_id = c->svc->id;
	e->backend_id = c->id;
}

/* sl_sock_client reads the source a socket's flow leaves with: a
 * sendmsg's own (IP_PKTINFO, IPV6_PKTINFO; msg_src, which connect
 * programs may not read) if it names one, else the bound one. */
SL_INLINE void sl_sock_client(const struct bpf_sock_addr *ctx, bool v6, bool sendmsg, __u8 *client)
{
	const struct bpf_sock *sk = ctx->sk;
	__be32 *w = (__be32 *)client;

	if (v6) {
		w[0] = sendmsg ? ctx->msg_src_ip6[0] : 0;
		w[1] = sendmsg ? ctx->msg_src_ip6[1] : 0;
		w[2] = sendmsg ? ctx->msg_src_ip6[2] : 0;
		w[3] = sendmsg ? ctx->msg_src_ip6[3] : 0;
		if (!sl_addr_is_zero(client))
			return;
		w[0] = sk->src_ip6[0];
		w[1] = sk->src_ip6[1];
		w[2] = sk->src_ip6[2];
		w[3] = sk->src_ip6[3];
	} else {
		sl_addr_set4(client, sendmsg && ctx->msg_src_ip4 ? ctx->msg_src_ip4 : sk->src_ip4);
	}
}

/* sl_sock_balance is connect and sendmsg: a frontend's socket address is
 * rewritten to its backend, chosen by sl_lb_pick with the socket's stand-
 * ins for what a packet would carry (lb.h): the socket's cookie for the
 * hash, its namespace for affinity, and its source (a sendmsg's own,
 * else the bound one) for source ranges. */
SL_INLINE int sl_sock_balance(struct bpf_sock_addr *ctx, bool v6, bool sendmsg)
{
	__u8 dest[16] SL_ADDR_ALIGNED, client[16] SL_ADDR_ALIGNED, hclient[16] SL_ADDR_ALIGNED;
	__u8 aff[16] SL_ADDR_ALIGNED;
	struct bpf_sock *sk = ctx->sk;
	const struct sl_route *route;
	struct sl_lb_choice c;
	enum sl_lb_rc rc;
	bool known;
	__u16 dport;

	if (!sk)
		return SL_SOCK_PASS;
	dport = sl_sock_dest(ctx, v6, dest);
	sl_sock_client(ctx, v6, sendmsg, client);
	/* 0.0.0.0 is stored ::ffff:0.0.0.0: unbound either way. */
	known = !sl_addr_is_zero(client) && !(sl_addr_is_v4(client) && ((__be32 *)client)[3] == 0);
	sl_lb_sock_addr(aff, bpf_get_netns_cookie(ctx));
	sl_lb_sock_addr(hclient, bpf_get_socket_cookie(ctx));
	route = sl_route_of(dest);
	rc = sl_lb_pick(client, known, aff, hclient, 0, dest, dport, ctx->protocol,
			route && (route->flags & SL_ROUTE_LOCAL_HOST), &c);
	if (rc == SL_LB_NO_BACKEND) {
		bpf_set_retval(-ECONNREFUSED);
		return SL_SOCK_REJECT;
	}
	if (rc == SL_LB_SOURCE_REFUSED)
		return SL_SOCK_REJECT;
	if (rc != SL_LB_CHOSEN || !sl_sock_set_dest(ctx, v6, c.be->addr, c.be->port)) {
		if (!sendmsg)
			sl_sock_forget(sk, dest, dport);
		return SL_SOCK_PASS;
	}
	if (!sendmsg)
		sl_sock_forget(sk, c.be->addr, c.be->port);
	/* A connected UDP socket's sendto elsewhere is never answered on it
	 * (only its peer's datagrams are delivered): remembering it would
	 * only push out the connect's entry. */
	if (!sendmsg || sk->state != SL_SOCK_STATE_CONNECTED)
		sl_sock_remember(sk, dest, dport, &c);
	/* Recorded at once: no TC policy stands between connect and the
	 * choice here (the backend's flow meets policy as a plain flow). */
	if (c.svc->flags & SL_SVC_AFFINITY)
		sl_lb_remember(c.svc->id, aff, c.id);
	return SL_SOCK_PASS;
}

/* sl_sock_reverse is recvmsg and getpeername: a backend's address that
 * the socket's storage holds is shown as its frontend's. */
SL_INLINE int sl_sock_reverse(struct bpf_sock_addr *ctx, bool v6)
{
	__u8 src[16] SL_ADDR_ALIGNED;
	struct sl_sock_nat *st;
	__u16 port;

	if (!ctx->sk)
		return SL_SOCK_PASS;
	st = bpf_sk_storage_get(&sl_sock_nat, ctx->sk, 0, 0);
	if (!st)
		return SL_SOCK_PASS;
	port = sl_sock_dest(ctx, v6, src);
	for (__u32 i = 0; i < SL_SOCK_NAT_ENTRIES; i++) {
		const struct sl_sock_nat_entry *e = &st->entries[i];

		if (e->frontend_port && e->backend_port == port && sl_addr_eq(e->backend, src)) {
			sl_sock_set_dest(ctx, v6, e->frontend, e->frontend_port);
			break;
		}
	}
	return SL_SOCK_PASS;
}

SEC("cgroup/connect4")
int sl_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sl_sock_balance(ctx, false, false);
}

SEC("cgroup/connect6")
int sl_sock_connect6(struct bpf_sock_addr *ctx)
{
	return sl_sock_balance(ctx, true, false);
}

SEC("cgroup/sendmsg4")
int sl_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sl_sock_balance(ctx, false, true);
}

SEC("cgroup/sendmsg6")
int sl_sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sl_sock_balance(ctx, true, true);
}

SEC("cgroup/recvmsg4")
int sl_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sl_sock_reverse(ctx, false);
}

SEC("cgroup/recvmsg6")
int sl_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sl_sock_reverse(ctx, true);
}

SEC("cgroup/getpeername4")
int sl_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sl_sock_reverse(ctx, false);
}

SEC("cgroup/getpeername6")
int sl_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return sl_sock_reverse(ctx, true);
}
