/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ICMP and ICMPv6 errors related to a tracked flow: an error that quotes
 * a packet of a flow passing the hook the error is at, in the direction
 * the error travels, passes as that flow's packets do. Works on the
 * conntrack tables through ct_ops.h. */
#pragma once

#include "ct_ops.h"
#include "parse6.h"
#include "rewrite.h"

/* The largest ICMPv4 error that passes as related: RFC 1812 bounds an
 * error to 576 bytes, and Linux sends no more. Anything larger carries
 * bytes no router would quote. */
#define SL_ICMP_ERROR_MAX_LEN 576

/* The largest ICMPv6 error that passes as related: RFC 4443 bounds an
 * error to the minimum IPv6 MTU. */
#define SL_ICMP6_ERROR_MAX_LEN 1280

/* sl_related_flow returns the entry of the tracked flow that the packet
 * an ICMP or ICMPv6 error quotes belongs to, from inner_src to inner_dst
 * with protocol proto and L4 header l4 (8 bytes readable), if the flow's
 * opposite direction passes this hook (the error travels back towards
 * the quoted packet's source, so it passes where the flow's replies
 * pass); else NULL. *key, *dir and *via_stub are the lookup's
 * (sl_ct_lookup). */
SL_INLINE struct sl_ct_value *sl_related_flow(struct __sk_buff *skb, void *live, enum sl_hook hook,
					      __u8 proto, const __u8 *inner_src, const __u8 *inner_dst,
					      const __u8 *l4, struct sl_ct_key *key, enum sl_ct_dir *dir,
					      bool *via_stub)
{
	struct sl_ct_value *ct;
	__u16 sport = 0, dport = 0;

	if (proto == IPPROTO_TCP || sl_ported_header_len(proto)) {
		sport = bpf_ntohs(*(__be16 *)l4);
		dport = bpf_ntohs(*(__be16 *)(l4 + 2));
	} else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		if (!sl_icmp_any_echo(proto, l4[0]))
			return NULL;
		sl_ct_echo_ports(sl_icmp_any_request(proto, l4[0]), bpf_ntohs(*(__be16 *)(l4 + 4)),
				 &sport, &dport);
	}
	*dir = sl_ct_key_fill(key, proto, inner_src, sport, inner_dst, dport);
	ct = sl_ct_lookup(live, key, dir, via_stub);
	return ct && sl_ct_passes(ct, !*dir, skb->ifindex, hook) ? ct : NULL;
}

/* Where an ICMP error's quote sits: offsets from skb->data. */
struct sl_quote {
	__u32	icmp_csum;	/* the error's own checksum */
	__u32	ip;		/* the quoted IP header */
	__u32	l4;		/* the quoted L4 header */
	__u32	l4_csum;	/* the quoted L4 checksum, 0 when the quote lacks it or (UDP) it is 0 */
	__u32	quoted;		/* bytes of the quote from its IP header on */
	__u8	proto;		/* the quoted protocol */
};

/* sl_quote_csum_off returns the offset of the quoted L4 checksum, or 0
 * when the quote stops before it or UDP carried none. */
SL_INLINE __u32 sl_quote_csum_off(struct __sk_buff *skb, const struct sl_quote *q)
{
	__u32 at = q->proto == IPPROTO_TCP ? SL_TCP_CSUM_OFF : SL_UDP_CSUM_OFF;
	__u16 csum;

	if (q->proto != IPPROTO_TCP && q->proto != IPPROTO_UDP)
		return 0;
	if (q->l4 - q->ip + at + 2 > q->quoted)
		return 0;
	if (bpf_skb_load_bytes(skb, q->l4 + at, &csum, 2))
		return 0;
	return q->proto == IPPROTO_UDP && csum == 0 ? 0 : q->l4 + at;
}

/* sl_quote_csum_update applies diff to the checksum at csum (not 0),
 * and what that does to the field's bytes to the error's own checksum,
 * which covers them. */
SL_INLINE int sl_quote_csum_update(struct __sk_buff *skb, const struct sl_quote *q, __u32 csum, __s64 diff)
{
	__u16 before, after;

	if (bpf_skb_load_bytes(skb, csum, &before, 2) || bpf_l3_csum_replace(skb, csum, 0, diff, 0) ||
	    bpf_skb_load_bytes(skb, csum, &after, 2))
		return -1;
	return bpf_l3_csum_replace(skb, q->icmp_csum, before, after, 2);
}

