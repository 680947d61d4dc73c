/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Conntrack operations of the TC datapath on the sl_ct map, which the
 * including object defines. */
#pragma once

#include "conntrack.h"
#include "pending.h"
#include "parse.h"

/* sl_ct_key_fill writes the canonical key of a packet from (saddr, sport)
 * to (daddr, dport) and returns the packet's direction. The address order
 * is that of big-endian numbers, so Go's netip.Addr.Compare agrees. */
SL_INLINE enum sl_ct_dir sl_ct_key_fill(struct sl_ct_key *key, __u8 proto, __be32 saddr,
					__u16 sport, __be32 daddr, __u16 dport)
{
	__u32 s = bpf_ntohl(saddr), d = bpf_ntohl(daddr);
	bool reversed = d < s || (d == s && dport < sport);

	__builtin_memset(key, 0, sizeof(*key));
	key->proto = proto;
	if (reversed) {
		key->addr_a = daddr;
		key->port_a = dport;
		key->addr_b = saddr;
		key->port_b = sport;
		return SL_CT_DIR_B_TO_A;
	}
	key->addr_a = saddr;
	key->port_a = sport;
	key->addr_b = daddr;
	key->port_b = dport;
	return SL_CT_DIR_A_TO_B;
}

/* sl_ct_ports gives the ports conntrack keys a packet by: TCP and UDP
 * ports, the echo identifier twice, or zeros. */
SL_INLINE void sl_ct_ports(const struct sl_pkt *pkt, __u16 *sport, __u16 *dport)
{
	if (pkt->proto == IPPROTO_ICMP) {
		*sport = pkt->icmp_id;
		*dport = pkt->icmp_id;
		return;
	}
	*sport = pkt->sport;
	*dport = pkt->dport;
}

/* sl_ct_lookup finds the entry that tracks the flow of key. A NAT forward
 * entry is a stub: it redirects to its reverse entry, whose key replaces
 * *key and against whose endpoints *dir is recomputed from the packet's
 * source. A stub whose reverse entry is gone counts as a miss and leaves
 * *key alone. */
SL_INLINE struct sl_ct_value *sl_ct_lookup(struct sl_ct_key *key, enum sl_ct_dir *dir,
					   __be32 saddr, __u16 sport)
{
	struct sl_ct_value *ct = bpf_map_lookup_elem(&sl_ct, key);
	struct sl_ct_key rev;

	if (!ct || ct->type != SL_CT_NAT_FWD)
		return ct;
	rev = ct->nat_peer;
	ct = bpf_map_lookup_elem(&sl_ct, &rev);
	if (!ct)
		return NULL;
	*key = rev;
	*dir = rev.addr_a == saddr && rev.port_a == sport ? SL_CT_DIR_A_TO_B : SL_CT_DIR_B_TO_A;
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
	return (own->flags & SL_CT_LEG_EGRESS_OK) ||
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

/* sl_ct_leg_account adds a packet to a leg. Entries are shared between
 * CPUs, so counts are added atomically, and the flags are written only
 * when they gain a bit, to keep the cache line clean on the common path. */
SL_INLINE void sl_ct_leg_account(struct sl_ct_value *ct, struct sl_ct_leg *leg, __u32 flags,
				 __u32 len, __u64 now)
{
	if ((leg->flags & flags) != flags)
		__sync_fetch_and_or((__u32 *)&leg->flags, flags);
	__sync_fetch_and_add(&leg->packets, 1);
	__sync_fetch_and_add(&leg->bytes, len);
	ct->last_seen = now;
}

/* sl_ct_approve records that policy at the pending packet's hook allowed
 * its leg, creating the entry for a new flow. Approval at an egress hook
 * also lets the replies in at that interface's ingress hook. Returns 0, or
 * a negative error when no entry could be written. */
SL_INLINE int sl_ct_approve(const struct sl_pending *pd, __u32 len)
{
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 flags = pd->leg_flags;
	struct sl_ct_value *ct;
	struct sl_ct_leg *leg;

	flags |= pd->hook == SL_HOOK_INGRESS ? SL_CT_LEG_INGRESS_OK : SL_CT_LEG_EGRESS_OK;
	ct = bpf_map_lookup_elem(&sl_ct, &pd->ct_key);
	if (!ct) {
		struct sl_ct_value fresh = {
			.created = now,
			.last_seen = now,
			.type = SL_CT_NORMAL,
		};

		leg = sl_ct_leg_of(&fresh, pd->dir);
		leg->packets = 1;
		leg->bytes = len;
		leg->flags = flags;
		if (pd->hook == SL_HOOK_INGRESS) {
			leg->ifindex = pd->ifindex;
		} else {
			leg = sl_ct_leg_of(&fresh, !pd->dir);
			leg->ifindex = pd->ifindex;
			leg->flags = SL_CT_LEG_INGRESS_OK;
		}
		if (!bpf_map_update_elem(&sl_ct, &pd->ct_key, &fresh, BPF_NOEXIST))
			return 0;
		/* Another CPU created it first: account on that entry. */
		ct = bpf_map_lookup_elem(&sl_ct, &pd->ct_key);
		if (!ct)
			return -1;
	}
	if (pd->hook == SL_HOOK_INGRESS) {
		leg = sl_ct_leg_of(ct, pd->dir);
	} else {
		leg = sl_ct_leg_of(ct, !pd->dir);
	}
	/* The ifindex goes in before the bit that vouches for it. */
	leg->ifindex = pd->ifindex;
	if (pd->hook == SL_HOOK_EGRESS && !(leg->flags & SL_CT_LEG_INGRESS_OK))
		__sync_fetch_and_or((__u32 *)&leg->flags, SL_CT_LEG_INGRESS_OK);
	sl_ct_leg_account(ct, sl_ct_leg_of(ct, pd->dir), flags, len, now);
	return 0;
}
