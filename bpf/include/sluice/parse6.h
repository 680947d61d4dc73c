/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv6 parsing for the TC datapath (and the XDP program), at interfaces with
 * SL_IFACE_ENFORCE_IPV6: the fixed header, a bounded chain of extension
 * headers, and neighbour discovery. What follows the chain (TCP, UDP,
 * ICMPv6, ...) is sl_parse_l4's, as for IPv4, so one path serves both
 * families from there on. */
#pragma once

#include <linux/ipv6.h>

#include "parse.h"

/* Extension headers the chain walk knows (RFC 8200 section 4, RFC 4302). */
#define SL_IP6_HOPOPTS		0	/* hop-by-hop options: only first */
#define SL_IP6_ROUTING		43	/* routing header */
#define SL_IP6_FRAGMENT		44	/* fragment header, 8 bytes */
#define SL_IP6_AH		51	/* authentication header, length in 4-byte words less 2 */
#define SL_IP6_DSTOPTS		60	/* destination options */

#define SL_IP6_FRAG_OFFSET	0xfff8	/* fragment header bytes 2-3: offset in 8-byte units, shifted by 3 */
#define SL_IP6_FRAG_MF		0x0001	/* fragment header bytes 2-3: more fragments */

/* sl_parse6_result packs what the global function sl_parse_ipv6 returns:
 * an enum sl_parse_rc and, for SL_PARSE_VERDICT, the enum sl_reason. A
 * global function returns one scalar; its pointer argument is the packet. */
#define SL_PARSE6_RESULT(rc, reason)	((int)(rc) | ((int)(reason) << 8))
#define SL_PARSE6_RC(result)		((enum sl_parse_rc)((result) & 0xff))
#define SL_PARSE6_REASON(result)	((enum sl_reason)(((result) >> 8) & 0xff))

/* sl_ip6_is_ext says whether a next-header value is an extension header
 * the chain walk steps over. ESP (50), "no next header" (59) and anything
 * unknown end the chain and are the packet's L4 protocol, without ports:
 * policy matches them by protocol alone. */
SL_INLINE bool sl_ip6_is_ext(__u8 next)
{
	return next == SL_IP6_HOPOPTS || next == SL_IP6_ROUTING || next == SL_IP6_FRAGMENT ||
	       next == SL_IP6_AH || next == SL_IP6_DSTOPTS;
}

/* sl_parse_ipv6_at parses the IPv6 header at ETH_HLEN of a frame of len
 * bytes, [data, end) of ctx (an xdp_md when xdp, a constant, else an skb),
 * and walks its chain of extension headers into *pkt, as sl_parse_ipv4
 * does for IPv4. Its callers are global (not inlined) functions, one per
 * context type (sl_parse_ipv6 and the XDP program's): the verifier checks
 * the loop once, not once per path of the programs that call it. It
 * returns SL_PARSE6_RESULT(rc, reason):
 *
 *   - SL_PARSE_OK: addresses, protocol and L4 offset and length are set;
 *   - SL_PARSE_LATER_FRAGMENT: a fragment past the first, with
 *     SL_IFACE_PASS_FRAGMENTS; its addresses are set;
 *   - SL_PARSE_VERDICT and the reason that decides the packet.
 *
 * The chain: at most SL_IP6_EXT_MAX headers and SL_IP6_CHAIN_MAX bytes,
 * else SL_REASON_DROPPED_IPV6_CHAIN_LONG. A header past the payload, a
 * hop-by-hop header that is not first, a second fragment header or a
 * type 0 routing header with segments left (RFC 5095) is
 * SL_REASON_DROPPED_IPV6_EXT. AH is stepped over by its length. A first
 * fragment must hold the whole chain (RFC 7112), and is policed like a
 * packet; an atomic fragment (offset 0, no more fragments) is a packet.
 * A fragment's hop limit is recorded as 0: it is never neighbour
 * discovery. */
SL_INLINE int sl_parse_ipv6_at(void *ctx, void *data, void *end, __u32 len, bool xdp, __u32 iflags,
			       struct sl_pkt *pkt)
{
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	__u32 off = ETH_HLEN + sizeof(*ip6), payload_end;
	bool fragment = false;
	__u8 next;
	int i;

