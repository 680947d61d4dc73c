/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps shared between the datapath and polprog's generated programs.
 * Include from exactly one object; other objects share them through
 * cilium/ebpf's MapReplacements. Sizes are defaults the Go loader may
 * override. */
#pragma once

#include "state.h"

/* Slots in sl_conts. */
enum sl_cont_slot {
	SL_CONT_ALLOW	= 0, /* policy allowed the packet */
	SL_CONT_DENY	= 1, /* policy denied the packet */
};

/* Packet state handed from the datapath to policy (entry 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_state);
} sl_state_map SEC(".maps");

/* IP set members. LPM tries require BPF_F_NO_PREALLOC. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_ipset_key);
	__type(value, __u32);
} sl_ipsets SEC(".maps");

/* The sets of each IP set member address and named port, two generations
 * (struct sl_ipsetm_key); written by package ipsets with sl_ipsets. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 21);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sl_ipsetm_key);
	__type(value, struct sl_ipsetm_value);
} sl_ipsetm SEC(".maps");

/* The generation of sl_ipsetm in use (entry 0, 0 or 1): package ipsets
 * writes the idle one and then switches this, so a program that read it
 * once sees one whole change of set contents. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sl_ipsetgen SEC(".maps");

/* Per-rule hit counters keyed by rule ID, bumped by policy programs when a
 * rule decides (or logs). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, __u64);
	__type(value, __u64);
} sl_rule_hits SEC(".maps");

/* Policy programs, and the later parts of a policy split for the verifier.
 * Interfaces name their policy's slot in the interface-state map. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} sl_policy_jumps SEC(".maps");

/* Continuations the policy programs end in (enum sl_cont_slot). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 8);
	__type(key, enum sl_cont_slot);
	__type(value, __u32);
} sl_conts SEC(".maps");

