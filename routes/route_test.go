package routes

import (
	"errors"
	"github.com/sluicenet/sluice/bpf"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFlagsString(t *testing.T) {
	tests := []struct {
		flags Flags
		want  string
	}{
		{0, "0"},
		{FlagLocalWorkload, "local_workload"},
		{FlagRemoteWorkload | FlagTunneled, "remote_workload|tunneled"},
		{FlagLocalHost | 0x100, "local_host|0x100"},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, tt.flags.String()); diff != "" {
			t.Errorf("Flags(%#x).String() (-want +got):\n%s", uint32(tt.flags), diff)
		}
	}
}

func TestRouteString(t *testing.T) {
	tests := []struct {
		route Route
		want  string
	}{
		{localWorkload("10.0.0.0/24", 5), "10.0.0.0/24 local_workload if=5"},
		{remote("10.1.0.0/16", FlagRemoteWorkload|FlagTunneled, "192.168.0.2"), "10.1.0.0/16 remote_workload|tunneled via 192.168.0.2"},
		{localHost("fd00::1/128"), "fd00::1/128 local_host"},
		{Route{Flags: FlagRemoteHost, NextHop: addr("fd00::2")}, "remote_host via fd00::2"},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, tt.route.String()); diff != "" {
			t.Errorf("String (-want +got):\n%s", diff)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		route Route
		// wantErr is a fragment of the error, "" for a valid route.
		wantErr string
	}{
		{"local workload", localWorkload("10.0.0.5/32", 7), ""},
		{"local workload IPv6", localWorkload("fd00::5/128", 7), ""},
		{"local host", localHost("192.168.0.1/32"), ""},
		{"remote workload", remote("10.1.0.0/16", FlagRemoteWorkload, "192.168.0.2"), ""},
		{"remote host tunneled", remote("192.168.0.2/32", FlagRemoteHost|FlagTunneled, "192.168.0.2"), ""},
		{"IPv4 default", remote("0.0.0.0/0", FlagRemoteHost, "192.168.0.254"), ""},
		{"IPv6 default", remote("::/0", FlagRemoteHost, "fd00::fe"), ""},
		{"host bits set are masked", localWorkload("10.0.0.1/8", 7), ""},
		{"IPv4-mapped next hop counts as IPv4", remote("10.1.0.0/16", FlagRemoteWorkload, "::ffff:192.168.0.2"), ""},
		{"IPv4-mapped prefix counts as IPv4", remote("::ffff:10.1.0.0/112", FlagRemoteWorkload, "192.168.0.2"), ""},

		{"zero prefix", Route{Flags: FlagLocalHost}, "no valid prefix"},
		{"no flags", Route{Prefix: pfx("10.0.0.0/8")}, "name no kind"},
		{"unknown flag", Route{Prefix: pfx("10.0.0.0/8"), Flags: FlagLocalHost | 0x80}, "unknown flags 0x80"},
		{"local and remote", Route{Prefix: pfx("10.0.0.0/8"), Flags: FlagLocalHost | FlagRemoteHost, NextHop: addr("10.0.0.1")}, "contradict"},
		{"workload and host", Route{Prefix: pfx("10.0.0.1/32"), Flags: FlagLocalWorkload | FlagLocalHost, Ifindex: 3}, "contradict"},
		{"tunneled alone", Route{Prefix: pfx("10.0.0.0/8"), Flags: FlagTunneled}, "name no kind"},
		{"tunneled local", Route{Prefix: pfx("10.0.0.1/32"), Flags: FlagLocalHost | FlagTunneled}, "tunneled needs a remote kind"},
		{"local workload without ifindex", localWorkload("10.0.0.5/32", 0), "without the workload's ifindex"},
		{"ifindex on local host", Route{Prefix: pfx("10.0.0.1/32"), Flags: FlagLocalHost, Ifindex: 2}, "only local_workload routes have one"},
		{"ifindex on remote", Route{Prefix: pfx("10.1.0.0/16"), Flags: FlagRemoteWorkload, Ifindex: 2, NextHop: addr("192.168.0.2")}, "only local_workload routes have one"},
		{"next hop on local", Route{Prefix: pfx("10.0.0.5/32"), Flags: FlagLocalWorkload, Ifindex: 2, NextHop: addr("10.0.0.1")}, "only remote routes have one"},
		{"remote without next hop", Route{Prefix: pfx("10.1.0.0/16"), Flags: FlagRemoteWorkload}, "without next hop"},
		{"unspecified next hop", remote("10.1.0.0/16", FlagRemoteWorkload, "0.0.0.0"), "unspecified"},
		{"unspecified IPv6 next hop", remote("fd01::/64", FlagRemoteWorkload, "::"), "unspecified"},
		{"zoned next hop", remote("fd01::/64", FlagRemoteWorkload, "fe80::1%eth0"), "zone"},
		{"IPv6 next hop of IPv4 route", remote("10.1.0.0/16", FlagRemoteWorkload, "fd00::2"), "other family"},
		{"IPv4 next hop of IPv6 route", remote("fd01::/64", FlagRemoteHost, "192.168.0.2"), "other family"},
		// ::/64 covers IPv4 space but is an IPv6 route.
		{"IPv4 next hop of IPv6 route covering IPv4", remote("::/64", FlagRemoteHost, "192.168.0.2"), "other family"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.route.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate(%s) = %v, want nil", tt.route, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate(%s) = nil, want an error containing %q", tt.route, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalidRoute) {
				t.Errorf("error %q does not wrap ErrInvalidRoute", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
			if _, _, encErr := tt.route.Encode(); encErr == nil {
				t.Errorf("Encode accepted the route Validate refuses")
			}
		})
	}
}

