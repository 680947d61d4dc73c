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
	SL_HOOK_COUNT	= 2, /* number of hooks; not a hook */
};

/* Bits of sl_iface.flags. Every bit's zero value is the safe default, so
 * an entry written with flags = WORKLOAD | READY enforces policy fully. */
enum sl_iface_flags {
	SL_IFACE_WORKLOAD	= 1u << 0, /* a workload's host-side interface: reverse-path checked */
	SL_IFACE_HOST		= 1u << 1, /* a host interface (host endpoint) */
	SL_IFACE_READY		= 1u << 2, /* settings complete; without it every packet drops */
	SL_IFACE_DROP_NON_IP	= 1u << 3, /* drop ARP and the other link protocols instead of passing them */
	SL_IFACE_PASS_IPV6	= 1u << 4, /* pass IPv6 unchecked instead of dropping it */
	SL_IFACE_DROP_MID_FLOW	= 1u << 5, /* drop TCP without SYN and without conntrack instead of running policy */
	SL_IFACE_PASS_FRAGMENTS	= 1u << 6, /* police first fragments and pass later ones, instead of dropping all */
	/* Parse and enforce IPv6 as IPv4 is (conntrack, reverse-path checks,
	 * policy), instead of passing or dropping it whole by
	 * SL_IFACE_PASS_IPV6, which it overrides. Opt-in until policy's
	 * address checks know the family; then it becomes the default. */
	SL_IFACE_ENFORCE_IPV6	= 1u << 7,
	SL_IFACE_DROP_ND	= 1u << 8, /* with SL_IFACE_ENFORCE_IPV6: drop neighbour discovery instead of passing it */
	/* An established packet this interface's ingress hook passes to a
	 * local workload (translated first, if it is a service's) goes
	 * straight to the workload's interface (bpf_redirect_neigh), past
	 * the host's routing and netfilter. The workload interface's egress
	 * hook still runs. */
	SL_IFACE_REDIRECT_LOCAL	= 1u << 9,
};

/* One generation's configuration of an interface. Each process that loads
 * the datapath is a generation (numbered from 1 up); while a restarted
 * agent takes over, the old process's programs and the new one's run side
 * by side, each with its own sl_policy_jumps, so an interface carries a
 * record for each, and a program reads only its own: never the new
 * process's flags beside the old one's policy. */
struct sl_iface_record {
	__u32	generation;	/* generation whose programs use this record; 0: none */
	enum sl_iface_flags flags;	/* SL_IFACE_* bits */
	__u32	ingress;	/* that generation's sl_policy_jumps slot run at TC ingress */
	__u32	egress;		/* that generation's sl_policy_jumps slot run at TC egress */
};
SL_ASSERT_SIZE(struct sl_iface_record, 16);

/* Value of sl_ifaces, keyed by ifindex (__u32). The policy slots are named
 * by hook, not by the endpoint's point of view: for a workload interface
 * the ingress hook carries the packets the workload sends, so its egress
 * policy runs there. A program finds the record of its own generation; at
 * an interface without one it drops every packet. */
struct sl_iface {
	__u32	counter_slot;		/* the interface's sl_counters slot, from 1 up, shared by the generations */
	__u32	pad;
	struct sl_iface_record records[2];	/* the configurations of up to two generations */
};
SL_ASSERT_SIZE(struct sl_iface, 40);

/* sl_iface_record_of returns the record of generation gen (an object's
 * sl_generation) in iface, or NULL: generation 0, never a real one, finds
 * none. */
SL_INLINE const struct sl_iface_record *sl_iface_record_of(const struct sl_iface *iface, __u32 gen)
{
	if (gen == 0)
		return NULL;
	if (iface->records[0].generation == gen)
		return &iface->records[0];
	if (iface->records[1].generation == gen)
		return &iface->records[1];
	return NULL;
}

/* The runtime's own record in the registry (sl_meta, entry 0), read by no
 * program: which generations exist, so that two processes sharing the
 * pinned maps never take one number, and a process taking over knows whose
 * programs are attached. */
struct sl_meta {
	__u32	last_generation;	/* the newest generation an Open took */
	__u32	settled_generation;	/* the generation whose programs run every hook (the last to Settle); 0: none */
};
SL_ASSERT_SIZE(struct sl_meta, 8);
