/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Conntrack operations of the TC datapath on the sl_ct_tables array of
 * tables, which the including object defines. */
#pragma once

#include "conntrack.h"
#include "pending.h"
#include "parse.h"
#include "state.h"

/* sl_ct_key_fill writes the canonical key of a packet from (saddr, sport)
 * to (daddr, dport) and returns the packet's direction. Addresses compare
 * as 128-bit big-endian numbers, as the Go package conntrack orders them. */
SL_INLINE enum sl_ct_dir sl_ct_key_fill(struct sl_ct_key *key, __u8 proto, const __u8 *saddr,
					__u16 sport, const __u8 *daddr, __u16 dport)
{
	bool reversed = sl_addr_less(daddr, saddr) || (sl_addr_eq(daddr, saddr) && dport < sport);

	key->proto = proto;
	key->pad[0] = 0;
	key->pad[1] = 0;
	key->pad[2] = 0;
	if (reversed) {
		sl_addr_copy(key->addr_a, daddr);
		sl_addr_copy(key->addr_b, saddr);
		key->port_a = dport;
		key->port_b = sport;
		return SL_CT_DIR_B_TO_A;
	}
	sl_addr_copy(key->addr_a, saddr);
	sl_addr_copy(key->addr_b, daddr);
	key->port_a = sport;
	key->port_b = dport;
	return SL_CT_DIR_A_TO_B;
}

/* sl_ct_echo_ports gives the ports of an ICMP or ICMPv6 echo (request
 * says which way it goes): the identifier on the
 * requester's side and the identifier plus one on the responder's, so
 * that a request and its reply share a key and no request the other way,
 * of any identifier, has that key. A request from B with identifier j has
 * the key of A's request with identifier i only if j = i + 1 and i = j + 1,
 * which no 16-bit numbers are. A constant on the responder's side would
 * fail for the identifier equal to it, and any map of the identifier that
 * is its own inverse (a complement) for the identifier's image. */
SL_INLINE void sl_ct_echo_ports(bool request, __u16 id, __u16 *sport, __u16 *dport)
{
	__u16 responder = id + 1;

	*sport = request ? id : responder;
	*dport = request ? responder : id;
}

/* sl_ct_ports gives the ports conntrack keys a packet by: its ports, the
 * echo ports, or zeros. */
SL_INLINE void sl_ct_ports(const struct sl_pkt *pkt, __u16 *sport, __u16 *dport)
{
	if (pkt->proto == IPPROTO_ICMP || pkt->proto == IPPROTO_ICMPV6) {
		sl_ct_echo_ports(sl_icmp_any_request(pkt->proto, pkt->icmp_type), pkt->icmp_id, sport, dport);
		return;
	}
	*sport = pkt->sport;
	*dport = pkt->dport;
}

/* sl_ct_tracked says whether conntrack keeps a flow of the packet: every
 * protocol but ICMP and ICMPv6 messages other than echoes, which would otherwise let
 * every later ICMP message between two addresses pass as established. An
 * error is related to its flow or decided by policy, each time. */
SL_INLINE bool sl_ct_tracked(const struct sl_pkt *pkt)
{
	if (pkt->proto == IPPROTO_ICMP || pkt->proto == IPPROTO_ICMPV6)
		return sl_icmp_any_echo(pkt->proto, pkt->icmp_type);
	return true;
}

/* sl_ct_table returns a table of sl_ct_tables, or NULL when the slot is
 * empty (the draining slot, except during a resize). */
SL_INLINE void *sl_ct_table(enum sl_ct_table_slot slot)
{
	__u32 key = slot;

	return bpf_map_lookup_elem(&sl_ct_tables, &key);
}

/* sl_ct_find looks key up in the live table and, on a miss, in a table
 * being drained; an entry found there is copied into the live table first
 * (another CPU, or the runtime's drain, may have copied it already), so
 * that from then on the flow is written only in the live table. */
