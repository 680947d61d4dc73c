package polprog

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
)

// twoPartRules is one TCP allow (ruleA) that Options{SplitJumps: 1} puts in
// a second part, after an entry part that holds only the header.
var twoPartRules = Rules{Tiers: []Tier{mkTier("t", EndDeny, Rule{ID: ruleA, Action: ActionAllow, Protocol: "tcp"})}}

// compileTwoParts compiles twoPartRules (with opts, SplitJumps set) and
// checks that they made two parts.
func compileTwoParts(tb testing.TB, opts Options) *Compiled {
	tb.Helper()
	opts.SplitJumps = 1
	c, err := Compile(twoPartRules, opts)
	if err != nil {
		tb.Fatal(err)
	}
	if len(c.Parts) != 2 || c.Parts[1].Rules != 1 {
		tb.Fatalf("want 2 parts with the rule in the second, got %d", len(c.Parts))
	}
	return c
}

// occupied returns what each filled slot of a prog array holds: the
// program's ID, which is what a lookup from user space yields.
func occupied(tb testing.TB, m *ebpf.Map) map[uint32]ebpf.ProgramID {
	tb.Helper()
	out := map[uint32]ebpf.ProgramID{}
	for slot := uint32(0); slot < m.MaxEntries(); slot++ {
		var id uint32
		err := m.Lookup(slot, &id)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			tb.Fatalf("look up slot %d: %v", slot, err)
		}
		out[slot] = ebpf.ProgramID(id)
	}
	return out
}

func progID(tb testing.TB, p *ebpf.Program) ebpf.ProgramID {
	tb.Helper()
	info, err := p.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		tb.Fatal("no program ID")
	}
	return id
}

// TestLoadErrors feeds Load bad input: each case must return a wrapped
// error and leave sl_policy_jumps as it was.
func TestLoadErrors(t *testing.T) {
	k := newKernel(t)
	c := compileTwoParts(t, Options{})
	slots, free := k.allocSlots(t, 2)
	defer free()
	noPlaceholder := &Compiled{Parts: slices.Clone(c.Parts), LookupMaps: c.LookupMaps}
	insns := slices.Clone(noPlaceholder.Parts[0].Instructions)
	for i := range insns {
		insns[i].Metadata.Set(nextSlotMeta{}, nil)
	}
	noPlaceholder.Parts[0].Instructions = insns
	lastPart := &Compiled{Parts: c.Parts[:1]}
	with := func(f func(*Maps)) Maps { m := k.maps; f(&m); return m }

	cases := []struct {
		name  string
		c     *Compiled
		maps  Maps
		slots []uint32
		want  string
	}{
		{"nil Compiled", nil, k.maps, slots, "nil Compiled"},
		{"no parts", &Compiled{}, k.maps, nil, "no parts"},
		{"nil slots", c, k.maps, nil, "0 slots for 2 parts"},
		{"too few slots", c, k.maps, slots[:1], "1 slots for 2 parts"},
		{"too many slots", c, k.maps, []uint32{slots[0], slots[1], 200}, "3 slots for 2 parts"},
		{"duplicate slot", c, k.maps, []uint32{slots[0], slots[0]}, "given to parts 0 and 1"},
		{"slot at max entries", c, k.maps, []uint32{slots[0], policyJumpSlots}, "past the policy jump map's 256 entries"},
		{"slot far past", c, k.maps, []uint32{math.MaxUint32, slots[1]}, "slot 4294967295 of part 0 is past"},
		{"no jump map", c, with(func(m *Maps) { m.PolicyJumps = nil }), slots, "no policy jump map"},
		{"jump map not a prog array", c, with(func(m *Maps) { m.PolicyJumps = k.maps.State }), slots, "not a prog array"},
		{"no state map", c, with(func(m *Maps) { m.State = nil }), slots, `no map for reference "sl_state_map"`},
		{"no conts map", c, with(func(m *Maps) { m.Conts = nil }), slots, `no map for reference "sl_conts"`},
		{"no maps at all", c, Maps{}, slots, "no policy jump map"},
		{"placeholder missing", noPlaceholder, k.maps, slots, "without the next slot's placeholder"},
		{"last part tail calls", lastPart, k.maps, slots[:1], "the last part tail calls a next part"},
	}
	before := occupied(t, k.maps.PolicyJumps)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := tc.c.Load(tc.maps, tc.slots)
			if err == nil {
				p.Close()
				t.Fatal("Load succeeded")
			}
			type result struct{ Prefixed, Contains bool }
			got := result{strings.HasPrefix(err.Error(), "load policy: "), strings.Contains(err.Error(), tc.want)}
			if diff := cmp.Diff(result{true, true}, got); diff != "" {
				t.Errorf("error %q, want %q in it (-want +got):\n%s", err, tc.want, diff)
			}
			if diff := cmp.Diff(before, occupied(t, k.maps.PolicyJumps)); diff != "" {
				t.Errorf("a failed Load changed sl_policy_jumps (-before +after):\n%s", diff)
			}
		})
	}
}

