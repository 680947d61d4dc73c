//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sluice's TC datapath: one object for every TC hook.
 *
 * sl_tc_ingress and sl_tc_egress are the programs attached to interfaces,
 * one per hook; everything that differs between interfaces comes from
 * sl_ifaces. A packet's path:
 *
 *   interface state -> parse -> [ICMP error: related?] -> conntrack lookup
 *     -> approved here or a reply: account, TC_ACT_OK
 *     -> otherwise: fill sl_state and sl_pending, tail-call the hook's
 *        policy in sl_policy_jumps, which ends in sl_conts:
 *          sl_tc_allow: create or update the entry, TC_ACT_OK
 *          sl_tc_deny:  TC_ACT_SHOT
 *
 * Every packet is counted under one enum sl_reason in sl_counters.
 * polprog's programs count the deciding rule in sl_rule_hits themselves,
 * so the continuations leave those counters alone. */

#include "sluice/common.h"
#include "sluice/policy_maps.h"
#include "sluice/conntrack.h"
#include "sluice/iface.h"
#include "sluice/counters.h"
#include "sluice/pending.h"

/* Connection tracking. LRU so a full table evicts the coldest flow rather
 * than refusing new ones; the Go loader sizes it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct sl_ct_key);
	__type(value, struct sl_ct_value);
} sl_ct SEC(".maps");

/* Interface settings, keyed by ifindex. Written by the agent before it
 * attaches; an interface without an entry drops everything. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct sl_iface);
} sl_ifaces SEC(".maps");

/* Verdict counters by SL_COUNTER_INDEX(slot, hook). Per-CPU, so
 * increments need no atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2048);
	__type(key, __u32);
	__type(value, struct sl_reason_counts);
} sl_counters SEC(".maps");

/* The packet waiting for policy on this CPU (entry 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_pending);
} sl_pending_map SEC(".maps");

#include "sluice/ct_ops.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* sl_count adds a packet to the counters at index. An index past the
 * array (a counter_slot the loader did not size for) counts in slot 0.
 * Not inlined: it is called from every verdict site, and as a real
 * function its reason argument puts enum sl_reason into BTF for Go. */
static __noinline int sl_count(__u32 index, enum sl_reason reason)
{
	struct sl_reason_counts *c = bpf_map_lookup_elem(&sl_counters, &index);

	if (!c) {
		index &= 1;
		c = bpf_map_lookup_elem(&sl_counters, &index);
		if (!c)
			return 0;
	}
	if (reason < SL_REASON_COUNT)
		c->packets[reason]++;
	return 0;
}

/* sl_verdict counts the packet and turns its reason into a TC action. */
SL_INLINE int sl_verdict(__u32 counter_index, enum sl_reason reason)
{
	sl_count(counter_index, reason);
	return reason < SL_REASON_FIRST_DROP ? TC_ACT_OK : TC_ACT_SHOT;
}

/* sl_related says whether an ICMP error quotes a packet of a tracked flow
 * that the error's destination sent. The quote is an IPv4 header, options
 * included, and at least 8 bytes of its L4 header. Anything else in the
 * quote makes the error unrelated, and it goes through policy as ICMP. */
SL_INLINE bool sl_related(struct __sk_buff *skb, const struct sl_pkt *pkt)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off;
	struct sl_ct_key key;
	struct iphdr *in;
	__u16 sport, dport;
	__u8 *l4;
	__u32 ihl;

	if (off > ETH_HLEN + 60 || pkt->l4_len < 8 + sizeof(*in) + 8)
		return false;
	in = data + off + 8;
	if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5)
		return false;
	if (in->frag_off & bpf_htons(SL_IP_OFFSET) || in->saddr != pkt->daddr)
		return false;
	ihl = in->ihl * 4;
	l4 = (__u8 *)in + ihl;
	if (l4 + 8 > (__u8 *)end || 8 + ihl + 8 > pkt->l4_len)
		return false;
	if (in->protocol == IPPROTO_TCP || in->protocol == IPPROTO_UDP) {
		sport = bpf_ntohs(*(__be16 *)l4);
		dport = bpf_ntohs(*(__be16 *)(l4 + 2));
	} else if (in->protocol == IPPROTO_ICMP && sl_icmp_is_echo(l4[0])) {
		sport = bpf_ntohs(*(__be16 *)(l4 + 4));
		dport = sport;
	} else {
		return false;
	}
	sl_ct_key_fill(&key, in->protocol, in->saddr, sport, in->daddr, dport);
	return bpf_map_lookup_elem(&sl_ct, &key) != NULL;
}

