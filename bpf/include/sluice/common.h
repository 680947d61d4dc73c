/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared includes and helpers for sluice's BPF programs. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* SL_ASSERT pins a layout at compile time; the Go mirrors are checked
 * against the object's BTF, so a change here fails one side or the other. */
#define SL_ASSERT(cond, msg) _Static_assert(cond, msg)
#define SL_ASSERT_SIZE(type, size) SL_ASSERT(sizeof(type) == (size), #type " size")

#define SL_INLINE static __always_inline
