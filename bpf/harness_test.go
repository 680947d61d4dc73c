package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TC verdicts the programs return.
const (
	tcActOK   = 0
	tcActShot = 2
)

// loIfindex is the interface a test run uses when its context names none.
const loIfindex = 1

// Policy slots the harness installs its stub policies at.
const (
	slotIngress = 0
	slotEgress  = 1
)

// harness is a loaded datapath with stub policies installed for lo.
type harness struct {
	t  testing.TB
	dp *Datapath
}

func newHarness(tb testing.TB) *harness {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	dp, err := Load(LoadOptions{ConntrackEntries: 1 << 12, PolicySlots: 64, IPSetEntries: 16})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dp.Close() })
	h := &harness{t: tb, dp: dp}
	h.setPolicy(slotIngress, allowDstPorts(80, 0))
	h.setPolicy(slotEgress, allowDstPorts(80, 0))
	h.setIface(loIfindex, loIface(IfaceWorkload|IfaceReady))
	return h
}

// loCounterSlot is lo's counter slot: not 0, which interfaces without
// state share.
const loCounterSlot = 1

// loIface is lo's interface state with the harness's policy slots.
func loIface(flags IfaceFlags) Iface {
	return Iface{Flags: flags, IngressPolicy: slotIngress, EgressPolicy: slotEgress, CounterSlot: loCounterSlot}
}

func (h *harness) m(name string) *ebpf.Map { return h.dp.Collection.Maps[name] }

func (h *harness) prog(name string) *ebpf.Program { return h.dp.Collection.Programs[name] }

func (h *harness) setIface(ifindex uint32, iface Iface) {
	h.t.Helper()
	if err := h.m(MapIfaces).Put(ifindex, iface); err != nil {
		h.t.Fatalf("put iface %d: %v", ifindex, err)
	}
}

// setPolicy loads a stub policy program and installs it at slot.
func (h *harness) setPolicy(slot uint32, insns asm.Instructions) {
	h.t.Helper()
	prog := h.loadPolicy(insns)
	defer prog.Close()
	if err := h.m(MapPolicyJumps).Put(slot, prog); err != nil {
		h.t.Fatalf("install policy at slot %d: %v", slot, err)
	}
}

func (h *harness) clearPolicy(slot uint32) {
	h.t.Helper()
	if err := h.m(MapPolicyJumps).Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		h.t.Fatalf("clear policy slot %d: %v", slot, err)
	}
}

func (h *harness) loadPolicy(insns asm.Instructions) *ebpf.Program {
	h.t.Helper()
	insns = append(asm.Instructions(nil), insns...)
	for _, name := range []string{MapState, MapConts} {
		if err := insns.AssociateMap(name, h.m(name)); err != nil {
			h.t.Fatalf("associate %s: %v", name, err)
		}
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "stub_policy",
		Type:         ebpf.SchedCLS,
		Instructions: insns,
		License:      "Dual BSD/GPL",
	})
	if err != nil {
		h.t.Fatalf("load stub policy: %v", err)
	}
	return prog
}

// stubPolicy returns a policy program in polprog's shape: it reads State,
// runs decide with R7 pointing at it, and ends in the continuation its
// verdict names. decide jumps to "allow" or "deny" (or falls through to
// deny), and sets R8 to the deciding rule's ID.
func stubPolicy(decide asm.Instructions) asm.Instructions {
	rc := int16(unsafe.Offsetof(State{}.PolicyRc))
	ruleID := int16(unsafe.Offsetof(State{}.RuleId))
	insns := append(stateLookup(),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Imm(asm.R8, 0),
	)
	insns = append(insns, decide...)
	insns = append(insns,
		asm.Ja.Label("deny"),
		asm.StoreImm(asm.R7, rc, int64(PolicyAllow), asm.Word).WithSymbol("allow"),
		asm.StoreMem(asm.R7, ruleID, asm.R8, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(MapConts),
		asm.Mov.Imm(asm.R3, int32(ContAllow)),
		asm.FnTailCall.Call(),
		asm.Ja.Label("fail"),
		asm.StoreImm(asm.R7, rc, int64(PolicyDeny), asm.Word).WithSymbol("deny"),
		asm.StoreMem(asm.R7, ruleID, asm.R8, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(MapConts),
		asm.Mov.Imm(asm.R3, int32(ContDeny)),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, tcActShot).WithSymbol("fail"),
		asm.Return(),
	)
	return insns
}

// stateLookup saves the context in R6 and looks up this CPU's sl_state,
// jumping to "fail" when there is none; R0 points at it.
func stateLookup() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(MapState),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "fail"),
	}
}

