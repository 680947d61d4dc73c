package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// CheckKernel probes the running kernel for every feature the datapath
// uses, by asking the kernel rather than comparing versions (distribution
// kernels backport). It returns nil when all are present, or an error that
// names the first missing feature and wraps ebpf.ErrNotSupported. Open
// calls it, so a missing feature is reported by name rather than as a
// verifier log.
func CheckKernel() error {
	probes := []struct {
		name  string
		probe func() error
	}{
		{"program type sched_cls", func() error { return features.HaveProgramType(ebpf.SchedCLS) }},
		// The XDP object (Datapath.XDP).
		{"program type xdp", func() error { return features.HaveProgramType(ebpf.XDP) }},
		{"helper bpf_xdp_load_bytes", func() error { return features.HaveProgramHelper(ebpf.XDP, asm.FnXdpLoadBytes) }},
		{"map type hash", func() error { return features.HaveMapType(ebpf.Hash) }},
		{"map type lru_hash", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"map type percpu_array", func() error { return features.HaveMapType(ebpf.PerCPUArray) }},
		{"map type percpu_hash", func() error { return features.HaveMapType(ebpf.PerCPUHash) }},
		{"map type lpm_trie", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
		{"map type prog_array", func() error { return features.HaveMapType(ebpf.ProgramArray) }},
		{"map type array_of_maps", func() error { return features.HaveMapType(ebpf.ArrayOfMaps) }},
		{"map flag BPF_F_NO_PREALLOC", func() error { return features.HaveMapFlag(features.BPF_F_NO_PREALLOC) }},
		{"helper bpf_tail_call", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnTailCall) }},
		{"helper bpf_ktime_get_coarse_ns", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnKtimeGetCoarseNs)
		}},
		{"helper bpf_skb_load_bytes", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkbLoadBytes)
		}},
		// The service stage: NAT rewrites, refusals built in place.
		{"helper bpf_l4_csum_replace", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnL4CsumReplace)
		}},
		{"helper bpf_csum_diff", func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnCsumDiff) }},
		{"helper bpf_skb_change_tail", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkbChangeTail)
		}},
		{"helper bpf_redirect_neigh", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectNeigh)
		}},
		{"helper bpf_redirect_peer", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectPeer)
		}},
		// Connect-time balancing (sock.c).
		{"program type cgroup_sock_addr", func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }},
		{"attach type cgroup getpeername", haveGetpeernameHook},
		{"map type sk_storage", func() error { return features.HaveMapType(ebpf.SkStorage) }},
		{"helper bpf_sk_storage_get", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSkStorageGet)
		}},
		{"helper bpf_get_netns_cookie", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)
		}},
		{"helper bpf_get_socket_cookie", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)
		}},
		// A connect to a service without backends fails with
		// ECONNREFUSED rather than the hook's default EPERM.
		{"helper bpf_set_retval", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval)
		}},
		{"v3 instruction set", features.HaveV3ISA},
		{"bounded loops", features.HaveBoundedLoops},
		{"atomic compare-and-exchange", haveCmpXchg},
	}
	for _, p := range probes {
		err := p.probe()
		if err == nil {
			continue
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("datapath needs %s: %w", p.name, err)
		}
		return fmt.Errorf("probe %s: %w", p.name, err)
	}
	return nil
}

// haveCmpXchg loads a program that compares and exchanges a word on its
// stack: the datapath fixes a conntrack leg's interface with it. The
// verifier refuses the instruction where the kernel lacks it.
func haveCmpXchg() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.Mov.Imm(asm.R0, 0),
			asm.Mov.Imm(asm.R2, 1),
			asm.CmpXchg.Mem(asm.RFP, asm.R2, asm.Word, -4),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	if err != nil {
		return err
	}
	return prog.Close()
}

// haveGetpeernameHook loads a cgroup sock_addr program for the
// getpeername hook, which shows a balanced socket's frontend: the kernel
// refuses the attach type where it lacks the hook.
func haveGetpeernameHook() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.CGroupSockAddr,
		AttachType: ebpf.AttachCgroupInet4GetPeername,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	if err != nil {
		return err
	}
	return prog.Close()
}
