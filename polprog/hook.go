package polprog

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Hook is the kind of program a policy is compiled for: it sets the
// program type, the code a part returns when it cannot reach a
// continuation, and so which jump map and continuations the policy can be
// loaded into (a prog array holds programs of one type only).
type Hook int

const (
	// HookTC compiles BPF_PROG_TYPE_SCHED_CLS parts that drop with
	// TC_ACT_SHOT: the TC datapath's policies.
	HookTC Hook = iota
	// HookXDP compiles BPF_PROG_TYPE_XDP parts that drop with XDP_DROP,
	// for an XDP program's own jump map and continuations.
	HookXDP
)

// Return codes that drop a packet at each hook.
const (
	tcActShot = 2 // TC_ACT_SHOT
	xdpDrop   = 1 // XDP_DROP
)

// String returns the hook's name.
func (h Hook) String() string {
	switch h {
	case HookTC:
		return "tc"
	case HookXDP:
		return "xdp"
	}
	return fmt.Sprintf("hook(%d)", int(h))
}

// check returns an error for a hook that is neither HookTC nor HookXDP.
func (h Hook) check() error {
	if h != HookTC && h != HookXDP {
		return fmt.Errorf("unknown hook %s", h)
	}
	return nil
}

// programType is the hook's program type.
func (h Hook) programType() ebpf.ProgramType {
	if h == HookXDP {
		return ebpf.XDP
	}
	return ebpf.SchedCLS
}

// attachType is the hook's expected attach type: AttachXDP for XDP, as
// cilium/ebpf gives programs of an object's "xdp" sections. A prog array
// takes only programs of its owner's attach type, so the parts must have
// that of the programs they tail call.
func (h Hook) attachType() ebpf.AttachType {
	if h == HookXDP {
		return ebpf.AttachXDP
	}
	return ebpf.AttachNone
}

// contextName names the hook's context in listings.
func (h Hook) contextName() string {
	if h == HookXDP {
		return "xdp_md"
	}
	return "skb"
}

// dropCode is what a part returns when there is no state, or when the
// deny continuation cannot be reached.
func (h Hook) dropCode() int32 {
	if h == HookXDP {
		return xdpDrop
	}
	return tcActShot
}
