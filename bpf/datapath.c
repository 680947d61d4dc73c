//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sluice's TC datapath: one object for every TC hook.
 *
 * sl_tc_ingress and sl_tc_egress are the programs attached to interfaces,
 * one per hook; everything that differs between interfaces comes from
 * sl_ifaces. A packet's path:
 *
 *   interface state -> parse (IPv4, or IPv6 where the interface enforces
 *     it; neighbour discovery decided here) -> conntrack lookup
 *     -> approved at this hook, or a reply: account, TC_ACT_OK
 *     -> otherwise (sl_new_packet): routes -> reverse-path check of a
 *        workload's source -> [ICMP(v6) error: related to a flow here?]
 *        -> mid-flow TCP -> fill sl_state and sl_pending, tail-call this
 *        generation's policy slot in sl_policy_jumps, which ends in
 *        sl_conts:
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
#include "sluice/routes.h"
#include "sluice/nat.h"
#include "sluice/parse6.h"

/* The conntrack tables by enum sl_ct_table_slot. An array of maps so the
 * table can be replaced by a larger one while traffic flows; updating it
 * also waits for running programs to finish (an RCU grace period), which
 * the runtime relies on before it frees what they might still use. The
 * inner definition is the tables' template: LRU, so a full table evicts
 * the coldest flow rather than refusing new ones; the runtime creates the
 * real tables, of any size, and installs them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, enum sl_ct_table_slot);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LRU_HASH);
		__uint(max_entries, 64);
		__type(key, struct sl_ct_key);
		__type(value, struct sl_ct_value);
	});
} sl_ct_tables SEC(".maps");

/* Interface settings, keyed by ifindex. Written by the agent before it
 * attaches; an interface without an entry drops everything. Not
 * preallocated, so that a replaced entry is freed only after the programs
 * that may still read it have finished. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct sl_iface);
} sl_ifaces SEC(".maps");

/* Routes: what the datapath knows of an address (routes.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_route_key);
	__type(value, struct sl_route);
} sl_routes SEC(".maps");

/* Service load balancing (nat.h). Not preallocated, so that a replaced
 * entry is freed only after the programs that may still read it finished;
 * affinity is an LRU, so a full table forgets the coldest client. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_svc_key);
	__type(value, struct sl_svc);
} sl_svcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_backend_slot_key);
	__type(value, __u32);
} sl_lb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct sl_backend);
} sl_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct sl_affinity_key);
	__type(value, struct sl_affinity);
} sl_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_svc_range_key);
	__type(value, __u8);
} sl_lb_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_lb_member_key);
	__type(value, struct sl_lb_member);
} sl_members SEC(".maps");

/* 64 KiB a table: sized by the runtime for the services that use Maglev,
 * two tables each while one replaces the other. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_maglev_key);
	__type(value, struct sl_maglev_table);
} sl_maglev SEC(".maps");

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

/* The runtime's record of generations (struct sl_meta, entry 0). No
 * program reads it; it lives here so that it is declared with the other
 * shared state and pinned in the same registry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_meta);
} sl_meta SEC(".maps");

/* This object's generation (struct sl_iface_record), set by the runtime
 * before it loads the object. 0, never a real generation, finds no
 * record. */
volatile const __u32 sl_generation = 0;

/* Puts enum sl_reason into BTF, for the generated Go constants: the
 * function that takes a reason is inlined. Never read. */
volatile const enum sl_reason sl_reason_btf = SL_REASON_COUNT;

/* The largest ICMPv4 error that passes as related: RFC 1812 bounds an
 * error to 576 bytes, and Linux sends no more. Anything larger carries
 * bytes no router would quote. */
#define SL_ICMP_ERROR_MAX_LEN 576

/* The largest ICMPv6 error that passes as related: RFC 4443 bounds an
 * error to the minimum IPv6 MTU. */
#define SL_ICMP6_ERROR_MAX_LEN 1280

#include "sluice/ct_ops.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* sl_count adds a packet to the counters at index. An index past the
 * array (a counter slot the runtime never hands out) counts in slot 0. */
SL_INLINE int sl_count(__u32 index, enum sl_reason reason)
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

