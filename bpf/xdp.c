//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sluice's XDP program for host interfaces: the untracked pre-DNAT deny
 * policy, decided before an skb exists.
 *
 * sl_xdp is attached to host interfaces, one program for all of them;
 * what differs between interfaces comes from sl_xdpifaces. A packet's
 * path:
 *
 *   interface's XDP record (none: XDP_PASS) -> parse IPv4 or IPv6 and the
 *     L4 header with the TC datapath's parsers -> fill sl_xdp_state (the
 *     destination before DNAT is the packet's: nothing is translated yet;
 *     no host flags: no routes are looked up) and sl_xdp_pending,
 *     tail-call this generation's policy slot in sl_xdp_policy_jumps
 *     (polprog's HookXDP programs), which ends in sl_xdp_conts:
 *       sl_xdp_allow: XDP_PASS, to TC, which polices the packet in full
 *       sl_xdp_deny:  XDP_DROP, counted
 *
 * Only what the XDP policy denies is decided here, and only that is
 * counted, in sl_counters under the interface's ingress hook
 * (SL_REASON_DROPPED_BY_POLICY, or SL_REASON_DROPPED_POLICY_FAILED for a
 * policy that could not finish): every packet is still counted once, by
 * the hook that decided it. Everything else passes to TC uncounted, which
 * counts it: malformed packets too (a header past the packet, a bad
 * length, VLAN tags, fragments, ...), so that TC alone drops them, with the
 * reason its parser gives, under the interface's settings (which
 * fragments, which IPv6), and no packet is counted at two hooks; but at
 * an interface whose TC passes IPv6 unchecked, an IPv6 packet the parser
 * stops at is dropped here with that reason (sl_xdp_unparsed), since TC
 * would pass it past the XDP policy. Neighbour
 * discovery passes unpoliced to TC, which decides it before policy. An
 * interface whose XDP policy slot is empty passes everything: the XDP
 * program is an early drop of what its policy denies, and TC still
 * enforces; without a policy it has nothing to deny. */

#include "sluice/common.h"
#include "sluice/state.h"
#include "sluice/iface.h"
#include "sluice/counters_map.h"
#include "sluice/parse6.h"

/* XDP settings of host interfaces, keyed by ifindex, in the layout of
 * sl_ifaces: counter_slot is the interface's sl_counters slot (that of its
 * sl_ifaces entry), and a generation's record names in ingress its XDP
 * policy's slot in sl_xdp_policy_jumps, and in flags SL_IFACE_PASS_IPV6
 * when the interface's TC passes IPv6 unchecked (sl_xdp_unparsed); egress
 * is unused. Not
 * preallocated, so that a replaced entry is freed only after the programs
 * that may still read it have finished. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct sl_iface);
} sl_xdpifaces SEC(".maps"); /* short: the registry's name adds "_v1", within the kernel's 15 */

/* The packet as the XDP policy sees it (entry 0). Its own, not the TC
 * datapath's sl_state_map: the two objects' programs then share no
 * per-CPU scratch, in whatever order or nesting the kernel runs them. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_state);
} sl_xdp_state SEC(".maps");

/* The packet waiting for the XDP policy on this CPU (entry 0): its
 * ifindex in the high 32 bits and its sl_counters index in the low ones;
 * 0 when none. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sl_xdp_pending SEC(".maps");

/* XDP policy programs (polprog.HookXDP) and the later parts of a policy
 * split for the verifier. Interfaces name their policy's slot in
 * sl_xdpifaces. A prog array of XDP programs: TC's sl_policy_jumps takes
 * none. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} sl_xdp_policy_jumps SEC(".maps");

/* Continuations the XDP policy programs end in, by the slots of TC's
 * sl_conts (enum sl_cont_slot: 0 allow, 1 deny). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u32);
} sl_xdp_conts SEC(".maps");

/* This object's generation, as the datapath object's: the runtime sets it
 * to the same number before it loads the objects. */
volatile const __u32 sl_generation = 0;

char __license[] SEC("license") = "Dual BSD/GPL";

/* The parser flags of every interface here: IPv6 is parsed, and first
 * fragments are policed (later ones, which carry no ports, pass to TC),
 * whatever TC does with them; the XDP policy applies to what it can
 * match. */
#define SL_XDP_PARSE_FLAGS (SL_IFACE_ENFORCE_IPV6 | SL_IFACE_PASS_FRAGMENTS)

/* sl_xdp_drop counts a packet the XDP program decided to drop. */
SL_INLINE int sl_xdp_drop(__u32 index, enum sl_reason reason)
{
	sl_count(index, reason);
	return XDP_DROP;
}

/* sl_xdp_parse_ipv6 is sl_parse_ipv6_at of an xdp_md. Global, as
 * sl_parse_ipv6 is, so that the verifier checks the chain walk once. */
__noinline int sl_xdp_parse_ipv6(struct xdp_md *ctx, struct sl_pkt *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	return sl_parse_ipv6_at(ctx, data, end, end - data, true, SL_XDP_PARSE_FLAGS, pkt);
}

/* What sl_xdp_parse returns besides a reason to drop the packet for. */
#define SL_XDP_POLICE	(-1)	/* the XDP policy decides the packet */
#define SL_XDP_TO_TC	(-2)	/* passed to TC unpoliced */

/* sl_xdp_unparsed is what becomes of an IPv6 packet the parser stopped
 * at for reason: TC's to drop and count, unless the interface's TC passes
 * IPv6 unchecked (SL_IFACE_PASS_IPV6 in its record). There nothing else
 * would stop a packet the XDP policy cannot match, which the receiving
 * kernel may still take (a chain longer than the parser walks, a first
 * fragment holding part of its TCP header), so it is dropped here, with
 * the reason TC would give it. */
