//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sluice's TC datapath: one object for every TC hook.
 *
 * sl_tc_ingress and sl_tc_egress are the programs attached to interfaces,
 * one per hook; everything that differs between interfaces comes from
 * sl_ifaces. A packet's path:
 *
 *   interface state -> parse (IPv4, or IPv6 where the interface enforces
 *     it; neighbour discovery on the link decided here) -> conntrack
 *     lookup (a NAT stub leads to its flow's reverse entry)
 *     -> approved at this hook, or a reply: account, translate a NAT
 *        flow's packet (DNAT from the client, reverse NAT from the
 *        backend), TC_ACT_OK
 *     -> otherwise (sl_new_packet): routes -> reverse-path check of a
 *        workload's source -> [ICMP(v6) error: related to a flow here?]
 *        -> mid-flow TCP -> [ingress: the service stage (sl_service):
 *        a frontend's new flow is DNATed to the backend lb.h chooses,
 *        or answered with a RST or port unreachable when it has none]
 *        -> fill sl_state and sl_pending, tail-call this generation's
 *        policy slot in sl_policy_jumps, which ends in sl_conts:
 *          sl_tc_allow: create or update the entry (a DNATed flow's
 *                       reverse entry and stub), TC_ACT_OK
 *          sl_tc_deny:  TC_ACT_SHOT
 *
 * Every packet is counted under one enum sl_reason in sl_counters.
 * polprog's programs count the deciding rule in sl_rule_hits themselves,
 * so the continuations leave those counters alone. */

#include "sluice/common.h"
#include "sluice/policy_maps.h"
#include "sluice/conntrack.h"
#include "sluice/iface.h"
#include "sluice/counters_map.h"
#include "sluice/pending.h"
#include "sluice/routes.h"
#include "sluice/lb_maps.h"
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

/* Source NAT of the service stage (struct sl_snat, entry 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_snat);
} sl_snat SEC(".maps");

/* The verdict counters, sl_counters, are in counters_map.h. */

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

#include "sluice/ct_ops.h"
#include "sluice/lb.h"
#include "sluice/rewrite.h"
#include "sluice/reject.h"
#include "sluice/related.h"
#include "sluice/fib.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* sl_verdict counts the packet and turns its reason into a TC action. */
SL_INLINE int sl_verdict(__u32 counter_index, enum sl_reason reason)
{
	sl_count(counter_index, reason);
	return reason < SL_REASON_FIRST_DROP ? TC_ACT_OK : TC_ACT_SHOT;
}

/* sl_fib_verdict counts a packet the FIB step was asked about (rc, its
 * answer) and returns its TC action: a drop under its reason, a redirect
 * under accepted, and a packet the step is not for under accepted, passed
 * as it is. */
SL_INLINE int sl_fib_verdict(__u32 counters, int rc, enum sl_reason accepted)
{
	if (rc == SL_FIB_NOT_NODE)
		return sl_verdict(counters, accepted);
	if (rc < 0)
		return sl_verdict(counters, (enum sl_reason)-rc);
	sl_count(counters, accepted);
	return rc;
}

/* sl_related_error says whether an ICMP or ICMPv6 error is related to a
 * tracked flow at this hook (sl_related, sl_related6), translating an
 * error about a NAT flow; hook is SL_HOOK_INGRESS or SL_HOOK_EGRESS. An
 * error of the other family's ICMP never is: its quote's source would be
 * of the other family than the error's destination. A global function:
 * the verifier checks it once, and its keys stay out of the main path's
 * frame (the two frames add up: main's must leave room for this one). */
__noinline bool sl_related_error(struct __sk_buff *skb, const struct sl_pkt *pkt, __u32 hook)
{
	void *live = sl_ct_table(SL_CT_TABLE_LIVE);
	__u8 inner_src[16] SL_ADDR_ALIGNED, inner_dst[16] SL_ADDR_ALIGNED;
	struct sl_quote q = {};
	bool v4;

	if (!skb || !pkt || !live)
		return false;
	hook = hook == SL_HOOK_INGRESS ? SL_HOOK_INGRESS : SL_HOOK_EGRESS;
	v4 = sl_addr_is_v4(pkt->daddr);
	if (v4 && pkt->proto == IPPROTO_ICMP && sl_icmp_is_error(pkt->icmp_type))
		return sl_related(skb, live, pkt, hook, inner_src, inner_dst, &q);
	if (!v4 && pkt->proto == IPPROTO_ICMPV6 && sl_icmp6_is_error(pkt->icmp_type))
		return sl_related6(skb, live, pkt, hook, inner_src, inner_dst, &q);
	return false;
}