/* sl_quote_fix replaces len bytes (2, 4 or 16) of the quote at off, from
 * from to to (each padded with zeros to a multiple of 4 bytes), keeping
 * valid the checksums that cover them: the quoted IPv4 header's (ip_csum)
 * for its addresses, the quoted L4 checksum for the addresses and ports
 * (its pseudo-header), and the error's own. */
SL_INLINE int sl_quote_fix(struct __sk_buff *skb, const struct sl_quote *q, __u32 off,
			   const __be32 *from, const __be32 *to, __u32 len, bool ip_csum)
{
	__u32 words = len == 16 ? 16 : 4;
	__s64 diff = bpf_csum_diff((__be32 *)from, words, (__be32 *)to, words, 0);

	if (ip_csum && sl_quote_csum_update(skb, q, q->ip + 10, diff))
		return -1;
	if (q->l4_csum && sl_quote_csum_update(skb, q, q->l4_csum, diff))
		return -1;
	if (bpf_l3_csum_replace(skb, q->icmp_csum, 0, diff, 0))
		return -1;
	return bpf_skb_store_bytes(skb, off, to, len, 0);
}

/* sl_related_snat translates the source-NATed side of an error about a
 * source-NATed flow. To the client (to_client: the error quotes the
 * node's packet to the backend), the quote's source and the error's
 * destination become the client's; to the backend (the client's error
 * about a reply), the quote's destination and the error's source become
 * the node's address and port that stand in for the client. */
SL_INLINE int sl_related_snat(struct __sk_buff *skb, const struct sl_pkt *pkt, const struct sl_quote *q,
			      bool v6, const struct sl_ct_value *ct, const struct sl_ct_key *key, bool to_client)
{
	__u32 alen = v6 ? 16 : 4, aoff = v6 ? 8 : 12, word = v6 ? 0 : 3;
	const __u8 *node, *client;
	__u16 node_port, client_port;
	__be32 np = 0, cp = 0;

	sl_ct_nat_side(ct, key, true, &node, &node_port);
	sl_ct_nat_origin(ct, &client, &client_port);
	*(__be16 *)&np = bpf_htons(node_port);
	*(__be16 *)&cp = bpf_htons(client_port);
	if (to_client) {
		if (sl_quote_fix(skb, q, q->ip + aoff, (const __be32 *)node + word, (const __be32 *)client + word,
				 alen, !v6) ||
		    sl_quote_fix(skb, q, q->l4, &np, &cp, 2, false))
			return -1;
		return sl_rewrite_addr(skb, v6, false, v6 ? q->icmp_csum : 0, 0, pkt->daddr, client);
	}
	if (sl_quote_fix(skb, q, q->ip + aoff + alen, (const __be32 *)client + word, (const __be32 *)node + word,
			 alen, !v6) ||
	    sl_quote_fix(skb, q, q->l4 + 2, &cp, &np, 2, false))
		return -1;
	return sl_rewrite_addr(skb, v6, true, v6 ? q->icmp_csum : 0, 0, pkt->saddr, node);
}

/* sl_related_nat translates an ICMP or ICMPv6 error about a NAT flow (ct,
 * its reverse entry under key; dir the quoted packet's direction there),
 * so that each end sees the flow as it knows it. An error quoting the
 * client's translated packet (client to backend, found under the reverse
 * entry's own key) travels to the client: the quote's destination goes
 * back to the frontend, and the error's source too when the backend sent
 * it. An error quoting the translated reply (frontend to client, found
 * through the stub) travels to the frontend: it is sent on to the
 * backend, and the quote's source becomes the backend. Returns 0, or -1
 * when the error could not be rewritten. */
SL_INLINE int sl_related_nat(struct __sk_buff *skb, const struct sl_pkt *pkt, const struct sl_quote *q,
			     bool v6, const struct sl_ct_value *ct, const struct sl_ct_key *key,
			     enum sl_ct_dir dir, bool via_stub)
{
	bool from_client = dir == sl_ct_client_dir(ct);
	__u32 alen = v6 ? 16 : 4, aoff = v6 ? 8 : 12, outer_csum = v6 ? q->icmp_csum : 0;
	const __be32 *be, *fe = (const __be32 *)ct->orig_addr;
	__be32 bport = 0, fport = 0;
	const __u8 *backend;
	__u16 port;

