package datapath

// Helpers of the attack tests (attack_*_test.go, hostpolicy_test.go): a
// datapath configured through its public API (SetInterface, Routes) on
// veth devices inside a namespace the test made, and packets run at those
// devices' hooks with BPF_PROG_TEST_RUN. Every top-level name starts with
// atk so that these files stay clear of the harness and of other tests.

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// atkEnv is a datapath whose interfaces are veth devices in a test
// namespace, configured with SetInterface.
type atkEnv struct {
	t       testing.TB
	d       *Datapath
	ns      *testutil.NetNS
	ifindex map[string]uint32
	// entered is where each packet direction last passed a TC ingress
	// hook, by atkFlowOf: a later run at a TC egress hook carries it as
	// skb->ingress_ifindex, as a forwarded packet does. A direction that
	// never entered through a hook leaves it 0, as the host's own
	// packets and those from unmanaged interfaces do.
	entered map[string]uint32
}

// atkFlowOf is a frame's packet direction: its IPv4 or IPv6 addresses,
// protocol and first four L4 bytes (the ports, or ICMP type, code and
// checksum), or "" for a frame without them.
func atkFlowOf(frame []byte) string {
	const eth = 14
	if len(frame) >= eth+40+4 && frame[12] == 0x86 && frame[13] == 0xdd {
		// IPv6 without extension headers: next header, addresses, ports.
		return string(frame[eth+6:eth+7]) + string(frame[eth+8:eth+40]) + string(frame[eth+40:eth+44])
	}
	if len(frame) < eth+20 || frame[12] != 0x08 || frame[13] != 0x00 {
		return ""
	}
	ihl := int(frame[eth]&0x0f) * 4
	flow := string(frame[eth+9:eth+10]) + string(frame[eth+12:eth+20])
	if len(frame) >= eth+ihl+4 {
		flow += string(frame[eth+ihl : eth+ihl+4])
	}
	return flow
}

// atkNewEnv opens a datapath and creates a veth pair per name in a fresh
// namespace (name, and its peer name+"p"); the namespace and everything
// in it is deleted by name when the test ends.
func atkNewEnv(tb testing.TB, names ...string) *atkEnv {
	tb.Helper()
	return atkNewEnvWith(tb, polprog.Options{}, names...)
}

// atkNewEnvWith is atkNewEnv with the compiler options of every policy.
func atkNewEnvWith(tb testing.TB, policy polprog.Options, names ...string) *atkEnv {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	d, err := Open(Options{ConntrackEntries: 1 << 12, PolicySlots: 1024, IPSetEntries: 16, MaxInterfaces: 16,
		RouteEntries: 1024, RuleHitEntries: 1 << 16, Policy: policy})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	e := &atkEnv{t: tb, d: d, ns: testutil.NewNetNS(tb), ifindex: map[string]uint32{}, entered: map[string]uint32{}}
	for _, name := range names {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
		if err := e.ns.Handle.LinkAdd(veth); err != nil {
			tb.Fatalf("add veth %s: %v", name, err)
		}
		l, err := e.ns.Handle.LinkByName(name)
		if err != nil {
			tb.Fatal(err)
		}
		e.ifindex[name] = uint32(l.Attrs().Index)
	}
	return e
}

// idx is the ifindex of a device the env made, or lo's for "lo".
func (e *atkEnv) idx(name string) uint32 {
	e.t.Helper()
	if name == "lo" {
		return loIfindex
	}
	i, ok := e.ifindex[name]
	if !ok {
		e.t.Fatalf("no interface %q", name)
	}
	return i
}

// set configures an interface with SetInterface.
func (e *atkEnv) set(name string, cfg Interface) {
	e.t.Helper()
	if err := e.d.SetInterface(int(e.idx(name)), cfg); err != nil {
		e.t.Fatal(err)
	}
}

// route puts a route in the datapath's routes map.
func (e *atkEnv) route(r routes.Route) {
	e.t.Helper()
	if err := e.d.Routes().Put(r); err != nil {
		e.t.Fatal(err)
	}
}

// atkLocal routes addr/32 to the workload behind ifindex.
func atkLocal(addr netip.Addr, ifindex uint32) routes.Route {
	return routes.Route{Prefix: netip.PrefixFrom(addr, 32), Flags: routes.FlagLocalWorkload, Ifindex: ifindex}
}

// atkHostRoute marks addr/32 as this node's.
func atkHostRoute(addr netip.Addr) routes.Route {
	return routes.Route{Prefix: netip.PrefixFrom(addr, 32), Flags: routes.FlagLocalHost}
}

