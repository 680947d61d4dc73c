/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing for the TC datapath and the XDP program: Ethernet, IPv4
 * (options skipped), TCP, UDP and ICMP. Each step either fills struct
 * sl_pkt or names the reason the packet is dropped or passed unparsed. The
 * steps work on the frame's bytes [data, end) and its length, so that an
 * skb's (the TC wrappers) and an xdp_md's share them. */
#pragma once

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "counters.h"

/* Bytes the parser may read: Ethernet, an IPv4 header with full options,
 * an ICMP header, and the quoted IPv4 header with full options and 8 bytes
 * of its L4 header. Pulled into the linear area when it is not there. */
#define SL_PARSE_LEN (ETH_HLEN + 60 + 8 + 60 + 8)

/* The IPv6 extension-header chain the parser walks: at most this many
 * headers, and this many bytes of them; a longer chain is dropped. */
#define SL_IP6_EXT_MAX		8
#define SL_IP6_CHAIN_MAX	256

/* The furthest an L4 header may start from the frame's start: after an IPv4 header
 * with full options, or an IPv6 header and the longest chain walked. */
#define SL_L4_OFF_MAX (ETH_HLEN + 40 + SL_IP6_CHAIN_MAX)

/* Bytes the parser may read of an IPv6 frame: Ethernet, the fixed header,
 * the longest chain, an ICMPv6 header, and a quoted fixed header with 8
 * bytes of its L4 header. */
#define SL_PARSE6_LEN (SL_L4_OFF_MAX + 8 + 40 + 8)

#define SL_IP_MF	0x2000	/* frag_off: more fragments */
#define SL_IP_OFFSET	0x1fff	/* frag_off: fragment offset in 8-byte units */

/* EtherTypes the parser tells apart beyond IPv4 and IPv6. */
#define SL_ETH_P_8021Q		0x8100	/* 802.1Q VLAN tag */
#define SL_ETH_P_8021AD		0x88a8	/* 802.1ad service tag */
#define SL_ETH_P_QINQ		0x9100	/* pre-standard QinQ tag */
#define SL_ETH_P_ARP		0x0806
#define SL_ETH_P_RARP		0x8035
#define SL_ETH_P_SLOW		0x8809	/* LACP and other 802.3 slow protocols */
#define SL_ETH_P_EAPOL		0x888e	/* 802.1X */
#define SL_ETH_P_LLDP		0x88cc
#define SL_ETH_P_PTP		0x88f7	/* IEEE 1588 over Ethernet */

/* ICMP types the datapath tells apart. Not from <linux/icmp.h>, which
 * needs libc headers a BPF build does not have. */
#define SL_ICMP_ECHOREPLY	0
#define SL_ICMP_DEST_UNREACH	3	/* code 4: fragmentation needed */
#define SL_ICMP_SOURCE_QUENCH	4
#define SL_ICMP_REDIRECT	5
#define SL_ICMP_ECHO		8
#define SL_ICMP_TIME_EXCEEDED	11
#define SL_ICMP_PARAMETERPROB	12

/* The first 8 bytes of every ICMP message. */
struct sl_icmphdr {
	__u8	type;
	__u8	code;
	__u16	checksum;
	__be16	id;	/* echo: identifier; errors: unused or MTU */
	__be16	seq;
};

/* TCP flag bits in header byte 13. */
#define SL_TCP_FIN	0x01
#define SL_TCP_SYN	0x02
#define SL_TCP_RST	0x04
#define SL_TCP_ACK	0x10

/* What the datapath needs of a parsed packet. */
struct sl_pkt {
	__u8	saddr[16] SL_ADDR_ALIGNED;	/* IPv4-mapped for IPv4 */
	__u8	daddr[16];	/* IPv4-mapped for IPv4 */
	__u16	sport;		/* host order; 0 without ports */
	__u16	dport;		/* host order; 0 without ports */
	__u16	l4_off;		/* offset of the L4 header from the frame's start */
	__u16	l4_len;		/* IP total length minus the IP header */
	__u16	ip_len;		/* IP total length */
	__u8	proto;		/* IPPROTO_* */
	__u8	tcp_flags;	/* TCP header byte 13; 0 for other protocols */
	__u8	icmp_type;
	__u8	icmp_code;
	__u16	icmp_id;	/* echo identifier, host order */
	__u8	first_fragment;	/* the first fragment of a fragmented datagram (SL_IFACE_PASS_FRAGMENTS) */
	__u8	hop_limit;	/* IPv6 hop limit (neighbour discovery needs 255); 0 for IPv4 */
	__u8	pad[2];
};

