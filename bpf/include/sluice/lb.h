/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The service choice of a new flow: which frontend it is for, whether its
 * client may use it, and which backend it goes to (sl_lb_pick). One
 * function for both program types that balance: the TC service stage
 * (datapath.c) on a flow's first packet, and connect-time balancing
 * (sock.c) on a socket's connect or sendmsg. Works on the maps of
 * lb_maps.h. The Go package nat holds the same choice as a reference model
 * (nat.Choose, nat.ChooseConnect, Table.Explain): a change here is a
 * change there.
 *
 * At connect time three inputs differ from a packet's, and each is given
 * its closest faithful stand-in:
 *   - the hash: the socket has no source port yet, and often no source
 *     address, so its cookie takes the client's place (SL_LB_SOCK_PREFIX
 *     and the cookie as the client address, port 0): one socket's flow
 *     keeps one backend, and sockets spread over the group;
 *   - affinity: by the socket's network namespace (SL_LB_SOCK_PREFIX and
 *     the namespace's cookie), never by its source address, which any
 *     socket can choose (IP_FREEBIND): a pod's namespace has its one
 *     address, the host's all its processes (as Cilium keys socket-LB
 *     affinity by namespace cookie);
 *   - source ranges: decided on the socket's source address (a sendmsg's
 *     own, else the bound one); a socket without one is left untranslated
 *     for the TC stage, which sees the source (SL_LB_SOURCE_UNKNOWN). */
#pragma once

#include "lb_maps.h"
#include "parse.h"

/* SL_LB_SOCK_PREFIX is the first word (big-endian) of the address that
 * stands for a socket or a network namespace at connect time: 100::/64,
 * the discard-only prefix (RFC 6666), which no real client uses, followed
 * by the 64-bit cookie. nat.SocketAddr writes the same. */
#define SL_LB_SOCK_PREFIX 0x01000000u

/* sl_lb_sock_addr writes the address that stands for cookie. */
SL_INLINE void sl_lb_sock_addr(__u8 *dst, __u64 cookie)
{
	__be32 *w = (__be32 *)dst;

	w[0] = bpf_htonl(SL_LB_SOCK_PREFIX);
	w[1] = 0;
	w[2] = bpf_htonl(cookie >> 32);
	w[3] = bpf_htonl((__u32)cookie);
}

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
 * the same backend and nat.FlowHash can say where a flow goes. At connect
 * time (sock.c) the client is the socket: SL_LB_SOCK_PREFIX and its
 * cookie, port 0 (nat.ConnectFlow). A real function: inlined, the live
 * ranges of its words spilled 32 more bytes of the service stage's frame,
 * which adds to the main path's. */
