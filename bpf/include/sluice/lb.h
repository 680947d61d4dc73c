/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The service stage's choices: which frontend a new flow is for, whether
 * its client may use it, and which backend it goes to. Works on the maps
 * of nat.h, which the including object defines (sl_svcs, sl_lb_slots,
 * sl_backends, sl_affinity, sl_lb_ranges, sl_members, sl_maglev), and on
 * sl_route_of. The Go package nat holds the same choice as a reference
 * model (nat.Explain): a change here is a change there. */
#pragma once

#include "nat.h"
#include "parse.h"
#include "routes.h"

/* sl_lb_mix is one round of MurmurHash3's 32-bit body. */
SL_INLINE __u32 sl_lb_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

/* sl_lb_hash hashes a flow from its client to the address it sent to:
 * both addresses as big-endian words, the ports, the protocol, then
 * MurmurHash3's finaliser. Deterministic, so a retransmitted SYN meets
 * the same backend and nat.FlowHash can say where a flow goes. */
SL_INLINE __u32 sl_lb_hash(const struct sl_pkt *pkt)
{
	const __be32 *s = (const __be32 *)pkt->saddr, *d = (const __be32 *)pkt->daddr;
	__u32 h = 0;

	h = sl_lb_mix(h, bpf_ntohl(s[0]));
	h = sl_lb_mix(h, bpf_ntohl(s[1]));
	h = sl_lb_mix(h, bpf_ntohl(s[2]));
	h = sl_lb_mix(h, bpf_ntohl(s[3]));
	h = sl_lb_mix(h, bpf_ntohl(d[0]));
	h = sl_lb_mix(h, bpf_ntohl(d[1]));
	h = sl_lb_mix(h, bpf_ntohl(d[2]));
	h = sl_lb_mix(h, bpf_ntohl(d[3]));
	h = sl_lb_mix(h, ((__u32)pkt->sport << 16) | pkt->dport);
	h = sl_lb_mix(h, pkt->proto);
	h ^= 40;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* sl_svc_find returns the frontend a packet is sent to, or NULL: the
 * exact (address, port, protocol), else, where the destination is an
 * address of this node (dst, its route), the NodePort of that port and
 * protocol. A NodePort answers on node addresses only: a packet sent to
 * the wildcard address itself (0.0.0.0 or ::, which only NodePorts are
 * keyed by) finds its entry in the exact lookup, and is held to the same
 * test, or a client could reach every NodePort through an address that
 * is no node's. */
SL_INLINE const struct sl_svc *sl_svc_find(const struct sl_pkt *pkt, const struct sl_route *dst)
{
	struct sl_svc_key k = { .port = pkt->dport, .proto = pkt->proto };
	const struct sl_svc *svc;
	__be32 *w = (__be32 *)k.addr;

	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP && pkt->proto != SL_IPPROTO_SCTP)
		return NULL;
	sl_addr_copy(k.addr, pkt->daddr);
	svc = bpf_map_lookup_elem(&sl_svcs, &k);
	if (svc && !(svc->flags & SL_SVC_NODE_PORT))
		return svc;
	if (!dst || !(dst->flags & SL_ROUTE_LOCAL_HOST))
		return NULL;
	/* The family's wildcard: ::ffff:0.0.0.0 keeps IPv4's mapped prefix. */
	w[0] = 0;
	w[1] = 0;
	w[2] = sl_addr_is_v4(pkt->daddr) ? bpf_htonl(0xffff) : 0;
	w[3] = 0;
	svc = bpf_map_lookup_elem(&sl_svcs, &k);
	return svc && (svc->flags & SL_SVC_NODE_PORT) ? svc : NULL;
}

/* sl_lb_source_ok says whether a client may use a frontend: always,
 * unless the frontend has source ranges and none holds the client. */
SL_INLINE bool sl_lb_source_ok(const struct sl_svc *svc, const __u8 *client)
{
	struct sl_svc_range_key k = { .prefixlen = 64 + 128, .svc_id = svc->id };

	if (!(svc->flags & SL_SVC_SOURCE_RANGES))
		return true;
	k.family = sl_addr_is_v4(client) ? SL_FAMILY_IPV4 : SL_FAMILY_IPV6;
	sl_addr_copy(k.addr, client);
	return bpf_map_lookup_elem(&sl_lb_ranges, &k) != NULL;
}

/* The group of a service's backends a new flow is given. */
struct sl_lb_group {
	__u32	start;		/* first slot of the group, from slot_base */
	__u32	count;		/* backends in the group; 0: none usable */
	__u32	need;		/* sl_lb_member flags a backend of the group has */
	bool	serving;	/* the serving group, else the terminating one */
	bool	local;		/* local backends only (SL_SVC_LOCAL_ONLY) */
};