/* sl_related_flow says whether the packet an ICMP or ICMPv6 error quotes,
 * from inner_src to inner_dst with protocol proto and L4 header l4 (8
 * bytes readable), belongs to a tracked flow whose opposite direction
 * passes this hook: the error travels back towards the quoted packet's
 * source, so it passes where the flow's replies pass. */
SL_INLINE bool sl_related_flow(struct __sk_buff *skb, void *live, enum sl_hook hook, __u8 proto,
			       const __u8 *inner_src, const __u8 *inner_dst, const __u8 *l4)
{
	struct sl_ct_value *ct;
	struct sl_ct_key key;
	enum sl_ct_dir dir;
	__u16 sport = 0, dport = 0;

	if (proto == IPPROTO_TCP || sl_ported_header_len(proto)) {
		sport = bpf_ntohs(*(__be16 *)l4);
		dport = bpf_ntohs(*(__be16 *)(l4 + 2));
	} else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		if (!sl_icmp_any_echo(proto, l4[0]))
			return false;
		sl_ct_echo_ports(sl_icmp_any_request(proto, l4[0]), bpf_ntohs(*(__be16 *)(l4 + 4)),
				 &sport, &dport);
	}
	dir = sl_ct_key_fill(&key, proto, inner_src, sport, inner_dst, dport);
	ct = sl_ct_lookup(live, &key, &dir, inner_src, sport);
	return ct && sl_ct_passes(ct, !dir, skb->ifindex, hook);
}

/* sl_related says whether an ICMP error quotes a packet of a tracked flow
 * that the error's destination sent, and may pass this hook as that flow's
 * packets would (sl_related_flow). The quote is an IPv4 header, options
 * included, and at least 8 bytes of its L4 header, and no more than the
 * quoted packet held. Anything else makes the error unrelated, and it goes
 * through policy as ICMP. */
SL_INLINE bool sl_related(struct __sk_buff *skb, void *live, const struct sl_pkt *pkt,
			  enum sl_hook hook)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off;
	__u8 inner_src[16] SL_ADDR_ALIGNED, inner_dst[16] SL_ADDR_ALIGNED;
	struct iphdr *in;
	__u8 *l4;
	__u32 ihl;

	/* A whole error fits in 576 bytes: a fragment of one is judged by
	 * its first piece only, and hides what follows. */
	if (pkt->ip_len > SL_ICMP_ERROR_MAX_LEN || pkt->first_fragment)
		return false;
	if (off > ETH_HLEN + 60 || pkt->l4_len < 8 + sizeof(*in) + 8)
		return false;
	in = data + off + 8;
	if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5)
		return false;
	if (in->frag_off & bpf_htons(SL_IP_OFFSET))
		return false;
	ihl = in->ihl * 4;
	l4 = (__u8 *)in + ihl;
	if (l4 + 8 > (__u8 *)end || 8 + ihl + 8 > pkt->l4_len)
		return false;
	if (pkt->l4_len - 8 > bpf_ntohs(in->tot_len))
		return false;
	sl_addr_set4(inner_src, in->saddr);
	sl_addr_set4(inner_dst, in->daddr);
	if (!sl_addr_eq(inner_src, pkt->daddr))
		return false;
	return sl_related_flow(skb, live, hook, in->protocol, inner_src, inner_dst, l4);
}

/* sl_related6 is sl_related for ICMPv6 errors. The quote is an IPv6
 * header followed directly by at least 8 bytes of its L4 header: a quote
 * whose packet had extension headers is unrelated and goes to policy.
 * The error is at most 1280 bytes, not a fragment, and quotes no more than
 * the quoted packet held; an IPv4-mapped quoted address is never related. */
