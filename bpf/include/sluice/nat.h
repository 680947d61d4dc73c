/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service load balancing's maps: frontends, the backend slots of each
 * service, backends, client affinity and source ranges. The Go package nat
 * writes them (nat.Table); the datapath's service stage reads them.
 *
 * A frontend names its service's backends through a service ID and a slot
 * base. The backends sit in slots base+0 .. base+n-1, ordered: serving
 * backends on this node, serving backends elsewhere, terminating backends
 * on this node, terminating backends elsewhere; the counts say where each
 * group ends. A change of backends writes the new list at the other base,
 * then flips each frontend to it in one update, then deletes the old
 * slots: a packet always sees one whole list, never an empty one. */
#pragma once

#include "common.h"

/* Bits of sl_svc.flags. */
enum sl_svc_flags {
	SL_SVC_NODE_PORT	= 1u << 0, /* a NodePort: the key's address is its family's wildcard, matched on every node address */
	SL_SVC_LOCAL_ONLY	= 1u << 1, /* traffic policy Local at this frontend: local backends only */
	SL_SVC_AFFINITY		= 1u << 2, /* session affinity by client address, for affinity_timeout seconds */
	SL_SVC_MAGLEV		= 1u << 3, /* choose by Maglev consistent hashing instead of at random */
	SL_SVC_SOURCE_RANGES	= 1u << 4, /* only clients inside sl_lb_ranges of this service */
};

/* Key of sl_svcs: a frontend. A NodePort's address is ::ffff:0.0.0.0 for
 * IPv4 and :: for IPv6. */
struct sl_svc_key {
	__u8	addr[16] SL_ADDR_ALIGNED;	/* frontend address, IPv4-mapped for IPv4 */
	__u16	port;			/* frontend port, host order */
	__u8	proto;			/* IPPROTO_TCP, _UDP or _SCTP */
	__u8	pad;			/* zero */
};
SL_ASSERT_SIZE(struct sl_svc_key, 20);

/* Value of sl_svcs: what a frontend leads to. */
struct sl_svc {
	__u32	id;			/* service ID: keys the backend slots, affinity and source ranges; never 0 */
	__u32	slot_base;		/* first backend slot of the current list */
	__u16	serving_local;		/* serving backends on this node: slots base+0 .. */
	__u16	serving;		/* all serving backends, local ones first */
	__u16	terminating_local;	/* terminating backends on this node, after the serving ones */
	__u16	terminating;		/* all terminating backends, local ones first */
	enum sl_svc_flags flags;	/* SL_SVC_* bits */
	__u32	affinity_timeout;	/* seconds an affinity lasts without traffic (SL_SVC_AFFINITY) */
};
SL_ASSERT_SIZE(struct sl_svc, 24);

/* Key of sl_lb_slots: one slot of a service's backend list. */
struct sl_backend_slot_key {
	__u32	svc_id;		/* sl_svc.id */
	__u32	slot;		/* sl_svc.slot_base plus the backend's index in the list */
};
SL_ASSERT_SIZE(struct sl_backend_slot_key, 8);

/* Value of sl_backends, keyed by a backend ID (__u32, never 0) that the
 * slots hold: where a flow is translated to. */
struct sl_backend {
	__u8	addr[16] SL_ADDR_ALIGNED;	/* backend address, IPv4-mapped for IPv4 */
	__u16	port;			/* backend port, host order */
	__u16	pad;			/* zero */
};
SL_ASSERT_SIZE(struct sl_backend, 20);

/* Key of sl_affinity: a client of a service with SL_SVC_AFFINITY. */
struct sl_affinity_key {
	__u32	svc_id;			/* sl_svc.id */
	__u8	client[16];		/* client address, IPv4-mapped for IPv4 */
};
SL_ASSERT_SIZE(struct sl_affinity_key, 20);

/* Value of sl_affinity: the backend a client keeps while it is used. */
struct sl_affinity {
	__u32	backend_id;	/* the client's backend; honoured only while a slot of the service holds it */
	__u32	pad;		/* zero */
	__u64	last_used_ns;	/* bpf_ktime_get_coarse_ns of the last packet that used it */
};
SL_ASSERT_SIZE(struct sl_affinity, 16);