	if (from_client == via_stub)
		return 0;
	sl_ct_nat_side(ct, key, false, &backend, &port);
	be = (const __be32 *)backend;
	*(__be16 *)&bport = bpf_htons(port);
	*(__be16 *)&fport = bpf_htons(ct->orig_port);
	if (from_client) {
		/* The quote's destination (and port), backend to frontend. */
		if (sl_quote_fix(skb, q, q->ip + aoff + alen, v6 ? be : &be[3], v6 ? fe : &fe[3], alen, !v6) ||
		    sl_quote_fix(skb, q, q->l4 + 2, &bport, &fport, 2, false))
			return -1;
		if ((ct->flags & SL_CT_F_SNAT) && sl_related_snat(skb, pkt, q, v6, ct, key, true))
			return -1;
		if (!sl_addr_eq(pkt->saddr, backend))
			return 0;
		return sl_rewrite_addr(skb, v6, true, outer_csum, 0, backend, ct->orig_addr);
	}
	/* The quote's source (and port), frontend to backend. */
	if (sl_quote_fix(skb, q, q->ip + aoff, v6 ? fe : &fe[3], v6 ? be : &be[3], alen, !v6) ||
	    sl_quote_fix(skb, q, q->l4, &fport, &bport, 2, false))
		return -1;
	if ((ct->flags & SL_CT_F_SNAT) && sl_related_snat(skb, pkt, q, v6, ct, key, false))
		return -1;
	return sl_rewrite_addr(skb, v6, false, outer_csum, 0, ct->orig_addr, backend);
}

/* sl_related_quote decides an error whose quote q, from inner_src to
 * inner_dst with L4 header l4, is well formed: related when it is of a
 * flow that passes here (sl_related_flow), and then, for a NAT flow,
 * translated (sl_related_nat); an error that cannot be is not related. */
SL_INLINE bool sl_related_quote(struct __sk_buff *skb, void *live, const struct sl_pkt *pkt,
				enum sl_hook hook, struct sl_quote *q, bool v6, const __u8 *inner_src,
				const __u8 *inner_dst, const __u8 *l4)
{
	struct sl_ct_value *ct;
	struct sl_ct_key key;
	enum sl_ct_dir dir;
	bool via_stub;

	ct = sl_related_flow(skb, live, hook, q->proto, inner_src, inner_dst, l4, &key, &dir, &via_stub);
	if (!ct)
		return false;
	if (ct->type != SL_CT_NAT_REV)
		return true;
	q->l4_csum = sl_quote_csum_off(skb, q);
	return sl_related_nat(skb, pkt, q, v6, ct, &key, dir, via_stub) == 0;
}

/* sl_related says whether an ICMP error quotes a packet of a tracked flow
 * that the error's destination sent, and may pass this hook as that flow's
 * packets would (sl_related_flow). The quote is an IPv4 header, options
 * included, and at least 8 bytes of its L4 header, and no more than the
 * quoted packet held. Anything else makes the error unrelated, and it goes
 * through policy as ICMP. */
SL_INLINE bool sl_related(struct __sk_buff *skb, void *live, const struct sl_pkt *pkt,
			  enum sl_hook hook, __u8 *inner_src, __u8 *inner_dst, struct sl_quote *q)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off;
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
	q->icmp_csum = off + 2;
	q->ip = off + 8;
	q->l4 = off + 8 + ihl;
	q->quoted = pkt->l4_len - 8;
	q->proto = in->protocol;
	return sl_related_quote(skb, live, pkt, hook, q, false, inner_src, inner_dst, l4);
}

/* sl_related6 is sl_related for ICMPv6 errors. The quote is an IPv6
 * header followed directly by at least 8 bytes of its L4 header: a quote
 * whose packet had extension headers is unrelated and goes to policy.
 * The error is at most 1280 bytes, not a fragment, and quotes no more than
 * the quoted packet held; an IPv4-mapped quoted address is never related. */
SL_INLINE bool sl_related6(struct __sk_buff *skb, void *live, const struct sl_pkt *pkt,
			   enum sl_hook hook, __u8 *inner_src, __u8 *inner_dst, struct sl_quote *q)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off;
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
	q->icmp_csum = off + 2;
	q->ip = off + 8;
	q->l4 = off + 8 + sizeof(*in);
	q->quoted = pkt->l4_len - 8;
	q->proto = in->nexthdr;
	return sl_related_quote(skb, live, pkt, hook, q, true, inner_src, inner_dst, l4);
}
