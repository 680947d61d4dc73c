package polprog

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// TestStateLayout checks the Go mirrors whose offsets the compiler uses
// against the datapath object's BTF.
func TestStateLayout(t *testing.T) {
	spec, err := bpf.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	if err := maps.CheckLayout(spec.Types, bpf.TypeState, bpf.State{}); err != nil {
		t.Error(err)
	}
	if err := maps.CheckLayout(spec.Types, bpf.TypeIPSetKey, bpf.IPSetKey{}); err != nil {
		t.Error(err)
	}
}

func TestValidateErrors(t *testing.T) {
	good := Rule{ID: 1, Action: ActionAllow}
	cases := []struct {
		name string
		rule Rule
		want string
	}{
		{"unknown action", Rule{ID: 1, Action: 9}, "invalid action"},
		{"unknown protocol", Rule{Action: ActionAllow, Protocol: "tcpx"}, "unknown protocol"},
		{"protocol out of range", Rule{Action: ActionAllow, NotProtocol: "256"}, "unknown protocol"},
		{"invalid CIDR", Rule{Action: ActionAllow, SrcNets: []netip.Prefix{{}}}, "invalid CIDR"},
		{"mapped CIDR", Rule{Action: ActionAllow, DstNets: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}}, "IPv4-mapped"},
		{"reversed range", Rule{Action: ActionAllow, DstPorts: []PortRange{{10, 9}}}, "reversed range"},
		{"icmp without protocol", Rule{Action: ActionAllow, ICMP: &ICMPMatch{Type: 8}}, "ICMP matches need"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(oneRule(tc.rule), Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Compile error %v, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("too many rules", func(t *testing.T) {
		_, err := Compile(Rules{Tiers: []Tier{{Policies: []Policy{{Rules: []Rule{good, good, good}}}}}}, Options{MaxRules: 2})
		if !errors.Is(err, ErrTooManyRules) {
			t.Errorf("Compile error %v, want ErrTooManyRules", err)
		}
	})
	t.Run("bad end action", func(t *testing.T) {
		if _, err := Compile(Rules{Tiers: []Tier{{EndAction: 7}}}, Options{}); err == nil {
			t.Error("Compile accepted end action 7")
		}
	})
	t.Run("host tiers without ForHost", func(t *testing.T) {
		if _, err := Compile(Rules{PreDNATTiers: []Tier{{}}}, Options{}); err == nil {
			t.Error("Compile accepted pre-DNAT tiers for a workload")
		}
	})
	t.Run("MaxParts above the tail-call budget", func(t *testing.T) {
		rules := Rules{Tiers: []Tier{{Policies: []Policy{{Rules: []Rule{good}}}}}}
		type result struct{ Accepted, Rejected bool }
		var got []result
		for _, n := range []int{MaxParts, MaxParts + 1, math.MaxInt} {
			c, err := Compile(rules, Options{MaxParts: n})
			got = append(got, result{Accepted: c != nil && err == nil,
				Rejected: c == nil && err != nil && strings.Contains(err.Error(), "above MaxParts")})
		}
		if diff := cmp.Diff([]result{{Accepted: true}, {Rejected: true}, {Rejected: true}}, got); diff != "" {
			t.Errorf("Compile with MaxParts %d, %d, MaxInt (-want +got):\n%s", MaxParts, MaxParts+1, diff)
		}
	})
	t.Run("too many parts", func(t *testing.T) {
		rs := make([]Rule, 10)
		for i := range rs {
			rs[i] = Rule{ID: uint64(i + 1), Action: ActionDeny, Protocol: "tcp"}
		}
		_, err := Compile(Rules{Tiers: []Tier{{Policies: []Policy{{Rules: rs}}}}}, Options{SplitJumps: 1, MaxParts: 3})
		if err == nil || !strings.Contains(err.Error(), "more than 3 programs") {
			t.Errorf("Compile error %v, want too many programs", err)
		}
	})
}

type btfStruct struct {
	size    int
	offsets map[string]int
}

func findStruct(spec *ebpf.CollectionSpec, name string) (*btfStruct, error) {
	var s *btf.Struct
	if err := spec.Types.TypeByName(name, &s); err != nil {
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	out := &btfStruct{size: int(s.Size), offsets: map[string]int{}}
	for _, m := range s.Members {
		out.offsets[m.Name] = int(m.Offset.Bytes())
	}
	return out, nil
}
