/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Refusals of a service that has no usable backend: the packet is turned
 * into its answer in place and sent back out of the interface it came
 * in by, so the client learns at once instead of timing out. TCP gets a
 * RST (RFC 9293 section 3.10.7.1), UDP an ICMP or ICMPv6 port unreachable
 * quoting the packet's start (RFC 792, RFC 4443). */
#pragma once

#include <linux/ipv6.h>

#include "parse.h"

/* The codes of a port unreachable (RFC 792, RFC 4443): type
 * SL_ICMP_DEST_UNREACH or SL_ICMP6_DEST_UNREACH. */
#define SL_ICMP_PORT_UNREACH	3
#define SL_ICMP6_PORT_UNREACH	4

/* The TTL and hop limit of an answer: Linux's default. */
#define SL_REJECT_TTL 64

/* What of the refused packet an ICMP error quotes: the IPv4 header
 * (without options) and 8 bytes of its L4 header, or the first 48 bytes
 * of an IPv6 packet, which RFC 4443 allows (any prefix that fits). */
#define SL_QUOTE4_LEN	28
#define SL_QUOTE6_LEN	48

/* sl_csum_fold folds a bpf_csum_diff sum into a checksum. */
SL_INLINE __u16 sl_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/* sl_csum_add adds len bytes (a multiple of 4) at p to a running sum. */
SL_INLINE __s64 sl_csum_add(__s64 sum, void *p, __u32 len)
{
	return bpf_csum_diff(NULL, 0, p, len, (__u32)sum);
}

/* The IPv6 pseudo-header of an upper-layer checksum (RFC 8200 8.1). */
struct sl_pseudo6 {
	__u8	saddr[16] SL_ADDR_ALIGNED;
	__u8	daddr[16];
	__be32	len;
	__u8	zero[3];
	__u8	next;
};
SL_ASSERT_SIZE(struct sl_pseudo6, 40);

/* The IPv4 pseudo-header (RFC 9293 3.1). */
struct sl_pseudo4 {
	__be32	saddr;
	__be32	daddr;
	__u8	zero;
	__u8	proto;
	__be16	len;
};
SL_ASSERT_SIZE(struct sl_pseudo4, 12);

/* sl_reject_eth writes the answer's Ethernet header: the addresses
 * swapped, the EtherType kept. */
SL_INLINE int sl_reject_eth(struct __sk_buff *skb, struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, eth, sizeof(*eth), 0);
}

/* sl_reject_ip4 fills the answer's IPv4 header, from the refused packet's
 * destination back to its source, with its checksum. */
SL_INLINE void sl_reject_ip4(struct iphdr *ip, const struct sl_pkt *pkt, __u8 proto, __u16 len)
{
	__builtin_memset(ip, 0, sizeof(*ip));
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(len);
	ip->ttl = SL_REJECT_TTL;
	ip->protocol = proto;
	ip->saddr = ((const __be32 *)pkt->daddr)[3];
	ip->daddr = ((const __be32 *)pkt->saddr)[3];
	ip->check = sl_csum_fold(sl_csum_add(0, ip, sizeof(*ip)));
}

/* sl_reject_ip6 fills the answer's IPv6 header, and its pseudo-header for
 * the upper-layer checksum. */
SL_INLINE void sl_reject_ip6(struct ipv6hdr *ip6, struct sl_pseudo6 *ph, const struct sl_pkt *pkt,
			     __u8 next, __u16 payload)
{
	__builtin_memset(ip6, 0, sizeof(*ip6));
	ip6->version = 6;
	ip6->payload_len = bpf_htons(payload);
	ip6->nexthdr = next;
	ip6->hop_limit = SL_REJECT_TTL;
	sl_addr_copy(ip6->saddr.in6_u.u6_addr8, pkt->daddr);
	sl_addr_copy(ip6->daddr.in6_u.u6_addr8, pkt->saddr);
	__builtin_memset(ph, 0, sizeof(*ph));
	sl_addr_copy(ph->saddr, pkt->daddr);
	sl_addr_copy(ph->daddr, pkt->saddr);
	ph->len = bpf_htonl(payload);
	ph->next = next;
}

/* sl_reject_tcp_hdr fills the RST that answers tcp, which carried
 * payload bytes: a segment with ACK is answered at its acknowledgment
 * number; one without, at sequence 0 acknowledging all it occupied. */
