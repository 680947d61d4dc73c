/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The BPF target has no multiarch include directory: map the UAPI's
 * architecture headers to their generic versions so the same sources build
 * for bpfel and bpfeb without depending on the build host's layout. */
#pragma once
#include <asm-generic/types.h>
