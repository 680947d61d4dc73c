/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* NAT's packet rewrites: one endpoint (address and port) of a parsed TCP,
 * UDP or SCTP packet, with the checksums that cover it updated
 * incrementally. */
#pragma once

#include <linux/ipv6.h>

#include "parse.h"

/* Offsets from skb->data of the IP header's fields NAT rewrites. */
#define SL_IP4_CSUM_OFF		(ETH_HLEN + 10)
#define SL_IP4_SADDR_OFF	(ETH_HLEN + 12)
#define SL_IP4_DADDR_OFF	(ETH_HLEN + 16)
#define SL_IP6_SADDR_OFF	(ETH_HLEN + 8)
#define SL_IP6_DADDR_OFF	(ETH_HLEN + 24)

/* Checksum offsets within the L4 header. */
#define SL_TCP_CSUM_OFF		16
#define SL_UDP_CSUM_OFF		6

/* sl_l4_csum returns the offset from skb->data of the L4 checksum that
 * covers the ports and the pseudo-header, 0 for SCTP (its CRC32c covers
 * the ports only), or -1 for a protocol NAT does not rewrite. *flags gets
 * the checksum helper's flags: a UDP checksum of 0 stays 0, and one that
 * comes out 0 is written 0xffff. UDP over IPv4 may carry no checksum; over
 * IPv6 a zero checksum is valid only on tunnels that allow it (RFC 6935),
 * and anywhere else invalid either way, but an incremental update would
 * turn it into a non-zero one that such a tunnel's receiver rejects. */
SL_INLINE int sl_l4_csum(const struct sl_pkt *pkt, __u64 *flags)
{
	*flags = 0;
	if (pkt->proto == IPPROTO_TCP)
		return pkt->l4_off + SL_TCP_CSUM_OFF;
	if (pkt->proto == IPPROTO_UDP) {
		*flags = BPF_F_MARK_MANGLED_0;
		return pkt->l4_off + SL_UDP_CSUM_OFF;
	}
	if (pkt->proto == SL_IPPROTO_SCTP)
		return 0;
	return -1;
}

/* sl_rewrite_addr writes a new source (src) or destination address into
 * the IP header, updating the IPv4 header checksum and the L4 checksum at
 * csum (when not 0) for the pseudo-header. */
SL_INLINE int sl_rewrite_addr(struct __sk_buff *skb, bool v6, bool src, int csum, __u64 flags,
			      const __u8 *from, const __u8 *to)
{
	__u64 pseudo = flags | BPF_F_PSEUDO_HDR;

	if (v6) {
		__s64 diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);

		if (csum && bpf_l4_csum_replace(skb, csum, 0, diff, pseudo) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, src ? SL_IP6_SADDR_OFF : SL_IP6_DADDR_OFF, to, 16, 0);
	}
	__be32 old = ((const __be32 *)from)[3], new = ((const __be32 *)to)[3];

	if (bpf_l3_csum_replace(skb, SL_IP4_CSUM_OFF, old, new, 4) < 0)
		return -1;
	if (csum && bpf_l4_csum_replace(skb, csum, old, new, pseudo | 4) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, src ? SL_IP4_SADDR_OFF : SL_IP4_DADDR_OFF, &new, 4, 0);
}

/* sl_nat_rewrite rewrites the packet's source (src) or destination to
 * addr:port. Returns 0, or -1 when it could not: a protocol without a
 * rewritable checksum, or SCTP to another port (its CRC32c would need
 * recomputing over the whole packet, which the datapath does not do). */
SL_INLINE int sl_nat_rewrite(struct __sk_buff *skb, const struct sl_pkt *pkt, bool v6, bool src,
			     const __u8 *addr, __u16 port)
{
	const __u8 *old_addr = src ? pkt->saddr : pkt->daddr;
	__be16 old_port = bpf_htons(src ? pkt->sport : pkt->dport), new_port = bpf_htons(port);
	__u64 flags;
	int csum = sl_l4_csum(pkt, &flags);

	if (csum < 0 || (csum == 0 && old_port != new_port))
		return -1;
	if (!sl_addr_eq(old_addr, addr) && sl_rewrite_addr(skb, v6, src, csum, flags, old_addr, addr))
		return -1;
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, csum, old_port, new_port, flags | 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, pkt->l4_off + (src ? 0 : 2), &new_port, 2, 0);
}