func idsOf(tb testing.TB, p *Program) []ebpf.ProgramID {
	tb.Helper()
	var ids []ebpf.ProgramID
	for _, prog := range p.Programs() {
		ids = append(ids, progID(tb, prog))
	}
	return ids
}

// TestLoadTwiceIntoOtherSlots loads one Compiled twice into different
// slots: each Program's parts sit in its slots, and each entry reaches its
// own second part, which the second shows after the first is closed.
func TestLoadTwiceIntoOtherSlots(t *testing.T) {
	k := newKernel(t)
	c := compileTwoParts(t, Options{})
	first, second := []uint32{10, 11}, []uint32{201, 7}
	p1, err := c.Load(k.maps, first)
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	p2, err := c.Load(k.maps, second)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()

	ids1, ids2 := idsOf(t, p1), idsOf(t, p2)
	want := map[uint32]ebpf.ProgramID{10: ids1[0], 11: ids1[1], 201: ids2[0], 7: ids2[1]}
	if diff := cmp.Diff(want, occupied(t, k.maps.PolicyJumps)); diff != "" {
		t.Errorf("slots after two loads (-want +got):\n%s", diff)
	}
	type slotsOf struct {
		Entry uint32
		Slots []uint32
	}
	got := []slotsOf{{p1.EntrySlot(), p1.Slots()}, {p2.EntrySlot(), p2.Slots()}}
	if diff := cmp.Diff([]slotsOf{{10, first}, {201, second}}, got); diff != "" {
		t.Errorf("EntrySlot and Slots (-want +got):\n%s", diff)
	}
	p1.Slots()[0] = 99
	if p1.EntrySlot() != 10 {
		t.Error("changing what Slots returned changed the Program")
	}

	allowed := Decision{Verdict: VerdictAllow, RuleID: ruleA}
	if diff := cmp.Diff(allowed, k.run(t, p1, basePacket), decisionCmp); diff != "" {
		t.Errorf("first load (-want +got):\n%s", diff)
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[uint32]ebpf.ProgramID{201: ids2[0], 7: ids2[1]}, occupied(t, k.maps.PolicyJumps)); diff != "" {
		t.Errorf("slots after closing the first (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(allowed, k.run(t, p2, basePacket), decisionCmp); diff != "" {
		t.Errorf("second load after the first closed (-want +got):\n%s", diff)
	}
}

// TestCloseLeavesForeignSlots replaces or empties a Program's slots behind
// its back (as a runtime reusing freed slots would) and checks that Close
// removes only the slots that still hold its own parts.
func TestCloseLeavesForeignSlots(t *testing.T) {
	k := newKernel(t)
	c := compileTwoParts(t, Options{})
	foreign := k.stub(t, 0)
	foreignID := progID(t, foreign)
	cases := []struct {
		name string
		// change acts on the slots after Load.
		change func(t *testing.T, slots []uint32)
		// want maps part index to what its slot holds after Close:
		// -1 for the foreign program.
		want map[int]int
	}{
		{"own slots", func(*testing.T, []uint32) {}, map[int]int{}},
		{"entry slot refilled", func(t *testing.T, s []uint32) { put(t, k.maps.PolicyJumps, s[0], foreign) }, map[int]int{0: -1}},
		{"later slot refilled", func(t *testing.T, s []uint32) { put(t, k.maps.PolicyJumps, s[1], foreign) }, map[int]int{1: -1}},
		{"both refilled", func(t *testing.T, s []uint32) {
			put(t, k.maps.PolicyJumps, s[0], foreign)
			put(t, k.maps.PolicyJumps, s[1], foreign)
		}, map[int]int{0: -1, 1: -1}},
		{"slot emptied", func(t *testing.T, s []uint32) {
			if err := k.maps.PolicyJumps.Delete(s[1]); err != nil {
				t.Fatal(err)
			}
		}, map[int]int{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			slots, free := k.allocSlots(t, len(c.Parts))
			defer free()
			before := occupied(t, k.maps.PolicyJumps)
			p, err := c.Load(k.maps, slots)
			if err != nil {
				t.Fatal(err)
			}
			tc.change(t, slots)
			if err := p.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			want := before
			for part := range tc.want {
				want[slots[part]] = foreignID
			}
			got := occupied(t, k.maps.PolicyJumps)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("slots after Close (-want +got):\n%s", diff)
			}
			for part := range tc.want {
				if err := k.maps.PolicyJumps.Delete(slots[part]); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

func put(t *testing.T, m *ebpf.Map, slot uint32, prog *ebpf.Program) {
	t.Helper()
	if err := m.Put(slot, prog); err != nil {
		t.Fatal(err)
	}
}

// TestCloseAfterOwnerClosed closes the handle the maps' owner passed to
// Load before the Program: Close still removes the parts, through the
// Program's own clone of the map.
func TestCloseAfterOwnerClosed(t *testing.T) {
	k := newKernel(t)
	c := compileTwoParts(t, Options{})
	for _, tc := range []struct {
		name   string
		closes int
	}{{"close once", 1}, {"close twice", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			owner, err := k.maps.PolicyJumps.Clone()
			if err != nil {
				t.Fatal(err)
			}
			maps := k.maps
			maps.PolicyJumps = owner
			slots := []uint32{3, 4}
			p, err := c.Load(maps, slots)
			if err != nil {
				owner.Close()
				t.Fatal(err)
			}
			if err := owner.Close(); err != nil {
				t.Fatal(err)
			}
			var errs []error
			for i := 0; i < tc.closes; i++ {
				errs = append(errs, p.Close())
			}
			if diff := cmp.Diff(make([]error, tc.closes), errs, cmp.Comparer(func(a, b error) bool { return a == b })); diff != "" {
				t.Errorf("Close errors (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(map[uint32]ebpf.ProgramID{}, occupied(t, k.maps.PolicyJumps)); diff != "" {
				t.Errorf("slots after Close (-want +got):\n%s", diff)
			}
			if p.Programs() != nil {
				t.Error("Programs after Close")
			}
		})
	}
}

// TestNilReceivers calls every method on nil receivers: errors where a
// method returns one, zero values elsewhere, never a panic.
func TestNilReceivers(t *testing.T) {
	type result struct {
		LoadErr, CloseErr bool
		Entry             uint32
		Slots             []uint32
		Programs          []*ebpf.Program
	}
	var c *Compiled
	var p *Program
	prog, loadErr := c.Load(Maps{}, nil)
	got := result{
		LoadErr:  loadErr != nil && prog == nil,
		CloseErr: p.Close() != nil,
		Entry:    p.EntrySlot(),
		Slots:    p.Slots(),
		Programs: p.Programs(),
	}
	if diff := cmp.Diff(result{LoadErr: true, CloseErr: true}, got); diff != "" {
		t.Errorf("nil receivers (-want +got):\n%s", diff)
	}
	if _, err := (Part{}).Listing(); err == nil {
		t.Error("Listing of a zero Part: no error")
	}
}

// TestPolicyFailed breaks a policy's tail calls and checks where it ends:
// in the deny continuation with policy_rc PolicyFailed, or with
// TC_ACT_SHOT when the deny continuation is missing too.
func TestPolicyFailed(t *testing.T) {
	k := newKernel(t)
	// Slots 5 and 6 of sl_conts hold nothing.
	const emptyCont = 5
	failedInDeny := stubDenyRC + uint32(bpf.PolicyFailed)
	type outcome struct {
		Ret      uint32
		PolicyRC bpf.PolicyRC
	}
	cases := []struct {
		name string
		opts Options
		// breakIt prepares the run and returns the part to run and
		// the state to run it with.
		breakIt func(t *testing.T, p *Program) (*ebpf.Program, bpf.State)
		want    outcome
	}{
		{"works", Options{}, entry, outcome{stubAllowRC + uint32(bpf.PolicyAllow), bpf.PolicyAllow}},
		{"second slot empty", Options{}, func(t *testing.T, p *Program) (*ebpf.Program, bpf.State) {
			if err := k.maps.PolicyJumps.Delete(p.Slots()[1]); err != nil {
				t.Fatal(err)
			}
			return entry(t, p)
		}, outcome{failedInDeny, bpf.PolicyFailed}},
		{"second slot holds a foreign program", Options{}, func(t *testing.T, p *Program) (*ebpf.Program, bpf.State) {
			put(t, k.maps.PolicyJumps, p.Slots()[1], k.stub(t, 50))
			return entry(t, p)
		}, outcome{50 + uint32(bpf.PolicyNone), bpf.PolicyNone}},
		{"later part run with resume 0", Options{}, func(t *testing.T, p *Program) (*ebpf.Program, bpf.State) {
			return p.Programs()[1], stateOf(basePacket)
		}, outcome{failedInDeny, bpf.PolicyFailed}},
		{"later part run with an unknown resume", Options{}, func(t *testing.T, p *Program) (*ebpf.Program, bpf.State) {
			s := stateOf(basePacket)
			s.Resume = 12345
			return p.Programs()[1], s
		}, outcome{failedInDeny, bpf.PolicyFailed}},
		{"allow continuation missing", Options{AllowSlot: emptyCont, DenySlot: uint32(bpf.ContDeny)}, entry,
			outcome{failedInDeny, bpf.PolicyFailed}},
		{"allow and deny continuations missing", Options{AllowSlot: emptyCont, DenySlot: emptyCont + 1}, entry,
			outcome{tcActShot, bpf.PolicyFailed}},
		{"second slot empty, deny continuation missing", Options{AllowSlot: uint32(bpf.ContAllow), DenySlot: emptyCont}, func(t *testing.T, p *Program) (*ebpf.Program, bpf.State) {
			if err := k.maps.PolicyJumps.Delete(p.Slots()[1]); err != nil {
				t.Fatal(err)
			}
			return entry(t, p)
		}, outcome{tcActShot, bpf.PolicyFailed}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := k.loadCompiled(t, compileTwoParts(t, tc.opts))
			prog, s := tc.breakIt(t, p)
			ret, out := k.runProg(t, prog, s)
			if diff := cmp.Diff(tc.want, outcome{ret, out.PolicyRC}); diff != "" {
				t.Errorf("run (-want +got):\n%s", diff)
			}
		})
	}
}

func entry(_ *testing.T, p *Program) (*ebpf.Program, bpf.State) {
	return p.Programs()[0], stateOf(basePacket)
}

// TestMaxPartsChain loads a policy of MaxParts parts into scattered slots
// and sends a packet that only the last part's rule decides: every tail
// call reaches the slot Load gave the next part, within the kernel's
// tail-call budget.
func TestMaxPartsChain(t *testing.T) {
	k := newKernel(t)
	var rules []Rule
	for i := 0; i < MaxParts-1; i++ {
		rules = append(rules, Rule{ID: uint64(100 + i), Action: ActionDeny, Protocol: "tcp", DstPorts: []PortRange{Port(uint16(1000 + i))}})
	}
	last := &rules[len(rules)-1]
	last.Action = ActionAllow
	c, err := Compile(Rules{Tiers: []Tier{mkTier("t", EndDeny, rules...)}}, Options{SplitJumps: 1, MaxParts: MaxParts, MergeThreshold: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Parts) != MaxParts {
		t.Fatalf("%d parts, want %d", len(c.Parts), MaxParts)
	}
	p := k.loadCompiled(t, c)
	pkt := basePacket
	for _, tc := range []struct {
		port uint16
		want Decision
	}{
		{1000 + MaxParts - 2, Decision{Verdict: VerdictAllow, RuleID: last.ID}},
		{1000 + MaxParts/2, Decision{Verdict: VerdictDeny, RuleID: 100 + MaxParts/2}},
		{999, Decision{Verdict: VerdictDeny, RuleID: tierEnd}},
	} {
		pkt.DstPort = tc.port
		if diff := cmp.Diff(tc.want, k.run(t, p, pkt), decisionCmp); diff != "" {
			t.Errorf("port %d, slots %v (-want +got):\n%s", tc.port, p.Slots(), diff)
		}
	}
}

// TestReleaseLeavesPolicyInstalled: Release lets go of the handles, yet
// the parts stay in their slots and a later Close of the released Program
// removes nothing.
func TestReleaseLeavesPolicyInstalled(t *testing.T) {
	k := newKernel(t)
	c := compileTwoParts(t, Options{})
	slots := []uint32{5, 6}
	p, err := c.Load(k.maps, slots)
	if err != nil {
		t.Fatal(err)
	}
	before := occupied(t, k.maps.PolicyJumps)
	if err := p.Release(); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close after Release: %v", err)
	}
	if diff := cmp.Diff(before, occupied(t, k.maps.PolicyJumps)); diff != "" {
		t.Errorf("slots after Release (-before +after):\n%s", diff)
	}
	if len(before) != len(slots) {
		t.Errorf("%d slots occupied after Load, want %d", len(before), len(slots))
	}
	if err := (*Program)(nil).Release(); err == nil {
		t.Error("nil Program: Release returned nil")
	}
	for _, s := range slots {
		k.maps.PolicyJumps.Delete(s)
	}
}