SL_INLINE bool sl_related6(struct __sk_buff *skb, void *live, const struct sl_pkt *pkt,
			   enum sl_hook hook)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off;
	__u8 inner_src[16] SL_ADDR_ALIGNED, inner_dst[16] SL_ADDR_ALIGNED;
	struct ipv6hdr *in;
	__u8 *l4;

	if (pkt->ip_len > SL_ICMP6_ERROR_MAX_LEN || pkt->first_fragment)
		return false;
	if (off > SL_L4_OFF_MAX || pkt->l4_len < 8 + sizeof(*in) + 8)
		return false;
	in = data + off + 8;
	l4 = (__u8 *)(in + 1);
	if (l4 + 8 > (__u8 *)end || in->version != 6 || sl_ip6_is_ext(in->nexthdr))
		return false;
	if (pkt->l4_len - 8 > sizeof(*in) + bpf_ntohs(in->payload_len))
		return false;
	sl_addr_copy(inner_src, in->saddr.in6_u.u6_addr8);
	sl_addr_copy(inner_dst, in->daddr.in6_u.u6_addr8);
	if (sl_addr_is_v4(inner_src) || sl_addr_is_v4(inner_dst) || !sl_addr_eq(inner_src, pkt->daddr))
		return false;
	return sl_related_flow(skb, live, hook, in->nexthdr, inner_src, inner_dst, l4);
}

/* sl_fill_state writes what policy reads. The pre-NAT destination is the
 * destination until the service-LB stage exists. */
SL_INLINE void sl_fill_state(struct sl_state *st, const struct sl_pkt *pkt, __u32 flags)
{
	__builtin_memset(st, 0, sizeof(*st));
	sl_addr_copy(st->src_addr, pkt->saddr);
	sl_addr_copy(st->dst_addr, pkt->daddr);
	sl_addr_copy(st->pre_nat_dst_addr, pkt->daddr);
	st->src_port = pkt->sport;
	st->dst_port = pkt->dport;
	st->pre_nat_dst_port = pkt->dport;
	st->ip_proto = pkt->proto;
	st->icmp_type = pkt->icmp_type;
	st->icmp_code = pkt->icmp_code;
	st->flags = flags;
}

/* sl_record returns this generation's record of an interface, or NULL. */
SL_INLINE const struct sl_iface_record *sl_record(const struct sl_iface *iface)
{
	if (sl_generation == 0)
		return NULL;
	if (iface->records[0].generation == sl_generation)
		return &iface->records[0];
	if (iface->records[1].generation == sl_generation)
		return &iface->records[1];
	return NULL;
}

/* sl_to_policy hands the packet to the hook's policy program. It returns
 * only when there is no policy to run: fail closed. */
SL_INLINE int sl_to_policy(struct __sk_buff *skb, const struct sl_iface_record *rec, enum sl_hook hook,
			   __u32 counter_index, const struct sl_pkt *pkt,
			   const struct sl_ct_key *key, enum sl_ct_dir dir, __u32 state_flags)
{
	__u32 ifindex = skb->ifindex, zero = 0;
	__u32 slot = hook == SL_HOOK_INGRESS ? rec->ingress : rec->egress;
	struct sl_pending *pd = bpf_map_lookup_elem(&sl_pending_map, &zero);
	struct sl_state *st = bpf_map_lookup_elem(&sl_state_map, &zero);

	if (!pd || !st)
		return sl_verdict(counter_index, SL_REASON_DROPPED_BAD_HANDOFF);
	sl_fill_state(st, pkt, state_flags);
	pd->ct_key = *key;
	pd->ifindex = ifindex;
	pd->hook = hook;
	pd->dir = dir;
	pd->leg_flags = sl_ct_leg_flags_of(pkt->tcp_flags);
	pd->counter_index = counter_index;
	pd->track = sl_ct_tracked(pkt);
	bpf_tail_call(skb, &sl_policy_jumps, slot);
	pd->ifindex = 0;
	return sl_verdict(counter_index, SL_REASON_DROPPED_NO_POLICY);
}

/* sl_route_of returns the longest route to addr, or NULL. */
SL_INLINE const struct sl_route *sl_route_of(const __u8 *addr)
{
	struct sl_route_key k = { .prefixlen = 32 + 128 };

	k.family = sl_addr_is_v4(addr) ? SL_FAMILY_IPV4 : SL_FAMILY_IPV6;
	sl_addr_copy(k.addr, addr);
	return bpf_map_lookup_elem(&sl_routes, &k);
}

/* sl_rpf_ok is the reverse-path check of a workload interface: the
 * packet's source must be a local workload routed to the interface it
 * came from. Packets conntrack passes skip it: they arrived at the
 * interface their leg was approved on, which passed this check. */
