package polprog

import (
	"errors"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// bpfMappings counts the process's mappings of BPF maps.
func bpfMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "anon_inode:bpf-map")
}

// midActionPolicy is a classified tier of n-1 rules (benchRule, tcp with
// ports), its middle rule's action set to action.
func midActionPolicy(n int, action Action) Rules {
	rs := benchRules(n, func(i int) Rule { return benchRule(i, "tcp", true) })
	rs[n/2].Action = action
	return Rules{NoMatchRuleID: 1 << 40, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 1 << 41,
		Policies: []Policy{{Name: "p", Rules: rs}}}}}
}

// TestUpdateMemory: a classified run's array maps are written through
// mappings of their memory; Load maps one per array, Update writes the
// idle generation through them (what packets decide by after the switch),
// and Close and Release unmap them all, after which Update is an error,
// not a write to memory gone; a Program dropped without either has them
// unmapped once it is collected.
func TestUpdateMemory(t *testing.T) {
	k := newKernel(t)
	const n = 600
	policy := func(action Action) Rules { return midActionPolicy(n, action) }
	c, err := Compile(policy(ActionAllow), Options{})
	if err != nil {
		t.Fatal(err)
	}
	arrays := 0
	for _, lm := range c.LookupMaps {
		if lm.Name != genMapName && lm.Spec.Type == ebpf.Array {
			arrays++
		}
	}
	if len(c.classes) == 0 || arrays < 2 {
		t.Fatalf("%d classified runs, %d arrays: want a run with its rows and table", len(c.classes), arrays)
	}
	t.Run("dropped", func(t *testing.T) {
		before := bpfMappings(t)
		slots, free := k.allocSlots(t, len(c.Parts))
		t.Cleanup(free)
		p, err := c.Load(k.maps, slots)
		if err != nil {
			t.Fatal(err)
		}
		if got := bpfMappings(t) - before; got != arrays {
			t.Fatalf("%d maps mapped after Load, want %d", got, arrays)
		}
		runtime.KeepAlive(p)
		p = nil
		// A Program dropped without Close or Release: its mappings go
		// once the collector finds it unreachable.
		for range 50 {
			if bpfMappings(t) == before {
				return
			}
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("%d maps still mapped after the Program was dropped", bpfMappings(t)-before)
	})
	for _, end := range []string{"close", "release"} {
		t.Run(end, func(t *testing.T) {
			before := bpfMappings(t)
			p := k.loadCompiled(t, c)
			if got := bpfMappings(t) - before; got != arrays {
				t.Errorf("%d maps mapped after Load, want %d (every array but the generation)", got, arrays)
			}
			// The middle rule's packet (benchRule(n/2)).
			i := n / 2
			mid := Packet{Src: netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), Dst: mustAddr("10.200.0.1"),
				Protocol: 6, SrcPort: 5555, DstPort: uint16(1000 + i)}
			for _, action := range []Action{ActionDeny, ActionAllow, ActionDeny, ActionLog, ActionDeny} {
				rules := policy(action)
				if err := p.Update(rules); err != nil {
					t.Fatalf("update to %v: %v", action, err)
				}
				k.agree(t, p, rules, IPSetMembers{}, mid)
				got := k.run(t, p, mid)
				if decided := got.RuleID == uint64(i+1); decided != (action != ActionLog) || got.Logged != (action == ActionLog) {
					t.Errorf("update to %v: the middle rule's packet gets %+v", action, got)
				}
			}
			if end == "close" {
				err = p.Close()
			} else {
				err = p.Release()
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := bpfMappings(t) - before; got != 0 {
				t.Errorf("%d maps still mapped after %s", got, end)
			}
			if err := p.Update(policy(ActionAllow)); err == nil || errors.Is(err, ErrNeedsReload) {
				t.Errorf("update after %s: %v, want an error that is not ErrNeedsReload", end, err)
			}
		})
	}
}
