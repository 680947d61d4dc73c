/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The routes map: what the datapath knows about an address. It decides
 * the reverse-path check of workload interfaces and the host flags of
 * host-endpoint policy; the Go package routes writes it. */
#pragma once

#include "common.h"

/* Bits of sl_route.flags. */
enum sl_route_flags {
	SL_ROUTE_LOCAL_WORKLOAD		= 1u << 0, /* a workload on this node; ifindex is its interface */
	SL_ROUTE_LOCAL_HOST		= 1u << 1, /* an address of this node */
	SL_ROUTE_REMOTE_WORKLOAD	= 1u << 2, /* a workload on another node, behind next_hop */
	SL_ROUTE_REMOTE_HOST		= 1u << 3, /* another node's address */
	SL_ROUTE_TUNNELED		= 1u << 4, /* reached through a tunnel to next_hop */
};

/* Key of sl_routes, an LPM trie. The family comes first and is always
 * matched, so that an IPv6 route covering ::ffff:0:0/96 (::/0, say) never
 * matches an IPv4 address. The prefix length counts bits from family on:
 * 32 for the family, then 96 plus the prefix length for IPv4 (the
 * ::ffff:0:0/96 part is always matched), or the prefix length for IPv6. */
struct sl_route_key {
	__u32	prefixlen;	/* LPM prefix length in bits from family on */
	enum sl_family family;	/* the route's address family, matched in full */
	__u8	addr[16];	/* the route's address, IPv4-mapped for IPv4 */
};
SL_ASSERT_SIZE(struct sl_route_key, 24);

/* Value of sl_routes. */
struct sl_route {
	enum sl_route_flags flags;	/* SL_ROUTE_* bits */
	__u32	ifindex;		/* LOCAL_WORKLOAD: the workload's host-side interface */
	__u8	next_hop[16];		/* REMOTE_*: the node to send to, IPv4-mapped for IPv4 */
};
SL_ASSERT_SIZE(struct sl_route, 24);
