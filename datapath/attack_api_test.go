package datapath

import (
	"fmt"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
)

// atkCall runs fn and turns a panic into an error naming it.
func atkCall(fn func() error) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			err, panicked = fmt.Errorf("panic: %v", r), true
		}
	}()
	return fn(), false
}

// atkAPICalls are the error-returning methods of the runtime, called
// with arguments that are fine for a working datapath.
func atkAPICalls(d *Datapath) map[string]func() error {
	return map[string]func() error{
		"SetInterface": func() error {
			return d.SetInterface(loIfindex, Interface{Kind: Workload, Ingress: atkAllowAll(1), Egress: atkAllowAll(3)})
		},
		"RemoveInterface": func() error { return d.RemoveInterface(loIfindex) },
		"Interface":       func() error { _, err := d.InterfaceEntry(loIfindex); return err },
		"Counters":        func() error { _, err := d.Counters(loIfindex); return err },
		"UnconfiguredCounters": func() error {
			_, _, err := d.UnconfiguredCounters()
			return err
		},
		"ResizeConntrack": func() error { return d.ResizeConntrack(1 << 10) },
		"Settle":          func() error { return d.Settle() },
	}
}

// TestAttackBadAPIInput calls the runtime with input it cannot act on:
// bad interface indexes and kinds, invalid rules, and every method on a
// nil and on a closed Datapath. Each must return an error, and none may
// panic.
func TestAttackBadAPIInput(t *testing.T) {
	testutil.RequirePrivileged(t)
	d, err := Open(Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	good := Interface{Kind: Workload, Ingress: atkAllowAll(1), Egress: atkAllowAll(3)}
	if err := d.SetInterface(loIfindex, good); err != nil {
		t.Fatal(err)
	}
	loBefore, err := d.InterfaceEntry(loIfindex)
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]func() error{
		"SetInterface ifindex 0":  func() error { return d.SetInterface(0, good) },
		"SetInterface ifindex -1": func() error { return d.SetInterface(-1, good) },
		"SetInterface ifindex past int32": func() error {
			return d.SetInterface(1<<40, good)
		},
		"SetInterface kind 0":  func() error { return d.SetInterface(loIfindex, Interface{Ingress: good.Ingress}) },
		"SetInterface kind 99": func() error { return d.SetInterface(loIfindex, Interface{Kind: 99}) },
		"SetInterface rule without action": func() error {
			return d.SetInterface(loIfindex, Interface{Kind: Workload, Egress: atkRules(9, polprog.Rule{ID: 1})})
		},
		"SetInterface bad protocol": func() error {
			return d.SetInterface(loIfindex, Interface{Kind: Host, Ingress: atkRules(9, polprog.Rule{ID: 1, Action: polprog.ActionAllow, Protocol: "bogus"})})
		},
		"SetInterface reversed port range": func() error {
			return d.SetInterface(loIfindex, Interface{Kind: Host, Ingress: atkRules(9, polprog.Rule{ID: 1, Action: polprog.ActionAllow,
				Protocol: "tcp", DstPorts: []polprog.PortRange{{First: 90, Last: 80}}})})
		},
		"SetInterface workload with pre-DNAT tiers": func() error {
			r := good.Ingress
			r.PreDNATTiers = r.Tiers
			return d.SetInterface(loIfindex, Interface{Kind: Workload, Ingress: r})
		},
		"SetInterface too many interfaces": func() error {
			for i := 1; i <= 4; i++ {
				if err := d.SetInterface(1000+i, good); err != nil {
					return err
				}
			}
			return nil
		},
		"RemoveInterface never configured": func() error { return d.RemoveInterface(777) },
		"RemoveInterface ifindex 0":        func() error { return d.RemoveInterface(0) },
		"Interface never configured":       func() error { _, err := d.InterfaceEntry(777); return err },
		"Counters never configured":        func() error { _, err := d.Counters(777); return err },
		"Counters ifindex -5":              func() error { _, err := d.Counters(-5); return err },
		"ResizeConntrack to 0":             func() error { return d.ResizeConntrack(0) },
	}
	var nilDP *Datapath
	for name, fn := range atkAPICalls(nilDP) {
		bad[name+" on a nil Datapath"] = fn
	}
	closed, err := Open(Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 16})
	if err != nil {
		t.Fatal(err)
	}
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	for name, fn := range atkAPICalls(closed) {
		bad[name+" on a closed Datapath"] = fn
	}
	for name, fn := range bad {
		err, panicked := atkCall(fn)
		switch {
		case panicked:
			t.Errorf("%s: %v", name, err)
		case err == nil:
			t.Errorf("%s: no error", name)
		}
	}
	// The failed calls left lo as it was, and it can still be changed.
	if loAfter, err := d.InterfaceEntry(loIfindex); err != nil || loAfter != loBefore {
		t.Errorf("lo after the bad calls: %+v, %v; was %+v", loAfter, err, loBefore)
	}
	if err := d.SetInterface(loIfindex, good); err != nil {
		t.Errorf("good SetInterface after the bad ones: %v", err)
	}
}
