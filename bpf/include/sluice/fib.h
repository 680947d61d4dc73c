/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Redirects past the host's routing: the FIB step of the service stage,
 * and Local redirect (SL_IFACE_REDIRECT_LOCAL).
 *
 * The FIB step: a packet that translation gave one of the node's own
 * addresses as its source is routed by the hook that translated it
 * (bpf_fib_lookup) and sent out with bpf_redirect_neigh, not handed to
 * the stack. The packets: the client's source-NATed to the node, a reply
 * reverse-NATed to come from a NodePort, and an ICMP error about a NAT
 * flow translated to come from one.
 *
 * Why: Linux's IPv4 input route (ip_route_input_slow) validates a
 * packet's source (fib_validate_source), and a source that is a local
 * address (a route of type RTN_LOCAL) is refused as a martian unless the
 * interface it arrived on has accept_local. Source NAT at an uplink's
 * ingress hook (a NodePort to a backend elsewhere), and the reverse NAT of
 * a reply to a NodePort client (its source becomes the node address the
 * client sent to) make exactly such packets. A redirected packet never
 * takes the input route: it goes to the egress of the interface the FIB
 * names, whose TC egress hook (its policy included) still runs. IPv6 has
 * no such check; it takes the same path so that both families behave
 * alike. */
#pragma once

#include <linux/ip.h>
#include <linux/ipv6.h>

#include "counters_map.h"
#include "lb_maps.h"
#include "rewrite.h"

#define SL_AF_INET	2
#define SL_AF_INET6	10
#define SL_LOOPBACK_IFINDEX 1

/* sl_fib_redirect's answer for a packet whose source is not the node's. */
#define SL_FIB_NOT_NODE (-1)

/* sl_fib_redirect's answer for a packet it drops: the reason, negated.
 * Drop reasons are above 1, so none is SL_FIB_NOT_NODE. */
#define SL_FIB_DROP(reason) (-(int)(reason))
SL_ASSERT(SL_REASON_FIRST_DROP > 1, "a negated drop reason is never SL_FIB_NOT_NODE");

/* BPF_FIB_LOOKUP_MARK (Linux 6.10): the lookup selects routing rules by
 * the mark in struct bpf_fib_lookup (its input shares the bytes of smac,
 * an output), as ip rule's fwmark does. The build's uapi header predates
 * the flag and the field; a kernel without them refuses the flag with
 * -EINVAL, so the runtime probes it (sl_fib_mark). */
#define SL_FIB_LOOKUP_MARK (1U << 5)

/* Nonzero when the running kernel's bpf_fib_lookup takes
 * SL_FIB_LOOKUP_MARK: the FIB step then passes the skb's mark, so ip
 * rules with fwmark choose a redirected packet's route as they would a
 * forwarded one's. Set by the runtime, which probes the flag
 * (datapath.HaveFIBLookupMark), before it loads the object. */
volatile const __u32 sl_fib_mark = 0;

/* The 16-bit word of the IPv4 header that holds the TTL (its high byte)
 * and the protocol, which the header checksum covers. */
#define SL_IP4_TTL_OFF		(ETH_HLEN + 8)
#define SL_IP6_HOPLIMIT_OFF	(ETH_HLEN + 7)

/* sl_fib_ports fills fib's ports from the L4 header at off, for the
 * protocols that have them: policy routing may select on ports. */
SL_INLINE void sl_fib_ports(struct __sk_buff *skb, struct bpf_fib_lookup *fib, __u32 off)
{
	__be16 ports[2];

	if (fib->l4_protocol != IPPROTO_TCP && fib->l4_protocol != IPPROTO_UDP &&
	    fib->l4_protocol != SL_IPPROTO_SCTP)
		return;
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return;
	fib->sport = ports[0];
	fib->dport = ports[1];
}

/* sl_fib_lookup_drop is the reason a FIB answer other than success
 * drops the packet for. */
SL_INLINE int sl_fib_lookup_drop(long rc)
{
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return SL_FIB_DROP(SL_REASON_DROPPED_FIB_MTU);
	return SL_FIB_DROP(SL_REASON_DROPPED_FIB_NO_ROUTE);
}

/* sl_fib_redirect routes a translated packet at an ingress hook when its
 * source, as translated, is one of the node's addresses (route
 * SL_ROUTE_LOCAL_HOST): on a FIB success it decrements the TTL (hop
 * limit) as forwarding would and redirects to the FIB's interface with
 * its next hop (bpf_redirect_neigh). A packet the step is not for (at
 * loopback, or from a source that is not the node's) is SL_FIB_NOT_NODE:
 * the caller goes on as without the step (to Local redirect, say). Every
 * other end is a drop, SL_FIB_DROP of its reason: a TTL that expires here
 * (SL_REASON_DROPPED_FIB_TTL), a packet past the MTU
 * (SL_REASON_DROPPED_FIB_MTU), any other FIB answer
 * (SL_REASON_DROPPED_FIB_NO_ROUTE). The stack cannot take such a packet:
 * its IPv4 input route drops a local source as a martian unless
 * accept_local is set, and its ICMP error would quote the translated
 * header, which the packet's sender never sent. The caller counts the
 * packet (datapath.c's sl_fib_verdict). When the kernel takes it
 * (sl_fib_mark), the lookup passes the skb's mark for policy routing. A
 * global function: its lookup parameters stay out of the calling frame,
 * and the verifier checks it once. */