/* What the service stage (sl_service) is given and gives back. */
struct sl_svc_io {
	__u8	pre_addr[16] SL_ADDR_ALIGNED;	/* out: the destination the client sent to */
	__u8	backend[16];	/* in, with known: the backend of the packet's NAT flow */
	__u8	snat_addr[16];	/* with snat: the source the client's packets are given */
	__u16	pre_port;	/* out: the port the client sent to */
	__u16	backend_port;	/* in, with known */
	__u16	snat_port;	/* with snat */
	__u16	pad16;
	__u32	dir;		/* out: the packet's direction under the key, translated */
	__u32	counters;	/* in: the hook's sl_counters index */
	__u32	dst_flags;	/* in: the destination's route flags (SL_ROUTE_LOCAL_HOST admits NodePorts) */
	__u32	src_flags;	/* in: the source's route flags, where the hook looked it up */
	__u8	v6;		/* in: an IPv6 packet */
	__u8	known;		/* in: the packet's NAT flow exists; no new choice */
	__u8	dnat;		/* out: the packet was DNATed */
	__u8	snat;		/* in with known, else out: the packet's source is NATed to snat_addr:snat_port */
	__u32	affinity_svc;	/* out, when not 0: an allowed flow records the client's affinity in this service */
	__u32	affinity_backend; /* out, with affinity_svc: to this backend */
};

/* Where sl_new_packet keeps its struct sl_svc_io (entry 0): off the
 * stack, whose frame adds to those of the global functions it calls. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_svc_io);
} sl_svc_scratch SEC(".maps");

/* sl_fill_state writes what policy reads. */
SL_INLINE void sl_fill_state(struct sl_state *st, const struct sl_pkt *pkt, const struct sl_svc_io *pre,
			     __u32 flags)
{
	__builtin_memset(st, 0, sizeof(*st));
	sl_addr_copy(st->src_addr, pkt->saddr);
	sl_addr_copy(st->dst_addr, pkt->daddr);
	sl_addr_copy(st->pre_nat_dst_addr, pre->pre_addr);
	st->src_port = pkt->sport;
	st->dst_port = pkt->dport;
	st->pre_nat_dst_port = pre->pre_port;
	st->ip_proto = pkt->proto;
	st->icmp_type = pkt->icmp_type;
	st->icmp_code = pkt->icmp_code;
	st->flags = flags;
}

/* sl_to_policy hands the packet to the hook's policy program. It returns
 * only when there is no policy to run: fail closed. */