/* sl_lb_group_of picks the group: the serving backends (local ones where
 * the frontend asks for local backends), else the terminating ones, which
 * Kubernetes uses when no serving endpoint is left. */
SL_INLINE struct sl_lb_group sl_lb_group_of(const struct sl_svc *svc)
{
	bool local = svc->flags & SL_SVC_LOCAL_ONLY;
	struct sl_lb_group g = { .local = local, .serving = true };
	__u32 serving = local ? svc->serving_local : svc->serving;
	__u32 terminating = local ? svc->terminating_local : svc->terminating;

	g.need = local ? SL_LB_MEMBER_LOCAL : 0;
	if (serving) {
		g.count = serving;
		g.need |= SL_LB_MEMBER_SERVING;
		return g;
	}
	g.serving = false;
	g.start = svc->serving;
	g.count = terminating;
	return g;
}

/* sl_lb_affinity returns the backend a client's affinity keeps it on, or
 * 0: the affinity must be younger than the service's timeout, and its
 * backend still a member of the group a new flow would be given. */
SL_INLINE __u32 sl_lb_affinity(const struct sl_svc *svc, const struct sl_lb_group *g,
			       const __u8 *client, __u64 now)
{
	struct sl_affinity_key ak = { .svc_id = svc->id };
	struct sl_lb_member_key mk = { .svc_id = svc->id };
	const struct sl_affinity *a;
	const struct sl_lb_member *m;

	sl_addr_copy(ak.client, client);
	a = bpf_map_lookup_elem(&sl_affinity, &ak);
	if (!a || now - a->last_used_ns >= (__u64)svc->affinity_timeout * 1000000000ull)
		return 0;
	mk.backend_id = a->backend_id;
	m = bpf_map_lookup_elem(&sl_members, &mk);
	if (!m || (m->flags & g->need) != g->need)
		return 0;
	if (!g->serving && (m->flags & SL_LB_MEMBER_SERVING))
		return 0;
	return a->backend_id;
}

/* sl_lb_maglev returns the backend a service's Maglev table gives the
 * hash, or 0 without a table. */
SL_INLINE __u32 sl_lb_maglev(const struct sl_svc *svc, __u32 hash)
{
	struct sl_maglev_key k = { .svc_id = svc->id, .slot_base = svc->slot_base };
	const struct sl_maglev_table *t = bpf_map_lookup_elem(&sl_maglev, &k);
	__u32 i = hash % SL_MAGLEV_SIZE;

	if (!t)
		return 0;
	/* The verifier does not bound a remainder: say it again. */
	barrier_var(i);
	if (i >= SL_MAGLEV_SIZE)
		return 0;
	return t->backend_ids[i];
}

/* sl_lb_choose returns the backend a new flow of a service goes to, with
 * its ID in *id, or NULL when the service has no usable backend: the
 * client's affinity, else the Maglev table (serving group, not local
 * only), else the flow's hash over the group's slots. A service with
 * affinity remembers the choice once policy allowed it (sl_lb_remember). */
SL_INLINE const struct sl_backend *sl_lb_choose(const struct sl_svc *svc, const struct sl_pkt *pkt,
						__u32 *id)
{
	struct sl_lb_group g = sl_lb_group_of(svc);
	struct sl_backend_slot_key sk = { .svc_id = svc->id };
	bool affinity = svc->flags & SL_SVC_AFFINITY;
	const struct sl_backend *be;
	__u32 hash, backend = 0, *slot;
	__u64 now = 0;

	if (g.count == 0)
		return NULL;
	if (affinity) {
		now = bpf_ktime_get_coarse_ns();
		backend = sl_lb_affinity(svc, &g, pkt->saddr, now);
	}
	hash = sl_lb_hash(pkt);
	if (!backend && (svc->flags & SL_SVC_MAGLEV) && g.serving && !g.local)
		backend = sl_lb_maglev(svc, hash);
	if (!backend) {
		sk.slot = svc->slot_base + g.start + hash % g.count;
		slot = bpf_map_lookup_elem(&sl_lb_slots, &sk);
		if (!slot)
			return NULL;
		backend = *slot;
	}
	be = bpf_map_lookup_elem(&sl_backends, &backend);
	if (!be)
		return NULL;
	*id = backend;
	return be;
}

/* sl_lb_remember records that a client of a service with affinity went to
 * backend: once policy allowed the flow and its NAT entries are written,
 * so that clients policy denies never fill the affinity table. */
SL_INLINE void sl_lb_remember(__u32 svc_id, const __u8 *client, __u32 backend)
{
	struct sl_affinity_key ak = { .svc_id = svc_id };
	struct sl_affinity a = { .backend_id = backend, .last_used_ns = bpf_ktime_get_coarse_ns() };

	sl_addr_copy(ak.client, client);
	bpf_map_update_elem(&sl_affinity, &ak, &a, BPF_ANY);
}