/* The outcome of a parse step. */
enum sl_parse_rc {
	SL_PARSE_OK,		/* parsed; policy and conntrack apply */
	SL_PARSE_VERDICT,	/* *reason decides the packet */
	SL_PARSE_LATER_FRAGMENT, /* a fragment past the first that may pass; its addresses are parsed */
	SL_PARSE_IPV4,		/* sl_parse_eth: an IPv4 frame, for sl_parse_ipv4 */
	SL_PARSE_IPV6,		/* sl_parse_eth: an IPv6 frame to enforce (SL_IFACE_ENFORCE_IPV6), for sl_parse_ipv6 */
};

SL_INLINE bool sl_icmp_is_echo(__u8 type)
{
	return type == SL_ICMP_ECHO || type == SL_ICMP_ECHOREPLY;
}

/* ICMPv6 types the datapath tells apart (RFC 4443, 4861, 2710, 3810). */
#define SL_ICMP6_DEST_UNREACH	1
#define SL_ICMP6_PKT_TOOBIG	2
#define SL_ICMP6_TIME_EXCEEDED	3
#define SL_ICMP6_PARAMPROB	4
#define SL_ICMP6_ECHO		128
#define SL_ICMP6_ECHOREPLY	129
#define SL_ICMP6_MLD_QUERY	130
#define SL_ICMP6_MLD_REPORT	131
#define SL_ICMP6_MLD_DONE	132
#define SL_ICMP6_ROUTER_SOL	133
#define SL_ICMP6_ROUTER_ADV	134
#define SL_ICMP6_NEIGH_SOL	135
#define SL_ICMP6_NEIGH_ADV	136
#define SL_ICMP6_REDIRECT	137
#define SL_ICMP6_MLD2_REPORT	143

/* sl_icmp_any_echo says whether an ICMP (proto 1) or ICMPv6 (58) message
 * is an echo request or reply, the messages conntrack keys by identifier. */
SL_INLINE bool sl_icmp_any_echo(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMPV6)
		return type == SL_ICMP6_ECHO || type == SL_ICMP6_ECHOREPLY;
	return sl_icmp_is_echo(type);
}

/* sl_icmp_any_request says whether an echo of either family is a request. */
SL_INLINE bool sl_icmp_any_request(__u8 proto, __u8 type)
{
	return proto == IPPROTO_ICMPV6 ? type == SL_ICMP6_ECHO : type == SL_ICMP_ECHO;
}

/* Errors whose quoted packet may belong to a tracked flow: the types
 * Linux's conntrack and Calico treat as errors. */
SL_INLINE bool sl_icmp_is_error(__u8 type)
{
	return type == SL_ICMP_DEST_UNREACH || type == SL_ICMP_SOURCE_QUENCH ||
	       type == SL_ICMP_REDIRECT || type == SL_ICMP_TIME_EXCEEDED ||
	       type == SL_ICMP_PARAMETERPROB;
}

/* sl_pull makes the headers the parser reads linear. Packets from the
 * stack almost always are; GRO'd or paged ones may not be. */
SL_INLINE void sl_pull(struct __sk_buff *skb, __u32 len)
{
	__u32 want = skb->len < len ? skb->len : len;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (data + want > end)
		bpf_skb_pull_data(skb, want);
}

/* sl_ethertype_is_link says whether an EtherType is a link-layer protocol
 * that cannot carry IP: the only frames besides IP that pass. Anything
 * else (VLAN tags, MPLS, PPPoE, 802.3 length fields with LLC/SNAP, and
 * types nobody listed) could hide an IP packet from policy. */
SL_INLINE bool sl_ethertype_is_link(__be16 proto)
{
	return proto == bpf_htons(SL_ETH_P_ARP) || proto == bpf_htons(SL_ETH_P_RARP) ||
	       proto == bpf_htons(SL_ETH_P_SLOW) || proto == bpf_htons(SL_ETH_P_EAPOL) ||
	       proto == bpf_htons(SL_ETH_P_LLDP) || proto == bpf_htons(SL_ETH_P_PTP);
}

/* sl_parse_eth_at sorts frames by EtherType; IPv4 continues, and IPv6
 * where the interface enforces it. A VLAN tag drops the frame wherever it
 * sits: in the frame, or outside it (vlan_tag), as in an skb, where the
 * receive path puts the outer tag before TC ingress runs. */
