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

// fibLookupMark is BPF_FIB_LOOKUP_MARK (Linux 6.10), fib.h's
// SL_FIB_LOOKUP_MARK; fibLookupSkipNeigh is BPF_FIB_LOOKUP_SKIP_NEIGH,
// the flag the FIB step always passes.
const (
	fibLookupSkipNeigh = 1 << 2
	fibLookupMark      = 1 << 5
)

// HaveFIBLookupMark says whether the kernel's bpf_fib_lookup takes
// BPF_FIB_LOOKUP_MARK (Linux 6.10), the flag that makes the lookup select
// ip rules by a packet's mark (fwmark): nil when it does, an error
// wrapping ebpf.ErrNotSupported when it does not. Unlike CheckKernel's
// features it is optional: Open probes it, and where it is present the
// FIB step (the routing of translated packets from a node address, see
// docs/design.md) passes each packet's skb mark to its lookup; where it is
// not, the lookup runs without the mark.
//
// The probe runs a program that calls bpf_fib_lookup with the flag and an
// address family the helper does not route: a kernel that knows the flag
// answers -EAFNOSUPPORT, one that does not refuses the flag with -EINVAL
// before it looks at the family.
func HaveFIBLookupMark() error {
	// struct bpf_fib_lookup is 64 bytes, all zero (family 0) here.
	const paramsSize = 64
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1), asm.Mov.Imm(asm.R0, 0)}
	for off := int16(-paramsSize); off < 0; off += 8 {
		insns = append(insns, asm.StoreMem(asm.RFP, off, asm.R0, asm.DWord))
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -paramsSize),
		asm.Mov.Imm(asm.R3, paramsSize),
		asm.Mov.Imm(asm.R4, fibLookupSkipNeigh|fibLookupMark),
		asm.FnFibLookup.Call(),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: insns, License: "Dual BSD/GPL"})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("probe bpf_fib_lookup: %w: %w", ebpf.ErrNotSupported, err)
	}
	if err != nil {
		return fmt.Errorf("probe bpf_fib_lookup: %w", err)
	}
	defer prog.Close()
	// An Ethernet header's worth of zeros: the smallest skb a test run of
	// sched_cls takes.
	ret, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14)})
	if err != nil {
		return fmt.Errorf("probe BPF_FIB_LOOKUP_MARK: run: %w", err)
	}
	switch int32(ret) {
	case -int32(unix.EAFNOSUPPORT):
		return nil
	case -int32(unix.EINVAL):
		return fmt.Errorf("bpf_fib_lookup refuses BPF_FIB_LOOKUP_MARK: %w", ebpf.ErrNotSupported)
	}
	return fmt.Errorf("probe BPF_FIB_LOOKUP_MARK: bpf_fib_lookup answered %d, want -EAFNOSUPPORT or -EINVAL", int32(ret))
}
