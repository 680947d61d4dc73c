package polprog

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	ebpfasm "github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// Return codes of the stub continuations.
const (
	stubAllowRC = 100
	stubDenyRC  = 200
)

// kernel holds the datapath maps a policy program needs and stub
// continuations in sl_conts that return stubAllowRC and stubDenyRC.
type kernel struct {
	maps  Maps
	ncpu  int
	state []bpf.State
}

func newKernel(tb testing.TB) *kernel {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	spec, err := bpf.LoadSpec()
	if err != nil {
		tb.Fatal(err)
	}
	sizes := map[string]uint32{bpf.MapIPSets: 1 << 16, bpf.MapRuleHits: 1 << 16, bpf.MapPolicyJumps: 256}
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
	k := &kernel{maps: Maps{
		State: mk(bpf.MapState), IPSets: mk(bpf.MapIPSets), RuleHits: mk(bpf.MapRuleHits),
		PolicyJumps: mk(bpf.MapPolicyJumps), Conts: mk(bpf.MapConts),
	}}
	k.ncpu, err = ebpf.PossibleCPU()
	if err != nil {
		tb.Fatal(err)
	}
	k.state = make([]bpf.State, k.ncpu)
	for slot, rc := range map[bpf.ContSlot]int32{bpf.ContAllow: stubAllowRC, bpf.ContDeny: stubDenyRC} {
		stub, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.SchedCLS, License: "Dual BSD/GPL",
			Instructions: ebpfasm.Instructions{ebpfasm.Mov.Imm(ebpfasm.R0, rc), ebpfasm.Return()},
		})
		if err != nil {
			tb.Fatalf("load stub: %v", err)
		}
		tb.Cleanup(func() { stub.Close() })
		if err := k.maps.Conts.Put(slot, stub); err != nil {
			tb.Fatalf("install stub: %v", err)
		}
	}
	return k
}

// load compiles and loads rules, failing the test on error.
func (k *kernel) load(tb testing.TB, rules Rules, opts Options) *Program {
	tb.Helper()
	c, err := Compile(rules, opts)
	if err != nil {
		tb.Fatalf("compile: %v", err)
	}
	p, err := c.Load(k.maps)
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

// setIPSets writes the members of sets into sl_ipsets as the ipsets package
// would.
func (k *kernel) setIPSets(tb testing.TB, sets IPSetMembers) {
	tb.Helper()
	one := uint32(1)
	for id, set := range sets {
		for _, n := range set.Nets {
			key := bpf.IPSetKey{SetId: bpf.IPSetID(id), Addr: n.Masked().Addr().As16()}
			key.Prefixlen = 64 + uint32(n.Bits())
			if n.Addr().Is4() {
				key.Prefixlen += 96
			}
			if err := k.maps.IPSets.Put(&key, &one); err != nil {
				tb.Fatalf("put ipset member: %v", err)
			}
		}
		for _, np := range set.NamedPorts {
			key := bpf.IPSetKey{Prefixlen: uint32(ipsetKeyPortBits), SetId: bpf.IPSetID(id), Addr: np.Addr.As16(), Port: np.Port, Proto: np.Protocol}
			if err := k.maps.IPSets.Put(&key, &one); err != nil {
				tb.Fatalf("put ipset named port: %v", err)
			}
		}
	}
}

// clearIPSets empties sl_ipsets.
func (k *kernel) clearIPSets(tb testing.TB) {
	tb.Helper()
	var key bpf.IPSetKey
	var keys []bpf.IPSetKey
	var v uint32
	it := k.maps.IPSets.Iterate()
	for it.Next(&key, &v) {
		keys = append(keys, key)
	}
	for i := range keys {
		if err := k.maps.IPSets.Delete(&keys[i]); err != nil {
			tb.Fatalf("delete ipset member: %v", err)
		}
	}
}

func stateOf(pkt Packet) bpf.State {
	preDst, prePort := pkt.preNAT()
	s := bpf.State{
		SrcAddr: pkt.Src.As16(), DstAddr: pkt.Dst.As16(), PreNatDstAddr: preDst.As16(),
		SrcPort: pkt.SrcPort, DstPort: pkt.DstPort, PreNatDstPort: prePort,
		IpProto: pkt.Protocol, IcmpType: pkt.ICMPType, IcmpCode: pkt.ICMPCode,
	}
	if pkt.SrcIsHost {
		s.Flags |= bpf.StateFlagSrcIsHost
	}
	if pkt.DstIsHost {
		s.Flags |= bpf.StateFlagDstIsHost
	}
	return s
}

// packetData is the smallest frame a SchedCLS test run accepts.
var packetData = make([]byte, 14)

// run sets the state for pkt, runs the policy's entry program and returns
// what the kernel decided.
func (k *kernel) run(tb testing.TB, p *Program, pkt Packet) Decision {
	tb.Helper()
	s := stateOf(pkt)
	for i := range k.state {
		k.state[i] = s
	}
	if err := k.maps.State.Put(uint32(0), k.state); err != nil {
		tb.Fatalf("write state: %v", err)
	}
	ret, err := p.Programs()[0].Run(&ebpf.RunOptions{Data: packetData})
	if err != nil {
		tb.Fatalf("run: %v", err)
	}
	if err := k.maps.State.Lookup(uint32(0), &k.state); err != nil {
		tb.Fatalf("read state: %v", err)
	}
	var out *bpf.State
	for i := range k.state {
		if k.state[i].PolicyRc != bpf.PolicyNone {
			out = &k.state[i]
		}
	}
	if out == nil {
		tb.Fatalf("run returned %d and left no verdict in the state", ret)
	}
	d := Decision{RuleID: out.RuleId, Logged: out.Flags&bpf.StateFlagLog != 0}
	switch {
	case ret == stubAllowRC && out.PolicyRc == bpf.PolicyAllow:
		d.Verdict = VerdictAllow
	case ret == stubDenyRC && out.PolicyRc == bpf.PolicyDeny:
		d.Verdict = VerdictDeny
	default:
		tb.Fatalf("run returned %d with policy_rc %d", ret, out.PolicyRc)
	}
	if out.Resume != 0 {
		tb.Fatalf("resume left at %d", out.Resume)
	}
	return d
}

// hits reads the summed per-CPU hit counter of id.
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
