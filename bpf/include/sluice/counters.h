/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-interface, per-hook, per-reason packet counters. */
#pragma once

#include "iface.h"

/* Why the datapath passed or dropped a packet. Every packet the datapath
 * sees is counted under exactly one reason, at the hook that decided it.
 * The accepting reasons come first: a reason below SL_REASON_FIRST_DROP
 * means TC_ACT_OK. */
enum sl_reason {
	SL_REASON_ACCEPTED_BY_POLICY	= 0,  /* policy allowed the packet and its flow is tracked */
	SL_REASON_ACCEPTED_ESTABLISHED	= 1,  /* flow approved at this hook, or a reply of one */
	SL_REASON_ACCEPTED_RELATED	= 2,  /* ICMP error quoting a flow that passes this hook */
	SL_REASON_ACCEPTED_UNTRACKED	= 3,  /* policy allowed the packet, but no conntrack entry could be written */
	SL_REASON_NON_IP_PASSED		= 4,  /* ARP or another link protocol that cannot carry IP */
	SL_REASON_IPV6_PASSED		= 5,  /* IPv6 unchecked, SL_IFACE_PASS_IPV6 without SL_IFACE_ENFORCE_IPV6 */
	SL_REASON_FRAGMENT_PASSED	= 6,  /* non-first fragment with SL_IFACE_PASS_FRAGMENTS */
	SL_REASON_ND_PASSED		= 7,  /* ICMPv6 neighbour discovery or multicast listener message (SL_IFACE_ENFORCE_IPV6), see parse6.h */
	SL_REASON_REFUSAL_PASSED	= 8,  /* a service's refusal (SL_REASON_REJECTED_NO_BACKEND) leaving by the host interface it answers, marked SL_MARK_REFUSAL */
	SL_REASON_DROPPED_BY_POLICY	= 9,  /* policy denied the packet */
	SL_REASON_DROPPED_NO_IFACE	= 10, /* no sl_ifaces entry, or none for this program's generation: fail closed */
	SL_REASON_DROPPED_NOT_READY	= 11, /* interface not SL_IFACE_READY */
	SL_REASON_DROPPED_NO_POLICY	= 12, /* the hook's policy slot is empty */
	SL_REASON_DROPPED_POLICY_FAILED	= 13, /* a policy program could not finish (SL_POLICY_FAILED) */
	SL_REASON_DROPPED_MID_FLOW	= 14, /* TCP without SYN or conntrack, SL_IFACE_DROP_MID_FLOW */
	SL_REASON_DROPPED_SHORT		= 15, /* a header runs past the packet or the IP total length */
	SL_REASON_DROPPED_BAD_VERSION	= 16, /* IP version not that of the EtherType (4 or 6) */
	SL_REASON_DROPPED_BAD_IHL	= 17, /* IHL below 5 */
	SL_REASON_DROPPED_BAD_LEN	= 18, /* IPv4 total length below IHL or past the packet; IPv6 payload length 0 (jumbogram) or past the packet */
	SL_REASON_DROPPED_BAD_TCP_DOFF	= 19, /* TCP data offset below 5 or past the IP payload */
	SL_REASON_DROPPED_FRAGMENT	= 20, /* IPv4 or IPv6 fragment: no reassembly, see parse.h */
	SL_REASON_DROPPED_NON_IP	= 21, /* ARP or another link protocol, with SL_IFACE_DROP_NON_IP */
	SL_REASON_DROPPED_ETHERTYPE	= 22, /* an EtherType that may carry IP inside (MPLS, PPPoE, LLC, ...) or is unknown */
	SL_REASON_DROPPED_VLAN		= 23, /* an 802.1Q or 802.1ad tag, in the frame or in the skb */
	SL_REASON_DROPPED_IPV6		= 24, /* IPv6 at an interface with neither SL_IFACE_ENFORCE_IPV6 nor SL_IFACE_PASS_IPV6 */
	SL_REASON_DROPPED_RPF		= 25, /* a workload's source is not routed to its interface, or a host interface received a local workload's or host's source */
	SL_REASON_DROPPED_NO_CONNTRACK	= 26, /* no conntrack table installed: fail closed */
	SL_REASON_DROPPED_BAD_HANDOFF	= 27, /* a continuation ran without its pending packet */
	SL_REASON_DROPPED_IPV6_EXT	= 28, /* an IPv6 extension header runs past the payload, repeats or sits where it may not (parse6.h) */
	SL_REASON_DROPPED_IPV6_CHAIN_LONG = 29, /* more than SL_IP6_EXT_MAX extension headers, or more than SL_IP6_CHAIN_MAX bytes of them */
	SL_REASON_DROPPED_IPV4_MAPPED	= 30, /* an IPv6 packet with an IPv4-mapped source or destination, which would alias IPv4 state */
	SL_REASON_DROPPED_ND		= 31, /* neighbour discovery with SL_IFACE_DROP_ND, or a router message from a workload */
	SL_REASON_DROPPED_SVC_SOURCE_RANGE = 32, /* a client outside a service's loadBalancerSourceRanges (SL_SVC_SOURCE_RANGES) */
	SL_REASON_REJECTED_NO_BACKEND	= 33, /* a service without a usable backend: answered with a TCP RST or an ICMP(v6) port unreachable */
	SL_REASON_DROPPED_NO_BACKEND	= 34, /* a service without a usable backend, for a packet no reject answers (SCTP, a TCP RST, or no room for the reply) */
	SL_REASON_DROPPED_NAT_FAILED	= 35, /* policy allowed a service's new flow, but its NAT entries could not be written */
	SL_REASON_DROPPED_FIB_TTL	= 36, /* the FIB step (fib.h): a translated packet from the node's address whose TTL or hop limit would expire here */
	SL_REASON_DROPPED_FIB_MTU	= 37, /* the FIB step: a translated packet from the node's address past the MTU of the route the FIB chose (BPF_FIB_LKUP_RET_FRAG_NEEDED; a GSO packet is not checked) */
	SL_REASON_DROPPED_FIB_NO_ROUTE	= 38, /* the FIB step: the lookup for a translated packet from the node's address failed otherwise (no route, blackhole, unreachable, prohibit, forwarding off at the ingress interface, a local destination), or its hop could not be written */
	SL_REASON_COUNT			= 39, /* number of reasons; not a reason */
	SL_REASON_FIRST_DROP		= SL_REASON_DROPPED_BY_POLICY, /* the first reason that drops */
};

/* The skb mark a refusal (sl_refuse) carries out through the egress hook
 * of the host interface whose client it answers, which passes it without
 * policy or tracking and clears the mark. Packets from outside the node
 * arrive with mark 0, and a workload's lose theirs crossing into the
 * node's namespace, so only the node sets it. */
#define SL_MARK_REFUSAL 0x51ce0001

/* sl_counters is a per-CPU array: the counters of an interface's hook are
 * at SL_COUNTER_INDEX(sl_iface.counter_slot, hook). Slot 0 collects the
 * packets of interfaces that have no state; the runtime gives each
 * interface its own slot from 1 up. An array rather than a hash keyed by
 * ifindex because the verifier inlines its lookup: counting stays a few
 * instructions on every packet's path. */
#define SL_COUNTER_INDEX(slot, hook) ((slot) * SL_HOOK_COUNT + (hook))

/* Value of sl_counters: packets per enum sl_reason, one copy per CPU. */
struct sl_reason_counts {
	__u64	packets[SL_REASON_COUNT];	/* packets per enum sl_reason */
};
SL_ASSERT_SIZE(struct sl_reason_counts, 8 * SL_REASON_COUNT);
