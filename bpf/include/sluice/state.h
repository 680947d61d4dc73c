/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The per-CPU packet state shared between the datapath and the policy
 * programs that polprog generates. This struct is the single source of
 * truth: polprog reads its field offsets from the generated Go mirror
 * (bpf.State), which the Go tests check against this object's BTF. */
#pragma once

#include "common.h"

/* Bits of sl_state.flags. An enum rather than defines so the values reach
 * BTF and the generated Go constants. */
enum sl_state_flags {
	SL_STATE_F_SRC_IS_HOST	= 1u << 0, /* source is this host (host endpoints) */
	SL_STATE_F_DST_IS_HOST	= 1u << 1, /* destination is this host */
	SL_STATE_F_LOG		= 1u << 2, /* a policy "log" rule matched */
};

/* The verdict a policy program leaves behind in sl_state.policy_rc. */
enum sl_policy_rc {
	SL_POLICY_NONE	= 0, /* policy has not decided (yet) */
	SL_POLICY_ALLOW	= 1, /* policy allowed the packet */
	SL_POLICY_DENY	= 2, /* policy denied the packet */
	/* A policy program could not finish: a tail call to its next part
	 * or to the allow continuation failed, or a later part was entered
	 * without a resume point. The deny continuation counts the packet
	 * under SL_REASON_DROPPED_POLICY_FAILED. */
	SL_POLICY_FAILED = 3,
};

/* The packet as policy sees it, filled in by the datapath (sl_state_map,
 * entry 0). Addresses are 16 bytes in network order. IPv4 is stored
 * IPv4-mapped (::ffff:a.b.c.d), as Go's netip.Addr.As16 does, so policy
 * code and map keys have one layout for both families. */
struct sl_state {
	__u8	src_addr[16];		/* source address */
	__u8	dst_addr[16];		/* destination after DNAT */
	__u8	pre_nat_dst_addr[16];	/* destination before DNAT */
	__u16	src_port;		/* host order; 0 without ports */
	__u16	dst_port;		/* host order, after DNAT */
	__u16	pre_nat_dst_port;	/* host order, before DNAT */
	__u8	ip_proto;		/* IPPROTO_* */
	__u8	icmp_type;		/* ICMP type, valid when ip_proto is ICMP */
	__u8	icmp_code;		/* ICMP code */
	__u8	pad0[3];		/* explicit: BTF and Go see the same bytes */
	enum sl_state_flags flags;	/* SL_STATE_F_* bits */
	enum sl_policy_rc policy_rc;	/* verdict of policy */
	__u32	resume;			/* split policy: where the next part resumes (0: start) */
	__u64	rule_id;		/* ID of the rule that decided; 0 if none */
};
SL_ASSERT_SIZE(struct sl_state, 80);

/* A member of an IP set in the sl_ipsets LPM trie. The prefix always covers
 * set_id; a CIDR member adds 96 (IPv4-mapped) or 0 (IPv6) bits plus its own
 * prefix, and a named-port member is an exact match on all fields. set_id is
 * a byte array so that the struct needs no packing: its Go mirror then has
 * the same offsets, and polprog takes them from it. */
struct sl_ipset_key {
	__u32	prefixlen;		/* LPM prefix length in bits, from set_id on */
	__u8	set_id[8];		/* 64-bit set ID, big-endian */
	__u8	addr[16];		/* member address, IPv4-mapped for IPv4 */
	__u16	port;			/* named-port members: port, host order */
	__u8	proto;			/* named-port members: IPPROTO_* */
	__u8	pad;
};
SL_ASSERT_SIZE(struct sl_ipset_key, 32);

/* Number of bits of sl_ipset_key after prefixlen. */
#define SL_IPSET_KEY_BITS ((sizeof(struct sl_ipset_key) - 4) * 8)