/* Key of sl_lb_ranges, an LPM trie: a loadBalancerSourceRanges prefix of
 * a service. The length counts bits from svc_id on: 32 for the ID and 32
 * for the family, always matched, then 96 plus the prefix length for IPv4
 * or the prefix length for IPv6. */
struct sl_svc_range_key {
	__u32	prefixlen;		/* LPM prefix length in bits from svc_id on */
	__u32	svc_id;			/* sl_svc.id, always matched in full */
	enum sl_family family;		/* the prefix's family, always matched */
	__u8	addr[16];		/* prefix address, IPv4-mapped for IPv4 */
};
SL_ASSERT_SIZE(struct sl_svc_range_key, 28);

/* Bits of sl_lb_member.flags. */
enum sl_lb_member_flags {
	SL_LB_MEMBER_SERVING	= 1u << 0, /* the backend is serving (not terminating) in the service's current list */
	SL_LB_MEMBER_LOCAL	= 1u << 1, /* the backend runs on this node */
};

/* Key of sl_lb_members: a backend of a service. */
struct sl_lb_member_key {
	__u32	svc_id;		/* sl_svc.id */
	__u32	backend_id;	/* the backend's ID in sl_backends */
};
SL_ASSERT_SIZE(struct sl_lb_member_key, 8);

/* Value of sl_lb_members: a backend's standing in its service's current
 * list. The datapath honours a client's affinity only while the backend
 * is a member of the group a new flow would be given: serving while the
 * service has a serving backend, else terminating; local where the
 * frontend asks for local backends. nat.Table writes a member before the
 * frontend flips to a list that holds it, and deletes it after the last
 * list that held it is gone. */
struct sl_lb_member {
	enum sl_lb_member_flags flags;	/* SL_LB_MEMBER_* bits */
};
SL_ASSERT_SIZE(struct sl_lb_member, 4);

/* The entries of every Maglev lookup table, a prime: Cilium's default.
 * Go reads it as the length of the generated MaglevTable's array. */
#define SL_MAGLEV_SIZE 16381

/* Key of sl_maglev: the Maglev table of one of a service's backend lists. */
struct sl_maglev_key {
	__u32	svc_id;		/* sl_svc.id */
	__u32	slot_base;	/* sl_svc.slot_base of the list the table was built from */
};
SL_ASSERT_SIZE(struct sl_maglev_key, 8);

/* Value of sl_maglev: a service's Maglev lookup table over its serving
 * backends (weighted), for frontends with SL_SVC_MAGLEV and without
 * SL_SVC_LOCAL_ONLY. A flow's hash (sl_lb_hash) modulo SL_MAGLEV_SIZE picks
 * the entry, a backend ID. Written before the frontend flips to its list,
 * deleted after. */
struct sl_maglev_table {
	__u32	backend_ids[SL_MAGLEV_SIZE];	/* backend ID of each table position */
};
SL_ASSERT_SIZE(struct sl_maglev_table, 4 * SL_MAGLEV_SIZE);

/* Value of sl_snat (entry 0): how the service stage source-NATs a flow
 * whose replies would otherwise bypass this node: a client from outside
 * the node sent on to a backend on another node, or a workload whose
 * chosen backend is itself (hairpin). Its source becomes this node's
 * address of the family and a port of the range that no other flow to
 * that backend uses. An address left zero turns it off for its family. */
struct sl_snat {
	__u8	addr4[16] SL_ADDR_ALIGNED;	/* this node's IPv4 address, IPv4-mapped; zero: no IPv4 SNAT */
	__u8	addr6[16];	/* this node's IPv6 address; zero: no IPv6 SNAT */
	__u16	port_min;	/* first source port SNAT uses, host order */
	__u16	port_max;	/* last source port SNAT uses, host order; keep it outside ip_local_port_range */
	__u32	pad;		/* zero */
};
SL_ASSERT_SIZE(struct sl_snat, 40);
