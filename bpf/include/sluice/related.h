/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ICMP and ICMPv6 errors related to a tracked flow: an error that quotes
 * a packet of a flow passing the hook the error is at, in the direction
 * the error travels, passes as that flow's packets do. Works on the
 * conntrack tables through ct_ops.h. */
#pragma once

#include "ct_ops.h"
#include "parse6.h"

/* The largest ICMPv4 error that passes as related: RFC 1812 bounds an
 * error to 576 bytes, and Linux sends no more. Anything larger carries
 * bytes no router would quote. */
#define SL_ICMP_ERROR_MAX_LEN 576

/* The largest ICMPv6 error that passes as related: RFC 4443 bounds an
 * error to the minimum IPv6 MTU. */
#define SL_ICMP6_ERROR_MAX_LEN 1280

/* sl_related_flow says whether the packet an ICMP or ICMPv6 error quotes,
 * from inner_src to inner_dst with protocol proto and L4 header l4 (8
 * bytes readable), belongs to a tracked flow whose opposite direction
 * passes this hook: the error travels back towards the quoted packet's
 * source, so it passes where the flow's replies pass. */
SL_INLINE bool sl_related_flow(struct __sk_buff *skb, void *live, enum sl_hook hook, __u8 proto,
			       const __u8 *inner_src, const __u8 *inner_dst, const __u8 *l4)
{
	struct sl_ct_value *ct;
	struct sl_ct_key key;
	enum sl_ct_dir dir;
	bool via_stub;
	__u16 sport = 0, dport = 0;

	if (proto == IPPROTO_TCP || sl_ported_header_len(proto)) {
		sport = bpf_ntohs(*(__be16 *)l4);
		dport = bpf_ntohs(*(__be16 *)(l4 + 2));
	} else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		if (!sl_icmp_any_echo(proto, l4[0]))
			return false;
		sl_ct_echo_ports(sl_icmp_any_request(proto, l4[0]), bpf_ntohs(*(__be16 *)(l4 + 4)),
				 &sport, &dport);
	}
	dir = sl_ct_key_fill(&key, proto, inner_src, sport, inner_dst, dport);
	ct = sl_ct_lookup(live, &key, &dir, &via_stub);
	return ct && sl_ct_passes(ct, !dir, skb->ifindex, hook);
}

/* sl_related says whether an ICMP error quotes a packet of a tracked flow
 * that the error's destination sent, and may pass this hook as that flow's
 * packets would (sl_related_flow). The quote is an IPv4 header, options
 * included, and at least 8 bytes of its L4 header, and no more than the
 * quoted packet held. Anything else makes the error unrelated, and it goes
 * through policy as ICMP. */
SL_INLINE bool sl_related(struct __sk_buff *skb, void *live, const struct sl_pkt *pkt,
			  enum sl_hook hook)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off;
	__u8 inner_src[16] SL_ADDR_ALIGNED, inner_dst[16] SL_ADDR_ALIGNED;
	struct iphdr *in;
	__u8 *l4;
	__u32 ihl;

	/* A whole error fits in 576 bytes: a fragment of one is judged by
	 * its first piece only, and hides what follows. */
	if (pkt->ip_len > SL_ICMP_ERROR_MAX_LEN || pkt->first_fragment)
		return false;
	if (off > ETH_HLEN + 60 || pkt->l4_len < 8 + sizeof(*in) + 8)
		return false;
	in = data + off + 8;
	if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5)
		return false;
	if (in->frag_off & bpf_htons(SL_IP_OFFSET))
		return false;
	ihl = in->ihl * 4;
	l4 = (__u8 *)in + ihl;
	if (l4 + 8 > (__u8 *)end || 8 + ihl + 8 > pkt->l4_len)
		return false;
	if (pkt->l4_len - 8 > bpf_ntohs(in->tot_len))
		return false;
	sl_addr_set4(inner_src, in->saddr);
	sl_addr_set4(inner_dst, in->daddr);
	if (!sl_addr_eq(inner_src, pkt->daddr))
		return false;
	return sl_related_flow(skb, live, hook, in->protocol, inner_src, inner_dst, l4);
}

/* sl_related6 is sl_related for ICMPv6 errors. The quote is an IPv6
 * header followed directly by at least 8 bytes of its L4 header: a quote
 * whose packet had extension headers is unrelated and goes to policy.
 * The error is at most 1280 bytes, not a fragment, and quotes no more than
 * the quoted packet held; an IPv4-mapped quoted address is never related. */
SL_INLINE bool sl_related6(struct __sk_buff *skb, void *live, const struct sl_pkt *pkt,
			   enum sl_hook hook)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off;
	__u8 inner_src[16] SL_ADDR_ALIGNED, inner_dst[16] SL_ADDR_ALIGNED;
	struct ipv6hdr *in;
	__u8 *l4;

	if (pkt->ip_len > SL_ICMP6_ERROR_MAX_LEN || pkt->first_fragment)
		return false;
	if (off > SL_L4_OFF_MAX || pkt->l4_len < 8 + sizeof(*in) + 8)
		return false;
	in = data + off + 8;
	l4 = (__u8 *)(in + 1);
	if (l4 + 8 > (__u8 *)end || in->version != 6 || sl_ip6_is_ext(in->nexthdr))
		return false;
	if (pkt->l4_len - 8 > sizeof(*in) + bpf_ntohs(in->payload_len))
		return false;
	sl_addr_copy(inner_src, in->saddr.in6_u.u6_addr8);
	sl_addr_copy(inner_dst, in->daddr.in6_u.u6_addr8);
	if (sl_addr_is_v4(inner_src) || sl_addr_is_v4(inner_dst) || !sl_addr_eq(inner_src, pkt->daddr))
		return false;
	return sl_related_flow(skb, live, hook, in->nexthdr, inner_src, inner_dst, l4);
}

/* sl_related_error says whether an ICMP or ICMPv6 error is related to a
 * tracked flow at this hook (sl_related, sl_related6); hook is
 * SL_HOOK_INGRESS or SL_HOOK_EGRESS. An error of the other family's ICMP
 * never is: its quote's source would be of the other family than the
 * error's destination. A global function: the verifier checks it once,
 * and its keys and quoted addresses stay out of the main path's frame. */
__noinline bool sl_related_error(struct __sk_buff *skb, const struct sl_pkt *pkt, __u32 hook)
{
	void *live = sl_ct_table(SL_CT_TABLE_LIVE);
	bool v4;

	if (!skb || !pkt || !live)
		return false;
	hook = hook == SL_HOOK_INGRESS ? SL_HOOK_INGRESS : SL_HOOK_EGRESS;
	v4 = sl_addr_is_v4(pkt->daddr);
	if (v4 && pkt->proto == IPPROTO_ICMP && sl_icmp_is_error(pkt->icmp_type))
		return sl_related(skb, live, pkt, hook);
	if (!v4 && pkt->proto == IPPROTO_ICMPV6 && sl_icmp6_is_error(pkt->icmp_type))
		return sl_related6(skb, live, pkt, hook);
	return false;
}