/* sl_fill_state writes what policy reads. IPv4 addresses go in
 * IPv4-mapped; the pre-NAT destination is the destination until the
 * service-LB stage exists. */
SL_INLINE void sl_fill_state(struct sl_state *st, const struct sl_pkt *pkt)
{
	__builtin_memset(st, 0, sizeof(*st));
	st->src_addr[10] = 0xff;
	st->src_addr[11] = 0xff;
	__builtin_memcpy(&st->src_addr[12], &pkt->saddr, 4);
	st->dst_addr[10] = 0xff;
	st->dst_addr[11] = 0xff;
	__builtin_memcpy(&st->dst_addr[12], &pkt->daddr, 4);
	__builtin_memcpy(st->pre_nat_dst_addr, st->dst_addr, 16);
	st->src_port = pkt->sport;
	st->dst_port = pkt->dport;
	st->pre_nat_dst_port = pkt->dport;
	st->ip_proto = pkt->proto;
	st->icmp_type = pkt->icmp_type;
	st->icmp_code = pkt->icmp_code;
}

/* sl_to_policy hands the packet to the hook's policy program. It returns
 * only when the slot is empty: fail closed. */
SL_INLINE int sl_to_policy(struct __sk_buff *skb, __u32 slot, enum sl_hook hook,
			   __u32 counter_index, const struct sl_pkt *pkt,
			   const struct sl_ct_key *key, enum sl_ct_dir dir)
{
	__u32 ifindex = skb->ifindex, zero = 0;
	struct sl_pending *pd = bpf_map_lookup_elem(&sl_pending_map, &zero);
	struct sl_state *st = bpf_map_lookup_elem(&sl_state_map, &zero);

	if (!pd || !st)
		return sl_verdict(counter_index, SL_REASON_DROPPED_BAD_HANDOFF);
	sl_fill_state(st, pkt);
	pd->ct_key = *key;
	pd->ifindex = ifindex;
	pd->hook = hook;
	pd->dir = dir;
	pd->leg_flags = sl_ct_leg_flags_of(pkt->tcp_flags);
	pd->counter_index = counter_index;
	bpf_tail_call(skb, &sl_policy_jumps, slot);
	pd->ifindex = 0;
	return sl_verdict(counter_index, SL_REASON_DROPPED_NO_POLICY);
}

/* sl_tc_main is the whole per-packet path of both hooks; hook is a
 * constant in each caller, so each program keeps only its own branches. */
