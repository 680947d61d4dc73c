/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connect-time load balancing's socket storage: what a socket's connect
 * or sendmsg to a frontend was translated to, so that recvmsg and
 * getpeername show the frontend again. It lives in the socket
 * (BPF_MAP_TYPE_SK_STORAGE) and dies with it: no table to leak or to
 * evict a live socket's entry from, as an LRU keyed by cookie does. */
#pragma once

#include "common.h"

/* Translations one socket remembers. A connected socket needs one; an
 * unconnected UDP socket one per frontend it sends to at once, the oldest
 * replaced first: with more, replies from the replaced frontends' backends
 * show the backend's address. */
#define SL_SOCK_NAT_ENTRIES 4

/* One translation of a socket: a frontend and the backend it was sent to. */
struct sl_sock_nat_entry {
	__u8	frontend[16] SL_ADDR_ALIGNED;	/* the address the application sent to, IPv4-mapped for IPv4 */
	__u8	backend[16];	/* where it went instead, IPv4-mapped for IPv4 */
	__u16	frontend_port;	/* the frontend's port, host order; 0: an unused entry */
	__u16	backend_port;	/* the backend's port, host order */
	__u32	svc_id;		/* the frontend's service (sl_svc.id) */
	__u32	backend_id;	/* the backend's ID: while a slot of svc_id's current list holds it, the backend is the service's */
};
SL_ASSERT_SIZE(struct sl_sock_nat_entry, 44);

/* Value of sl_sock_nat, the socket storage of connect-time balancing. */
struct sl_sock_nat {
	struct sl_sock_nat_entry entries[SL_SOCK_NAT_ENTRIES];	/* the socket's translations */
	__u32	next;	/* the entry a new translation replaces, modulo SL_SOCK_NAT_ENTRIES */
	__u32	pad;	/* zero */
};
SL_ASSERT_SIZE(struct sl_sock_nat, 184);

/* Each socket's translations (struct sl_sock_nat), defined here for the
 * two objects that read it: sock.c writes it, sockdestroy.c finds the
 * sockets a removed backend leaves. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sl_sock_nat);
} sl_sock_nat SEC(".maps");