__noinline int sl_fib_redirect(struct __sk_buff *skb, __u32 v6)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	__u8 saddr[16] SL_ADDR_ALIGNED;
	const struct sl_route *src;
	__u32 flags = BPF_FIB_LOOKUP_SKIP_NEIGH;
	__u16 old_word, new_word;
	__u8 ttl;
	long rc;

	/* Loopback (ifindex 1 in every namespace) carries the node's own
	 * packets, which the stack delivers here and never forwards. */
	if (!skb || skb->ingress_ifindex <= SL_LOOPBACK_IFINDEX)
		return SL_FIB_NOT_NODE;
	fib.ifindex = skb->ingress_ifindex;
	if (v6) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return SL_FIB_NOT_NODE;
		__builtin_memcpy(saddr, &ip6.saddr, 16);
		fib.family = SL_AF_INET6;
		fib.flowinfo = *(__be32 *)&ip6 & bpf_htonl(0x0fffffff);
		fib.l4_protocol = ip6.nexthdr;
		if (!skb->gso_size)
			fib.tot_len = bpf_ntohs(ip6.payload_len) + sizeof(ip6);
		__builtin_memcpy(fib.ipv6_src, &ip6.saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6.daddr, 16);
		sl_fib_ports(skb, &fib, ETH_HLEN + sizeof(ip6));
		ttl = ip6.hop_limit;
	} else {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return SL_FIB_NOT_NODE;
		sl_addr_set4(saddr, ip.saddr);
		fib.family = SL_AF_INET;
		fib.tos = ip.tos;
		fib.l4_protocol = ip.protocol;
		if (!skb->gso_size)
			fib.tot_len = bpf_ntohs(ip.tot_len);
		fib.ipv4_src = ip.saddr;
		fib.ipv4_dst = ip.daddr;
		sl_fib_ports(skb, &fib, ETH_HLEN + ip.ihl * 4);
		ttl = ip.ttl;
	}
	src = sl_route_of(saddr);
	if (!src || !(src->flags & SL_ROUTE_LOCAL_HOST))
		return SL_FIB_NOT_NODE;
	/* Forwarding would send a time exceeded quoting the translated
	 * header; the drop is counted instead. */
	if (ttl <= 1)
		return SL_FIB_DROP(SL_REASON_DROPPED_FIB_TTL);
	if (sl_fib_mark) {
		__u32 mark = skb->mark;

		/* The input mark is where the output smac goes. */
		__builtin_memcpy(fib.smac, &mark, sizeof(mark));
		flags |= SL_FIB_LOOKUP_MARK;
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), flags);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return sl_fib_lookup_drop(rc);
	ttl--;
	if (v6) {
		if (bpf_skb_store_bytes(skb, SL_IP6_HOPLIMIT_OFF, &ttl, 1, 0))
			return SL_FIB_DROP(SL_REASON_DROPPED_FIB_NO_ROUTE);
	} else {
		if (bpf_skb_load_bytes(skb, SL_IP4_TTL_OFF, &old_word, 2))
			return SL_FIB_DROP(SL_REASON_DROPPED_FIB_NO_ROUTE);
		new_word = old_word;
		*(__u8 *)&new_word = ttl;
		if (bpf_l3_csum_replace(skb, SL_IP4_CSUM_OFF, old_word, new_word, 2) ||
		    bpf_skb_store_bytes(skb, SL_IP4_TTL_OFF, &new_word, 2, 0))
			return SL_FIB_DROP(SL_REASON_DROPPED_FIB_NO_ROUTE);
	}
	/* The next hop's family is the FIB's answer, not the packet's: an
	 * IPv4 route may have an IPv6 gateway (RFC 5549), which the lookup
	 * returns in ipv6_dst with family AF_INET6. */
	if (fib.family == SL_AF_INET6) {
		nh.nh_family = SL_AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
	} else {
		nh.nh_family = SL_AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
	}
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

/* sl_redirect_local passes an established packet (counted so) and, when
 * its destination, as translated, is a local workload behind another
 * interface, sends it straight to that interface's egress with its
 * neighbour resolved (bpf_redirect_neigh), past the host's routing and
 * netfilter. A real function: it runs on the path of interfaces that ask
 * for it only, and its route key stays out of the main frame. */
static __noinline int sl_redirect_local(struct __sk_buff *skb, __u32 counters, bool v6)
{
	__u8 daddr[16] SL_ADDR_ALIGNED;
	const struct sl_route *dst;

	sl_count(counters, SL_REASON_ACCEPTED_ESTABLISHED);
	if (v6) {
		if (bpf_skb_load_bytes(skb, SL_IP6_DADDR_OFF, daddr, 16))
			return TC_ACT_OK;
	} else {
		__be32 a;

		if (bpf_skb_load_bytes(skb, SL_IP4_DADDR_OFF, &a, 4))
			return TC_ACT_OK;
		sl_addr_set4(daddr, a);
	}
	dst = sl_route_of(daddr);
	if (!dst || !(dst->flags & SL_ROUTE_LOCAL_WORKLOAD) || dst->ifindex == skb->ifindex)
		return TC_ACT_OK;
	return bpf_redirect_neigh(dst->ifindex, NULL, 0, 0);
}