SL_INLINE int sl_to_policy(struct __sk_buff *skb, const struct sl_iface_record *rec, enum sl_hook hook,
			   __u32 counter_index, const struct sl_pkt *pkt, const struct sl_svc_io *pre,
			   const struct sl_ct_key *key, enum sl_ct_dir dir, __u32 state_flags)
{
	__u32 ifindex = skb->ifindex, zero = 0;
	__u32 slot = hook == SL_HOOK_INGRESS ? rec->ingress : rec->egress;
	struct sl_pending *pd = bpf_map_lookup_elem(&sl_pending_map, &zero);
	struct sl_state *st = bpf_map_lookup_elem(&sl_state_map, &zero);

	if (!pd || !st)
		return sl_verdict(counter_index, SL_REASON_DROPPED_BAD_HANDOFF);
	sl_fill_state(st, pkt, pre, state_flags);
	pd->ct_key = *key;
	pd->ifindex = ifindex;
	pd->hook = hook;
	pd->dir = dir;
	pd->leg_flags = sl_ct_leg_flags_of(pkt->tcp_flags);
	pd->counter_index = counter_index;
	pd->flags = (sl_ct_tracked(pkt) ? SL_PENDING_TRACK : 0) | (pre->dnat ? SL_PENDING_DNAT : 0) |
		    (pre->snat ? SL_PENDING_SNAT : 0) | (pre->affinity_svc ? SL_PENDING_AFFINITY : 0);
	pd->affinity_svc = pre->affinity_svc;
	pd->affinity_backend = pre->affinity_backend;
	bpf_tail_call(skb, &sl_policy_jumps, slot);
	pd->ifindex = 0;
	return sl_verdict(counter_index, SL_REASON_DROPPED_NO_POLICY);
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

/* sl_nat_translate applies a NAT flow's translation to a packet
 * conntrack passed (ct, its reverse entry, under key; dir the packet's
 * direction there): one the client sent to the frontend (found through
 * the stub) goes to the backend, and one the backend sends (found under
 * the reverse entry's own key) comes from the frontend; a source-NATed
 * flow's also from the node and to the client. Packets already
 * translated find the other entry and stay as they are. Returns -1 when
 * a rewrite failed, 1 when the packet's source was rewritten (to the
 * frontend or the node: sl_fib_redirect's case), else 0. */
SL_INLINE int sl_nat_translate(struct __sk_buff *skb, const struct sl_pkt *pkt, bool v6,
			       const struct sl_ct_value *ct, const struct sl_ct_key *key,
			       enum sl_ct_dir dir, bool via_stub)
{
	bool from_client = dir == sl_ct_client_dir(ct);
	bool snat = ct->flags & SL_CT_F_SNAT;
	const __u8 *addr;
	__u16 port;

	/* A fragment's later pieces could not follow its translation. */
	if (pkt->first_fragment && from_client == via_stub)
		return -1;
	if (via_stub && from_client) {
		sl_ct_nat_side(ct, key, false, &addr, &port);
		if (sl_nat_rewrite(skb, pkt, v6, false, addr, port))
			return -1;
		if (!snat)
			return 0;
		sl_ct_nat_side(ct, key, true, &addr, &port);
		return sl_nat_rewrite(skb, pkt, v6, true, addr, port) ? -1 : 1;
	}
	if (!via_stub && !from_client) {
		if (sl_nat_rewrite(skb, pkt, v6, true, ct->orig_addr, ct->orig_port))
			return -1;
		if (!snat)
			return 1;
		sl_ct_nat_origin(ct, &addr, &port);
		return sl_nat_rewrite(skb, pkt, v6, false, addr, port) ? -1 : 1;
	}
	return 0;
}

/* Where sl_refuse builds an answer (entry 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_reject_scratch);
} sl_reject_scratch SEC(".maps");

/* sl_refuse answers a packet for a service without a usable backend
 * (sl_reject) and sends the answer back the way the packet came; a packet
 * no answer fits is dropped. Both are counted. At a workload's interface
 * (workload, a veth) the answer goes straight into the workload's end
 * (bpf_redirect_peer), past the egress hook, whose policy would otherwise
 * judge a packet from the frontend that conntrack has never seen; at a
 * host interface it leaves by the interface, marked SL_MARK_REFUSAL so
 * that its egress hook passes it as it is (sl_tc_main). A
 * real function, so that its frame is not added to the main path's. */
static __noinline int sl_refuse(struct __sk_buff *skb, __u32 counters, const struct sl_pkt *pkt, bool v6,
				bool workload)
{
	__u32 zero = 0;
	struct sl_reject_scratch *sc = bpf_map_lookup_elem(&sl_reject_scratch, &zero);

	if (!sc || sl_reject(skb, pkt, v6, sc))
		return sl_verdict(counters, SL_REASON_DROPPED_NO_BACKEND);
	sl_count(counters, SL_REASON_REJECTED_NO_BACKEND);
	if (workload)
		return bpf_redirect_peer(skb->ifindex, 0);
	skb->mark = SL_MARK_REFUSAL;
	return bpf_redirect(skb->ifindex, 0);
}

/* sl_service's answer that the caller refuses the packet (sl_refuse). */
#define SL_SVC_REFUSE (-2)

/* Source ports sl_snat_pick tries for a flow before it gives up. */
#define SL_SNAT_TRIES 8

/* sl_snat_needed says whether a new flow from pkt's client (its route's
 * flags src_flags) to backend must be source-NATed: its replies would
 * otherwise not come back through this node. A client from outside the
 * node sent to a backend elsewhere would get them from the backend
 * directly; a workload sent to itself (hairpin) would answer itself. */
SL_INLINE bool sl_snat_needed(const struct sl_pkt *pkt, __u32 src_flags, const __u8 *backend)
{
	const struct sl_route *be;

	if (sl_addr_eq(pkt->saddr, backend))
		return true;
	if (src_flags & (SL_ROUTE_LOCAL_WORKLOAD | SL_ROUTE_LOCAL_HOST))
		return false;
	be = sl_route_of(backend);
	return !be || !(be->flags & (SL_ROUTE_LOCAL_WORKLOAD | SL_ROUTE_LOCAL_HOST));
}

/* sl_snat_pick fills io with the source a flow to backend:port is given:
 * this node's address of the family (struct sl_snat) and the first port
 * from the flow's hash on, within the range, that no tracked flow to the
 * backend uses. SCTP keeps the client's port, if no tracked flow uses it:
 * its CRC32c covers the ports (and no addresses), which the datapath does
 * not recompute (rewrite.h). A family without an address is not
 * source-NATed (0, with io->snat unset); -1 when every port tried was
 * taken. */
SL_INLINE int sl_snat_pick(const struct sl_pkt *pkt, const __u8 *backend, __u16 port, struct sl_svc_io *io)
{
	__u32 zero = 0, span, start;
	const struct sl_snat *cfg = bpf_map_lookup_elem(&sl_snat, &zero);
	void *live = sl_ct_table(SL_CT_TABLE_LIVE);
	const __u8 *addr;
	struct sl_ct_key k;

	if (!cfg || !live)
		return -1;
	addr = io->v6 ? cfg->addr6 : cfg->addr4;
	if (sl_addr_is_zero(addr))
		return 0;
	if (cfg->port_max < cfg->port_min || cfg->port_min == 0)
		return -1;
	span = cfg->port_max - cfg->port_min + 1;
	start = sl_lb_hash(pkt->saddr, pkt->daddr, pkt->sport, pkt->dport, pkt->proto) % span;
	for (__u32 i = 0; i < SL_SNAT_TRIES; i++) {
		__u16 p = cfg->port_min + (start + i) % span;

		if (pkt->proto == SL_IPPROTO_SCTP) {
			if (i > 0)
				break;
			p = pkt->sport;
		}

		sl_ct_key_fill(&k, pkt->proto, addr, p, backend, port);
		if (bpf_map_lookup_elem(live, &k))
			continue;
		sl_addr_copy(io->snat_addr, addr);
		io->snat_port = p;
		io->snat = 1;
		return 0;
	}
	return -1;
}

/* sl_service is the service stage of an ingress hook, before policy: a
 * new flow to a frontend from a client its source ranges admit is DNATed
 * to the backend sl_lb_pick gives it, or refused when there is none; a
 * packet of a NAT flow conntrack knows but did not pass here (io->known:
 * a retransmitted SYN, say) goes to the flow's backend without a new
 * choice. *pkt and *key become the translated packet's, and
 * io says what the client sent to. Returns -1 to go on to policy,
 * SL_SVC_REFUSE for the caller to refuse the packet (sl_refuse, which is
 * not called from here so that the two frames do not add up), or the TC
 * action that decided the packet. A global function: the verifier
 * checks it once, not on every path of the programs that call it. */
__noinline int sl_service(struct __sk_buff *skb, struct sl_pkt *pkt, struct sl_ct_key *key,
			  struct sl_svc_io *io)
{
	struct sl_lb_choice c;
	enum sl_lb_rc rc;
	const __u8 *addr;
	__u16 port;

	if (!skb || !pkt || !key || !io)
		return TC_ACT_SHOT;
	if (io->known) {
		addr = io->backend;
		port = io->backend_port;
	} else {
		io->snat = 0;
		rc = sl_lb_pick(pkt->saddr, true, pkt->saddr, pkt->saddr, pkt->sport, pkt->daddr, pkt->dport, pkt->proto,
				io->dst_flags & SL_ROUTE_LOCAL_HOST, &c);
		if (rc == SL_LB_NONE)
			return -1;
		if (rc != SL_LB_CHOSEN && rc != SL_LB_NO_BACKEND)
			return sl_verdict(io->counters, SL_REASON_DROPPED_SVC_SOURCE_RANGE);
		/* Fragments are not translated: a first fragment sent on to the
		 * backend would leave the later ones, which have no ports to
		 * find the frontend by, at the frontend's address. */
		if (pkt->first_fragment)
			return sl_verdict(io->counters, SL_REASON_DROPPED_FRAGMENT);
		if (rc == SL_LB_NO_BACKEND)
			return SL_SVC_REFUSE;
		if (c.svc->flags & SL_SVC_AFFINITY) {
			io->affinity_svc = c.svc->id;
			io->affinity_backend = c.id;
		}
		addr = c.be->addr;
		port = c.be->port;
		if (sl_snat_needed(pkt, io->src_flags, addr) && sl_snat_pick(pkt, addr, port, io))
			return sl_verdict(io->counters, SL_REASON_DROPPED_NAT_FAILED);
	}
	if (io->snat && sl_nat_rewrite(skb, pkt, io->v6, true, io->snat_addr, io->snat_port))
		return sl_verdict(io->counters, SL_REASON_DROPPED_NAT_FAILED);
	if (sl_nat_rewrite(skb, pkt, io->v6, false, addr, port))
		return sl_verdict(io->counters, SL_REASON_DROPPED_NAT_FAILED);
	io->dnat = 1;
	sl_addr_copy(pkt->daddr, addr);
	pkt->dport = port;
	/* Policy sees the client as it sent; the flow is tracked as on the
	 * wire, under the node's address when source-NATed. */
	if (io->snat)
		io->dir = sl_ct_key_fill(key, pkt->proto, io->snat_addr, io->snat_port, pkt->daddr, pkt->dport);
	else
		io->dir = sl_ct_key_fill(key, pkt->proto, pkt->saddr, pkt->sport, pkt->daddr, pkt->dport);
	return -1;
}

/* sl_new_packet decides a packet conntrack did not pass (ct: its flow's
 * entry, if any, found through a NAT stub if via_stub); v6 (a constant)
 * says which family's ICMP errors may be related. An error of the other
 * family's ICMP never is: its quote's source would be of the other family
 * than the error's destination. */
SL_INLINE int sl_new_packet(struct __sk_buff *skb, const struct sl_iface_record *rec, enum sl_hook hook,
			    __u32 counters, struct sl_pkt *pkt, struct sl_ct_key *key,
			    enum sl_ct_dir dir, bool v6, const struct sl_ct_value *ct, bool via_stub)
{
	enum sl_iface_flags iflags = rec->flags;
	const struct sl_route *src, *dst = NULL;
	__u32 zero = 0;
	struct sl_svc_io *io = bpf_map_lookup_elem(&sl_svc_scratch, &zero);
	int rc;

	if (!sl_source_ok(skb, iflags, hook, pkt->saddr, &src))
		return sl_verdict(counters, SL_REASON_DROPPED_RPF);
	if ((iflags & SL_IFACE_HOST) || hook == SL_HOOK_INGRESS)
		dst = sl_route_of(pkt->daddr);

	if ((pkt->proto == IPPROTO_ICMP || pkt->proto == IPPROTO_ICMPV6) && sl_related_error(skb, pkt, hook)) {
		if (hook != SL_HOOK_INGRESS)
			return sl_verdict(counters, SL_REASON_ACCEPTED_RELATED);
		/* An error about a NAT flow may come from the NodePort now. */
		return sl_fib_verdict(counters, sl_fib_redirect(skb, v6), SL_REASON_ACCEPTED_RELATED);
	}
	/* TCP that is neither a SYN nor part of a flow approved here started
	 * before this hook watched it, or is forged. */
	if (pkt->proto == IPPROTO_TCP && !(pkt->tcp_flags & SL_TCP_SYN) &&
	    (iflags & SL_IFACE_DROP_MID_FLOW))
		return sl_verdict(counters, SL_REASON_DROPPED_MID_FLOW);

	if (!io)
		return sl_verdict(counters, SL_REASON_DROPPED_BAD_HANDOFF);
	__builtin_memset(io, 0, sizeof(*io));
	io->pre_port = pkt->dport;
	io->dir = dir;
	io->counters = counters;
	io->v6 = v6;
	sl_addr_copy(io->pre_addr, pkt->daddr);
	if (ct && ct->type == SL_CT_NAT_REV && dir == sl_ct_client_dir(ct)) {
		if (via_stub) {
			/* The client's packet to the frontend, of a known flow. */
			const __u8 *addr;

			sl_ct_nat_side(ct, key, false, &addr, &io->backend_port);
			sl_addr_copy(io->backend, addr);
			io->known = 1;
			if (ct->flags & SL_CT_F_SNAT) {
				sl_ct_nat_side(ct, key, true, &addr, &io->snat_port);
				sl_addr_copy(io->snat_addr, addr);
				io->snat = 1;
			}
		} else {
			/* The backend's side of the flow: policy sees the
			 * frontend the client sent to. */
			sl_addr_copy(io->pre_addr, ct->orig_addr);
			io->pre_port = ct->orig_port;
		}
	}
	if (hook == SL_HOOK_INGRESS && (ct == NULL || io->known)) {
		io->dst_flags = dst ? dst->flags : 0;
		io->src_flags = src ? src->flags : 0;
		rc = sl_service(skb, pkt, key, io);
		if (rc == SL_SVC_REFUSE)
			return sl_refuse(skb, counters, pkt, v6, iflags & SL_IFACE_WORKLOAD);
		if (rc >= 0)
			return rc;
	}
	return sl_to_policy(skb, rec, hook, counters, pkt, io, key, io->dir, sl_host_flags(src, dst));
}

/* sl_nd_on_link says whether a neighbour-discovery message that
 * sl_icmp6_link accepted stays on the link: at an ingress hook, only one
 * to a link-local or link-scope multicast address, or to this node, is
 * the link's business. One the node would forward proves nothing by its
 * hop limit, and goes to conntrack, the source check and policy like any
 * ICMPv6 message. */
SL_INLINE bool sl_nd_on_link(const struct sl_pkt *pkt, enum sl_hook hook)
{
	const struct sl_route *dst;

	if (hook != SL_HOOK_INGRESS)
		return true;
	if (pkt->daddr[0] == 0xfe && (pkt->daddr[1] & 0xc0) == 0x80)
		return true;
	if (pkt->daddr[0] == 0xff && pkt->daddr[1] == 0x02)
		return true;
	dst = sl_route_of(pkt->daddr);
	return dst && (dst->flags & SL_ROUTE_LOCAL_HOST);
}

/* sl_snat_forged says whether a packet claims to be a source-NATed
 * flow's translated packet (from the node's address and SNAT port to the
 * backend) at an ingress hook. The node sends those itself: they cross
 * egress hooks only, so one that enters an interface is forged, and goes
 * to the reverse-path check rather than passing as established. */
SL_INLINE bool sl_snat_forged(const struct sl_ct_value *ct, enum sl_ct_dir dir, bool via_stub,
			      enum sl_hook hook)
{
	return hook == SL_HOOK_INGRESS && ct->type == SL_CT_NAT_REV && (ct->flags & SL_CT_F_SNAT) &&
	       !via_stub && dir == sl_ct_client_dir(ct);
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
	bool via_stub = false;
	__u16 sport, dport;
	void *live;

	if (sl_parse_l4(skb, pkt, &reason) != SL_PARSE_OK)
		return sl_verdict(counters, reason);
	if (v6 && sl_icmp6_link(pkt) && sl_nd_on_link(pkt, hook))
		return sl_verdict(counters, sl_nd_reason(pkt, rec->flags, hook));

	live = sl_ct_table(SL_CT_TABLE_LIVE);
	if (!live)
		return sl_verdict(counters, SL_REASON_DROPPED_NO_CONNTRACK);
	sl_ct_ports(pkt, &sport, &dport);
	dir = sl_ct_key_fill(&key, pkt->proto, pkt->saddr, sport, pkt->daddr, dport);
	/* An untracked packet (ICMP other than echo) has no entry to find,
	 * and must not find one a flow of its ports might have. */
	ct = sl_ct_tracked(pkt) ? sl_ct_lookup(live, &key, &dir, &via_stub) : NULL;

	bool syn = pkt->proto == IPPROTO_TCP && (pkt->tcp_flags & (SL_TCP_SYN | SL_TCP_ACK)) == SL_TCP_SYN;
	if (ct && !syn && sl_ct_passes(ct, dir, ifindex, hook) && !sl_snat_forged(ct, dir, via_stub, hook)) {
		struct sl_ct_leg *leg = sl_ct_leg_of(ct, dir);
		bool count = hook == SL_HOOK_INGRESS ||
			     !sl_ct_counted_at_ingress(leg, skb->ingress_ifindex, ifindex);

		sl_ct_leg_account(ct, leg, sl_ct_leg_flags_of(pkt->tcp_flags), skb->len,
				  bpf_ktime_get_coarse_ns(), count);
		int nat = ct->type == SL_CT_NAT_REV ? sl_nat_translate(skb, pkt, v6, ct, &key, dir, via_stub) : 0;

		if (nat < 0)
			return sl_verdict(counters, SL_REASON_DROPPED_NAT_FAILED);
		if (nat > 0 && hook == SL_HOOK_INGRESS) {
			int rc = sl_fib_redirect(skb, v6);

			if (rc != SL_FIB_NOT_NODE)
				return sl_fib_verdict(counters, rc, SL_REASON_ACCEPTED_ESTABLISHED);
		}
		if (hook == SL_HOOK_INGRESS && (rec->flags & SL_IFACE_REDIRECT_LOCAL))
			return sl_redirect_local(skb, counters, v6);
		return sl_verdict(counters, SL_REASON_ACCEPTED_ESTABLISHED);
	}
	return sl_new_packet(skb, rec, hook, counters, pkt, &key, dir, v6, ct, via_stub);
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
	if (hook == SL_HOOK_EGRESS && skb->mark == SL_MARK_REFUSAL) {
		/* sl_refuse's answer, leaving the host interface whose
		 * client it answers: no policy, no conntrack entry. */
		skb->mark = 0;
		return sl_verdict(counters, SL_REASON_REFUSAL_PASSED);
	}
	const struct sl_iface_record *rec = sl_iface_record_of(iface, sl_generation);
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
	live = sl_ct_table(SL_CT_TABLE_LIVE);
	/* A DNATed packet without its NAT entries would meet no reverse
	 * translation on its way back: it does not pass. */
	if (pd.flags & SL_PENDING_DNAT) {
		if (!live || sl_ct_approve_nat(live, &pd, st, skb->len, skb->ingress_ifindex))
			return sl_verdict(pd.counter_index, SL_REASON_DROPPED_NAT_FAILED);
		if (pd.flags & SL_PENDING_AFFINITY)
			sl_lb_remember(pd.affinity_svc, st->src_addr, pd.affinity_backend);
		if (!(pd.flags & SL_PENDING_SNAT) || pd.hook != SL_HOOK_INGRESS)
			return sl_verdict(pd.counter_index, SL_REASON_ACCEPTED_BY_POLICY);
		/* The flow's first packet, from the node's address now. */
		return sl_fib_verdict(pd.counter_index, sl_fib_redirect(skb, !sl_addr_is_v4(st->dst_addr)),
				      SL_REASON_ACCEPTED_BY_POLICY);
	}
	if (!(pd.flags & SL_PENDING_TRACK))
		return sl_verdict(pd.counter_index, SL_REASON_ACCEPTED_BY_POLICY);
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
