package main

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/google/go-cmp/cmp"
)

var (
	u8    = &btf.Int{Name: "__u8", Size: 1}
	u16   = &btf.Int{Name: "__u16", Size: 2}
	u32   = &btf.Int{Name: "__u32", Size: 4}
	u64   = &btf.Int{Name: "__u64", Size: 8}
	s16   = &btf.Int{Name: "__s16", Size: 2, Encoding: btf.Signed}
	be32  = &btf.Typedef{Name: "__be32", Type: u32}
	color = &btf.Enum{Name: "sl_color", Size: 4}
	other = &btf.Enum{Name: "sl_other", Size: 2}
	inner = &btf.Struct{Name: "sl_inner", Size: 16, Members: []btf.Member{
		{Name: "x", Type: u64},
		{Name: "y", Type: u32, Offset: 64},
		{Name: "pad", Type: u32, Offset: 96},
	}}
	testNames = typeNames{
		structs: map[string]string{"sl_inner": "Inner", "sl_outer": "Outer"},
		enums:   map[string]string{"sl_color": "Color"},
	}
)

// member builds a BTF member at a byte offset.
func member(name string, typ btf.Type, offset uint32) btf.Member {
	return btf.Member{Name: name, Type: typ, Offset: btf.Bits(8 * offset)}
}

// declOf comments every listed member "doc of NAME".
func declOf(names ...string) *cDecl {
	d := &cDecl{Kind: "struct", Name: "sl_outer", Pos: "t.h:1", Doc: "An outer struct.", Members: map[string]string{}}
	for _, n := range names {
		d.Members[n] = "doc of " + n
	}
	return d
}