SL_INLINE void sl_reject_tcp_hdr(struct tcphdr *rst, const struct tcphdr *tcp, __u32 payload)
{
	__builtin_memset(rst, 0, sizeof(*rst));
	rst->source = tcp->dest;
	rst->dest = tcp->source;
	rst->doff = sizeof(*rst) / 4;
	rst->rst = 1;
	if (tcp->ack) {
		rst->seq = tcp->ack_seq;
		return;
	}
	rst->ack = 1;
	rst->ack_seq = bpf_htonl(bpf_ntohl(tcp->seq) + payload + tcp->syn + tcp->fin);
}

/* The ICMP message of an IPv4 port unreachable: header and quote. */
struct sl_unreach4 {
	struct sl_icmphdr icmp;
	__u8		quote[SL_QUOTE4_LEN];
};
SL_ASSERT_SIZE(struct sl_unreach4, 36);

/* The ICMPv6 message of an IPv6 port unreachable. */
struct sl_unreach6 {
	struct sl_icmphdr icmp;
	__u8		quote[SL_QUOTE6_LEN];
};
SL_ASSERT_SIZE(struct sl_unreach6, 56);

/* The answer's headers while they are built: in a per-CPU map value
 * (the including object's sl_reject_scratch), since the main path's
 * stack has no room for them. Each answer uses some of the fields. */
struct sl_reject_scratch {
	struct ethhdr		eth;
	__u8			pad[2];
	struct iphdr		ip;
	struct ipv6hdr		ip6;
	struct sl_pseudo4	ph4;
	struct sl_pseudo6	ph6;
	struct tcphdr		tcp;
	struct tcphdr		rst;
	struct sl_unreach4	msg4;
	struct sl_unreach6	msg6;
};

/* sl_reject_answerable says whether the refused packet, whose Ethernet
 * header is in eth, may be answered at all. Only a frame sent to one
 * station from one: a frame to a group address (broadcast, multicast)
 * reaches every node of the link, each of which would answer, and a
 * group source address would make the answer a group frame. Only a
 * source address that names one host (RFC 1122 3.2.2 and 4.2.3.10, RFC
 * 4443 2.4 (e)): not unspecified, loopback, multicast, IPv4's limited
 * broadcast or reserved class E; anything else reflects the answer to a
 * whole group, or nowhere. Linux's own RST and port unreachable obey the
 * same rules. */
SL_INLINE bool sl_reject_answerable(const struct sl_pkt *pkt, const struct ethhdr *eth, bool v6)
{
	const __be32 *w = (const __be32 *)pkt->saddr;
	__u8 first = v6 ? pkt->saddr[0] : pkt->saddr[12];

	if ((eth->h_dest[0] & 1) || (eth->h_source[0] & 1))
		return false;
	if (!v6)
		/* 0/8, 127/8, and 224/4 and 240/4 (255.255.255.255 included). */
		return first != 0 && first != 127 && first < 224;
	if (first == 0xff)
		return false;
	/* :: and ::1. */
	return !(w[0] == 0 && w[1] == 0 && w[2] == 0 && (w[3] == 0 || w[3] == bpf_htonl(1)));
}

/* sl_reject_tcp turns a TCP segment into its RST. Returns 0, or -1 for a
 * segment no RST answers (a RST) or one that could not be rewritten. */
SL_INLINE int sl_reject_tcp(struct __sk_buff *skb, const struct sl_pkt *pkt, bool v6,
			    struct sl_reject_scratch *sc)
{
	__u32 ip_hlen = v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__s64 sum;

	if (bpf_skb_load_bytes(skb, pkt->l4_off, &sc->tcp, sizeof(sc->tcp)))
		return -1;
	if (sc->tcp.rst)
		return -1;
	sl_reject_tcp_hdr(&sc->rst, &sc->tcp, pkt->l4_len - sc->tcp.doff * 4);
	if (bpf_skb_change_tail(skb, ETH_HLEN + ip_hlen + sizeof(sc->rst), 0) || sl_reject_eth(skb, &sc->eth))
		return -1;
	if (v6) {
		sl_reject_ip6(&sc->ip6, &sc->ph6, pkt, IPPROTO_TCP, sizeof(sc->rst));
		sum = sl_csum_add(0, &sc->ph6, sizeof(sc->ph6));
		sc->rst.check = sl_csum_fold(sl_csum_add(sum, &sc->rst, sizeof(sc->rst)));
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &sc->ip6, sizeof(sc->ip6), 0))
			return -1;
	} else {
		sl_reject_ip4(&sc->ip, pkt, IPPROTO_TCP, sizeof(sc->ip) + sizeof(sc->rst));
		__builtin_memset(&sc->ph4, 0, sizeof(sc->ph4));
		sc->ph4.saddr = sc->ip.saddr;
		sc->ph4.daddr = sc->ip.daddr;
		sc->ph4.proto = IPPROTO_TCP;
		sc->ph4.len = bpf_htons(sizeof(sc->rst));
		sum = sl_csum_add(0, &sc->ph4, sizeof(sc->ph4));
		sc->rst.check = sl_csum_fold(sl_csum_add(sum, &sc->rst, sizeof(sc->rst)));
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &sc->ip, sizeof(sc->ip), 0))
			return -1;
	}
	return bpf_skb_store_bytes(skb, ETH_HLEN + ip_hlen, &sc->rst, sizeof(sc->rst), 0);
}

