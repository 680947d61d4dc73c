/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What the main program hands to its allow and deny continuations, beside
 * the sl_state it hands to policy. Policy programs never read it. */
#pragma once

#include "conntrack.h"
#include "iface.h"

/* Direction of a packet relative to its conntrack key. */
enum sl_ct_dir {
	SL_CT_DIR_A_TO_B	= 0, /* source is the key's A endpoint */
	SL_CT_DIR_B_TO_A	= 1, /* source is the key's B endpoint */
};

/* Bits of sl_pending.flags. */
enum sl_pending_flags {
	SL_PENDING_TRACK	= 1u << 0, /* an allowed packet creates or updates its flow's entry (not ICMP other than echo) */
	SL_PENDING_DNAT		= 1u << 1, /* the packet was DNATed to a service's backend: an allowed one creates the flow's NAT entries */
	SL_PENDING_SNAT		= 1u << 2, /* with SL_PENDING_DNAT: its source was NATed too (SL_CT_F_SNAT) */
	SL_PENDING_AFFINITY	= 1u << 3, /* with SL_PENDING_DNAT: an allowed one records the client's affinity to affinity_backend */
};

/* The packet waiting for a policy verdict on this CPU (sl_pending, entry
 * 0). ifindex doubles as a validity mark: the main program sets it, the
 * continuation checks it against the skb and clears it. */
struct sl_pending {
	struct sl_ct_key ct_key;	/* the flow's tracking key */
	__u32	ifindex;		/* interface whose hook asked policy; 0 when none */
	enum sl_hook hook;		/* SL_HOOK_* */
	enum sl_ct_dir dir;		/* packet direction relative to ct_key */
	enum sl_ct_leg_flags leg_flags;	/* TCP flags of the packet as leg bits */
	__u32	counter_index;		/* sl_counters index of the interface's hook */
	enum sl_pending_flags flags;	/* SL_PENDING_* bits */
	__u32	affinity_svc;		/* SL_PENDING_AFFINITY: the service's ID */
	__u32	affinity_backend;	/* SL_PENDING_AFFINITY: the backend's ID */
};
SL_ASSERT_SIZE(struct sl_pending, 72);