SL_INLINE bool sl_rpf_ok(const struct sl_route *src, __u32 ifindex)
{
	return src && (src->flags & SL_ROUTE_LOCAL_WORKLOAD) && src->ifindex == ifindex;
}

/* sl_host_source_ok is the reverse-path check of a host interface's TC
 * ingress hook: a packet that enters the node from outside never comes
 * from one of its workloads or from the node itself; one that claims to
 * is forged, and would otherwise take over that address's flows. */
SL_INLINE bool sl_host_source_ok(const struct sl_route *src)
{
	return !src || !(src->flags & (SL_ROUTE_LOCAL_WORKLOAD | SL_ROUTE_LOCAL_HOST));
}

/* sl_host_flags says which ends of a packet are this host, for the
 * second stage of host-endpoint policy. */
SL_INLINE __u32 sl_host_flags(const struct sl_route *src, const struct sl_route *dst)
{
	__u32 flags = 0;

	if (src && (src->flags & SL_ROUTE_LOCAL_HOST))
		flags |= SL_STATE_F_SRC_IS_HOST;
	if (dst && (dst->flags & SL_ROUTE_LOCAL_HOST))
		flags |= SL_STATE_F_DST_IS_HOST;
	return flags;
}

/* sl_source_ok applies the hook's reverse-path checks to the packet's
 * source: a workload's TC ingress hook (sl_rpf_ok) and a host interface's
 * (sl_host_source_ok). *src is the source's route where a check or the
 * host flags need it, else NULL. */
SL_INLINE bool sl_source_ok(struct __sk_buff *skb, enum sl_iface_flags iflags, enum sl_hook hook,
			    const __u8 *saddr, const struct sl_route **src)
{
	bool from_workload = (iflags & SL_IFACE_WORKLOAD) && hook == SL_HOOK_INGRESS;
	bool host = iflags & SL_IFACE_HOST;

	*src = NULL;
	if (!from_workload && !host)
		return true;
	*src = sl_route_of(saddr);
	if (from_workload && !sl_rpf_ok(*src, skb->ifindex))
		return false;
	return !(host && hook == SL_HOOK_INGRESS) || sl_host_source_ok(*src);
}

/* sl_later_fragment decides a fragment past the first, which has no L4
 * header, on an interface that passes fragments: it passes unpoliced (its
 * datagram cannot be reassembled without the first fragment, which was
 * policed), but only from a source the hook's reverse-path checks accept.
 * Otherwise a workload could forge a later fragment of a datagram someone
 * else sent, and have its bytes reassembled into it. */
SL_INLINE int sl_later_fragment(struct __sk_buff *skb, enum sl_iface_flags iflags, enum sl_hook hook,
				__u32 counters, const struct sl_pkt *pkt)
{
	const struct sl_route *src;

	if (!sl_source_ok(skb, iflags, hook, pkt->saddr, &src))
		return sl_verdict(counters, SL_REASON_DROPPED_RPF);
	return sl_verdict(counters, SL_REASON_FRAGMENT_PASSED);
}

/* sl_new_packet decides a packet conntrack did not pass; v6 (a constant)
 * says which family's ICMP errors may be related. An error of the other
 * family's ICMP never is: its quote's source would be of the other family
 * than the error's destination. */
SL_INLINE int sl_new_packet(struct __sk_buff *skb, const struct sl_iface_record *rec, enum sl_hook hook,
			    __u32 counters, void *live, const struct sl_pkt *pkt,
			    const struct sl_ct_key *key, enum sl_ct_dir dir, bool v6)
{
	enum sl_iface_flags iflags = rec->flags;
	const struct sl_route *src, *dst = NULL;

	if (!sl_source_ok(skb, iflags, hook, pkt->saddr, &src))
		return sl_verdict(counters, SL_REASON_DROPPED_RPF);
	if (iflags & SL_IFACE_HOST)
		dst = sl_route_of(pkt->daddr);

	if (!v6 && pkt->proto == IPPROTO_ICMP && sl_icmp_is_error(pkt->icmp_type) &&
	    sl_related(skb, live, pkt, hook))
		return sl_verdict(counters, SL_REASON_ACCEPTED_RELATED);
	if (v6 && pkt->proto == IPPROTO_ICMPV6 && sl_icmp6_is_error(pkt->icmp_type) &&
	    sl_related6(skb, live, pkt, hook))
		return sl_verdict(counters, SL_REASON_ACCEPTED_RELATED);
	/* TCP that is neither a SYN nor part of a flow approved here started
	 * before this hook watched it, or is forged. */
	if (pkt->proto == IPPROTO_TCP && !(pkt->tcp_flags & SL_TCP_SYN) &&
	    (iflags & SL_IFACE_DROP_MID_FLOW))
		return sl_verdict(counters, SL_REASON_DROPPED_MID_FLOW);
	return sl_to_policy(skb, rec, hook, counters, pkt, key, dir, sl_host_flags(src, dst));
}

