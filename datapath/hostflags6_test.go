package datapath

import (
	"net/netip"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/routes"
)

// allowIfStateFlag is a stub policy allowing exactly the packets whose
// sl_state flags have flag.
func allowIfStateFlag(flag bpf.StateFlags) asm.Instructions {
	return stubPolicy(asm.Instructions{
		asm.LoadMem(asm.R1, asm.R7, int16(unsafe.Offsetof(bpf.State{}.Flags)), asm.Word),
		asm.JSet.Imm(asm.R1, int32(flag), "allow"),
	})
}

// TestHostFlagsIPv6 runs IPv6 at a host interface that enforces it: policy
// sees the destination-is-host flag on traffic into the node's IPv6
// address and the source-is-host flag on traffic from it, and only there;
// and a packet entering with the node's own source is dropped by the
// host interface's reverse-path check.
func TestHostFlagsIPv6(t *testing.T) {
	h := newHarness(t)
	node := netip.MustParseAddr("2001:db8:ff::1")
	h.setRoute(routes.Route{Prefix: netip.PrefixFrom(node, 128), Flags: routes.FlagLocalHost})
	slots := stubSlots{h.setPolicy(allowIfStateFlag(bpf.StateFlagDstIsHost)), h.setPolicy(allowIfStateFlag(bpf.StateFlagSrcIsHost))}
	h.setIface(loIfindex, bpf.IfaceHost|bpf.IfaceReady|bpf.IfaceEnforceIPv6, slots, loCounterSlot)
	outside := netip.MustParseAddr("2001:db8:1::5")
	other := netip.MustParseAddr("2001:db8:2::5")
	syn := func(src, dst netip.Addr, port uint16) []byte {
		return testpkt.MustBytes(t, testpkt.TCPv6(netip.AddrPortFrom(src, port), netip.AddrPortFrom(dst, 22), testpkt.SYN, nil))
	}
	for i, c := range []struct {
		name  string
		hook  bpf.Hook
		frame []byte
		want  bpf.Reason
	}{
		{"into the node", bpf.HookIngress, syn(outside, node, 1000), bpf.ReasonAcceptedByPolicy},
		{"forwarded in", bpf.HookIngress, syn(outside, other, 1001), bpf.ReasonDroppedByPolicy},
		{"from the node", bpf.HookEgress, syn(node, outside, 1002), bpf.ReasonAcceptedByPolicy},
		{"forwarded out", bpf.HookEgress, syn(other, outside, 1003), bpf.ReasonDroppedByPolicy},
		{"entering as the node", bpf.HookIngress, syn(node, outside, 1004), bpf.ReasonDroppedRPF},
	} {
		h.expect(t, c.hook, c.frame, c.want, c.name, i)
	}
}
