package datapath

import (
	"errors"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/routes"
)

// TC verdicts the programs return.
const (
	tcActOK   = 0
	tcActShot = 2
)

// loIfindex is the interface a test run uses when its context names none.
const loIfindex = 1

// harness is a loaded datapath whose interfaces the tests describe
// directly, with stub policies in slots taken from the runtime's pool:
// lo is a ready workload interface whose hooks run "allow TCP port 80".
type harness struct {
	t  testing.TB
	d  *Datapath
	lo stubSlots
}

// stubSlots are the policy slots of an interface's two TC hooks.
type stubSlots struct{ ingress, egress uint32 }

func newHarness(tb testing.TB) *harness {
	tb.Helper()
	return newHarnessWith(tb, Options{ConntrackEntries: 1 << 12})
}

// newHarnessWith is newHarness with opts; pools it leaves zero are small.
func newHarnessWith(tb testing.TB, opts Options) *harness {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&opts.PolicySlots, 256)
	def(&opts.IPSetEntries, 16)
	def(&opts.MaxInterfaces, 32)
	def(&opts.RouteEntries, 64)
	d, err := Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	h := &harness{t: tb, d: d}
	h.lo = stubSlots{h.setPolicy(allowDstPorts(80, 0)), h.setPolicy(allowDstPorts(80, 0))}
	h.setIface(loIfindex, bpf.IfaceWorkload|bpf.IfaceReady, h.lo, loCounterSlot)
	// Test runs at lo come from every IPv4 address: route them all to
	// lo, so lo's reverse-path check passes.
	h.setRoute(workloadRoute("0.0.0.0/0", loIfindex))
	return h
}

// loCounterSlot is lo's counter slot: not 0, which interfaces without
// state share.
const loCounterSlot = 1

// setIface writes an interface entry whose record of this generation
// names slots, with the given counter slot (marked taken in the pool).
func (h *harness) setIface(ifindex uint32, flags bpf.IfaceFlags, slots stubSlots, counterSlot uint32) {
	h.t.Helper()
	h.d.counterSlots.mark(counterSlot)
	entry := bpf.Iface{CounterSlot: counterSlot}
	entry.Records[0] = bpf.IfaceRecord{Generation: h.d.generation, Flags: flags, Ingress: slots.ingress, Egress: slots.egress}
	if err := h.d.ifaceMap.Update(ifindex, entry, ebpf.UpdateAny); err != nil {
		h.t.Fatalf("put iface %d: %v", ifindex, err)
	}
}

// setRoute writes a route.
func (h *harness) setRoute(r routes.Route) {
	h.t.Helper()
	if err := h.d.routes.Put(r); err != nil {
		h.t.Fatal(err)
	}
}

// workloadRoute routes p to the workload behind ifindex.
func workloadRoute(p string, ifindex uint32) routes.Route {
	return routes.Route{Prefix: netip.MustParsePrefix(p), Flags: routes.FlagLocalWorkload, Ifindex: ifindex}
}

// setPolicy loads a stub policy program into a fresh slot and returns it.
func (h *harness) setPolicy(insns asm.Instructions) uint32 {
	h.t.Helper()
	slots, err := h.d.policySlots.take(1)
	if err != nil {
		h.t.Fatal(err)
	}
	h.putPolicy(slots[0], insns)
	return slots[0]
}

// putPolicy loads a stub policy program into slot.
func (h *harness) putPolicy(slot uint32, insns asm.Instructions) {
	h.t.Helper()
	prog := h.loadPolicy(insns)
	defer prog.Close()
	if err := h.d.objs.SlPolicyJumps.Put(slot, prog); err != nil {
		h.t.Fatalf("install policy at slot %d: %v", slot, err)
	}
}

func (h *harness) clearPolicy(slot uint32) {
	h.t.Helper()
	if err := h.d.objs.SlPolicyJumps.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		h.t.Fatalf("clear policy slot %d: %v", slot, err)
	}
}