SL_INLINE struct sl_ct_value *sl_ct_find(void *live, const struct sl_ct_key *key)
{
	struct sl_ct_value *ct = bpf_map_lookup_elem(live, key);
	struct sl_ct_value *moved;
	void *draining;
	bool copied;

	if (ct)
		return ct;
	draining = sl_ct_table(SL_CT_TABLE_DRAINING);
	if (!draining)
		return NULL;
	ct = bpf_map_lookup_elem(draining, key);
	if (!ct)
		/* The drain may have moved the entry between the two lookups
		 * (it writes the live table before it deletes here). */
		return bpf_map_lookup_elem(live, key);
	copied = bpf_map_update_elem(live, key, ct, BPF_NOEXIST) == 0;
	moved = bpf_map_lookup_elem(live, key);
	/* Without room in the live table, keep using the draining entry: the
	 * drain copies it later with whatever this packet adds. */
	if (!moved)
		return ct;
	/* The flow lives in the live table now. The copy that put it there
	 * deletes the draining entry: this one, or else the drain's (or
	 * another CPU's), whose owner then deletes it. Left behind, it would
	 * bring the flow back after the agent deleted it; deleted by one that
	 * did not copy, the drain would take its own copy for a deleted flow's
	 * and remove it. */
	if (copied)
		bpf_map_delete_elem(draining, key);
	return moved;
}

/* sl_ct_client_dir is the direction of a NAT flow's client-side packets
 * relative to the key of its entry ct (forward or reverse). */
SL_INLINE enum sl_ct_dir sl_ct_client_dir(const struct sl_ct_value *ct)
{
	return (ct->flags & SL_CT_F_CLIENT_IS_B) ? SL_CT_DIR_B_TO_A : SL_CT_DIR_A_TO_B;
}

/* sl_ct_key_eq says whether two conntrack keys are equal. */
SL_INLINE bool sl_ct_key_eq(const struct sl_ct_key *x, const struct sl_ct_key *y)
{
	return sl_addr_eq(x->addr_a, y->addr_a) && sl_addr_eq(x->addr_b, y->addr_b) &&
	       x->port_a == y->port_a && x->port_b == y->port_b && x->proto == y->proto;
}

/* sl_ct_nat_side gives an endpoint of a NAT flow's reverse entry ct under
 * key: the client's side (client; source-NATed, SL_CT_F_SNAT, the node's
 * address and port that stand in for the client), or the backend. */
SL_INLINE void sl_ct_nat_side(const struct sl_ct_value *ct, const struct sl_ct_key *key, bool client,
			      const __u8 **addr, __u16 *port)
{
	bool side_b = !(ct->flags & SL_CT_F_CLIENT_IS_B) != client;

	*addr = side_b ? key->addr_b : key->addr_a;
	*port = side_b ? key->port_b : key->port_a;
}

/* sl_ct_nat_origin gives the client of a NAT flow's reverse entry ct as
 * it sent: the endpoint of the stub's key (nat_peer) that is not the
 * frontend (orig_addr, orig_port). */
SL_INLINE void sl_ct_nat_origin(const struct sl_ct_value *ct, const __u8 **addr, __u16 *port)
{
	const struct sl_ct_key *peer = &ct->nat_peer;
	bool a_is_frontend = sl_addr_eq(peer->addr_a, ct->orig_addr) && peer->port_a == ct->orig_port;

	*addr = a_is_frontend ? peer->addr_b : peer->addr_a;
	*port = a_is_frontend ? peer->port_b : peer->port_a;
}

/* sl_ct_lookup finds the entry that tracks the flow of key, a packet in
 * direction *dir. A NAT forward entry is a stub keyed by the tuple the
 * client sent to the frontend: it leads to its reverse entry, whose key
 * replaces *key, and *dir becomes the packet's direction there: a packet
 * from the client's side of the stub is from the client's side of the
 * reverse entry (the entries' flags say which endpoint the client is).
 * *via_stub says the stub led there. A stub whose reverse entry is gone,
 * or belongs to another flow, is orphaned: it is deleted and counts as a
 * miss, so that the flow starts afresh rather than being written into the
 * stub, where no packet would ever find it established. */
SL_INLINE struct sl_ct_value *sl_ct_lookup(void *live, struct sl_ct_key *key, enum sl_ct_dir *dir,
					   bool *via_stub)
{
	struct sl_ct_value *ct = sl_ct_find(live, key);
	struct sl_ct_key rev;
	bool from_client;

	*via_stub = false;
	if (!ct || ct->type != SL_CT_NAT_FWD)
		return ct;
	from_client = *dir == sl_ct_client_dir(ct);
	rev = ct->nat_peer;
	ct = sl_ct_find(live, &rev);
	if (!ct || ct->type != SL_CT_NAT_REV || !sl_ct_key_eq(&ct->nat_peer, key)) {
		bpf_map_delete_elem(live, key);
		return NULL;
	}
	*key = rev;
	*dir = from_client ? sl_ct_client_dir(ct) : !sl_ct_client_dir(ct);
	*via_stub = true;
	return ct;
}