/* sl_tc_parsed is the path of a packet whose IP header is parsed: its L4
 * header, neighbour discovery (v6, a constant: the IPv4 copy keeps none of
 * it), then conntrack and sl_new_packet. Inlined into one copy per
 * family, so that the IPv4 copy keeps pkt in registers as it did before
 * IPv6: the IPv6 copy's pkt has its address taken by sl_parse_ipv6. */
SL_INLINE int sl_tc_parsed(struct __sk_buff *skb, const struct sl_iface_record *rec, enum sl_hook hook,
			   __u32 counters, struct sl_pkt *pkt, bool v6)
{
	__u32 ifindex = skb->ifindex;
	enum sl_reason reason;
	struct sl_ct_value *ct;
	struct sl_ct_key key;
	enum sl_ct_dir dir;
	__u16 sport, dport;
	void *live;

	if (sl_parse_l4(skb, pkt, &reason) != SL_PARSE_OK)
		return sl_verdict(counters, reason);
	if (v6 && sl_icmp6_link(pkt))
		return sl_verdict(counters, sl_nd_reason(pkt, rec->flags, hook));

	live = sl_ct_table(SL_CT_TABLE_LIVE);
	if (!live)
		return sl_verdict(counters, SL_REASON_DROPPED_NO_CONNTRACK);
	sl_ct_ports(pkt, &sport, &dport);
	dir = sl_ct_key_fill(&key, pkt->proto, pkt->saddr, sport, pkt->daddr, dport);
	/* An untracked packet (ICMP other than echo) has no entry to find,
	 * and must not find one a flow of its ports might have. */
	ct = sl_ct_tracked(pkt) ? sl_ct_lookup(live, &key, &dir, pkt->saddr, sport) : NULL;

	bool syn = pkt->proto == IPPROTO_TCP && (pkt->tcp_flags & (SL_TCP_SYN | SL_TCP_ACK)) == SL_TCP_SYN;
	if (ct && !syn && sl_ct_passes(ct, dir, ifindex, hook)) {
		struct sl_ct_leg *leg = sl_ct_leg_of(ct, dir);
		bool count = hook == SL_HOOK_INGRESS ||
			     !sl_ct_counted_at_ingress(leg, skb->ingress_ifindex, ifindex);

		sl_ct_leg_account(ct, leg, sl_ct_leg_flags_of(pkt->tcp_flags), skb->len,
				  bpf_ktime_get_coarse_ns(), count);
		return sl_verdict(counters, SL_REASON_ACCEPTED_ESTABLISHED);
	}
	return sl_new_packet(skb, rec, hook, counters, live, pkt, &key, dir, v6);
}

/* sl_tc_ipv6 is the path of an IPv6 packet at an interface that enforces
 * IPv6: sl_parse_ipv6, then what IPv4 packets do. */
SL_INLINE int sl_tc_ipv6(struct __sk_buff *skb, const struct sl_iface_record *rec, enum sl_hook hook,
			 __u32 counters)
{
	struct sl_pkt pkt = {};
	enum sl_parse_rc rc;
	int res;

	sl_pull(skb, SL_PARSE6_LEN);
	res = sl_parse_ipv6(skb, rec->flags, &pkt);
	rc = SL_PARSE6_RC(res);
	if (rc == SL_PARSE_LATER_FRAGMENT)
		return sl_later_fragment(skb, rec->flags, hook, counters, &pkt);
	if (rc != SL_PARSE_OK)
		return sl_verdict(counters, SL_PARSE6_REASON(res));
	return sl_tc_parsed(skb, rec, hook, counters, &pkt, true);
}