// runAt runs a hook's program on frame as seen at the named interface
// (inside the env's namespace, where the device exists).
func (e *atkEnv) runAt(p prog, frame []byte, name string) uint32 {
	e.t.Helper()
	idx := e.idx(name)
	var ret uint32
	run := func() error {
		var err error
		ctx := skbCtx{Ifindex: idx, IngressIfindex: idx}
		if p == progEgress {
			ctx.IngressIfindex = e.entered[atkFlowOf(frame)]
		}
		ret, err = programOf(e.d, p).Run(&ebpf.RunOptions{Data: frame, Context: ctx})
		if err == nil && p == progIngress && ret == tcActOK {
			e.entered[atkFlowOf(frame)] = idx
		}
		return err
	}
	var err error
	if name == "lo" {
		err = run()
	} else {
		err = atkInNS(e.t, e.ns.Name, run)
	}
	if err != nil {
		e.t.Fatalf("run at %s: %v", name, err)
	}
	return ret
}

// atkInNS runs fn on the calling goroutine, its thread moved into the
// named namespace for the call: BPF_PROG_TEST_RUN finds the context's
// ifindex in the caller's namespace. Unlike NS.Do, fn may call t.Fatal:
// the thread goes back to its namespace on the way out either way, and
// stays locked (so the runtime retires it) if it cannot.
func atkInNS(tb testing.TB, name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			tb.Errorf("leave netns %s: %v", name, err)
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// counters returns the counters of one TC hook of an interface.
func (e *atkEnv) counters(name string, hook bpf.Hook) HookCounters {
	e.t.Helper()
	entry, err := e.d.InterfaceEntry(int(e.idx(name)))
	if err != nil {
		e.t.Fatal(err)
	}
	in, out, err := e.d.slotCounters(entry.CounterSlot)
	if err != nil {
		e.t.Fatal(err)
	}
	if hook == bpf.HookIngress {
		return in
	}
	return out
}

// expect runs frame at an interface's hook and checks that it got the
// verdict of want and was counted once, under want, at that hook. It
// returns whether it did, so that callers can stop a sequence early.
func (e *atkEnv) expect(step, name string, hook bpf.Hook, frame []byte, want bpf.Reason) bool {
	e.t.Helper()
	before := e.counters(name, hook)
	ret := e.runAt(hookProg(hook), frame, name)
	ok := true
	if ret != verdictOf(want) {
		e.t.Errorf("%s: verdict %d at %s %s, want %d (%s)", step, ret, name, hook, verdictOf(want), want)
		ok = false
	}
	if diff := cmp.Diff(one(want), reasonDelta(before, e.counters(name, hook))); diff != "" {
		e.t.Errorf("%s: counters of %s %s (-want +got):\n%s", step, name, hook, diff)
		ok = false
	}
	return ok
}

// ctEntry returns the live conntrack entry of key.
func (e *atkEnv) ctEntry(key bpf.CTKey) (bpf.CTValue, bool) {
	e.t.Helper()
	var v bpf.CTValue
	err := e.d.state.ct.Lookup(&key, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false
	}
	if err != nil {
		e.t.Fatalf("lookup conntrack %+v: %v", key, err)
	}
	return v, true
}

// ctDelete removes an entry; a missing one is not an error.
func (e *atkEnv) ctDelete(key bpf.CTKey) {
	e.t.Helper()
	if err := e.d.state.ct.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		e.t.Fatalf("delete conntrack %+v: %v", key, err)
	}
}

// hits returns the hits of a rule.
func (e *atkEnv) hits(id uint64) uint64 {
	e.t.Helper()
	n, err := e.d.RuleHits().Get(id)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// atkRules is one tier of one policy holding rules, whose end denies as
// endID.
func atkRules(endID uint64, rules ...polprog.Rule) polprog.Rules {
	return polprog.Rules{Tiers: []polprog.Tier{{
		Name:      "atk",
		Policies:  []polprog.Policy{{Name: "atk", Rules: rules}},
		EndRuleID: endID,
	}}}
}

// atkAllowAll allows everything as rule id.
func atkAllowAll(id uint64) polprog.Rules {
	return atkRules(id+1, polprog.Rule{ID: id, Action: polprog.ActionAllow})
}

// atkHostRules gives a host endpoint the same tier for traffic of the
// host and for forwarded traffic, so that its verdict does not depend on
// the routes.
func atkHostRules(r polprog.Rules) polprog.Rules {
	r.ApplyOnForwardTiers = r.Tiers
	return r
}

// atkLegs describes the interface bindings of an entry's legs, for
// comparisons that leave counts aside.
func atkLegs(v bpf.CTValue) string {
	leg := func(l bpf.CTLeg) string {
		return fmt.Sprintf("{ingress_ok=%t egress_ok=%t if=%d}", l.Flags&bpf.CTLegIngressOK != 0, l.Flags&bpf.CTLegEgressOK != 0, l.Ifindex)
	}
	return "a_to_b " + leg(v.AToB) + " b_to_a " + leg(v.BToA)
}

// atkLegOf returns the leg of dir.
func atkLegOf(v *bpf.CTValue, dir bpf.CTDir) *bpf.CTLeg {
	if dir == bpf.CTDirAToB {
		return &v.AToB
	}
	return &v.BToA
}