SL_INLINE struct sl_ct_leg *sl_ct_leg_of(struct sl_ct_value *ct, enum sl_ct_dir dir)
{
	return dir == SL_CT_DIR_A_TO_B ? &ct->a_to_b : &ct->b_to_a;
}

/* sl_ct_passes says whether a packet in direction dir may skip policy at
 * this hook: its leg was approved here, or it is a reply of a leg that was
 * approved on this interface in the other direction. */
SL_INLINE bool sl_ct_passes(struct sl_ct_value *ct, enum sl_ct_dir dir, __u32 ifindex,
			    enum sl_hook hook)
{
	struct sl_ct_leg *own = sl_ct_leg_of(ct, dir);
	struct sl_ct_leg *peer = sl_ct_leg_of(ct, !dir);

	if (hook == SL_HOOK_INGRESS)
		return (own->flags & SL_CT_LEG_INGRESS_OK) && own->ifindex == ifindex;
	return ((own->flags & SL_CT_LEG_EGRESS_OK) && own->egress_ifindex == ifindex) ||
	       ((peer->flags & SL_CT_LEG_INGRESS_OK) && peer->ifindex == ifindex);
}

/* sl_ct_leg_flags_of maps TCP header flags to the leg bits they set. */
SL_INLINE __u32 sl_ct_leg_flags_of(__u8 tcp_flags)
{
	__u32 f = 0;

	if (tcp_flags & SL_TCP_SYN)
		f |= SL_CT_LEG_SYN;
	if (tcp_flags & SL_TCP_ACK)
		f |= SL_CT_LEG_ACK;
	if (tcp_flags & SL_TCP_FIN)
		f |= SL_CT_LEG_FIN;
	if (tcp_flags & SL_TCP_RST)
		f |= SL_CT_LEG_RST;
	return f;
}

/* sl_ct_counted_at_ingress says whether a packet of leg at a hook of
 * ifindex, having entered the node through ingress_ifindex
 * (skb->ingress_ifindex; 0 for the host's own packets), is counted at an
 * ingress hook: the leg is bound to the ingress hook it came through, or
 * to the one of this interface, which a packet leaving through loopback
 * enters next. */
SL_INLINE bool sl_ct_counted_at_ingress(const struct sl_ct_leg *leg, __u32 ingress_ifindex,
					__u32 ifindex)
{
	return (leg->flags & SL_CT_LEG_INGRESS_OK) &&
	       (leg->ifindex == ingress_ifindex || leg->ifindex == ifindex);
}

/* sl_ct_leg_account adds a packet to a leg. A packet between two managed
 * interfaces crosses an ingress and an egress hook; it is counted once: at
 * the TC ingress hook of the leg's bound interface, or else at a TC
 * egress hook (traffic from the host itself, from an interface the
 * datapath does not run on, or one the leg is not bound to), unless it
 * leaves through the bound interface itself (loopback), whose ingress
 * hook it enters next. count says which. A packet that enters through a managed interface the leg is not
 * bound to and is delivered to the host crosses no egress hook and is not
 * counted on the leg. Entries are shared between CPUs, so counts are
 * added atomically, and the flags are written only when they gain a bit,
 * to keep the cache line clean on the common path. */
SL_INLINE void sl_ct_leg_account(struct sl_ct_value *ct, struct sl_ct_leg *leg, __u32 flags,
				 __u32 len, __u64 now, bool count)
{
	__u32 seen = leg->flags;

	if ((seen & flags) != flags)
		__sync_fetch_and_or((__u32 *)&leg->flags, flags);
	if (count) {
		__sync_fetch_and_add(&leg->packets, 1);
		__sync_fetch_and_add(&leg->bytes, len);
	}
	ct->last_seen = now;
}

/* sl_ct_claim lets a leg's packets pass a hook of ifindex: the ingress
 * hook (bit SL_CT_LEG_INGRESS_OK, interface in *field = leg->ifindex) or
 * the egress hook (SL_CT_LEG_EGRESS_OK, leg->egress_ifindex). The first
 * claim fixes the interface, so a packet forged at another interface (a
 * spoofed SYN that its own policy allows) cannot move a flow away from
 * its owner. */
SL_INLINE void sl_ct_claim(struct sl_ct_leg *leg, __u32 *field, __u32 bit, __u32 ifindex)
{
	__u32 owner = __sync_val_compare_and_swap(field, 0, ifindex);

	if (owner != 0 && owner != ifindex)
		return;
	/* The ifindex is in before the bit that vouches for it. */
	if (!(leg->flags & bit))
		__sync_fetch_and_or((__u32 *)&leg->flags, bit);
}

