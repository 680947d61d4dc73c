/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The verdict counters map and the one function that adds to it, shared by
 * every object that counts packets (datapath.c, xdp.c): the runtime gives
 * them all the registry's one sl_counters. */
#pragma once

#include "counters.h"

/* Verdict counters by SL_COUNTER_INDEX(slot, hook). Per-CPU, so
 * increments need no atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2048);
	__type(key, __u32);
	__type(value, struct sl_reason_counts);
} sl_counters SEC(".maps");

/* sl_count adds a packet to the counters at index. An index past the
 * array (a counter slot the runtime never hands out) counts in slot 0. */
SL_INLINE int sl_count(__u32 index, enum sl_reason reason)
{
	struct sl_reason_counts *c = bpf_map_lookup_elem(&sl_counters, &index);

	if (!c) {
		index &= 1;
		c = bpf_map_lookup_elem(&sl_counters, &index);
		if (!c)
			return 0;
	}
	if (reason < SL_REASON_COUNT)
		c->packets[reason]++;
	return 0;
}
