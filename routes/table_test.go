package routes

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
)

// fixedRoutes nest IPv4 and IPv6 routes: a node with workloads in
// 10.0.1.0/24, a remote block, the host's addresses, defaults, and an
// IPv6 route that covers IPv4 space.
var fixedRoutes = []Route{
	remote("0.0.0.0/0", FlagRemoteHost, "192.168.0.254"),
	remote("10.0.0.0/8", FlagRemoteWorkload|FlagTunneled, "192.168.0.3"),
	localWorkload("10.0.1.0/24", 4),
	localWorkload("10.0.1.7/32", 5),
	remote("10.0.1.128/25", FlagRemoteWorkload, "192.168.0.4"),
	localHost("192.168.0.2/32"),
	remote("192.168.0.0/24", FlagRemoteHost, "192.168.0.1"),
	remote("fd00::/64", FlagRemoteWorkload, "fd00:ff::3"),
	localWorkload("fd00::7/128", 5),
	localHost("fd00:ff::2/128"),
	remote("::/0", FlagRemoteHost, "fd00:ff::fe"),
	remote("64:ff9b::/96", FlagRemoteHost, "fd00:ff::64"),
}

func TestTableLookup(t *testing.T) {
	table := mustTable(t, fixedRoutes)
	tests := []struct {
		addr string
		// want is the prefix of the route found, "" for none.
		want string
	}{
		{"10.0.1.7", "10.0.1.7/32"},
		{"::ffff:10.0.1.7", "10.0.1.7/32"}, // IPv4-mapped is IPv4
		{"10.0.1.8", "10.0.1.0/24"},
		{"10.0.1.127", "10.0.1.0/24"},
		{"10.0.1.128", "10.0.1.128/25"},
		{"10.0.1.255", "10.0.1.128/25"},
		{"10.0.2.1", "10.0.0.0/8"},
		{"10.255.255.255", "10.0.0.0/8"},
		{"11.0.0.0", "0.0.0.0/0"},
		{"9.255.255.255", "0.0.0.0/0"},
		{"192.168.0.2", "192.168.0.2/32"},
		{"192.168.0.3", "192.168.0.0/24"},
		{"fd00::7", "fd00::7/128"},
		{"fd00::8", "fd00::/64"},
		{"fd00:0:0:1::", "::/0"},
		{"64:ff9b::a00:1", "64:ff9b::/96"},
		{"2001:db8::1", "::/0"},
	}
	for _, tt := range tests {
		got, ok := table.Lookup(addr(tt.addr))
		var gotPrefix string
		if ok {
			gotPrefix = got.Prefix.String()
		}
		if diff := cmp.Diff(tt.want, gotPrefix); diff != "" {
			t.Errorf("Lookup(%s) prefix (-want +got):\n%s", tt.addr, diff)
		}
	}
	if r, ok := table.Lookup(netip.Addr{}); ok {
		t.Errorf("Lookup(zero Addr) = %s, want none", r)
	}
}

// TestTableFamiliesApart: routes of one family never match addresses of
// the other, as in the kernel's trie, where the family is matched first;
// IPv4-mapped IPv6 addresses are IPv4.
func TestTableFamiliesApart(t *testing.T) {
	v6only := mustTable(t, []Route{
		remote("::/0", FlagRemoteHost, "fd00::1"),
		remote("::/80", FlagRemoteHost, "fd00::2"),
		localHost("::ffff:0:0/95"),
	})
	for _, a := range []string{"10.0.0.1", "::ffff:10.0.0.1"} {
		if got, ok := v6only.Lookup(addr(a)); ok {
			t.Errorf("IPv6 routes only: Lookup(%s) = %s, want none", a, got)
		}
	}
	v4only := mustTable(t, []Route{remote("0.0.0.0/0", FlagRemoteHost, "192.168.0.1")})
	if got, ok := v4only.Lookup(addr("::1")); ok {
		t.Errorf("IPv4 routes only: Lookup(::1) = %s, want none", got)
	}
	if got, ok := v4only.Lookup(addr("::ffff:10.0.0.1")); !ok || got.Prefix != pfx("0.0.0.0/0") {
		t.Errorf("Lookup(::ffff:10.0.0.1) = %s, %v; want the IPv4 default", got, ok)
	}
	if _, ok := mustTable(t, nil).Lookup(addr("10.0.0.1")); ok {
		t.Error("empty table found a route")
	}
}

