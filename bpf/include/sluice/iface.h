/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-interface settings of the TC datapath. One program serves every
 * interface and direction; what differs between interfaces lives here, in
 * a map the agent writes, instead of in compile-time variants. */
#pragma once

#include "common.h"

/* The TC hook a program runs at. Also the second half of a counter key. */
enum sl_hook {
	SL_HOOK_INGRESS	= 0, /* TC ingress: packets the interface receives */
	SL_HOOK_EGRESS	= 1, /* TC egress: packets the interface transmits */
};

/* Bits of sl_iface.flags. Every bit's zero value is the safe default, so
 * an entry written with flags = WORKLOAD | READY enforces policy fully. */
enum sl_iface_flags {
	SL_IFACE_WORKLOAD	= 1u << 0, /* a workload's host-side interface */
	SL_IFACE_HOST		= 1u << 1, /* a host interface (host endpoint) */
	SL_IFACE_READY		= 1u << 2, /* settings complete; without it every packet drops */
	SL_IFACE_DROP_NON_IP	= 1u << 3, /* drop non-IP frames (ARP, ...) instead of passing them */
	SL_IFACE_PASS_IPV6	= 1u << 4, /* pass IPv6 unchecked instead of dropping it */
	SL_IFACE_DROP_MID_FLOW	= 1u << 5, /* drop TCP without SYN and without conntrack instead of running policy */
	SL_IFACE_PASS_FRAGMENTS	= 1u << 6, /* police first fragments and pass later ones, instead of dropping all */
};

/* Value of sl_ifaces, keyed by ifindex (__u32). The policy fields are
 * slots of sl_policy_jumps named by hook, not by the workload's point of
 * view: for a workload interface, the ingress hook carries the packets the
 * workload sends, so the agent puts its egress policy in ingress_policy. */
struct sl_iface {
	enum sl_iface_flags flags;	/* SL_IFACE_* bits */
	__u32	ingress_policy;		/* sl_policy_jumps slot run at the TC ingress hook */
	__u32	egress_policy;		/* sl_policy_jumps slot run at the TC egress hook */
	__u32	counter_slot;		/* the interface's sl_counters slot, from 1 up */
};
SL_ASSERT_SIZE(struct sl_iface, 16);