SL_INLINE int sl_tc_main(struct __sk_buff *skb, enum sl_hook hook)
{
	__u32 ifindex = skb->ifindex;
	struct sl_pkt pkt = {};
	enum sl_reason reason;
	struct sl_ct_value *ct;
	struct sl_ct_key key;
	enum sl_ct_dir dir;
	enum sl_iface_flags iflags;
	__u16 sport, dport;
	__u32 slot, counters;

	struct sl_iface *iface = bpf_map_lookup_elem(&sl_ifaces, &ifindex);
	if (!iface)
		return sl_verdict(SL_COUNTER_INDEX(0, hook), SL_REASON_DROPPED_NO_IFACE);
	iflags = iface->flags;
	slot = hook == SL_HOOK_INGRESS ? iface->ingress_policy : iface->egress_policy;
	counters = SL_COUNTER_INDEX(iface->counter_slot, hook);
	if (!(iflags & SL_IFACE_READY))
		return sl_verdict(counters, SL_REASON_DROPPED_NOT_READY);

	sl_pull(skb);
	if (sl_parse_eth(skb, iflags, &reason) != SL_PARSE_IPV4 ||
	    sl_parse_ipv4(skb, iflags, &pkt, &reason) != SL_PARSE_IPV4 ||
	    sl_parse_l4(skb, &pkt, &reason) != SL_PARSE_IPV4)
		return sl_verdict(counters, reason);

	if (pkt.proto == IPPROTO_ICMP && sl_icmp_is_error(pkt.icmp_type) && sl_related(skb, &pkt))
		return sl_verdict(counters, SL_REASON_ACCEPTED_RELATED);

	sl_ct_ports(&pkt, &sport, &dport);
	dir = sl_ct_key_fill(&key, pkt.proto, pkt.saddr, sport, pkt.daddr, dport);
	ct = sl_ct_lookup(&key, &dir, pkt.saddr, sport);

	bool syn = pkt.proto == IPPROTO_TCP && (pkt.tcp_flags & (SL_TCP_SYN | SL_TCP_ACK)) == SL_TCP_SYN;
	if (ct && !syn && sl_ct_passes(ct, dir, ifindex, hook)) {
		sl_ct_leg_account(ct, sl_ct_leg_of(ct, dir), sl_ct_leg_flags_of(pkt.tcp_flags),
				  skb->len, bpf_ktime_get_coarse_ns());
		return sl_verdict(counters, SL_REASON_ACCEPTED_ESTABLISHED);
	}
	/* TCP that is neither a SYN nor part of a flow approved here started
	 * before this hook watched it, or is forged. */
	if (pkt.proto == IPPROTO_TCP && !(pkt.tcp_flags & SL_TCP_SYN) &&
	    (iflags & SL_IFACE_DROP_MID_FLOW))
		return sl_verdict(counters, SL_REASON_DROPPED_MID_FLOW);
	return sl_to_policy(skb, slot, hook, counters, &pkt, &key, dir);
}

/* The programs to attach: one per TC hook. */
SEC("tc")
int sl_tc_ingress(struct __sk_buff *skb)
{
	return sl_tc_main(skb, SL_HOOK_INGRESS);
}

SEC("tc")
int sl_tc_egress(struct __sk_buff *skb)
{
	return sl_tc_main(skb, SL_HOOK_EGRESS);
}

/* sl_take_pending copies this CPU's pending packet to *pd if it belongs
 * to skb, and marks it consumed so that it cannot be taken twice. */
SL_INLINE bool sl_take_pending(struct __sk_buff *skb, struct sl_pending *pd)
{
	__u32 zero = 0;
	struct sl_pending *slot = bpf_map_lookup_elem(&sl_pending_map, &zero);

	if (!slot || slot->ifindex == 0 || slot->ifindex != skb->ifindex)
		return false;
	*pd = *slot;
	slot->ifindex = 0;
	return true;
}

/* sl_tc_allow is where policy continues when it allows (sl_conts slot
 * SL_CONT_ALLOW). It trusts the verdict only if sl_state agrees. */
SEC("tc")
int sl_tc_allow(struct __sk_buff *skb)
{
	struct sl_pending pd;
	__u32 zero = 0;
	struct sl_state *st = bpf_map_lookup_elem(&sl_state_map, &zero);

	if (!sl_take_pending(skb, &pd))
		return sl_verdict(SL_COUNTER_INDEX(0, SL_HOOK_INGRESS), SL_REASON_DROPPED_BAD_HANDOFF);
	if (!st || st->policy_rc != SL_POLICY_ALLOW)
		return sl_verdict(pd.counter_index, SL_REASON_DROPPED_BAD_HANDOFF);
	if (sl_ct_approve(&pd, skb->len))
		sl_count(pd.counter_index, SL_REASON_CT_CREATE_FAILED);
	return sl_verdict(pd.counter_index, SL_REASON_ACCEPTED_BY_POLICY);
}

/* sl_tc_deny is where policy continues when it denies (sl_conts slot
 * SL_CONT_DENY). */
SEC("tc")
int sl_tc_deny(struct __sk_buff *skb)
{
	struct sl_pending pd;

	if (!sl_take_pending(skb, &pd))
		return sl_verdict(SL_COUNTER_INDEX(0, SL_HOOK_INGRESS), SL_REASON_DROPPED_BAD_HANDOFF);
	return sl_verdict(pd.counter_index, SL_REASON_DROPPED_BY_POLICY);
}

/* sl_tc_pass accepts every packet. It is the floor the datapath's
 * benchmarks are measured against, and a harmless program for attach tests. */
SEC("tc")
int sl_tc_pass(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
