/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The few kernel types the socket iterator (sockdestroy.c) reads, as
 * CO-RE declarations: each field is found by name in the running
 * kernel's BTF when the program loads (through anonymous unions too), so
 * no vmlinux.h is generated or committed. */
#pragma once

#include "common.h"

struct seq_file;

/* Every record below is relocated field by field. */
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* struct sock_common's fields of a connected socket's peer. */
struct sock_common {
	__be32		skc_daddr;	/* IPv4 peer */
	__be16		skc_dport;	/* peer port, network order */
	unsigned short	skc_family;	/* AF_INET or AF_INET6 */
	volatile unsigned char skc_state; /* TCP_ESTABLISHED (1): a connected UDP socket */
	struct {
		union {
			__be32	u6_addr32[4];
		} in6_u;
	} skc_v6_daddr;			/* IPv6 peer (struct in6_addr), IPv4-mapped for IPv4 on an IPv6 socket */
};

struct sock {
	struct sock_common __sk_common;
};

struct inet_sock {
	struct sock sk;
};

struct udp_sock {
	struct inet_sock inet;
};

struct bpf_iter_meta {
	struct seq_file *seq;
};

/* The context of an iter/udp program: one UDP socket of the iterator's
 * network namespace. */
struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
};

#pragma clang attribute pop

/* Aborts a socket (ECONNABORTED), from a socket iterator (Linux 6.5). */
extern int bpf_sock_destroy(struct sock_common *sk) __ksym;
