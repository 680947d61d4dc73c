package bpf

// Run through `make generate`, which sets BPF2GO_CC and BPF2GO_STRIP to the
// pinned Debian clang-19 toolchain.
//go:generate go tool bpf2go -target bpfel,bpfeb -type sl_state -type sl_ipset_key -type sl_policy_rc -type sl_state_flags -type sl_cont_slot -type sl_ct_key -type sl_ct_value -type sl_ct_leg -type sl_ct_type -type sl_ct_leg_flags -type sl_iface -type sl_iface_flags -type sl_hook -type sl_reason -type sl_reason_counts -type sl_pending -type sl_ct_dir datapath datapath.c -- -I./include -O2 -mcpu=v3 -Wall -Werror
