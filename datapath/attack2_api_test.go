package datapath

import (
	"bytes"
	"context"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/ipsets"
	"github.com/sluicenet/sluice/routes"
)

// atk2ErrCalls are API calls that cannot act and must return an error.
type atk2ErrCalls map[string]func() error

// atk2ConntrackCalls are the error-returning methods of a conntrack.Map.
func atk2ConntrackCalls(prefix string, m *conntrack.Map, calls atk2ErrCalls) {
	k := conntrack.Key{Proto: conntrack.ProtoUDP}
	calls[prefix+" Lookup"] = func() error { _, err := m.Lookup(k); return err }
	calls[prefix+" Update"] = func() error { return m.Update(k, conntrack.Value{}, ebpf.UpdateAny) }
	calls[prefix+" Delete"] = func() error { return m.Delete(k) }
	calls[prefix+" Count"] = func() error { _, err := m.Count(); return err }
	calls[prefix+" Entries"] = func() error { _, err := m.Entries(); return err }
	calls[prefix+" Range"] = func() error { return m.Range(func(conntrack.Key, conntrack.Value) bool { return true }) }
	calls[prefix+" Dump"] = func() error { return m.Dump(&bytes.Buffer{}) }
	calls[prefix+" All"] = func() error {
		var err error
		for range m.All(&err) {
		}
		return err
	}
	calls[prefix+" Scanner"] = func() error {
		s, err := conntrack.NewScanner(m, conntrack.ScannerOptions{Clock: func() time.Duration { return time.Hour }})
		if err != nil {
			return err
		}
		_, err = s.Scan()
		return err
	}
}

// atk2RoutesCalls are the error-returning methods of a routes.Map.
func atk2RoutesCalls(prefix string, m *routes.Map, calls atk2ErrCalls) {
	r := routes.Route{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Flags: routes.FlagLocalHost}
	calls[prefix+" Put"] = func() error { return m.Put(r) }
	calls[prefix+" Get"] = func() error { _, err := m.Get(r.Prefix); return err }
	calls[prefix+" Lookup"] = func() error { _, err := m.Lookup(netip.MustParseAddr("10.1.2.3")); return err }
	calls[prefix+" Delete"] = func() error { return m.Delete(r.Prefix) }
	calls[prefix+" Routes"] = func() error { _, err := m.Routes(); return err }
	calls[prefix+" Sync"] = func() error { _, err := m.Sync([]routes.Route{r}); return err }
	calls[prefix+" All"] = func() error {
		var err error
		for range m.All(&err) {
		}
		return err
	}
}

