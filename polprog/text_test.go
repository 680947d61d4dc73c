package polprog

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRulesJSONRoundTrip(t *testing.T) {
	want := Rules{
		Tiers: []Tier{{
			Name:      "default",
			EndAction: EndPass,
			Policies: []Policy{{Name: "web", Rules: []Rule{
				{ID: 1, Action: ActionAllow, Protocol: "tcp", DstPorts: []PortRange{Port(80), {First: 8000, Last: 8080}}},
				{ID: 2, Action: ActionLog, SrcNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
				{ID: 3, Action: ActionPass, ICMP: &ICMPMatch{Type: 8}},
				{ID: 4, Action: ActionDeny, NotSrcIPSets: []uint64{7}},
			}}},
		}},
		NoMatchRuleID: 99,
	}
	text, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var got Rules
	if err := json.Unmarshal(text, &got); err != nil {
		t.Fatalf("unmarshal %s: %v", text, err)
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
}

func TestTextForms(t *testing.T) {
	for _, tc := range []struct {
		text string
		into interface{ UnmarshalText([]byte) error }
		ok   bool
	}{
		{"allow", new(Action), true},
		{"log", new(Action), true},
		{"Allow", new(Action), false},
		{"", new(Action), false},
		{"pass", new(EndAction), true},
		{"allow", new(EndAction), false},
		{"0", new(PortRange), true},
		{"65535", new(PortRange), true},
		{"1-65535", new(PortRange), true},
		{"65536", new(PortRange), false},
		{"90-80", new(PortRange), false},
		{"80-", new(PortRange), false},
		{"-80", new(PortRange), false},
		{"http", new(PortRange), false},
	} {
		err := tc.into.UnmarshalText([]byte(tc.text))
		if (err == nil) != tc.ok {
			t.Errorf("%T.UnmarshalText(%q) = %v, want ok %v", tc.into, tc.text, err, tc.ok)
		}
	}
	if _, err := Action(0).MarshalText(); err == nil {
		t.Error("Action(0).MarshalText succeeded")
	}
	if _, err := EndAction(9).MarshalText(); err == nil {
		t.Error("EndAction(9).MarshalText succeeded")
	}
	if _, err := (PortRange{First: 9, Last: 8}).MarshalText(); err == nil {
		t.Error("inverted PortRange.MarshalText succeeded")
	}
}