/* sl_ct_approve_leg records an approval on an existing entry: at an
 * ingress hook, the packet's leg enters there; at an egress hook, it
 * leaves there and its replies enter there. A leg approved only leaving
 * (the host's own traffic) is not bound to an ingress hook afterwards: its
 * packets are never seen entering, so one that does is forged. A real
 * function rather than inlined: it runs once per policy decision, not per
 * packet, and its parameter puts struct sl_ct_value into BTF, which the
 * table template of sl_ct_tables alone does not. */
static __noinline int sl_ct_approve_leg(struct sl_ct_value *ct, const struct sl_pending *pd,
					__u32 flags, __u32 len, __u32 ingress_ifindex)
{
	struct sl_ct_leg *own = sl_ct_leg_of(ct, pd->dir);
	struct sl_ct_leg *peer = sl_ct_leg_of(ct, !pd->dir);
	bool count;

	if (pd->hook == SL_HOOK_EGRESS) {
		count = !sl_ct_counted_at_ingress(own, ingress_ifindex, pd->ifindex);
		sl_ct_claim(own, &own->egress_ifindex, SL_CT_LEG_EGRESS_OK, pd->ifindex);
		sl_ct_claim(peer, &peer->ifindex, SL_CT_LEG_INGRESS_OK, pd->ifindex);
	} else {
		if (own->ifindex != 0 || !(own->flags & SL_CT_LEG_EGRESS_OK))
			sl_ct_claim(own, &own->ifindex, SL_CT_LEG_INGRESS_OK, pd->ifindex);
		count = sl_ct_counted_at_ingress(own, pd->ifindex, pd->ifindex);
	}
	sl_ct_leg_account(ct, own, flags, len, bpf_ktime_get_coarse_ns(), count);
	return 0;
}

/* sl_ct_fresh_legs fills the legs of a new entry for the pending
 * packet's approval: at an ingress hook its leg enters there; at an
 * egress hook it leaves there and the replies enter there. */
SL_INLINE void sl_ct_fresh_legs(struct sl_ct_value *fresh, const struct sl_pending *pd, __u32 len)
{
	struct sl_ct_leg *leg = sl_ct_leg_of(fresh, pd->dir);

	leg->packets = 1;
	leg->bytes = len;
	if (pd->hook == SL_HOOK_INGRESS) {
		leg->flags = pd->leg_flags | SL_CT_LEG_INGRESS_OK;
		leg->ifindex = pd->ifindex;
		return;
	}
	leg->flags = pd->leg_flags | SL_CT_LEG_EGRESS_OK;
	leg->egress_ifindex = pd->ifindex;
	leg = sl_ct_leg_of(fresh, !pd->dir);
	leg->ifindex = pd->ifindex;
	leg->flags = SL_CT_LEG_INGRESS_OK;
}

/* sl_ct_approve records that policy at the pending packet's hook allowed
 * its leg, creating the entry for a new flow. Approval at an egress hook
 * also lets the replies in at that interface's ingress hook. The packet
 * entered the node through ingress_ifindex. A NAT stub found under the
 * key is orphaned (sl_ct_lookup follows live ones) and is replaced.
 * Returns 0, or a negative error when no entry could be written. A real
 * function, so that its new entry and sl_ct_approve_nat's are not both
 * in the continuation's stack frame. */
static __noinline int sl_ct_approve(void *live, const struct sl_pending *pd, __u32 len, __u32 ingress_ifindex)
{
	struct sl_ct_value *ct = sl_ct_find(live, &pd->ct_key);
	bool stub = ct && ct->type == SL_CT_NAT_FWD;
	__u64 now;

	if (ct && !stub)
		return sl_ct_approve_leg(ct, pd, pd->leg_flags, len, ingress_ifindex);
	now = bpf_ktime_get_coarse_ns();
	struct sl_ct_value fresh = {
		.created = now,
		.last_seen = now,
		.type = SL_CT_NORMAL,
	};

	sl_ct_fresh_legs(&fresh, pd, len);
	if (!bpf_map_update_elem(live, &pd->ct_key, &fresh, stub ? BPF_ANY : BPF_NOEXIST))
		return 0;
	/* Another CPU created it first: account on that entry. */
	ct = bpf_map_lookup_elem(live, &pd->ct_key);
	if (!ct || ct->type == SL_CT_NAT_FWD)
		return -1;
	return sl_ct_approve_leg(ct, pd, pd->leg_flags, len, ingress_ifindex);
}