// TestAttack2ZeroValueAPI calls the exported API of datapath, conntrack
// and routes on zero values and nil handles: a zero Datapath (as
// `var d datapath.Datapath` makes), the nil handles a nil Datapath hands
// out, and zero conntrack and routes maps. None can act, so each call
// must return an error, and none may panic ("bad API input returns a
// wrapped error. Never a panic").
func TestAttack2ZeroValueAPI(t *testing.T) {
	var zero Datapath
	calls := atk2ErrCalls{}
	for name, fn := range atkAPICalls(&zero) {
		calls["zero Datapath "+name] = fn
	}
	calls["zero Datapath SetInterfaces(nil)"] = func() error { return zero.SetInterfaces(nil) }
	calls["zero Datapath RuleHits().All"] = func() error { _, err := zero.RuleHits().All(); return err }
	calls["zero Datapath RuleHits().Get"] = func() error { _, err := zero.RuleHits().Get(1); return err }
	calls["zero Datapath Close"] = func() error { return zero.Close() }
	calls["zero RuleHits Get"] = func() error { _, err := (&RuleHits{}).Get(1); return err }
	calls["zero RuleHits All"] = func() error { _, err := (&RuleHits{}).All(); return err }

	var nilDP *Datapath
	atk2ConntrackCalls("nil Datapath's Conntrack()", nilDP.Conntrack(), calls)
	atk2RoutesCalls("nil Datapath's Routes()", nilDP.Routes(), calls)
	atk2ConntrackCalls("zero conntrack.Map", &conntrack.Map{}, calls)
	atk2RoutesCalls("zero routes.Map", &routes.Map{}, calls)

	var panics, silent []string
	for name, fn := range calls {
		err, panicked := atkCall(fn)
		switch {
		case panicked:
			panics = append(panics, name+": "+err.Error())
		case err == nil:
			silent = append(silent, name)
		}
	}
	sort.Strings(panics)
	sort.Strings(silent)
	for _, p := range panics {
		t.Errorf("%s", p)
	}
	for _, s := range silent {
		t.Errorf("%s: no error", s)
	}

	// Calls without an error result must not panic either.
	var nilTable *routes.Table
	quiet := map[string]func(){
		"nil Table Lookup":                func() { nilTable.Lookup(netip.MustParseAddr("10.0.0.1")) },
		"nil Table Get":                   func() { nilTable.Get(netip.MustParsePrefix("10.0.0.0/8")) },
		"nil Table Routes":                func() { nilTable.Routes() },
		"nil Table Len":                   func() { nilTable.Len() },
		"RPFAllows(nil)":                  func() { routes.RPFAllows(nil, netip.MustParseAddr("10.0.0.1"), 3) },
		"HostSourceAllowed(nil)":          func() { routes.HostSourceAllowed(nil, netip.MustParseAddr("10.0.0.1")) },
		"HostFlags(nil)":                  func() { routes.HostFlags(nil, netip.Addr{}, netip.Addr{}) },
		"zero Datapath TCIngress":         func() { zero.TCIngress() },
		"zero Datapath Generation":        func() { zero.Generation() },
		"zero conntrack.Map EBPF":         func() { (&conntrack.Map{}).EBPF() },
		"zero conntrack.Map MaxEntries":   func() { (&conntrack.Map{}).MaxEntries() },
		"zero conntrack.Map Close":        func() { (&conntrack.Map{}).Close() },
		"nil conntrack.Map MaxEntries":    func() { nilDP.Conntrack().MaxEntries() },
		"nil conntrack.Map Close":         func() { nilDP.Conntrack().Close() },
		"zero routes.Map MaxEntries":      func() { (&routes.Map{}).MaxEntries() },
		"nil routes.Map EBPF":             func() { nilDP.Routes().EBPF() },
		"zero conntrack.Key String":       func() { _ = conntrack.Key{}.String() },
		"zero conntrack.Value String":     func() { _ = conntrack.Value{}.String() },
		"conntrack.Timeouts zero Expired": func() { conntrack.Timeouts{}.Expired(conntrack.Key{}, conntrack.Value{}, 0) },
		"Scanner Run on a zero Map": func() {
			s, err := conntrack.NewScanner(&conntrack.Map{}, conntrack.ScannerOptions{Interval: time.Millisecond, Clock: func() time.Duration { return 0 }})
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			s.Run(ctx)
		},
	}
	var quietPanics []string
	for name, fn := range quiet {
		if err, panicked := atkCall(func() error { fn(); return nil }); panicked {
			quietPanics = append(quietPanics, name+": "+err.Error())
		}
	}
	sort.Strings(quietPanics)
	for _, p := range quietPanics {
		t.Errorf("%s", p)
	}
}

// TestAttack2HandlesAfterClose: the handles a Datapath hands out
// (Conntrack, Routes, IPSets, RuleHits) are "closed with the Datapath".
// Used after Close, even once another Datapath has been opened (and may
// have been given the descriptor numbers the first one freed), each call
// must return an error and touch nothing of the new Datapath.
func TestAttack2HandlesAfterClose(t *testing.T) {
	old := openSmall(t, Options{MaxInterfaces: 4, PolicySlots: 16})
	ct, rt, ips, hits := old.Conntrack(), old.Routes(), old.IPSets(), old.RuleHits()
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	fresh := openSmall(t, Options{MaxInterfaces: 4, PolicySlots: 16})
	r := routes.Route{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Flags: routes.FlagLocalHost}
	k := conntrack.Key{Proto: conntrack.ProtoUDP}
	calls := atk2ErrCalls{
		"Conntrack Count":  func() error { _, err := ct.Count(); return err },
		"Conntrack Update": func() error { return ct.Update(k, conntrack.Value{}, ebpf.UpdateAny) },
		"Routes Put":       func() error { return rt.Put(r) },
		"Routes Routes":    func() error { _, err := rt.Routes(); return err },
		"IPSets Add": func() error {
			return ips.Add(1, ipsets.Member{Net: netip.MustParsePrefix("10.0.0.0/8")})
		},
		"RuleHits All": func() error { _, err := hits.All(); return err },
	}
	for name, fn := range calls {
		err, panicked := atkCall(fn)
		if panicked || err == nil {
			t.Errorf("%s after Close: %v (panicked %t), want an error", name, err, panicked)
		}
	}
	if n, err := fresh.Conntrack().Count(); err != nil || n != 0 {
		t.Errorf("the new Datapath's table: %d entries (%v), want none", n, err)
	}
	if got, err := fresh.Routes().Routes(); err != nil || len(got) != 0 {
		t.Errorf("the new Datapath's routes: %v (%v), want none", got, err)
	}
}
