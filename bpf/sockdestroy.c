//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Destroying the sockets a removed backend leaves: a socket iterator over
 * the UDP sockets of the network namespace that runs it. A connected UDP
 * socket whose peer is a backend that connect-time balancing (sock.c)
 * sent it to, and that is no longer in the service's backend list,
 * is aborted with bpf_sock_destroy: it is disconnected, and its next
 * receive fails with ECONNABORTED, so a client (a DNS resolver, say)
 * reconnects and meets a live backend instead of sending to a dead one
 * for ever. Unconnected
 * sockets choose again at every sendmsg and are left alone. Its own
 * object: bpf_sock_destroy (Linux 6.5) is a kfunc that the balancing
 * programs must not depend on. */

#include "sluice/common.h"
#include "sluice/kernel.h"
#include "sluice/lb.h"
#include "sluice/sock.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define SL_AF_INET		2
#define SL_TCP_ESTABLISHED	1

/* sl_sock_peer reads a connected socket's peer as 16 bytes and a
 * host-order port. */
SL_INLINE __u16 sl_sock_peer(const struct sock *sk, __u8 *peer)
{
	__be32 *w = (__be32 *)peer;

	if (sk->__sk_common.skc_family == SL_AF_INET) {
		sl_addr_set4(peer, sk->__sk_common.skc_daddr);
	} else {
		w[0] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0];
		w[1] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1];
		w[2] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2];
		w[3] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3];
	}
	return bpf_ntohs(sk->__sk_common.skc_dport);
}

/* A search of a service's current backend list for one backend ID. */
struct sl_slot_search {
	__u32	svc_id;		/* the service (sl_svc.id) */
	__u32	slot_base;	/* its current list's first slot (sl_svc.slot_base) */
	__u32	backend_id;	/* the ID searched for */
	__u32	found;		/* 1 once a slot holds it */
};

/* sl_slot_holds is bpf_loop's step i of an sl_slot_search: slot
 * slot_base + i. */
static long sl_slot_holds(__u32 i, void *data)
{
	struct sl_slot_search *s = data;
	struct sl_backend_slot_key k = { .svc_id = s->svc_id, .slot = s->slot_base + i };
	__u32 *id = bpf_map_lookup_elem(&sl_lb_slots, &k);

	if (id && *id == s->backend_id) {
		s->found = 1;
		return 1;
	}
	return 0;
}

/* sl_sock_still_member says whether entry e's backend is still a member
 * of its frontend's service: e's frontend is still svc_id's, a slot of
 * the service's current list (serving and terminating backends alike)
 * holds backend_id, and the ID still names e's address and port. The IDs
 * alone are not enough: a restarted agent's Table may give a freed ID to
 * another service or backend. A frontend at a node address is a
 * NodePort's (sl_svc_find's wildcard). The list is searched slot by slot
 * rather than through sl_members, which only services with affinity have
 * (the TC path reads it for nothing else): this runs once per socket when
 * backends were removed, not per packet. */
SL_INLINE bool sl_sock_still_member(const struct sl_sock_nat_entry *e)
{
	const struct sl_svc *svc = sl_svc_find(e->frontend, e->frontend_port, IPPROTO_UDP, true);
	struct sl_slot_search search = { .backend_id = e->backend_id };
	const struct sl_backend *be;

	if (!svc || svc->id != e->svc_id)
		return false;
	search.svc_id = svc->id;
	search.slot_base = svc->slot_base;
	bpf_loop((__u32)svc->serving + svc->terminating, sl_slot_holds, &search, 0);
	if (!search.found)
		return false;
	be = bpf_map_lookup_elem(&sl_backends, &e->backend_id);
	return be && be->port == e->backend_port && sl_addr_eq(be->addr, e->backend);
}

/* sl_sock_destroy_udp aborts each connected UDP socket sent to a backend
 * its service no longer has, and writes one byte to the iterator's output
 * for each, which the runtime counts. */
SEC("iter/udp")
int sl_sock_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	__u8 peer[16] SL_ADDR_ALIGNED;
	struct sl_sock_nat *st;
	__u16 port;

	if (!sk || sk->__sk_common.skc_state != SL_TCP_ESTABLISHED)
		return 0;
	st = bpf_sk_storage_get(&sl_sock_nat, sk, 0, 0);
	if (!st)
		return 0;
	port = sl_sock_peer(sk, peer);
	for (__u32 i = 0; i < SL_SOCK_NAT_ENTRIES; i++) {
		const struct sl_sock_nat_entry *e = &st->entries[i];

		if (!e->frontend_port || e->backend_port != port || !sl_addr_eq(e->backend, peer))
			continue;
		if (sl_sock_still_member(e))
			return 0;
		if (bpf_sock_destroy((struct sock_common *)sk) == 0) {
			char one = 1;

			bpf_seq_write(ctx->meta->seq, &one, 1);
		}
		return 0;
	}
	return 0;
}
