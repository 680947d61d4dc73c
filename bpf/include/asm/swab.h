/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* See asm/types.h: no architecture-specific swab for BPF. */
#pragma once