SL_INLINE enum sl_parse_rc sl_parse_eth_at(void *data, void *end, bool vlan_tag, enum sl_iface_flags iflags,
					   enum sl_reason *reason)
{
	struct ethhdr *eth = data;
	__be16 proto;

	if ((void *)(eth + 1) > end) {
		*reason = SL_REASON_DROPPED_SHORT;
		return SL_PARSE_VERDICT;
	}
	proto = eth->h_proto;
	if (vlan_tag || proto == bpf_htons(SL_ETH_P_8021Q) ||
	    proto == bpf_htons(SL_ETH_P_8021AD) || proto == bpf_htons(SL_ETH_P_QINQ)) {
		*reason = SL_REASON_DROPPED_VLAN;
		return SL_PARSE_VERDICT;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return SL_PARSE_IPV4;
	if (proto == bpf_htons(ETH_P_IPV6) && (iflags & SL_IFACE_ENFORCE_IPV6))
		return SL_PARSE_IPV6;
	if (proto == bpf_htons(ETH_P_IPV6))
		*reason = iflags & SL_IFACE_PASS_IPV6 ? SL_REASON_IPV6_PASSED : SL_REASON_DROPPED_IPV6;
	else if (sl_ethertype_is_link(proto))
		*reason = iflags & SL_IFACE_DROP_NON_IP ? SL_REASON_DROPPED_NON_IP : SL_REASON_NON_IP_PASSED;
	else
		*reason = SL_REASON_DROPPED_ETHERTYPE;
	return SL_PARSE_VERDICT;
}

/* sl_parse_eth is sl_parse_eth_at of an skb, with its offloaded tag. */
SL_INLINE enum sl_parse_rc sl_parse_eth(struct __sk_buff *skb, enum sl_iface_flags iflags,
					enum sl_reason *reason)
{
	return sl_parse_eth_at((void *)(long)skb->data, (void *)(long)skb->data_end, skb->vlan_present, iflags,
			       reason);
}

/* sl_parse_ipv4_at checks the IPv4 header of a frame of len bytes and its
 * lengths. Options are
 * accepted and skipped. Fragments: without reassembly a non-first fragment
 * has no ports to match, so by default every fragment is dropped (passing
 * the first alone would be pointless). With SL_IFACE_PASS_FRAGMENTS the
 * first fragment is policed like any packet and later ones are
 * SL_PARSE_LATER_FRAGMENT, which pass from a source the hook accepts: the
 * receiver cannot reassemble them without the policed first fragment. */
SL_INLINE enum sl_parse_rc sl_parse_ipv4_at(void *data, void *end, __u32 len, enum sl_iface_flags iflags,
					    struct sl_pkt *pkt, enum sl_reason *reason)
{
	struct iphdr *ip = data + ETH_HLEN;
	__u32 ihl, tot_len;
	__u16 frag;

	*reason = SL_REASON_DROPPED_SHORT;
	if ((void *)(ip + 1) > end)
		return SL_PARSE_VERDICT;
	if (ip->version != 4) {
		*reason = SL_REASON_DROPPED_BAD_VERSION;
		return SL_PARSE_VERDICT;
	}
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip)) {
		*reason = SL_REASON_DROPPED_BAD_IHL;
		return SL_PARSE_VERDICT;
	}
	if ((void *)ip + ihl > end)
		return SL_PARSE_VERDICT;
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < ihl || tot_len > len - ETH_HLEN) {
		*reason = SL_REASON_DROPPED_BAD_LEN;
		return SL_PARSE_VERDICT;
	}
	frag = bpf_ntohs(ip->frag_off);
	if ((frag & (SL_IP_MF | SL_IP_OFFSET)) && !(iflags & SL_IFACE_PASS_FRAGMENTS)) {
		*reason = SL_REASON_DROPPED_FRAGMENT;
		return SL_PARSE_VERDICT;
	}
	sl_addr_set4(pkt->saddr, ip->saddr);
	sl_addr_set4(pkt->daddr, ip->daddr);
	if (frag & SL_IP_OFFSET)
		return SL_PARSE_LATER_FRAGMENT;
	pkt->first_fragment = (frag & SL_IP_MF) != 0;
	pkt->proto = ip->protocol;
	pkt->l4_off = ETH_HLEN + ihl;
	pkt->ip_len = tot_len;
	/* The L4 parsers measure against the IP payload, not the frame, so
	 * Ethernet padding is never taken for L4 bytes. */
	pkt->l4_len = tot_len - ihl;
	return SL_PARSE_OK;
}