SL_INLINE int sl_xdp_unparsed(__u32 rflags, enum sl_reason reason)
{
	if (!(rflags & SL_IFACE_PASS_IPV6) || reason < SL_REASON_FIRST_DROP)
		return SL_XDP_TO_TC;
	return reason;
}

/* sl_xdp_parse parses the packet into *pkt of an interface whose record
 * has flags rflags: SL_XDP_POLICE when the XDP policy is to decide it,
 * SL_XDP_TO_TC when it passes to TC unpoliced, else the reason to drop it
 * for (sl_xdp_unparsed). */
SL_INLINE int sl_xdp_parse(struct xdp_md *ctx, __u32 rflags, struct sl_pkt *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	enum sl_reason reason;
	enum sl_parse_rc rc;
	bool v6 = false;
	int res;

	rc = sl_parse_eth_at(data, end, false, SL_XDP_PARSE_FLAGS, &reason);
	if (rc == SL_PARSE_IPV6) {
		v6 = true;
		res = sl_xdp_parse_ipv6(ctx, pkt);
		if (SL_PARSE6_RC(res) == SL_PARSE_LATER_FRAGMENT)
			return SL_XDP_TO_TC;
		if (SL_PARSE6_RC(res) != SL_PARSE_OK)
			return sl_xdp_unparsed(rflags, SL_PARSE6_REASON(res));
	} else if (rc != SL_PARSE_IPV4 ||
		   sl_parse_ipv4_at(data, end, end - data, SL_XDP_PARSE_FLAGS, pkt, &reason) != SL_PARSE_OK) {
		return SL_XDP_TO_TC;
	}
	/* The IPv6 parse ran in another function: read the frame anew. */
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (sl_parse_l4_at(data, end, pkt, &reason) != SL_PARSE_OK)
		return v6 ? sl_xdp_unparsed(rflags, reason) : SL_XDP_TO_TC;
	return v6 && sl_icmp6_link(pkt) ? SL_XDP_TO_TC : SL_XDP_POLICE;
}

/* sl_xdp is the program to attach to host interfaces. */
SEC("xdp")
int sl_xdp(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex, zero = 0;
	const struct sl_iface_record *rec;
	struct sl_pkt pkt = {};
	struct sl_iface *iface;
	struct sl_state *st;
	__u64 *pending;
	int parsed;

	iface = bpf_map_lookup_elem(&sl_xdpifaces, &ifindex);
	if (!iface)
		return XDP_PASS;
	rec = sl_iface_record_of(iface, sl_generation);
	if (!rec)
		return XDP_PASS;
	parsed = sl_xdp_parse(ctx, rec->flags, &pkt);
	if (parsed == SL_XDP_TO_TC)
		return XDP_PASS;
	if (parsed != SL_XDP_POLICE)
		return sl_xdp_drop(SL_COUNTER_INDEX(iface->counter_slot, SL_HOOK_INGRESS), parsed);
	st = bpf_map_lookup_elem(&sl_xdp_state, &zero);
	pending = bpf_map_lookup_elem(&sl_xdp_pending, &zero);
	if (!st || !pending)
		return XDP_PASS;
	__builtin_memset(st, 0, sizeof(*st));
	sl_addr_copy(st->src_addr, pkt.saddr);
	sl_addr_copy(st->dst_addr, pkt.daddr);
	sl_addr_copy(st->pre_nat_dst_addr, pkt.daddr);
	st->src_port = pkt.sport;
	st->dst_port = pkt.dport;
	st->pre_nat_dst_port = pkt.dport;
	st->ip_proto = pkt.proto;
	st->icmp_type = pkt.icmp_type;
	st->icmp_code = pkt.icmp_code;
	*pending = ((__u64)ifindex << 32) | SL_COUNTER_INDEX(iface->counter_slot, SL_HOOK_INGRESS);
	bpf_tail_call(ctx, &sl_xdp_policy_jumps, rec->ingress);
	/* No policy in the slot: nothing to deny here. */
	*pending = 0;
	return XDP_PASS;
}

/* sl_xdp_take returns the sl_counters index of this CPU's pending packet
 * if it belongs to ctx, and marks it consumed; -1 if there is none. */
SL_INLINE long sl_xdp_take(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *pending = bpf_map_lookup_elem(&sl_xdp_pending, &zero);
	__u64 p;

	if (!pending)
		return -1;
	p = *pending;
	*pending = 0;
	if (p == 0 || (__u32)(p >> 32) != ctx->ingress_ifindex)
		return -1;
	return (__u32)p;
}

/* sl_xdp_allow is where the XDP policy continues when it allows: to TC. */
SEC("xdp")
int sl_xdp_allow(struct xdp_md *ctx)
{
	sl_xdp_take(ctx);
	return XDP_PASS;
}

/* sl_xdp_deny is where the XDP policy continues when it denies, or when
 * it could not finish: dropped and counted, failing closed as TC does.
 * A handoff that does not check out (no pending packet, or a state
 * without a verdict) passes to TC, which decides the packet in full. */
SEC("xdp")
int sl_xdp_deny(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sl_state *st = bpf_map_lookup_elem(&sl_xdp_state, &zero);
	long index = sl_xdp_take(ctx);

	if (index < 0 || !st)
		return XDP_PASS;
	if (st->policy_rc == SL_POLICY_FAILED)
		return sl_xdp_drop(index, SL_REASON_DROPPED_POLICY_FAILED);
	if (st->policy_rc != SL_POLICY_DENY)
		return XDP_PASS;
	return sl_xdp_drop(index, SL_REASON_DROPPED_BY_POLICY);
}

/* sl_xdp_pass passes every packet: the floor of the XDP benchmarks. */
SEC("xdp")
int sl_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