func (h *harness) loadPolicy(insns asm.Instructions) *ebpf.Program {
	h.t.Helper()
	insns = append(asm.Instructions(nil), insns...)
	for name, m := range map[string]*ebpf.Map{bpf.MapState: h.d.objs.SlStateMap, bpf.MapConts: h.d.objs.SlConts} {
		if err := insns.AssociateMap(name, m); err != nil {
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

// stubPolicy returns a policy program in polprog's shape: it reads bpf.State,
// runs decide with R7 pointing at it, and ends in the continuation its
// verdict names. decide jumps to "allow" or "deny" (or falls through to
// deny), and sets R8 to the deciding rule's ID.
func stubPolicy(decide asm.Instructions) asm.Instructions {
	rc := int16(unsafe.Offsetof(bpf.State{}.PolicyRC))
	ruleID := int16(unsafe.Offsetof(bpf.State{}.RuleID))
	insns := append(stateLookup(),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Imm(asm.R8, 0),
	)
	insns = append(insns, decide...)
	insns = append(insns,
		asm.Ja.Label("deny"),
		asm.StoreImm(asm.R7, rc, int64(bpf.PolicyAllow), asm.Word).WithSymbol("allow"),
		asm.StoreMem(asm.R7, ruleID, asm.R8, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(bpf.MapConts),
		asm.Mov.Imm(asm.R3, int32(bpf.ContAllow)),
		asm.FnTailCall.Call(),
		asm.Ja.Label("fail"),
		asm.StoreImm(asm.R7, rc, int64(bpf.PolicyDeny), asm.Word).WithSymbol("deny"),
		asm.StoreMem(asm.R7, ruleID, asm.R8, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(bpf.MapConts),
		asm.Mov.Imm(asm.R3, int32(bpf.ContDeny)),
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
		asm.LoadMapPtr(asm.R1, 0).WithReference(bpf.MapState),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "fail"),
	}
}

// stubPolicyRaw sets policy_rc to rc and tail-calls continuation cont,
// whatever the packet: for testing the continuations' own checks.
func stubPolicyRaw(cont bpf.ContSlot, rc bpf.PolicyRC) asm.Instructions {
	return append(stateLookup(),
		asm.StoreImm(asm.R0, int16(unsafe.Offsetof(bpf.State{}.PolicyRC)), int64(rc), asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(bpf.MapConts),
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
	dport := int16(unsafe.Offsetof(bpf.State{}.DstPort))
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

// prog names a datapath program for the tests.
type prog int

const (
	progIngress prog = iota
	progEgress
	progAllow
	progDeny
	progPass
)

func (h *harness) program(p prog) *ebpf.Program { return programOf(h.d, p) }

func programOf(d *Datapath, p prog) *ebpf.Program {
	switch p {
	case progIngress:
		return d.objs.SlTcIngress
	case progEgress:
		return d.objs.SlTcEgress
	case progAllow:
		return d.objs.SlTcAllow
	case progDeny:
		return d.objs.SlTcDeny
	}
	return d.objs.SlTcPass
}

// hookProg is the program of a TC hook.
func hookProg(hk bpf.Hook) prog {
	if hk == bpf.HookIngress {
		return progIngress
	}
	return progEgress
}

// run runs a program on frame at lo and returns its verdict.
func (h *harness) run(p prog, frame []byte) uint32 {
	h.t.Helper()
	ret, err := h.program(p).Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		h.t.Fatalf("run %d: %v", p, err)
	}
	return ret
}

// skbCtx is the head of struct __sk_buff up to ifindex: what a test run
// may set to run a program as if at another interface.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority uint32
	IngressIfindex, Ifindex                                                               uint32
}

// runAt runs a program on frame as seen at ifindex; the device must exist
// in the calling thread's network namespace.
func (h *harness) runAt(p prog, frame []byte, ifindex uint32) (uint32, error) {
	ctx := skbCtx{Ifindex: ifindex, IngressIfindex: ifindex}
	return h.program(p).Run(&ebpf.RunOptions{Data: frame, Context: ctx})
}

func (h *harness) ctEntry(key bpf.CTKey) (bpf.CTValue, bool) {
	h.t.Helper()
	var v bpf.CTValue
	err := h.d.state.ct.Lookup(&key, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false
	}
	if err != nil {
		h.t.Fatalf("lookup conntrack %+v: %v", key, err)
	}
	return v, true
}

// counters returns the counters of a TC hook of an interface, or of slot
// 0 when it has no entry.
func (h *harness) counters(ifindex uint32, hook bpf.Hook) HookCounters {
	h.t.Helper()
	var slot uint32
	if entry, err := h.d.ifaceMap.Lookup(ifindex); err == nil {
		slot = entry.CounterSlot
	}
	in, out, err := h.d.slotCounters(slot)
	if err != nil {
		h.t.Fatal(err)
	}
	if hook == bpf.HookIngress {
		return in
	}
	return out
}

// ctKeyOf is the reference model of the datapath's canonical key: lower
// endpoint (16-byte address as a big-endian number, then port) first.
func ctKeyOf(proto uint8, src, dst netip.AddrPort) (bpf.CTKey, bpf.CTDir) {
	a, b, dir := src, dst, bpf.CTDirAToB
	sa, da := src.Addr().As16(), dst.Addr().As16()
	if c := compare16(da, sa); c < 0 || (c == 0 && dst.Port() < src.Port()) {
		a, b, dir = dst, src, bpf.CTDirBToA
	}
	return bpf.CTKey{
		AddrA: a.Addr().As16(),
		AddrB: b.Addr().As16(),
		PortA: a.Port(),
		PortB: b.Port(),
		Proto: proto,
	}, dir
}

func compare16(x, y [16]byte) int {
	for i := range x {
		if x[i] != y[i] {
			if x[i] < y[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// reasonDelta returns the counters that changed between before and after.
func reasonDelta(before, after HookCounters) map[bpf.Reason]uint64 {
	d := map[bpf.Reason]uint64{}
	for r := range after {
		if n := after[r] - before[r]; n != 0 {
			d[bpf.Reason(r)] = n
		}
	}
	return d
}

// setLo rewrites lo's entry with flags, keeping its policy and counter
// slots.
func (h *harness) setLo(flags bpf.IfaceFlags) {
	h.t.Helper()
	h.setIface(loIfindex, flags, h.lo, loCounterSlot)
}