/* sl_reject_udp4 turns an IPv4 datagram into an ICMP port unreachable.
 * A header with options would not fit the quote whole: -1. */
SL_INLINE int sl_reject_udp4(struct __sk_buff *skb, const struct sl_pkt *pkt, struct sl_reject_scratch *sc)
{
	struct sl_unreach4 *msg = &sc->msg4;

	if (pkt->l4_off != ETH_HLEN + sizeof(struct iphdr))
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, msg->quote, sizeof(msg->quote)))
		return -1;
	__builtin_memset(&msg->icmp, 0, sizeof(msg->icmp));
	msg->icmp.type = SL_ICMP_DEST_UNREACH;
	msg->icmp.code = SL_ICMP_PORT_UNREACH;
	msg->icmp.checksum = sl_csum_fold(sl_csum_add(0, msg, sizeof(*msg)));
	sl_reject_ip4(&sc->ip, pkt, IPPROTO_ICMP, sizeof(sc->ip) + sizeof(*msg));
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(sc->ip) + sizeof(*msg), 0) ||
	    sl_reject_eth(skb, &sc->eth) || bpf_skb_store_bytes(skb, ETH_HLEN, &sc->ip, sizeof(sc->ip), 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(sc->ip), msg, sizeof(*msg), 0);
}

/* sl_reject_udp6 turns an IPv6 datagram into an ICMPv6 port unreachable. */
SL_INLINE int sl_reject_udp6(struct __sk_buff *skb, const struct sl_pkt *pkt, struct sl_reject_scratch *sc)
{
	struct sl_unreach6 *msg = &sc->msg6;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, msg->quote, sizeof(msg->quote)))
		return -1;
	__builtin_memset(&msg->icmp, 0, sizeof(msg->icmp));
	msg->icmp.type = SL_ICMP6_DEST_UNREACH;
	msg->icmp.code = SL_ICMP6_PORT_UNREACH;
	sl_reject_ip6(&sc->ip6, &sc->ph6, pkt, IPPROTO_ICMPV6, sizeof(*msg));
	sum = sl_csum_add(0, &sc->ph6, sizeof(sc->ph6));
	msg->icmp.checksum = sl_csum_fold(sl_csum_add(sum, msg, sizeof(*msg)));
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(sc->ip6) + sizeof(*msg), 0) ||
	    sl_reject_eth(skb, &sc->eth) || bpf_skb_store_bytes(skb, ETH_HLEN, &sc->ip6, sizeof(sc->ip6), 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(sc->ip6), msg, sizeof(*msg), 0);
}

/* sl_reject turns a packet for a service without a usable backend into
 * its answer, built in sc: 0, or -1 when none can be sent (SCTP, a RST,
 * an IPv4 header with options, a packet sl_reject_answerable refuses to
 * answer, or a failed rewrite); the caller drops it then. The answers'
 * builders find the packet's Ethernet header in sc->eth. */
SL_INLINE int sl_reject(struct __sk_buff *skb, const struct sl_pkt *pkt, bool v6, struct sl_reject_scratch *sc)
{
	if (bpf_skb_load_bytes(skb, 0, &sc->eth, sizeof(sc->eth)) || !sl_reject_answerable(pkt, &sc->eth, v6))
		return -1;
	if (pkt->proto == IPPROTO_TCP)
		return sl_reject_tcp(skb, pkt, v6, sc);
	if (pkt->proto != IPPROTO_UDP)
		return -1;
	return v6 ? sl_reject_udp6(skb, pkt, sc) : sl_reject_udp4(skb, pkt, sc);
}
