package polprog

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden listings in testdata/")

// goldenPolicies are small policies whose listings are kept in testdata so
// that a change to the generated code shows in review.
func goldenPolicies() map[string]struct {
	rules Rules
	opts  Options
} {
	kitchenSink := Rule{ID: 0x1234_5678_9abc, Action: ActionAllow, Protocol: "tcp", NotProtocol: "17",
		SrcNets: []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("192.168.1.7/32")}, NotSrcNets: []netip.Prefix{mustPrefix("10.9.0.0/16")},
		DstNets: []netip.Prefix{mustPrefix("10.1.0.0/16")}, NotDstNets: []netip.Prefix{mustPrefix("10.1.2.0/24")},
		SrcIPSets: []uint64{1, 2}, NotSrcIPSets: []uint64{3}, DstIPSets: []uint64{4}, NotDstIPSets: []uint64{5},
		SrcPorts: []PortRange{{1024, 65535}}, NotSrcPorts: []PortRange{Port(6000)}, DstPorts: []PortRange{Port(80), Port(443)},
		DstNamedPorts: []uint64{6}, NotDstPorts: []PortRange{{8000, 8100}}, NotDstNamedPorts: []uint64{7}}
	icmp := Rule{ID: 9, Action: ActionDeny, Protocol: "icmp", ICMP: &ICMPMatch{Type: 8}, NotICMP: &ICMPMatch{Type: 8, Code: 1, HasCode: true}}
	var merged []Rule
	for i := 0; i < 6; i++ {
		merged = append(merged, Rule{ID: uint64(100 + i), Action: []Action{ActionAllow, ActionDeny, ActionPass}[i%3], Protocol: "tcp",
			DstNets: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)}})
	}
	tiers := []Tier{
		{Name: "security", EndAction: EndPass, Policies: []Policy{{Name: "log-then", Rules: []Rule{{ID: 1, Action: ActionLog, Protocol: "udp"}, {ID: 2, Action: ActionPass, Protocol: "udp"}}}}},
		{Name: "app", EndRuleID: 3, Policies: []Policy{{Namespace: "ns", Name: "web", Rules: []Rule{kitchenSink, icmp}}}},
	}
	return map[string]struct {
		rules Rules
		opts  Options
	}{
		"workload": {Rules{Tiers: tiers, Profiles: []Policy{{Name: "prof", Rules: []Rule{{ID: 4, Action: ActionAllow}}}}, NoMatchRuleID: 5}, Options{}},
		"host": {Rules{ForHost: true, PreDNATTiers: tiers[:1], Tiers: []Tier{{Name: "normal", EndRuleID: 6, Policies: []Policy{{Rules: []Rule{{ID: 7, Action: ActionAllow, Protocol: "tcp"}}}}}},
			ApplyOnForwardTiers: []Tier{{Name: "fwd", EndAction: EndPass}}, NoMatchRuleID: 8}, Options{}},
		"merged": {Rules{Tiers: []Tier{{Name: "t", Policies: []Policy{{Rules: merged}}}}}, Options{MergeThreshold: 4}},
		"split":  {Rules{Tiers: tiers}, Options{SplitJumps: 10, AllowSlot: 5, DenySlot: 6}},
	}
}

func TestGoldenListings(t *testing.T) {
	for name, g := range goldenPolicies() {
		t.Run(name, func(t *testing.T) {
			c, err := Compile(g.rules, g.opts)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			for i, p := range c.Parts {
				l, err := p.Listing()
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&out, "== part %d, %d rules\n%s\n", i, p.Rules, l)
			}
			for _, m := range c.LookupMaps {
				fmt.Fprintf(&out, "== lookup map %s (%d-byte keys)\n", m.Name, m.Spec.KeySize)
				var lines []string
				for _, kv := range m.Spec.Contents {
					key, val := kv.Key.([]byte), kv.Value.([]byte)
					lines = append(lines, fmt.Sprintf("/%d %x -> rule %d action %d", binary.NativeEndian.Uint32(key), key[4:],
						binary.NativeEndian.Uint64(val), binary.NativeEndian.Uint32(val[8:])))
				}
				slices.Sort(lines)
				out.WriteString(strings.Join(lines, "\n") + "\n")
			}
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(want, out.Bytes()) {
				t.Errorf("listing differs from %s (run with -update and review the diff):\n%s", path, out.String())
			}
		})
	}
}

// TestGoldenPoliciesLoad loads the golden policies, so that the listings on
// file are ones the verifier accepts (continuation slots that hold nothing
// are fine for the verifier).
func TestGoldenPoliciesLoad(t *testing.T) {
	k := newKernel(t)
	for name, g := range goldenPolicies() {
		t.Run(name, func(t *testing.T) {
			k.load(t, g.rules, g.opts)
		})
	}
}
