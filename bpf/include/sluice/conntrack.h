/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection-tracking layouts. The Go package conntrack works on their
 * generated mirrors in package bpf. */
#pragma once

#include "common.h"

/* Kind of a conntrack entry. */
enum sl_ct_type {
	SL_CT_NORMAL	= 0, /* a flow without NAT: one entry covers both directions */
	SL_CT_NAT_FWD	= 1, /* keyed by the pre-DNAT tuple; points at the reverse entry */
	SL_CT_NAT_REV	= 2, /* keyed by the post-DNAT tuple; holds the flow's state */
};

/* Bits of sl_ct_value.flags. */
enum sl_ct_flags {
	/* NAT entries: the service's client is endpoint B of this entry's
	 * key (else A). A packet's side of a NAT flow follows from it, not
	 * from comparing addresses, which fails when the backend or the
	 * frontend sorts below the client. */
	SL_CT_F_CLIENT_IS_B	= 1u << 0,
	/* NAT reverse entries: the service stage source-NATed the flow
	 * (struct sl_snat), so the client's side of this entry's key is
	 * this node's address and port; the client itself is the endpoint
	 * of nat_peer that is not the frontend. */
	SL_CT_F_SNAT		= 1u << 1,
};

/* Entries of sl_ct_tables, the array of conntrack tables. The datapath
 * reads and writes the live table; a table being drained after a resize
 * is read on a miss, and an entry found there moves to the live table, so
 * no tracked flow is lost or sent back to policy while entries move. */
enum sl_ct_table_slot {
	SL_CT_TABLE_LIVE	= 0, /* the table flows live in */
	SL_CT_TABLE_DRAINING	= 1, /* the table being emptied into the live one; usually absent */
};

/* What a leg has seen (sl_ct_leg.flags). */
enum sl_ct_leg_flags {
	SL_CT_LEG_SYN	= 1u << 0, /* a TCP SYN */
	SL_CT_LEG_ACK	= 1u << 1, /* a TCP ACK */
	SL_CT_LEG_FIN	= 1u << 2, /* a TCP FIN */
	SL_CT_LEG_RST	= 1u << 3, /* a TCP RST */
	/* The leg's packets pass the TC ingress hook of sl_ct_leg.ifindex:
	 * that hook's policy approved the leg, or the opposite leg was
	 * approved leaving through that interface (so these are replies).
	 * The ifindex is fixed when the bit is first set; a packet at
	 * another interface never moves it, and a leg approved only leaving
	 * (the host's own traffic) is never bound to an ingress hook later. */
	SL_CT_LEG_INGRESS_OK	= 1u << 4,
	/* The leg's packets pass the TC egress hook of
	 * sl_ct_leg.egress_ifindex, whose policy approved the leg; fixed
	 * like the ingress interface. */
	SL_CT_LEG_EGRESS_OK	= 1u << 5,
};

/* Canonical flow key: the lower (address, port) endpoint is A, so both
 * directions of a flow find one entry. Endpoints compare by address as a
 * 128-bit big-endian number, then by port; with equal endpoints the source
 * is A. TCP, UDP, UDP-Lite, SCTP and DCCP use their ports. An ICMP echo
 * gives the identifier to the requester's endpoint and the identifier
 * plus one to the other, so a request and its reply share a key but no
 * request in the other direction has it (sl_ct_echo_ports). Other protocols use 0 and 0;
 * ICMP messages other than echoes are never tracked or looked up. */
struct sl_ct_key {
	__u8	addr_a[16] SL_ADDR_ALIGNED;	/* endpoint A's address, IPv4-mapped for IPv4 */
	__u8	addr_b[16];	/* endpoint B's address, IPv4-mapped for IPv4 */
	__u16	port_a;		/* endpoint A's port, host order; ICMP echo: see above */
	__u16	port_b;		/* endpoint B's port, host order; ICMP echo: see above */
	__u8	proto;		/* IPPROTO_* */
	__u8	pad[3];
};
SL_ASSERT_SIZE(struct sl_ct_key, 40);

/* One direction of a flow. */
struct sl_ct_leg {
	__u64	bytes;		/* bytes of the leg's packets, link-layer header included */
	__u32	packets;	/* packets of the leg, each counted once on the node */
	enum sl_ct_leg_flags flags;	/* what this leg has seen */
	__u32	ifindex;	/* interface the leg's packets arrive on (see SL_CT_LEG_INGRESS_OK) */
	__u32	egress_ifindex;	/* interface the leg's packets leave by (see SL_CT_LEG_EGRESS_OK) */
};
SL_ASSERT_SIZE(struct sl_ct_leg, 24);

/* A conntrack entry. Flat rather than a union of NAT variants so that Go
 * and BTF see every field. */
struct sl_ct_value {
	/* Times are CLOCK_MONOTONIC_COARSE ns (bpf_ktime_get_coarse_ns): a
	 * tick's resolution is ample for second-scale timeouts, and it is
	 * about 20 ns per packet cheaper than bpf_ktime_get_ns. */
	__u64	created;		/* when the entry was created */
	__u64	last_seen;		/* when the flow last had a packet */
	enum sl_ct_type type;		/* kind of entry */
	enum sl_ct_flags flags;		/* SL_CT_F_* bits */
	struct sl_ct_leg a_to_b;	/* packets from A to B */
	struct sl_ct_leg b_to_a;	/* packets from B to A */
	struct sl_ct_key nat_peer;	/* NAT_FWD: the reverse entry's key; NAT_REV: the forward entry's */
	__u8	orig_addr[16];		/* NAT_REV: destination before DNAT */
	__u16	orig_port;		/* NAT_REV: destination port before DNAT, host order */
	__u16	pad1[3];
};
SL_ASSERT_SIZE(struct sl_ct_value, 136);
