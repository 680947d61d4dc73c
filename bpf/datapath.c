//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sluice's TC datapath: one object for every TC hook. */

#include "sluice/common.h"
#include "sluice/policy_maps.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* sl_tc_pass accepts every packet. It is the floor the datapath's
 * benchmarks are measured against, and a harmless program for attach tests. */
SEC("tc")
int sl_tc_pass(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
