/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-interface, per-hook, per-reason packet counters. */
#pragma once

#include "iface.h"

/* Why the datapath passed or dropped a packet. Every packet the main
 * programs see is counted under exactly one of the verdict reasons. The
 * accepting reasons come first: a reason below SL_REASON_FIRST_DROP means
 * TC_ACT_OK. SL_REASON_CT_CREATE_FAILED is an extra event counted beside
 * the packet's verdict. */
enum sl_reason {
	SL_REASON_ACCEPTED_BY_POLICY	= 0,  /* policy allowed the packet */
	SL_REASON_ACCEPTED_ESTABLISHED	= 1,  /* flow approved at this hook, or a reply of one */
	SL_REASON_ACCEPTED_RELATED	= 2,  /* ICMP error quoting a tracked flow */
	SL_REASON_NON_IP_PASSED		= 3,  /* neither IPv4 nor IPv6 */
	SL_REASON_IPV6_PASSED		= 4,  /* IPv6 on an interface with SL_IFACE_PASS_IPV6 */
	SL_REASON_FRAGMENT_PASSED	= 5,  /* non-first fragment with SL_IFACE_PASS_FRAGMENTS */
	SL_REASON_CT_CREATE_FAILED	= 6,  /* event: allowed, but no conntrack entry could be written */
	SL_REASON_DROPPED_BY_POLICY	= 7,  /* policy denied the packet */
	SL_REASON_DROPPED_NO_IFACE	= 8,  /* no sl_ifaces entry: fail closed */
	SL_REASON_DROPPED_NOT_READY	= 9,  /* interface not SL_IFACE_READY */
	SL_REASON_DROPPED_NO_POLICY	= 10, /* the hook's policy slot is empty */
	SL_REASON_DROPPED_MID_FLOW	= 11, /* TCP without SYN or conntrack, SL_IFACE_DROP_MID_FLOW */
	SL_REASON_DROPPED_SHORT		= 12, /* a header runs past the packet or the IP total length */
	SL_REASON_DROPPED_BAD_VERSION	= 13, /* IPv4 ethertype, IP version not 4 */
	SL_REASON_DROPPED_BAD_IHL	= 14, /* IHL below 5 */
	SL_REASON_DROPPED_BAD_LEN	= 15, /* total length below IHL or past the packet */
	SL_REASON_DROPPED_BAD_TCP_DOFF	= 16, /* TCP data offset below 5 or past the IP payload */
	SL_REASON_DROPPED_FRAGMENT	= 17, /* IPv4 fragment: no reassembly, see datapath.c */
	SL_REASON_DROPPED_NON_IP	= 18, /* non-IP frame with SL_IFACE_DROP_NON_IP */
	SL_REASON_DROPPED_IPV6		= 19, /* IPv6 without SL_IFACE_PASS_IPV6 */
	SL_REASON_DROPPED_BAD_HANDOFF	= 20, /* a continuation ran without its pending packet */
	SL_REASON_COUNT			= 21, /* number of reasons; not a reason */
};

#define SL_REASON_FIRST_DROP SL_REASON_DROPPED_BY_POLICY

/* sl_counters is a per-CPU array: the counters of an interface's hook are
 * at SL_COUNTER_INDEX(sl_iface.counter_slot, hook). Slot 0 collects the
 * packets of interfaces that have no state, so the agent gives each
 * interface its own slot from 1 up. An array rather than a hash keyed by
 * ifindex because the verifier inlines its lookup: counting stays a few
 * instructions on every packet's path. */
#define SL_COUNTER_INDEX(slot, hook) ((slot) * 2 + (hook))

/* Value of sl_counters: packets per enum sl_reason, one copy per CPU. */
struct sl_reason_counts {
	__u64	packets[SL_REASON_COUNT];
};
SL_ASSERT_SIZE(struct sl_reason_counts, 8 * SL_REASON_COUNT);