func TestBuildStruct(t *testing.T) {
	s := &btf.Struct{Name: "sl_outer", Size: 56, Members: []btf.Member{
		member("addr", be32, 0),
		member("kind", color, 4),
		member("small", other, 8),
		member("tiny", u8, 10),
		// 5 bytes of implicit padding
		member("inner", inner, 16),
		member("ports", &btf.Array{Type: u16, Nelems: 4}, 32),
		member("temp", s16, 40),
		member("pad1", &btf.Array{Type: u8, Nelems: 2}, 42),
		member("rule_id", u64, 44+4),
		// no tail padding: 56
	}}
	got, err := buildStruct(structSpec{"sl_outer", "Outer"}, s, declOf("addr", "kind", "small", "tiny", "inner", "ports", "temp", "rule_id"), testNames)
	if err != nil {
		t.Fatal(err)
	}
	want := &goStruct{
		CName: "sl_outer", GoName: "Outer",
		Doc: "Outer mirrors struct sl_outer: an outer struct.",
		Fields: []goField{
			{Name: "Addr", CName: "addr", Type: "uint32", Doc: "Doc of addr"},
			{Name: "Kind", CName: "kind", Type: "Color", Doc: "Doc of kind"},
			{Name: "Small", CName: "small", Type: "uint16", Doc: "Doc of small"},
			{Name: "Tiny", CName: "tiny", Type: "uint8", Doc: "Doc of tiny"},
			{Name: "_", Type: "[5]byte"},
			{Name: "Inner", CName: "inner", Type: "Inner", Doc: "Doc of inner"},
			{Name: "Ports", CName: "ports", Type: "[4]uint16", Doc: "Doc of ports"},
			{Name: "Temp", CName: "temp", Type: "int16", Doc: "Doc of temp"},
			{Name: "_", CName: "pad1", Type: "[2]uint8"},
			{Name: "_", Type: "[4]byte"},
			{Name: "RuleID", CName: "rule_id", Type: "uint64", Doc: "Doc of rule_id"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("buildStruct (-want +got):\n%s", diff)
	}
}

func TestBuildStructTailPadding(t *testing.T) {
	s := &btf.Struct{Name: "sl_outer", Size: 16, Members: []btf.Member{member("a", u64, 0), member("b", u32, 8)}}
	got, err := buildStruct(structSpec{"sl_outer", "Outer"}, s, declOf("a", "b"), testNames)
	if err != nil {
		t.Fatal(err)
	}
	last := got.Fields[len(got.Fields)-1]
	if diff := cmp.Diff(goField{Name: "_", Type: "[4]byte"}, last); diff != "" {
		t.Errorf("tail padding (-want +got):\n%s", diff)
	}
}

func TestBuildStructErrors(t *testing.T) {
	tests := []struct {
		name    string
		members []btf.Member
		size    uint32
		decl    *cDecl
		want    string
	}{
		{"bitfield", []btf.Member{{Name: "a", Type: u32, BitfieldSize: 3}}, 4, declOf("a"), "bitfield"},
		{"packed", []btf.Member{member("a", u32, 0), member("b", u64, 4)}, 12, declOf("a", "b"), "Go aligns uint64 to 8 bytes"},
		{"odd size", []btf.Member{member("a", u64, 0), member("b", u32, 8)}, 12, declOf("a", "b"), "not a multiple of its Go alignment 8"},
		{"no comment", []btf.Member{member("a", u32, 0), member("b", u32, 4)}, 8, declOf("a"), "member b is not in the header"},
		{"empty comment", []btf.Member{member("a", u32, 0)}, 4, &cDecl{Doc: "d", Members: map[string]string{"a": ""}}, "member a has no comment"},
		{"no type comment", []btf.Member{member("a", u32, 0)}, 4, &cDecl{Members: map[string]string{"a": "a"}}, "struct sl_outer has no comment"},
		{"unlisted struct", []btf.Member{member("a", &btf.Struct{Name: "sl_x", Size: 4}, 0)}, 4, declOf("a"), "-struct sl_x=GoName"},
		{"union", []btf.Member{member("a", &btf.Union{Name: "u", Size: 4}, 0)}, 4, declOf("a"), "unions are not supported"},
		{"anonymous", []btf.Member{member("", u32, 0)}, 4, declOf(), "anonymous member"},
		{"pointer", []btf.Member{member("a", &btf.Pointer{Target: u32}, 0)}, 8, declOf("a"), "pointers are not supported"},
		{"flexible array", []btf.Member{member("a", u32, 0), member("b", &btf.Array{Type: u32}, 4)}, 4, declOf("a", "b"), "zero-length array"},
		{"too big", []btf.Member{member("a", u64, 0)}, 4, declOf("a"), "past the size 4"},
		{"same Go name", []btf.Member{member("rule_id", u32, 0), member("rule__id", u32, 4)}, 8, declOf("rule_id", "rule__id"), "both Go field RuleID"},
	}
	for _, tt := range tests {
		s := &btf.Struct{Name: "sl_outer", Size: tt.size, Members: tt.members}
		_, err := buildStruct(structSpec{"sl_outer", "Outer"}, s, tt.decl, testNames)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
}

func TestBuildEnum(t *testing.T) {
	e := &btf.Enum{Name: "sl_color", Size: 4, Values: []btf.EnumValue{
		{Name: "SL_COLOR_RED", Value: 0},
		{Name: "SL_COLOR_GREEN", Value: 1},
		{Name: "SL_COLOR_VERT", Value: 1},
		{Name: "SL_COLOR_COUNT", Value: 2},
	}}
	d := &cDecl{Pos: "t.h:1", Doc: "Colors of a thing.", Members: map[string]string{
		"SL_COLOR_RED": "Red, as in stop", "SL_COLOR_GREEN": "go", "SL_COLOR_VERT": "green in French", "SL_COLOR_COUNT": "number of colors",
	}}
	got, err := buildEnum(enumSpec{CName: "sl_color", GoName: "Color", CPrefix: "SL_COLOR_", GoPrefix: "Color"}, e, d)
	if err != nil {
		t.Fatal(err)
	}
	want := &goEnum{
		Spec:       enumSpec{CName: "sl_color", GoName: "Color", CPrefix: "SL_COLOR_", GoPrefix: "Color"},
		Doc:        "Color mirrors enum sl_color: colors of a thing.",
		Underlying: "uint32",
		Consts: []goConst{
			{Name: "ColorRed", CName: "SL_COLOR_RED", Doc: "ColorRed is SL_COLOR_RED: red, as in stop", Value: "0", Bits: 0, StringName: "red"},
			{Name: "ColorGreen", CName: "SL_COLOR_GREEN", Doc: "ColorGreen is SL_COLOR_GREEN: go", Value: "1", Bits: 1, StringName: "green"},
			{Name: "ColorVert", CName: "SL_COLOR_VERT", Doc: "ColorVert is SL_COLOR_VERT: green in French", Value: "1", Bits: 1},
			{Name: "ColorCount", CName: "SL_COLOR_COUNT", Doc: "ColorCount is SL_COLOR_COUNT: number of colors", Value: "2", Bits: 2},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("buildEnum (-want +got):\n%s", diff)
	}
}

func TestBuildEnumErrors(t *testing.T) {
	e := &btf.Enum{Name: "sl_color", Size: 4, Values: []btf.EnumValue{{Name: "SL_COLOR_RED"}, {Name: "SL_HUE_BLUE", Value: 1}, {Name: "SL_COLOR_GREEN", Value: 2}}}
	d := &cDecl{Pos: "t.h:1", Doc: "Colors.", Members: map[string]string{"SL_COLOR_RED": "", "SL_HUE_BLUE": "blue"}}
	_, err := buildEnum(enumSpec{CName: "sl_color", GoName: "Color", CPrefix: "SL_COLOR_", GoPrefix: "Color"}, e, d)
	for _, want := range []string{
		"SL_COLOR_RED has no comment",
		`SL_HUE_BLUE does not start with "SL_COLOR_"`,
		"SL_COLOR_GREEN is not in the header",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one containing %q", err, want)
		}
	}
}

func TestConstValue(t *testing.T) {
	tests := []struct {
		v             uint64
		bits          uint32
		signed, flags bool
		want          string
	}{
		{7, 32, false, false, "7"},
		{0xffffffff, 32, true, false, "-1"},
		{0xfffe, 16, true, false, "-2"},
		{5, 8, true, false, "5"},
		{0, 32, false, true, "0"},
		{1, 32, false, true, "1 << 0"},
		{1 << 31, 32, false, true, "1 << 31"},
		{0x30, 32, false, true, "0x30"},
		{1 << 63, 64, false, false, "9223372036854775808"},
	}
	for _, tt := range tests {
		if got := constValue(tt.v, tt.bits, tt.signed, tt.flags); got != tt.want {
			t.Errorf("constValue(%#x, %d, %v, %v) = %q, want %q", tt.v, tt.bits, tt.signed, tt.flags, got, tt.want)
		}
	}
}

func TestDocCase(t *testing.T) {
	tests := []struct{ in, lower, capital string }{
		{"Canonical IPv4 flow key", "canonical IPv4 flow key", "Canonical IPv4 flow key"},
		{"A conntrack entry", "a conntrack entry", "A conntrack entry"},
		{"IPv6 on an interface", "IPv6 on an interface", "IPv6 on an interface"},
		{"SL_HOOK_* bits", "SL_HOOK_* bits", "SL_HOOK_* bits"},
		{"host order; 0 without ports", "host order; 0 without ports", "Host order; 0 without ports"},
		{"sl_policy_jumps slot", "sl_policy_jumps slot", "sl_policy_jumps slot"},
		{"the leg's packets\n\nat creation", "the leg's packets\n\nat creation", "The leg's packets\n\nAt creation"},
		{"NAT_REV: destination", "NAT_REV: destination", "NAT_REV: destination"},
		{"Why, then", "why, then", "Why, then"},
	}
	for _, tt := range tests {
		if got := lowerFirst(tt.in); got != tt.lower {
			t.Errorf("lowerFirst(%q) = %q, want %q", tt.in, got, tt.lower)
		}
		if got := capitalize(tt.in); got != tt.capital {
			t.Errorf("capitalize(%q) = %q, want %q", tt.in, got, tt.capital)
		}
	}
}