static __noinline __u32 sl_lb_hash(const __u8 *client, const __u8 *dest, __u16 cport, __u16 dport, __u8 proto)
{
	const __be32 *s = (const __be32 *)client, *d = (const __be32 *)dest;
	__u32 h = 0;

	h = sl_lb_mix(h, bpf_ntohl(s[0]));
	h = sl_lb_mix(h, bpf_ntohl(s[1]));
	h = sl_lb_mix(h, bpf_ntohl(s[2]));
	h = sl_lb_mix(h, bpf_ntohl(s[3]));
	h = sl_lb_mix(h, bpf_ntohl(d[0]));
	h = sl_lb_mix(h, bpf_ntohl(d[1]));
	h = sl_lb_mix(h, bpf_ntohl(d[2]));
	h = sl_lb_mix(h, bpf_ntohl(d[3]));
	h = sl_lb_mix(h, ((__u32)cport << 16) | dport);
	h = sl_lb_mix(h, proto);
	h ^= 40;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* sl_svc_find returns the frontend a flow is sent to (dest, dport,
 * proto), or NULL: the exact (address, port, protocol), else, where dest
 * is an address of this node (to_node: its route says SL_ROUTE_LOCAL_HOST),
 * the NodePort of that port and protocol. A NodePort answers on node
 * addresses only: a flow sent to the wildcard address itself (0.0.0.0 or
 * ::, which only NodePorts are keyed by) finds its entry in the exact
 * lookup, and is held to the same test, or a client could reach every
 * NodePort through an address that is no node's. */
SL_INLINE const struct sl_svc *sl_svc_find(const __u8 *dest, __u16 dport, __u8 proto, bool to_node)
{
	struct sl_svc_key k = { .port = dport, .proto = proto };
	const struct sl_svc *svc;
	__be32 *w = (__be32 *)k.addr;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != SL_IPPROTO_SCTP)
		return NULL;
	sl_addr_copy(k.addr, dest);
	svc = bpf_map_lookup_elem(&sl_svcs, &k);
	if (svc && !(svc->flags & SL_SVC_NODE_PORT))
		return svc;
	if (!to_node)
		return NULL;
	/* The family's wildcard: ::ffff:0.0.0.0 keeps IPv4's mapped prefix. */
	w[0] = 0;
	w[1] = 0;
	w[2] = sl_addr_is_v4(dest) ? bpf_htonl(0xffff) : 0;
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
 * affinity remembers the choice once the flow is allowed (sl_lb_remember). */
SL_INLINE const struct sl_backend *sl_lb_choose(const struct sl_svc *svc, const __u8 *client, __u32 hash,
						__u32 *id)
{
	struct sl_lb_group g = sl_lb_group_of(svc);
	struct sl_backend_slot_key sk = { .svc_id = svc->id };
	const struct sl_backend *be;
	__u32 backend = 0, *slot;

	if (g.count == 0)
		return NULL;
	if (svc->flags & SL_SVC_AFFINITY)
		backend = sl_lb_affinity(svc, &g, client, bpf_ktime_get_coarse_ns());
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

/* What sl_lb_pick decided for a new flow. */
enum sl_lb_rc {
	SL_LB_NONE,		/* no frontend: the flow is no service's */
	SL_LB_CHOSEN,		/* a backend: the choice's be and id */
	SL_LB_NO_BACKEND,	/* a frontend without a usable backend: refuse the flow */
	SL_LB_SOURCE_REFUSED,	/* the client is outside the frontend's source ranges */
	SL_LB_SOURCE_UNKNOWN,	/* the frontend has source ranges and the client's address is not known yet */
};

/* A new flow's frontend and backend, from sl_lb_pick. */
struct sl_lb_choice {
	const struct sl_svc	*svc;	/* the frontend met; with SL_LB_CHOSEN and SL_LB_NO_BACKEND */
	const struct sl_backend	*be;	/* with SL_LB_CHOSEN */
	__u32			id;	/* be's backend ID */
};

/* sl_lb_pick is the whole service choice of a new flow, for both program
 * types (the TC service stage, and connect-time balancing in sock.c):
 * the frontend at dest:dport/proto (sl_svc_find, NodePorts where to_node),
 * the source ranges, then the backend (sl_lb_choose: traffic policy Local,
 * terminating fallback, affinity, Maglev, hash). client is whom source
 * ranges are decided for; client_known says it is the flow's real source
 * address (at connect time a socket may not be bound yet, and a frontend
 * with source ranges is then left to the TC stage, which sees the
 * address: SL_LB_SOURCE_UNKNOWN). aff_client is whom affinity is kept
 * for: the packet's source at TC; at connect time always the socket's
 * network namespace, since a socket can bind any address (IP_FREEBIND,
 * no privilege needed) and must not record or steer another client's
 * affinity. hash_client and hash_port are the hash's client side
 * (sl_lb_hash): the packet's source at TC, the socket's cookie at
 * connect. */
SL_INLINE enum sl_lb_rc sl_lb_pick(const __u8 *client, bool client_known, const __u8 *aff_client,
				   const __u8 *hash_client, __u16 hash_port, const __u8 *dest, __u16 dport,
				   __u8 proto, bool to_node, struct sl_lb_choice *c)
{
	c->svc = sl_svc_find(dest, dport, proto, to_node);
	if (!c->svc)
		return SL_LB_NONE;
	if (c->svc->flags & SL_SVC_SOURCE_RANGES) {
		if (!client_known)
			return SL_LB_SOURCE_UNKNOWN;
		if (!sl_lb_source_ok(c->svc, client))
			return SL_LB_SOURCE_REFUSED;
	}
	c->be = sl_lb_choose(c->svc, aff_client, sl_lb_hash(hash_client, dest, hash_port, dport, proto), &c->id);
	return c->be ? SL_LB_CHOSEN : SL_LB_NO_BACKEND;
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