// mapped returns the 16 bytes of ::ffff:a.b.c.d.
func mapped(a, b, c, d byte) [16]byte {
	return [16]byte{10: 0xff, 11: 0xff, 12: a, 13: b, 14: c, 15: d}
}

func TestEncode(t *testing.T) {
	tests := []struct {
		name      string
		route     Route
		wantKey   Key
		wantValue Value
	}{
		{
			name:      "IPv4 is mapped, length plus 32 and 96",
			route:     localWorkload("10.0.0.5/32", 7),
			wantKey:   Key{Prefixlen: 160, Family: bpf.FamilyIPv4, Addr: mapped(10, 0, 0, 5)},
			wantValue: Value{Flags: 1, Ifindex: 7},
		},
		{
			name:      "host bits are cleared",
			route:     remote("10.1.2.3/16", FlagRemoteWorkload|FlagTunneled, "192.168.0.2"),
			wantKey:   Key{Prefixlen: 144, Family: bpf.FamilyIPv4, Addr: mapped(10, 1, 0, 0)},
			wantValue: Value{Flags: 4 | 16, NextHop: mapped(192, 168, 0, 2)},
		},
		{
			name:      "IPv4 default route",
			route:     remote("0.0.0.0/0", FlagRemoteHost, "192.168.0.254"),
			wantKey:   Key{Prefixlen: 128, Family: bpf.FamilyIPv4, Addr: mapped(0, 0, 0, 0)},
			wantValue: Value{Flags: 8, NextHop: mapped(192, 168, 0, 254)},
		},
		{
			name:      "IPv4-mapped prefix is the IPv4 prefix",
			route:     localHost("::ffff:10.9.0.0/112"),
			wantKey:   Key{Prefixlen: 144, Family: bpf.FamilyIPv4, Addr: mapped(10, 9, 0, 0)},
			wantValue: Value{Flags: 2},
		},
		{
			name:      "IPv6 default route",
			route:     remote("::/0", FlagRemoteHost, "fd00::fe"),
			wantKey:   Key{Prefixlen: 32, Family: bpf.FamilyIPv6},
			wantValue: Value{Flags: 8, NextHop: addr("fd00::fe").As16()},
		},
		{
			name:      "IPv6 prefix",
			route:     remote("fd01:2:3:4::/62", FlagRemoteWorkload, "fd00::2"),
			wantKey:   Key{Prefixlen: 94, Family: bpf.FamilyIPv6, Addr: addr("fd01:2:3:4::").As16()},
			wantValue: Value{Flags: 4, NextHop: addr("fd00::2").As16()},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, v, err := tt.route.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantKey, k); diff != "" {
				t.Errorf("key (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantValue, v); diff != "" {
				t.Errorf("value (-want +got):\n%s", diff)
			}
			back, err := Decode(k, v)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.route.normalized(), back, netipEqual); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		key     Key
		value   Value
		want    Route
		wantErr string
	}{
		{
			name:  "IPv4 host route",
			key:   Key{Prefixlen: 160, Family: bpf.FamilyIPv4, Addr: mapped(10, 0, 0, 5)},
			value: Value{Flags: 1, Ifindex: 7},
			want:  localWorkload("10.0.0.5/32", 7),
		},
		{
			name:  "bits past the length are ignored",
			key:   Key{Prefixlen: 136, Family: bpf.FamilyIPv4, Addr: mapped(10, 1, 2, 3)},
			value: Value{Flags: 2},
			want:  localHost("10.0.0.0/8"),
		},
		{
			name:  "the shortest IPv4 key is the IPv4 default",
			key:   Key{Prefixlen: 128, Family: bpf.FamilyIPv4, Addr: mapped(10, 1, 2, 3)},
			value: Value{Flags: 8, NextHop: mapped(192, 168, 0, 1)},
			want:  remote("0.0.0.0/0", FlagRemoteHost, "192.168.0.1"),
		},
		{
			// It matches IPv6 addresses only: the family comes first.
			name:  "an IPv6 key inside ::ffff:0:0/96 stays IPv6",
			key:   Key{Prefixlen: 32 + 104, Family: bpf.FamilyIPv6, Addr: mapped(10, 1, 2, 3)},
			value: Value{Flags: 2},
			want:  localHost("::ffff:10.0.0.0/104"),
		},
		{
			name:  "IPv6 default",
			key:   Key{Prefixlen: 32, Family: bpf.FamilyIPv6, Addr: addr("fd00::1").As16()},
			value: Value{Flags: 8, NextHop: addr("fd00::fe").As16()},
			want:  remote("::/0", FlagRemoteHost, "fd00::fe"),
		},
		{
			// Decode does not validate: a foreign entry stays readable.
			name:  "invalid value is read as it is",
			key:   Key{Prefixlen: 160, Family: bpf.FamilyIPv6, Addr: addr("fd00::5").As16()},
			value: Value{Flags: 0x41},
			want:  Route{Prefix: pfx("fd00::5/128"), Flags: FlagLocalWorkload | 0x40},
		},
		{
			name:    "length above the maximum",
			key:     Key{Prefixlen: 161, Family: bpf.FamilyIPv6},
			wantErr: "prefix length 161 outside [32, 160]",
		},
		{
			name:    "length that does not cover the family",
			key:     Key{Prefixlen: 16, Family: bpf.FamilyIPv6},
			wantErr: "prefix length 16 outside [32, 160]",
		},
		{
			name:    "IPv4 key shorter than the mapping",
			key:     Key{Prefixlen: 32 + 64, Family: bpf.FamilyIPv4, Addr: mapped(10, 1, 2, 3)},
			wantErr: "IPv4 key ::/64 outside ::ffff:0:0/96",
		},
		{
			name:    "unknown family",
			key:     Key{Prefixlen: 160, Family: 5},
			wantErr: "family 5",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.key, tt.value)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, netipEqual); diff != "" {
				t.Errorf("Decode (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewKeyInvalid(t *testing.T) {
	_, err := NewKey(netip.Prefix{})
	if !errors.Is(err, ErrInvalidRoute) {
		t.Errorf("NewKey(zero Prefix) error %v, want one wrapping ErrInvalidRoute", err)
	}
}

// TestCodecRandom round-trips random valid routes, and feeds Validate,
// Encode and Decode random bytes: each must answer, never panic.
func TestCodecRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	g := newRouteGen(rng)
	for range 20000 {
		r := g.route(g.prefix())
		k, v, err := r.Encode()
		if err != nil {
			t.Fatalf("Encode(%s): %v", r, err)
		}
		back, err := Decode(k, v)
		if err != nil {
			t.Fatalf("Decode of %s: %v", r, err)
		}
		if diff := cmp.Diff(r.normalized(), back, netipEqual); diff != "" {
			t.Fatalf("round trip of %s (-want +got):\n%s", r, diff)
		}
		if back.Validate() != nil {
			t.Fatalf("decoded %s no longer valid", back)
		}
	}
	for range 20000 {
		var k Key
		var v Value
		k.Prefixlen = rng.Uint32N(140)
		fillRandom(rng, k.Addr[:])
		v.Ifindex = rng.Uint32N(3)
		fillRandom(rng, v.NextHop[:])
		r, err := Decode(k, v)
		if err != nil {
			continue
		}
		r.Flags = Flags(rng.Uint32N(64))
		if r.Validate() == nil {
			if _, _, err := r.Encode(); err != nil {
				t.Fatalf("Encode of valid %s: %v", r, err)
			}
		}
	}
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}