// stubPolicyRaw sets policy_rc to rc and tail-calls continuation cont,
// whatever the packet: for testing the continuations' own checks.
func stubPolicyRaw(cont ContSlot, rc PolicyRC) asm.Instructions {
	return append(stateLookup(),
		asm.StoreImm(asm.R0, int16(unsafe.Offsetof(State{}.PolicyRc)), int64(rc), asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(MapConts),
		asm.Mov.Imm(asm.R3, int32(cont)),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, tcActShot).WithSymbol("fail"),
		asm.Return(),
	)
}

// allowDstPorts allows packets to the given destination ports (0 matches
// ICMP and other port-less protocols) and denies the rest. A match sets
// rule ID 1000+port.
func allowDstPorts(ports ...uint16) asm.Instructions {
	dport := int16(unsafe.Offsetof(State{}.DstPort))
	decide := asm.Instructions{
		asm.LoadMem(asm.R1, asm.R7, dport, asm.Half),
		// Never true: keeps "allow" reachable for an empty port list.
		asm.JEq.Imm(asm.R1, 1<<16, "allow"),
	}
	for i, p := range ports {
		next := "next_" + string(rune('a'+i))
		decide = append(decide,
			asm.JNE.Imm(asm.R1, int32(p), next),
			asm.Mov.Imm(asm.R8, 1000+int32(p)),
			asm.Ja.Label("allow"),
			asm.Mov.Imm(asm.R0, 0).WithSymbol(next),
		)
	}
	return stubPolicy(decide)
}

// run runs prog on frame at lo and returns its verdict.
func (h *harness) run(progName string, frame []byte) uint32 {
	h.t.Helper()
	ret, err := h.prog(progName).Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		h.t.Fatalf("run %s: %v", progName, err)
	}
	return ret
}

// skbCtx is the head of struct __sk_buff up to ifindex: what a test run
// may set to run a program as if at another interface.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority uint32
	IngressIfindex, Ifindex                                                               uint32
}

// runAt runs prog on frame as seen at ifindex; the device must exist in
// the calling thread's network namespace.
func (h *harness) runAt(progName string, frame []byte, ifindex uint32) (uint32, error) {
	ctx := skbCtx{Ifindex: ifindex, IngressIfindex: ifindex}
	return h.prog(progName).Run(&ebpf.RunOptions{Data: frame, Context: ctx})
}

func (h *harness) ctEntry(key CTKey) (CTValue, bool) {
	h.t.Helper()
	var v CTValue
	err := h.m(MapConntrack).Lookup(&key, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false
	}
	if err != nil {
		h.t.Fatalf("lookup conntrack %+v: %v", key, err)
	}
	return v, true
}

func (h *harness) counters(ifindex uint32, hook Hook) [ReasonCount]uint64 {
	h.t.Helper()
	c, err := h.dp.Counters(ifindex, hook)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

func (h *harness) countersAt(index uint32) [ReasonCount]uint64 {
	h.t.Helper()
	c, err := h.dp.CountersAt(index)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// ctKeyOf is the reference model of the datapath's canonical key: lower
// endpoint (address, then port) first.
func ctKeyOf(proto uint8, src, dst netip.AddrPort) (CTKey, CTDir) {
	a, b, dir := src, dst, CTDirAToB
	if c := dst.Addr().Compare(src.Addr()); c < 0 || (c == 0 && dst.Port() < src.Port()) {
		a, b, dir = dst, src, CTDirBToA
	}
	return CTKey{
		AddrA: be32(a.Addr()),
		AddrB: be32(b.Addr()),
		PortA: a.Port(),
		PortB: b.Port(),
		Proto: proto,
	}, dir
}

// be32 is an IPv4 address as the kernel stores a __be32 and Go reads it.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// reasonDelta returns the counters that changed between before and after.
func reasonDelta(before, after [ReasonCount]uint64) map[Reason]uint64 {
	d := map[Reason]uint64{}
	for r := range after {
		if n := after[r] - before[r]; n != 0 {
			d[Reason(r)] = n
		}
	}
	return d
}
