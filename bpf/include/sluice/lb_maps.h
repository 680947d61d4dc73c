/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The maps service load balancing reads, defined once for every object
 * that balances: the TC datapath (datapath.c) and connect-time balancing
 * (sock.c). The runtime creates each map once, in its registry, and hands
 * the same map to both objects (MapReplacements), so a service programmed
 * by nat.Table is balanced alike at a socket's connect and at a packet's
 * TC hook. */
#pragma once

#include "nat.h"
#include "routes.h"

/* Routes: what the datapath knows of an address (routes.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_route_key);
	__type(value, struct sl_route);
} sl_routes SEC(".maps");

/* Service load balancing (nat.h). Frontends are not preallocated, so that
 * a replaced entry is freed only after the programs that may still read
 * it finished; affinity is an LRU, so a full table forgets the coldest
 * client. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_svc_key);
	__type(value, struct sl_svc);
} sl_svcs SEC(".maps");

/* The slots and the backends are preallocated: writing 50,000 entries
 * costs a third of what allocating each does (docs/benchmarks.md), and
 * these two are the bulk of a Sync. A preallocated hash reuses a deleted
 * element for the next insert at once, so nat.Table keeps two rules that
 * make that safe: an entry is never replaced in place (a new list takes
 * other slot keys, a backend ID names one address and port for its
 * life), and an entry no frontend, slot, Maglev table or member reaches
 * any more is deleted only after an RCU grace period that began then
 * (nat/retire.go), so that no program still holds an element that is
 * reused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct sl_backend_slot_key);
	__type(value, __u32);
} sl_lb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, __u32);
	__type(value, struct sl_backend);
} sl_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct sl_affinity_key);
	__type(value, struct sl_affinity);
} sl_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_svc_range_key);
	__type(value, __u8);
} sl_lb_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_lb_member_key);
	__type(value, struct sl_lb_member);
} sl_members SEC(".maps");

/* 64 KiB a table: sized by the runtime for the services that use Maglev,
 * two tables each while one replaces the other. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_maglev_key);
	__type(value, struct sl_maglev_table);
} sl_maglev SEC(".maps");

/* sl_route_of returns the longest route to addr, or NULL. */
SL_INLINE const struct sl_route *sl_route_of(const __u8 *addr)
{
	struct sl_route_key k = { .prefixlen = 32 + 128 };

	k.family = sl_addr_is_v4(addr) ? SL_FAMILY_IPV4 : SL_FAMILY_IPV6;
	sl_addr_copy(k.addr, addr);
	return bpf_map_lookup_elem(&sl_routes, &k);
}
