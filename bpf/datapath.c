//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sluice's TC datapath: one object for every TC hook. */

#include "sluice/common.h"
#include "sluice/policy_maps.h"
#include "sluice/conntrack.h"

/* Connection tracking. LRU so a full table evicts the coldest flow rather
 * than refusing new ones; the Go loader sizes it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct sl_ct_key);
	__type(value, struct sl_ct_value);
} sl_ct SEC(".maps");

char __license[] SEC("license") = "Dual BSD/GPL";

/* sl_tc_pass accepts every packet. It is the floor the datapath's
 * benchmarks are measured against, and a harmless program for attach tests. */
SEC("tc")
int sl_tc_pass(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
