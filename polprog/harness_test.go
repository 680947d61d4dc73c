package polprog

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	ebpfasm "github.com/cilium/ebpf/asm"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/ipsets"
)

// Base return codes of the stub continuations: a stub returns its base
// plus the policy_rc it found in the state (stubNoState without state), so
// that a run reports which continuation it reached and what that saw.
const (
	stubAllowRC = 100
	stubDenyRC  = 200
	stubNoState = 99
)

// kernel holds the datapath maps a policy program needs and stub
// continuations in sl_conts (see stubAllowRC), and hands out
// sl_policy_jumps slots.
type kernel struct {
	// hook is the kind of program the stubs are, and so the policies
	// that the jump map takes.
	hook  Hook
	maps  Maps
	ncpu  int
	state []bpf.State
	// slotUsed marks the slots handed out; nextSlot is where the search
	// for a free one starts, so that loads get varied slots.
	slotUsed []bool
	nextSlot int
	// ipsets writes the IP set maps, made at the first use.
	ipsets *ipsets.Map
}

// policyJumpSlots sizes the test's sl_policy_jumps.
const policyJumpSlots = 256

func newKernel(tb testing.TB) *kernel {
	tb.Helper()
	return newHookKernel(tb, HookTC)
}

// newHookKernel is newKernel with continuations of hook's program type.
func newHookKernel(tb testing.TB, hook Hook) *kernel {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	spec, err := bpf.LoadSpec()
	if err != nil {
		tb.Fatal(err)
	}
	sizes := map[string]uint32{bpf.MapIPSets: 1 << 16, bpf.MapRuleHits: 1 << 16, bpf.MapPolicyJumps: policyJumpSlots}
	mk := func(name string) *ebpf.Map {
		ms := spec.Maps[name].Copy()
		if n, ok := sizes[name]; ok {
			ms.MaxEntries = n
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			tb.Fatalf("create %s: %v", name, err)
		}
		tb.Cleanup(func() { m.Close() })
		return m
	}
	k := &kernel{hook: hook, maps: Maps{
		State: mk(bpf.MapState), IPSets: mk(bpf.MapIPSets), IPSetMembers: mk(bpf.MapIPSetMembers),
		IPSetGen: mk(bpf.MapIPSetGen), RuleHits: mk(bpf.MapRuleHits),
		PolicyJumps: mk(bpf.MapPolicyJumps), Conts: mk(bpf.MapConts),
	}, slotUsed: make([]bool, policyJumpSlots)}
	k.ncpu, err = ebpf.PossibleCPU()
	if err != nil {
		tb.Fatal(err)
	}
	k.state = make([]bpf.State, k.ncpu)
	for slot, rc := range map[bpf.ContSlot]int32{bpf.ContAllow: stubAllowRC, bpf.ContDeny: stubDenyRC} {
		stub := k.stub(tb, rc)
		if err := k.maps.Conts.Put(slot, stub); err != nil {
			tb.Fatalf("install stub: %v", err)
		}
	}
	return k
}

// stub loads a continuation that returns base plus state.policy_rc, or
// stubNoState.
func (k *kernel) stub(tb testing.TB, base int32) *ebpf.Program {
	tb.Helper()
	stub, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: k.hook.programType(), AttachType: k.hook.attachType(), License: "Dual BSD/GPL",
		Instructions: ebpfasm.Instructions{
			ebpfasm.StoreImm(ebpfasm.R10, -4, 0, ebpfasm.Word),
			ebpfasm.LoadMapPtr(ebpfasm.R1, k.maps.State.FD()),
			ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
			ebpfasm.Add.Imm(ebpfasm.R2, -4),
			ebpfasm.FnMapLookupElem.Call(),
			ebpfasm.JNE.Imm(ebpfasm.R0, 0, "found"),
			ebpfasm.Mov.Imm(ebpfasm.R0, stubNoState),
			ebpfasm.Return(),
			ebpfasm.LoadMem(ebpfasm.R0, ebpfasm.R0, offPolicyRC, ebpfasm.Word).WithSymbol("found"),
			ebpfasm.Add.Imm(ebpfasm.R0, base),
			ebpfasm.Return(),
		},
	})
	if err != nil {
		tb.Fatalf("load stub: %v", err)
	}
	tb.Cleanup(func() { stub.Close() })
	return stub
}

// allocSlots hands out n free sl_policy_jumps slots (not in order) and
// returns them with the function that frees them again.
func (k *kernel) allocSlots(tb testing.TB, n int) ([]uint32, func()) {
	tb.Helper()
	var slots []uint32
	for tries := 0; len(slots) < n && tries < len(k.slotUsed); tries++ {
		s := k.nextSlot
		k.nextSlot = (k.nextSlot + 7) % len(k.slotUsed)
		if !k.slotUsed[s] {
			k.slotUsed[s] = true
			slots = append(slots, uint32(s))
		}
	}
	free := func() {
		for _, s := range slots {
			k.slotUsed[s] = false
		}
	}
	if len(slots) < n {
		free()
		tb.Fatalf("no %d free policy slots", n)
	}
	return slots, free
}