	if (!pkt)
		return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_BAD_HANDOFF);
	if ((void *)(ip6 + 1) > end)
		return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_SHORT);
	if (ip6->version != 6)
		return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_BAD_VERSION);
	payload_end = off + bpf_ntohs(ip6->payload_len);
	/* A payload length of 0 is a jumbogram's, which needs more than the
	 * 64 KiB a TC packet has. */
	if (payload_end == off || payload_end > len)
		return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_BAD_LEN);
	/* An IPv4-mapped address on the wire would share an IPv4 flow's
	 * conntrack key and routes. */
	if (sl_addr_is_v4(ip6->saddr.in6_u.u6_addr8) || sl_addr_is_v4(ip6->daddr.in6_u.u6_addr8))
		return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_IPV4_MAPPED);
	sl_addr_copy(pkt->saddr, ip6->saddr.in6_u.u6_addr8);
	sl_addr_copy(pkt->daddr, ip6->daddr.in6_u.u6_addr8);
	pkt->hop_limit = ip6->hop_limit;
	next = ip6->nexthdr;

	for (i = 0; i < SL_IP6_EXT_MAX; i++) {
		__u8 h[8];
		__u32 len;

		if (!sl_ip6_is_ext(next))
			break;
		if (off + sizeof(h) > payload_end ||
		    (xdp ? bpf_xdp_load_bytes(ctx, off, h, sizeof(h)) : bpf_skb_load_bytes(ctx, off, h, sizeof(h))))
			return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_IPV6_EXT);
		if (next == SL_IP6_FRAGMENT) {
			__u16 frag = ((__u16)h[2] << 8) | h[3];

			if (fragment)
				return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_IPV6_EXT);
			fragment = true;
			len = 8;
			if (frag & (SL_IP6_FRAG_OFFSET | SL_IP6_FRAG_MF)) {
				if (!(iflags & SL_IFACE_PASS_FRAGMENTS))
					return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_FRAGMENT);
				/* After a later fragment's header comes the
				 * datagram's middle, not headers. */
				if (frag & SL_IP6_FRAG_OFFSET)
					return SL_PARSE6_RESULT(SL_PARSE_LATER_FRAGMENT, 0);
				pkt->first_fragment = 1;
			}
		} else if (next == SL_IP6_AH) {
			len = ((__u32)h[1] + 2) * 4;
		} else {
			if (next == SL_IP6_HOPOPTS && i != 0)
				return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_IPV6_EXT);
			/* h[2] is the routing type, h[3] the segments left. */
			if (next == SL_IP6_ROUTING && h[2] == 0 && h[3] != 0)
				return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_IPV6_EXT);
			len = ((__u32)h[1] + 1) * 8;
		}
		if (off + len - (ETH_HLEN + sizeof(*ip6)) > SL_IP6_CHAIN_MAX)
			return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_IPV6_CHAIN_LONG);
		if (off + len > payload_end)
			return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_IPV6_EXT);
		next = h[0];
		off += len;
	}
	if (sl_ip6_is_ext(next))
		return SL_PARSE6_RESULT(SL_PARSE_VERDICT, SL_REASON_DROPPED_IPV6_CHAIN_LONG);
	/* A fragment (an atomic one too) carries no neighbour discovery:
	 * RFC 6980 forbids it and receivers drop it (Linux's
	 * suppress_frag_ndisc), so sl_icmp6_link must not pass it unpoliced.
	 * Its hop limit is not kept, which makes it ordinary ICMPv6. */
	if (fragment)
		pkt->hop_limit = 0;
	pkt->proto = next;
	pkt->l4_off = off;
	pkt->ip_len = payload_end - ETH_HLEN;
	pkt->l4_len = payload_end - off;
	return SL_PARSE6_RESULT(SL_PARSE_OK, 0);
}

/* sl_parse_ipv6 is sl_parse_ipv6_at of an skb. */
__noinline int sl_parse_ipv6(struct __sk_buff *skb, __u32 iflags, struct sl_pkt *pkt)
{
	return sl_parse_ipv6_at(skb, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, false, iflags,
				pkt);
}

/* sl_icmp6_link says whether an ICMPv6 message is one the link needs:
 * neighbour discovery with the hop limit 255 that proves it was not
 * routed (RFC 4861), or multicast listener discovery with its hop limit 1
 * (RFC 2710, 3810). They pass or drop as the interface says, before
 * conntrack and the reverse-path check: their sources are link-local or
 * unspecified, which no route names. Anything else with those types, a
 * fragment's included (sl_parse_ipv6 keeps no hop limit of fragments),
 * is an ordinary ICMPv6 message for policy. */
SL_INLINE bool sl_icmp6_link(const struct sl_pkt *pkt)
{
	__u8 t = pkt->icmp_type;

	if (pkt->proto != IPPROTO_ICMPV6)
		return false;
	if (t >= SL_ICMP6_ROUTER_SOL && t <= SL_ICMP6_REDIRECT)
		return pkt->hop_limit == 255;
	if ((t >= SL_ICMP6_MLD_QUERY && t <= SL_ICMP6_MLD_DONE) || t == SL_ICMP6_MLD2_REPORT)
		return pkt->hop_limit == 1;
	return false;
}

/* sl_nd_reason decides a message sl_icmp6_link accepted: dropped with
 * SL_IFACE_DROP_ND, and a router's messages (advertisements, redirects)
 * are dropped from a workload, which is no router; otherwise passed. */
SL_INLINE enum sl_reason sl_nd_reason(const struct sl_pkt *pkt, enum sl_iface_flags iflags,
				      enum sl_hook hook)
{
	bool from_workload = (iflags & SL_IFACE_WORKLOAD) && hook == SL_HOOK_INGRESS;

	if (iflags & SL_IFACE_DROP_ND)
		return SL_REASON_DROPPED_ND;
	if (from_workload && (pkt->icmp_type == SL_ICMP6_ROUTER_ADV || pkt->icmp_type == SL_ICMP6_REDIRECT))
		return SL_REASON_DROPPED_ND;
	return SL_REASON_ND_PASSED;
}

/* sl_icmp6_is_error says whether an ICMPv6 message is an error that may
 * quote a tracked flow's packet (RFC 4443 types 1 to 4). */
SL_INLINE bool sl_icmp6_is_error(__u8 type)
{
	return type >= SL_ICMP6_DEST_UNREACH && type <= SL_ICMP6_PARAMPROB;
}
