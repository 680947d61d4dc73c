/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared includes and helpers for sluice's BPF programs. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <stdbool.h>

/* SL_ASSERT pins a layout at compile time; the Go mirrors are generated
 * from the object's BTF, so a change here changes both sides at once. */
#define SL_ASSERT(cond, msg) _Static_assert(cond, msg)
#define SL_ASSERT_SIZE(type, size) SL_ASSERT(sizeof(type) == (size), #type " size")

#define SL_INLINE static __always_inline

/* Every address in a shared struct is 16 bytes in network order. IPv4 is
 * stored IPv4-mapped (::ffff:a.b.c.d), as Go's netip.Addr.As16 writes it,
 * so one layout and one code path serve both families. The arrays sit at
 * 4-byte aligned offsets, so the helpers below read them as words. */
#define SL_ADDR_LEN 16

/* Address families, as map keys carry them (routes, IP sets): a key whose
 * family comes before its address never lets an IPv6 prefix that contains
 * ::ffff:0:0/96, such as ::/0, cover an IPv4 address. */
enum sl_family {
	SL_FAMILY_IPV4	= 4, /* IPv4, stored IPv4-mapped */
	SL_FAMILY_IPV6	= 6, /* IPv6 */
};

/* SL_ADDR_ALIGNED on a struct's first address array makes the struct 4-byte
 * aligned even where its other members are narrower: the verifier refuses
 * misaligned stack accesses, and the helpers read addresses as words. It
 * changes no offset, so BTF and the Go mirrors are unaffected. */
#define SL_ADDR_ALIGNED __attribute__((aligned(4)))

/* sl_addr_set4 writes IPv4 address a (network order) IPv4-mapped. */
SL_INLINE void sl_addr_set4(__u8 *dst, __be32 a)
{
	__be32 *w = (__be32 *)dst;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = a;
}

/* sl_addr_is_v4 says whether a 16-byte address is IPv4-mapped: the
 * datapath stores IPv4 that way, and drops IPv6 packets whose addresses
 * are. */
SL_INLINE bool sl_addr_is_v4(const __u8 *a)
{
	const __be32 *w = (const __be32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* sl_addr_copy copies a 16-byte address. */
SL_INLINE void sl_addr_copy(__u8 *dst, const __u8 *src)
{
	__be32 *d = (__be32 *)dst;
	const __be32 *s = (const __be32 *)src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

/* sl_addr_eq says whether two 16-byte addresses are equal. */
SL_INLINE bool sl_addr_eq(const __u8 *a, const __u8 *b)
{
	const __be32 *x = (const __be32 *)a, *y = (const __be32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* sl_addr_is_zero says whether a 16-byte address is all zeros: unset. */
SL_INLINE bool sl_addr_is_zero(const __u8 *a)
{
	const __be32 *w = (const __be32 *)a;

	return (w[0] | w[1] | w[2] | w[3]) == 0;
}

/* sl_addr_less says whether a is below b as a 128-bit big-endian number:
 * the order of Go's bytes.Compare on As16, which netip.Addr.Compare
 * agrees with between addresses of one family. */
SL_INLINE bool sl_addr_less(const __u8 *a, const __u8 *b)
{
	const __be32 *x = (const __be32 *)a, *y = (const __be32 *)b;

	if (x[0] != y[0])
		return bpf_ntohl(x[0]) < bpf_ntohl(y[0]);
	if (x[1] != y[1])
		return bpf_ntohl(x[1]) < bpf_ntohl(y[1]);
	if (x[2] != y[2])
		return bpf_ntohl(x[2]) < bpf_ntohl(y[2]);
	return bpf_ntohl(x[3]) < bpf_ntohl(y[3]);
}