func TestTableGet(t *testing.T) {
	table := mustTable(t, fixedRoutes)
	tests := []struct {
		prefix string
		found  bool
	}{
		{"10.0.1.0/24", true},
		{"10.0.1.9/24", true}, // masked
		{"::ffff:10.0.1.0/120", true},
		{"10.0.1.0/25", false}, // covered, not held
		{"10.0.0.0/16", false},
		{"::/0", true},
		{"0.0.0.0/0", true},
		{"::ffff:0:0/96", true}, // the IPv4 default
		{"::/1", false},
	}
	for _, tt := range tests {
		if _, found := table.Get(pfx(tt.prefix)); found != tt.found {
			t.Errorf("Get(%s) found %v, want %v", tt.prefix, found, tt.found)
		}
	}
	if diff := cmp.Diff(len(fixedRoutes), table.Len()); diff != "" {
		t.Errorf("Len (-want +got):\n%s", diff)
	}
}

func TestRPFAllows(t *testing.T) {
	table := mustTable(t, fixedRoutes)
	tests := []struct {
		name    string
		src     string
		ifindex uint32
		want    bool
	}{
		{"workload on its interface", "10.0.1.8", 4, true},
		{"workload on another interface", "10.0.1.8", 5, false},
		{"host route inside the block, its interface", "10.0.1.7", 5, true},
		{"host route inside the block, the block's interface", "10.0.1.7", 4, false},
		{"remote sub-block of a local block", "10.0.1.200", 4, false},
		{"remote workload", "10.0.2.1", 4, false},
		{"host address", "192.168.0.2", 4, false},
		{"default route", "8.8.8.8", 4, false},
		{"IPv6 workload", "fd00::7", 5, true},
		{"IPv6 remote", "fd00::8", 5, false},
		{"IPv4-mapped workload", "::ffff:10.0.1.8", 4, true},
		{"zero address", "", 4, false},
	}
	for _, tt := range tests {
		var src netip.Addr
		if tt.src != "" {
			src = addr(tt.src)
		}
		if got := RPFAllows(table, src, tt.ifindex); got != tt.want {
			t.Errorf("%s: RPFAllows(%s, %d) = %v, want %v", tt.name, tt.src, tt.ifindex, got, tt.want)
		}
	}
	if RPFAllows(mustTable(t, nil), addr("10.0.1.8"), 4) {
		t.Error("RPFAllows passed a source without a route")
	}
}

func TestHostFlags(t *testing.T) {
	table := mustTable(t, fixedRoutes)
	tests := []struct {
		src, dst string
		want     bpf.StateFlags
	}{
		{"192.168.0.2", "10.0.1.8", bpf.StateFlagSrcIsHost},
		{"10.0.1.8", "192.168.0.2", bpf.StateFlagDstIsHost},
		{"192.168.0.2", "fd00:ff::2", bpf.StateFlagSrcIsHost | bpf.StateFlagDstIsHost},
		{"192.168.0.3", "10.0.1.8", 0},
		{"8.8.8.8", "::ffff:192.168.0.2", bpf.StateFlagDstIsHost},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, HostFlags(table, addr(tt.src), addr(tt.dst))); diff != "" {
			t.Errorf("HostFlags(%s, %s) (-want +got):\n%s", tt.src, tt.dst, diff)
		}
	}
}

func TestNewTableRejects(t *testing.T) {
	tests := []struct {
		name    string
		routes  []Route
		wantErr string
	}{
		{"invalid route", []Route{localWorkload("10.0.0.1/32", 0)}, "ifindex"},
		{"same prefix", []Route{localHost("10.0.0.1/32"), localWorkload("10.0.0.1/32", 3)}, "have one prefix"},
		{"same prefix after masking", []Route{localHost("10.0.0.0/8"), localHost("10.1.2.3/8")}, "have one prefix"},
		{"IPv4 and its mapped form", []Route{localHost("10.0.0.0/8"), localHost("::ffff:10.0.0.0/104")}, "have one prefix"},
	}
	for _, tt := range tests {
		_, err := NewTable(tt.routes)
		if err == nil || !errors.Is(err, ErrInvalidRoute) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: NewTable error %v, want one wrapping ErrInvalidRoute containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestTableRoutesNormalized(t *testing.T) {
	table := mustTable(t, []Route{
		localHost("::ffff:10.0.0.0/104"),
		remote("10.1.2.3/16", FlagRemoteWorkload, "::ffff:192.168.0.2"),
		localHost("fd00::1/128"),
		localHost("10.0.0.0/16"),
	})
	want := []Route{
		localHost("10.0.0.0/8"),
		localHost("10.0.0.0/16"),
		remote("10.1.0.0/16", FlagRemoteWorkload, "192.168.0.2"),
		localHost("fd00::1/128"),
	}
	if diff := cmp.Diff(want, table.Routes(), netipEqual); diff != "" {
		t.Errorf("Routes (-want +got):\n%s", diff)
	}
}
