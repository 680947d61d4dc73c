/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Byte order follows the compile target (bpfel or bpfeb), not the build
 * host, so the UAPI's bitfields (iphdr, tcphdr) are laid out correctly for
 * both objects bpf2go emits. */
#pragma once
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#include <linux/byteorder/little_endian.h>
#else
#include <linux/byteorder/big_endian.h>
#endif