/* sl_tc_main is the whole per-packet path of both hooks; hook is a
 * constant in each caller, so each program keeps only its own branches. */
SL_INLINE int sl_tc_main(struct __sk_buff *skb, enum sl_hook hook)
{
	__u32 ifindex = skb->ifindex;
	struct sl_pkt pkt = {};
	enum sl_parse_rc rc;
	enum sl_reason reason;
	__u32 counters;

	struct sl_iface *iface = bpf_map_lookup_elem(&sl_ifaces, &ifindex);
	if (!iface)
		return sl_verdict(SL_COUNTER_INDEX(0, hook), SL_REASON_DROPPED_NO_IFACE);
	counters = SL_COUNTER_INDEX(iface->counter_slot, hook);
	const struct sl_iface_record *rec = sl_record(iface);
	if (!rec)
		return sl_verdict(counters, SL_REASON_DROPPED_NO_IFACE);
	if (!(rec->flags & SL_IFACE_READY))
		return sl_verdict(counters, SL_REASON_DROPPED_NOT_READY);

	sl_pull(skb, SL_PARSE_LEN);
	rc = sl_parse_eth(skb, rec->flags, &reason);
	if (rc == SL_PARSE_IPV6)
		return sl_tc_ipv6(skb, rec, hook, counters);
	if (rc != SL_PARSE_IPV4)
		return sl_verdict(counters, reason);
	rc = sl_parse_ipv4(skb, rec->flags, &pkt, &reason);
	if (rc == SL_PARSE_LATER_FRAGMENT)
		return sl_later_fragment(skb, rec->flags, hook, counters, &pkt);
	if (rc != SL_PARSE_OK)
		return sl_verdict(counters, reason);
	return sl_tc_parsed(skb, rec, hook, counters, &pkt, false);
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
	void *live;

	if (!sl_take_pending(skb, &pd))
		return sl_verdict(SL_COUNTER_INDEX(0, SL_HOOK_INGRESS), SL_REASON_DROPPED_BAD_HANDOFF);
	if (!st || st->policy_rc != SL_POLICY_ALLOW)
		return sl_verdict(pd.counter_index, SL_REASON_DROPPED_BAD_HANDOFF);
	if (!pd.track)
		return sl_verdict(pd.counter_index, SL_REASON_ACCEPTED_BY_POLICY);
	live = sl_ct_table(SL_CT_TABLE_LIVE);
	if (!live || sl_ct_approve(live, &pd, skb->len, skb->ingress_ifindex))
		return sl_verdict(pd.counter_index, SL_REASON_ACCEPTED_UNTRACKED);
	return sl_verdict(pd.counter_index, SL_REASON_ACCEPTED_BY_POLICY);
}

/* sl_tc_deny is where policy continues when it denies, or when it could
 * not finish (sl_conts slot SL_CONT_DENY). */
SEC("tc")
int sl_tc_deny(struct __sk_buff *skb)
{
	struct sl_pending pd;
	__u32 zero = 0;
	struct sl_state *st = bpf_map_lookup_elem(&sl_state_map, &zero);

	if (!sl_take_pending(skb, &pd))
		return sl_verdict(SL_COUNTER_INDEX(0, SL_HOOK_INGRESS), SL_REASON_DROPPED_BAD_HANDOFF);
	if (st && st->policy_rc == SL_POLICY_FAILED)
		return sl_verdict(pd.counter_index, SL_REASON_DROPPED_POLICY_FAILED);
	if (!st || st->policy_rc != SL_POLICY_DENY)
		return sl_verdict(pd.counter_index, SL_REASON_DROPPED_BAD_HANDOFF);
	return sl_verdict(pd.counter_index, SL_REASON_DROPPED_BY_POLICY);
}

/* sl_tc_pass accepts every packet. It is the floor the datapath's
 * benchmarks are measured against, and a harmless program for attach tests. */
SEC("tc")
int sl_tc_pass(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