// loadCompiled loads c into fresh slots; closing the Program and freeing
// the slots are left to the test's cleanup.
func (k *kernel) loadCompiled(tb testing.TB, c *Compiled) *Program {
	tb.Helper()
	slots, free := k.allocSlots(tb, len(c.Parts))
	tb.Cleanup(free)
	p, err := c.Load(k.maps, slots)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("load: %-10v", ve)
		}
		tb.Fatalf("load: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// load compiles and loads rules, failing the test on error.
func (k *kernel) load(tb testing.TB, rules Rules, opts Options) *Program {
	tb.Helper()
	c, err := Compile(rules, opts)
	if err != nil {
		tb.Fatalf("compile: %v", err)
	}
	return k.loadCompiled(tb, c)
}

// setIPSets makes the IP set maps hold exactly sets, through package
// ipsets.
func (k *kernel) setIPSets(tb testing.TB, sets IPSetMembers) {
	tb.Helper()
	if _, err := k.ipsetMap(tb).Sync(sets); err != nil {
		tb.Fatalf("sync ip sets: %v", err)
	}
}

// ipsetMap returns the package ipsets writer of k's IP set maps.
func (k *kernel) ipsetMap(tb testing.TB) *ipsets.Map {
	tb.Helper()
	if k.ipsets == nil {
		m, err := ipsets.NewMap(ipsets.Maps{Sets: k.maps.IPSets, Members: k.maps.IPSetMembers, Gen: k.maps.IPSetGen})
		if err != nil {
			tb.Fatal(err)
		}
		k.ipsets = m
	}
	return k.ipsets
}

func stateOf(pkt Packet) bpf.State {
	preDst, prePort := pkt.preNAT()
	s := bpf.State{
		SrcAddr: pkt.Src.As16(), DstAddr: pkt.Dst.As16(), PreNATDstAddr: preDst.As16(),
		SrcPort: pkt.SrcPort, DstPort: pkt.DstPort, PreNATDstPort: prePort,
		IPProto: pkt.Protocol, ICMPType: pkt.ICMPType, ICMPCode: pkt.ICMPCode,
	}
	if pkt.SrcIsHost {
		s.Flags |= bpf.StateFlagSrcIsHost
	}
	if pkt.DstIsHost {
		s.Flags |= bpf.StateFlagDstIsHost
	}
	return s
}

// packetData is the smallest frame a SchedCLS or XDP test run accepts.
var packetData = make([]byte, 14)

// runProg sets every CPU's state to s, runs prog and returns its return
// code and the state it left on the CPU it ran on (the one that changed;
// s when none did).
func (k *kernel) runProg(tb testing.TB, prog *ebpf.Program, s bpf.State) (uint32, bpf.State) {
	tb.Helper()
	for i := range k.state {
		k.state[i] = s
	}
	if err := k.maps.State.Put(uint32(0), k.state); err != nil {
		tb.Fatalf("write state: %v", err)
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: packetData})
	if err != nil {
		tb.Fatalf("run: %v", err)
	}
	if err := k.maps.State.Lookup(uint32(0), &k.state); err != nil {
		tb.Fatalf("read state: %v", err)
	}
	out := s
	for i := range k.state {
		if k.state[i] != s {
			out = k.state[i]
		}
	}
	return ret, out
}

// run sets the state for pkt, runs the policy's entry program and returns
// what the kernel decided.
func (k *kernel) run(tb testing.TB, p *Program, pkt Packet) Decision {
	tb.Helper()
	ret, out := k.runProg(tb, p.Programs()[0], stateOf(pkt))
	if out.PolicyRC == bpf.PolicyNone {
		tb.Fatalf("run returned %d and left no verdict in the state", ret)
	}
	d := Decision{RuleID: out.RuleID, Logged: out.Flags&bpf.StateFlagLog != 0}
	switch {
	case ret == stubAllowRC+uint32(bpf.PolicyAllow) && out.PolicyRC == bpf.PolicyAllow:
		d.Verdict = VerdictAllow
	case ret == stubDenyRC+uint32(bpf.PolicyDeny) && out.PolicyRC == bpf.PolicyDeny:
		d.Verdict = VerdictDeny
	default:
		tb.Fatalf("run returned %d with policy_rc %d", ret, out.PolicyRC)
	}
	if out.Resume != 0 {
		tb.Fatalf("resume left at %d", out.Resume)
	}
	return d
}

// hits reads the summed per-CPU hit counter of id.
// agree fails tb unless p decides pkt as Evaluate of rules with sets does.
func (k *kernel) agree(tb testing.TB, p *Program, rules Rules, sets IPSetMembers, pkt Packet) {
	tb.Helper()
	want, err := Evaluate(rules, sets, pkt)
	if err != nil {
		tb.Fatal(err)
	}
	if diff := cmp.Diff(want, k.run(tb, p, pkt), decisionCmp); diff != "" {
		tb.Fatalf("%v to %v (-evaluate +kernel):\n%s", pkt.Src, pkt.Dst, diff)
	}
}

func (k *kernel) hits(tb testing.TB, id uint64) uint64 {
	tb.Helper()
	vals := make([]uint64, k.ncpu)
	if err := k.maps.RuleHits.Lookup(id, &vals); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0
		}
		tb.Fatalf("read hits: %v", err)
	}
	var sum uint64
	for _, v := range vals {
		sum += v
	}
	return sum
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }
