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

/* A member of an IP set in the sl_ipsets LPM trie, written by the Go
 * package ipsets and looked up by polprog's programs; nothing in C reads
 * it. The prefix length counts bits from set_id on and always covers
 * set_id and family, so a member matches only addresses of its own family.
 * An IPv4 CIDR member's length is 64+32+96 plus its prefix length (the
 * ::ffff:0:0/96 part is matched too), an IPv6 one's 64+32 plus its prefix
 * length, and a named-port member's is the whole key, 256 bits, zero
 * included. A lookup always uses the whole key: with port and
 * proto zero for an address test, which finds CIDR members only since a
 * named-port member's protocol is never 0, and with the packet's port and
 * protocol for a named-port test, which finds the exact member or a CIDR
 * member covering the address. set_id is a byte array so the struct needs
 * no packing and its Go mirror has the same offsets. */
struct sl_ipset_key {
	__u32	prefixlen;		/* LPM prefix length in bits, from set_id on */
	__u8	set_id[8];		/* 64-bit set ID, big-endian */
	enum sl_family family;		/* the member's address family, always matched */
	__u8	addr[16];		/* member address, IPv4-mapped for IPv4 */
	__u16	port;			/* named-port members: port, host order; else 0 */
	__u8	proto;			/* named-port members: IPPROTO_*; else 0 */
	__u8	zero;			/* always 0; named, unlike padding, so that a key another writer set it in is seen */
};
SL_ASSERT_SIZE(struct sl_ipset_key, 36);

/* The sets an address (or a named port) belongs to, in the sl_ipsetm LPM
 * trie: what one lookup per membership dimension of a classified run finds,
 * instead of one sl_ipsets lookup per set. Written by the Go package ipsets
 * alongside sl_ipsets, from the same members; nothing in C reads it. The
 * key is sl_ipset_key's without the set ID and with a generation: the
 * prefix length counts bits from gen on and always covers gen and family.
 * An IPv4 CIDR entry's length is 32+32+96 plus its prefix length, an IPv6
 * one's 32+32 plus its prefix length, a named-port entry's the whole key
 * (224 bits). Lookups use the whole key as for sl_ipsets. There is one
 * entry per distinct member of any set, and its value lists every set that
 * a lookup ending there is in: the writer adds the sets of every shorter
 * CIDR member covering it, so the longest match alone answers. */
struct sl_ipsetm_key {
	__u32	prefixlen;		/* LPM prefix length in bits, from gen on */
	__u32	gen;			/* generation, 0 or 1: the one sl_ipsetgen names is in use */
	enum sl_family family;		/* the entry's address family, always matched */
	__u8	addr[16];		/* address, IPv4-mapped for IPv4 */
	__u16	port;			/* named-port entries: port, host order; else 0 */
	__u8	proto;			/* named-port entries: IPPROTO_*; else 0 */
	__u8	zero;			/* always 0 */
};
SL_ASSERT_SIZE(struct sl_ipsetm_key, 32);

/* Slots of a sl_ipsetm value: set ID s is in slot s % SL_IPSETM_SLOTS. */
#define SL_IPSETM_SLOTS 32

/* The sets of an sl_ipsetm entry, by slot. A slot holding one of the
 * entry's sets has its bit in member and the set's ID in ids; a slot
 * holding two or more has its bit in shared (ids unused), and a program
 * asks sl_ipsets about each set of that slot instead. A slot with neither
 * bit holds none of the entry's sets. */
struct sl_ipsetm_value {
	__u32	member;			/* bit s: slot s holds one set, ids[s] */
	__u32	shared;			/* bit s: slot s holds two or more sets */
	__u64	ids[SL_IPSETM_SLOTS];	/* the set of each member slot */
};
SL_ASSERT_SIZE(struct sl_ipsetm_value, 264);
