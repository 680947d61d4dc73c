package main

import (
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/datapath"
	"github.com/sluicenet/sluice/ipsets"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// TestParseStateRejects: each bad file is refused with an error naming
// the field that is wrong.
func TestParseStateRejects(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"not json", `{"interfaces":`, "decode"},
		{"unknown field", `{"interfaces":{"eth0":{"kind":"host","ingres":{}}}}`, `unknown field "ingres"`},
		{"kind", `{"interfaces":{"eth0":{"kind":"workloud"}}}`, `interfaces["eth0"].kind`},
		{"bad rule type", `{"interfaces":{"eth0":{"kind":"host","ingress":{"Tiers":[{"Policies":[{"Rules":[{"ID":"x"}]}]}]}}}}`, "Tiers.Policies.Rules.ID"},
		{"action", `{"interfaces":{"eth0":{"kind":"host","ingress":{"Tiers":[{"Policies":[{"Rules":[{"Action":"permit"}]}]}]}}}}`, `unknown action "permit"`},
		{"protocol", `{"interfaces":{"eth0":{"kind":"host","egress":{"Tiers":[{"Policies":[{"Rules":[{"Protocol":"tcpp"}]}]}]}}}}`, `interfaces["eth0"].egress`},
		{"undeclared set", `{"interfaces":{"eth0":{"kind":"host","egress":{"Tiers":[{"Policies":[{"Rules":[{"Action":"allow","DstIPSets":[7]}]}]}]}}}}`, `interfaces["eth0"].egress: IP set ID 7`},
		{"endpoint interface", `{"endpoints":[{"interface":"eth9","addrs":["10.0.0.1"]}]}`, `endpoints[0].interface`},
		{"endpoint twice", `{"interfaces":{"a":{"kind":"workload"}},"endpoints":[{"interface":"a","addrs":["10.0.0.1","10.0.0.1"]}]}`, `endpoints[0].addrs[1]`},
		{"route kind", `{"routes":[{"prefix":"10.1.0.0/16","kind":"remote"}]}`, `routes[0].kind`},
		{"route next hop", `{"routes":[{"prefix":"10.1.0.0/16","kind":"remote-workload"}]}`, `routes[0]`},
		{"frontend protocol", `{"services":{"web":{"frontends":[{"addr":"10.96.0.1","port":80,"protocol":"icmp"}]}}}`, `services["web"].frontends[0].protocol`},
		{"no frontend", `{"services":{"web":{}}}`, `services["web"].frontends`},
		{"backend addr", `{"services":{"web":{"frontends":[{"addr":"10.96.0.1","port":80,"protocol":"tcp"}],"backends":[{"port":80}]}}}`, `services["web"].backends[0].addr`},
		{"named port", `{"ipsets":{"s":{"namedPorts":[{"addr":"10.0.0.1","port":80}]}}}`, `ipsets["s"].namedPorts[0]`},
		{"trailing data", `{} {}`, "data after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseState([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestExampleState: the example file in this directory is a valid state,
// its rules naming its set by ID.
func TestExampleState(t *testing.T) {
	data, err := os.ReadFile("state.example.json")
	if err != nil {
		t.Fatal(err)
	}
	d, err := parseState(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.ifaces) != 2 || len(d.services) != 1 || len(d.routes) != 4 || len(d.sets) != 1 {
		t.Errorf("parsed %d interfaces, %d services, %d routes, %d sets; want 2, 1, 4, 1", len(d.ifaces), len(d.services), len(d.routes), len(d.sets))
	}
}

// TestParseStateConverts: a good file becomes the library's types.
func TestParseStateConverts(t *testing.T) {
	id := ipsets.NameID("clients")
	file := `{
	  "interfaces": {"w1": {"kind": "workload", "ingress": {"Tiers": [{"Name": "t", "EndAction": "deny", "EndRuleID": 9,
	    "Policies": [{"Name": "p", "Rules": [{"ID": 1, "Action": "allow", "Protocol": "tcp", "DstPorts": ["80", "8000-8080"],
	      "SrcIPSets": [` + strconv.FormatUint(id, 10) + `]}]}]}]}}},
	  "endpoints": [{"interface": "w1", "addrs": ["10.0.0.5"]}],
	  "routes": [{"prefix": "10.1.0.0/16", "kind": "remote-workload", "nextHop": "192.168.0.2", "tunneled": true}],
	  "services": {"web": {"frontends": [{"addr": "10.96.0.1", "port": 80, "protocol": "tcp"}],
	    "backends": [{"addr": "10.0.0.5", "port": 8080, "local": true}], "affinitySeconds": 30}},
	  "ipsets": {"clients": {"nets": ["10.2.0.0/16"]}}
	}`
	d, err := parseState([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	want := &desired{
		ifaces: map[string]datapath.Interface{"w1": {Kind: datapath.Workload, Ingress: polprog.Rules{Tiers: []polprog.Tier{{
			Name: "t", EndAction: polprog.EndDeny, EndRuleID: 9, Policies: []polprog.Policy{{Name: "p", Rules: []polprog.Rule{{
				ID: 1, Action: polprog.ActionAllow, Protocol: "tcp", SrcIPSets: []uint64{id},
				DstPorts: []polprog.PortRange{polprog.Port(80), {First: 8000, Last: 8080}}}}}}}}}}},
		routes: map[netip.Prefix]routes.Route{
			netip.MustParsePrefix("10.0.0.5/32"): {Prefix: netip.MustParsePrefix("10.0.0.5/32"), Flags: routes.FlagLocalWorkload, Ifindex: 1},
			netip.MustParsePrefix("10.1.0.0/16"): {Prefix: netip.MustParsePrefix("10.1.0.0/16"), Flags: routes.FlagRemoteWorkload | routes.FlagTunneled,
				NextHop: netip.MustParseAddr("192.168.0.2")},
		},
		endpoint: map[netip.Prefix]string{netip.MustParsePrefix("10.0.0.5/32"): "w1"},
		services: map[string]nat.Service{"web": {
			Frontends: []nat.Frontend{{Addr: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: nat.ProtoTCP}},
			Backends:  []nat.Backend{{Addr: netip.MustParseAddr("10.0.0.5"), Port: 8080, Local: true}},
			Affinity:  30 * time.Second,
		}},
		sets:     ipsets.Members{id: {Nets: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}},
		setNames: map[uint64]string{id: "clients"},
	}
	opts := cmp.Options{cmp.AllowUnexported(desired{}), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b })}
	if diff := cmp.Diff(want, d, opts); diff != "" {
		t.Errorf("parseState (-want +got):\n%s", diff)
	}
}