/* sl_parse_ipv4 is sl_parse_ipv4_at of an skb. */
SL_INLINE enum sl_parse_rc sl_parse_ipv4(struct __sk_buff *skb, enum sl_iface_flags iflags,
					 struct sl_pkt *pkt, enum sl_reason *reason)
{
	return sl_parse_ipv4_at((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, iflags, pkt,
				reason);
}

/* sl_parse_tcp reads ports and flags and checks the data offset. */
SL_INLINE enum sl_parse_rc sl_parse_tcp(void *l4, void *end, __u32 l4_len, struct sl_pkt *pkt,
					enum sl_reason *reason)
{
	struct tcphdr *tcp = l4;
	__u32 doff;

	if (l4_len < sizeof(*tcp) || (void *)(tcp + 1) > end)
		return SL_PARSE_VERDICT; /* *reason is DROPPED_SHORT */
	doff = tcp->doff * 4;
	if (doff < sizeof(*tcp) || doff > l4_len) {
		*reason = SL_REASON_DROPPED_BAD_TCP_DOFF;
		return SL_PARSE_VERDICT;
	}
	pkt->sport = bpf_ntohs(tcp->source);
	pkt->dport = bpf_ntohs(tcp->dest);
	pkt->tcp_flags = ((__u8 *)tcp)[13];
	return SL_PARSE_OK;
}

/* IP protocols with a source and a destination port in their first four
 * bytes, and the header length the parser requires of each. Not from
 * <linux/in.h>'s enum for DCCP and UDP-Lite, which older headers lack. */
#define SL_IPPROTO_DCCP		33
#define SL_IPPROTO_SCTP		132
#define SL_IPPROTO_UDPLITE	136

/* sl_ported_header_len is the shortest header of a protocol whose ports
 * policy matches beside TCP's: UDP and UDP-Lite 8 bytes, SCTP's common
 * header 12, DCCP's generic header 12; 0 for a protocol without ports. */
SL_INLINE __u32 sl_ported_header_len(__u8 proto)
{
	switch (proto) {
	case IPPROTO_UDP:
	case SL_IPPROTO_UDPLITE:
		return 8;
	case SL_IPPROTO_SCTP:
	case SL_IPPROTO_DCCP:
		return 12;
	}
	return 0;
}

/* sl_parse_l4_at reads the L4 header the packet's protocol has. UDP,
 * UDP-Lite, SCTP, DCCP, ICMP and ICMPv6 need their headers; other
 * protocols pass on with ports 0. */
SL_INLINE enum sl_parse_rc sl_parse_l4_at(void *data, void *end, struct sl_pkt *pkt, enum sl_reason *reason)
{
	__u32 l4_len = pkt->l4_len;
	__u32 off = pkt->l4_off;
	void *l4;

	*reason = SL_REASON_DROPPED_SHORT;
	if (off > SL_L4_OFF_MAX)
		return SL_PARSE_VERDICT; /* cannot happen: bounds the offset for the verifier */
	l4 = data + off;
	if (pkt->proto == IPPROTO_TCP)
		return sl_parse_tcp(l4, end, l4_len, pkt, reason);
	__u32 need = sl_ported_header_len(pkt->proto);
	if (need) {
		if (l4_len < need || l4 + 8 > end)
			return SL_PARSE_VERDICT;
		pkt->sport = bpf_ntohs(*(__be16 *)l4);
		pkt->dport = bpf_ntohs(*(__be16 *)(l4 + 2));
		return SL_PARSE_OK;
	}
	if (pkt->proto != IPPROTO_ICMP && pkt->proto != IPPROTO_ICMPV6)
		return SL_PARSE_OK;
	if (l4_len < 8 || l4 + 8 > end)
		return SL_PARSE_VERDICT;
	struct sl_icmphdr *icmp = l4;

	pkt->icmp_type = icmp->type;
	pkt->icmp_code = icmp->code;
	if (sl_icmp_any_echo(pkt->proto, icmp->type))
		pkt->icmp_id = bpf_ntohs(icmp->id);
	return SL_PARSE_OK;
}

/* sl_parse_l4 is sl_parse_l4_at of an skb. */
SL_INLINE enum sl_parse_rc sl_parse_l4(struct __sk_buff *skb, struct sl_pkt *pkt, enum sl_reason *reason)
{
	return sl_parse_l4_at((void *)(long)skb->data, (void *)(long)skb->data_end, pkt, reason);
}
