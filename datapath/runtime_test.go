package datapath

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
)

// openSmall opens an unpinned datapath with small pools, for the tests of
// the runtime's bookkeeping.
func openSmall(tb testing.TB, opts Options) *Datapath {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	if opts.ConntrackEntries == 0 {
		opts.ConntrackEntries = 1 << 10
	}
	d, err := Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// usedPolicySlots lists the occupied slots of the policy prog array.
func usedPolicySlots(tb testing.TB, d *Datapath) int {
	tb.Helper()
	n := 0
	var key, id uint32
	it := d.objs.SlPolicyJumps.Iterate()
	for it.Next(&key, &id) {
		n++
	}
	if err := it.Err(); err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestSetInterfaceSlots holds the runtime's slot bookkeeping to what it
// promises: a replacement needs room for the new policy beside the old
// one and frees the old one after, a full pool is an error that changes
// nothing, and removed interfaces give their slots back.
func TestSetInterfaceSlots(t *testing.T) {
	d := openSmall(t, Options{PolicySlots: 4, MaxInterfaces: 2})
	wl := Interface{Kind: Workload, Ingress: allowTCPPort(80, 10), Egress: allowAllRules}

	if err := d.SetInterface(7, wl); err != nil {
		t.Fatal(err)
	}
	if n := usedPolicySlots(t, d); n != 2 {
		t.Errorf("after the first interface %d slots hold programs, want 2", n)
	}
	// Replacing needs 2 fresh slots (2 free) and frees the old 2.
	wl.Ingress = allowTCPPort(81, 20)
	if err := d.SetInterface(7, wl); err != nil {
		t.Fatal(err)
	}
	if n, free := usedPolicySlots(t, d), d.policySlots.free; n != 2 || free != 2 {
		t.Errorf("after a replacement %d slots used and %d free, want 2 and 2", n, free)
	}
	if err := d.SetInterface(8, wl); err != nil {
		t.Fatal(err)
	}
	before, err := d.InterfaceEntry(8)
	if err != nil {
		t.Fatal(err)
	}
	// The pool is full: replacing interface 8 is refused and leaves it be.
	wl.Ingress = allowTCPPort(82, 30)
	if err := d.SetInterface(8, wl); err == nil || !strings.Contains(err.Error(), "policy slots") {
		t.Errorf("replacement with a full pool: %v, want an error about policy slots", err)
	}
	if after, err := d.InterfaceEntry(8); err != nil || after != before {
		t.Errorf("interface 8 changed by a refused replacement: %+v, %v (was %+v)", after, err, before)
	}
	// Both counter slots are taken.
	if err := d.SetInterface(9, Interface{Kind: Workload}); err == nil {
		t.Error("a third interface with MaxInterfaces 2 was accepted")
	}
	if _, err := d.InterfaceEntry(9); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("refused interface 9 has an entry: %v", err)
	}
	if err := d.RemoveInterface(7); err != nil {
		t.Fatal(err)
	}
	if n, free := usedPolicySlots(t, d), d.policySlots.free; n != 2 || free != 2 {
		t.Errorf("after removing an interface %d slots used and %d free, want 2 and 2", n, free)
	}
	if err := d.SetInterface(9, Interface{Kind: Workload}); err != nil {
		t.Errorf("an interface in the freed counter slot: %v", err)
	}
}

// TestSetInterfaceErrors: bad input is an error and changes nothing.
func TestSetInterfaceErrors(t *testing.T) {
	d := openSmall(t, Options{PolicySlots: 8, MaxInterfaces: 4})
	tests := []struct {
		name    string
		ifindex int
		cfg     Interface
		want    string
	}{
		{"ifindex 0", 0, Interface{Kind: Workload}, "out of range"},
		{"negative ifindex", -3, Interface{Kind: Workload}, "out of range"},
		{"no kind", 3, Interface{}, "kind"},
		{"unknown kind", 3, Interface{Kind: 9}, "kind"},
		{"host egress pre-DNAT", 3, Interface{Kind: Host, Egress: polprog.Rules{PreDNATTiers: []polprog.Tier{{Name: "pre"}}}}, "pre-DNAT"},
		{"invalid rule", 3, Interface{Kind: Workload, Ingress: polprog.Rules{Profiles: []polprog.Policy{{Rules: []polprog.Rule{{Protocol: "tcp"}}}}}}, "TC egress policy"},
		{"workload with host tiers", 3, Interface{Kind: Workload, Egress: polprog.Rules{PreDNATTiers: []polprog.Tier{{Name: "pre"}}}}, "TC ingress policy"},
	}
	for _, tt := range tests {
		err := d.SetInterface(tt.ifindex, tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one about %q", tt.name, err, tt.want)
		}
	}
	if n := usedPolicySlots(t, d); n != 0 || d.policySlots.free != 8 || d.counterSlots.free != 4 {
		t.Errorf("after refused calls: %d slots hold programs, %d policy and %d counter slots free; want 0, 8, 4",
			n, d.policySlots.free, d.counterSlots.free)
	}
	if err := d.RemoveInterface(3); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("removing an unknown interface: %v, want ErrKeyNotExist", err)
	}
	var nilDatapath *Datapath
	for name, err := range map[string]error{
		"SetInterface":    nilDatapath.SetInterface(1, Interface{Kind: Workload}),
		"RemoveInterface": nilDatapath.RemoveInterface(1),
		"ResizeConntrack": nilDatapath.ResizeConntrack(10),
		"Settle":          nilDatapath.Settle(),
		"Close":           nilDatapath.Close(),
	} {
		if err == nil {
			t.Errorf("nil Datapath: %s returned nil", name)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(3, Interface{Kind: Workload}); err == nil {
		t.Error("SetInterface after Close succeeded")
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestCounterSlotReuse: an interface that gets a slot another interface
// left starts from zero.
func TestCounterSlotReuse(t *testing.T) {
	d := openSmall(t, Options{PolicySlots: 8, MaxInterfaces: 1})
	if err := d.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Workload, Egress: allowAllRules}); err != nil {
		t.Fatal(err)
	}
	frame := testpkt.MustBytes(t, testpkt.UDPv4(netip.MustParseAddrPort("10.9.0.1:1"), netip.MustParseAddrPort("10.9.0.2:2"), nil))
	if ret, err := d.TCIngress().Run(&ebpf.RunOptions{Data: frame}); err != nil || ret != tcActOK {
		t.Fatalf("run: %d, %v", ret, err)
	}
	c, err := d.Counters(loIfindex)
	if err != nil || c.Egress.Accepted() != 1 {
		t.Fatalf("counters %v, %v; want one accepted packet", c.Egress.NonZero(), err)
	}
	if err := d.RemoveInterface(loIfindex); err != nil {
		t.Fatal(err)
	}
	if err := d.SetInterface(5, Interface{Kind: Workload}); err != nil {
		t.Fatal(err)
	}
	c, err = d.Counters(5)
	if err != nil || c.Egress.Accepted()+c.Egress.Dropped()+c.Ingress.Accepted()+c.Ingress.Dropped() != 0 {
		t.Errorf("counters of the interface in the reused slot: %v %v, %v; want zeros", c.Ingress.NonZero(), c.Egress.NonZero(), err)
	}
}

// TestPolicyFailureCounted: a policy split into parts that cannot finish
// (its second part's slot emptied behind the runtime's back) drops the
// packet under ReasonDroppedPolicyFailed, counted once, at the interface.
func TestPolicyFailureCounted(t *testing.T) {
	// Tiny parts, so that a 30-rule policy has several.
	d := openSmall(t, Options{PolicySlots: 64, MaxInterfaces: 2, Policy: polprog.Options{SplitJumps: 8, MergeThreshold: -1}})
	if err := d.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
		t.Fatal(err)
	}
	var rules []polprog.Rule
	for i := range 30 {
		rules = append(rules, polprog.Rule{ID: uint64(100 + i), Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(uint16(1000 + i))}})
	}
	egress := polprog.Rules{Tiers: []polprog.Tier{{Name: "t", Policies: []polprog.Policy{{Rules: rules}}}}}
	if err := d.SetInterface(loIfindex, Interface{Kind: Workload, Egress: egress}); err != nil {
		t.Fatal(err)
	}
	slots := d.ifaces[loIfindex].hooks[bpf.HookIngress].prog.Slots()
	if len(slots) < 2 {
		t.Fatalf("policy has %d parts, want several", len(slots))
	}
	if err := d.objs.SlPolicyJumps.Delete(slots[1]); err != nil {
		t.Fatal(err)
	}
	before, err := d.Counters(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	frame := testpkt.MustBytes(t, testpkt.TCPv4(netip.MustParseAddrPort("10.9.0.1:1"), netip.MustParseAddrPort("10.9.0.2:1029"), testpkt.SYN, nil))
	if ret, err := d.TCIngress().Run(&ebpf.RunOptions{Data: frame}); err != nil || ret != tcActShot {
		t.Fatalf("run: %d, %v; want TC_ACT_SHOT", ret, err)
	}
	after, err := d.Counters(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	got := reasonDelta(before.Egress, after.Egress)
	if len(got) != 1 || got[bpf.ReasonDroppedPolicyFailed] != 1 {
		t.Errorf("counters %v, want one %v", got, bpf.ReasonDroppedPolicyFailed)
	}
}
