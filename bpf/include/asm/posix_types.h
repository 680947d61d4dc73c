/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* See asm/types.h: the generic definitions serve the BPF target. */
#pragma once
#include <asm-generic/posix_types.h>