/* sl_ct_reopens says whether pd, a TCP SYN without ACK, starts a new flow
 * over ct, another flow's entry under its tuple: ct's flow is over once
 * either side reset it or both sent a FIN, and a client that reuses the
 * port (after a RST close, or past TIME_WAIT) opens a new connection on
 * the tuple, as netfilter reopens a closed connection's. */
SL_INLINE bool sl_ct_reopens(const struct sl_ct_value *ct, const struct sl_pending *pd)
{
	__u32 a = ct->a_to_b.flags, b = ct->b_to_a.flags;

	if (pd->ct_key.proto != IPPROTO_TCP || (pd->leg_flags & (SL_CT_LEG_SYN | SL_CT_LEG_ACK)) != SL_CT_LEG_SYN)
		return false;
	return ((a | b) & SL_CT_LEG_RST) || (a & b & SL_CT_LEG_FIN);
}

/* sl_ct_approve_nat records that policy allowed a packet of a service's
 * flow, DNATed before policy (SL_PENDING_DNAT): the reverse entry, keyed
 * by the translated tuple (pd->ct_key), holds the flow's state and the
 * frontend it was sent to; the forward stub, keyed by the tuple the client
 * sent (st's source and pre-NAT destination), leads to it. The reverse
 * entry is written first, so a stub never leads nowhere. An entry under
 * the translated tuple that is not this flow's (a flow sent straight to
 * the backend from the same client port, or through another frontend of
 * the same backend) is left alone and the packet refused, since
 * translating into it would merge two flows; unless that flow is over
 * and this packet opens a new one (sl_ct_reopens): then this flow's
 * entry replaces it, and the old flow's stub, which no longer leads back
 * to its reverse entry, is deleted as an orphan by the next lookup that
 * meets it. A real function, like sl_ct_approve_leg: it runs once per new
 * NAT flow. */
static __noinline int sl_ct_approve_nat(void *live, const struct sl_pending *pd,
					const struct sl_state *st, __u32 len, __u32 ingress_ifindex)
{
	struct sl_ct_value *ct, entry = {};
	struct sl_ct_key fwd;
	enum sl_ct_dir fwd_dir;
	__u64 now = bpf_ktime_get_coarse_ns();
	bool reopen = false;

	if (!st)
		return -1;
	fwd_dir = sl_ct_key_fill(&fwd, pd->ct_key.proto, st->src_addr, st->src_port,
				 st->pre_nat_dst_addr, st->pre_nat_dst_port);
	ct = sl_ct_find(live, &pd->ct_key);
	if (ct && (ct->type != SL_CT_NAT_REV || !sl_ct_key_eq(&ct->nat_peer, &fwd))) {
		if (!sl_ct_reopens(ct, pd))
			return -1;
		reopen = true;
		ct = NULL;
	}
	if (!ct) {
		entry.created = now;
		entry.last_seen = now;
		entry.type = SL_CT_NAT_REV;
		entry.flags = pd->dir == SL_CT_DIR_B_TO_A ? SL_CT_F_CLIENT_IS_B : 0;
		if (pd->flags & SL_PENDING_SNAT)
			entry.flags |= SL_CT_F_SNAT;
		entry.nat_peer = fwd;
		sl_addr_copy(entry.orig_addr, st->pre_nat_dst_addr);
		entry.orig_port = st->pre_nat_dst_port;
		sl_ct_fresh_legs(&entry, pd, len);
		if (!bpf_map_update_elem(live, &pd->ct_key, &entry, reopen ? BPF_EXIST : BPF_NOEXIST))
			goto stub;
		/* Another CPU created it first: account on that entry. */
		ct = bpf_map_lookup_elem(live, &pd->ct_key);
		if (!ct || ct->type != SL_CT_NAT_REV || !sl_ct_key_eq(&ct->nat_peer, &fwd))
			return -1;
	}
	sl_ct_approve_leg(ct, pd, pd->leg_flags, len, ingress_ifindex);
stub:
	__builtin_memset(&entry, 0, sizeof(entry));
	entry.created = now;
	entry.last_seen = now;
	entry.type = SL_CT_NAT_FWD;
	entry.flags = fwd_dir == SL_CT_DIR_B_TO_A ? SL_CT_F_CLIENT_IS_B : 0;
	entry.nat_peer = pd->ct_key;
	return bpf_map_update_elem(live, &fwd, &entry, BPF_ANY) ? -1 : 0;
}
