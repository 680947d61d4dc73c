package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// structSpec is one -struct option: generate GoName from struct CName.
type structSpec struct {
	CName, GoName string
}

// enumSpec is one -enum option: generate GoName from enum CName, naming
// each enumerator GoPrefix + the CamelCase of its name without CPrefix.
type enumSpec struct {
	CName, GoName     string
	CPrefix, GoPrefix string
	// Flags marks an enum of bits, whose String joins the set bits' names.
	Flags bool
}

// goStruct is a Go mirror of a C struct.
type goStruct struct {
	CName, GoName string
	Doc           string
	Fields        []goField
}

// goField is a field of a goStruct. Padding members and the gaps C leaves
// between members are blank fields.
type goField struct {
	// Name is the Go name, or "_".
	Name string
	// CName is the C member's name, for the btf tag; empty for gaps.
	CName string
	Type  string
	Doc   string
}

// goEnum is a Go mirror of a C enum.
type goEnum struct {
	Spec enumSpec
	Doc  string
	// Underlying is the Go integer type of the enum: uint32, int8, ...
	Underlying string
	Signed     bool
	Consts     []goConst
}

// goConst is one enumerator.
type goConst struct {
	Name, CName string
	Doc         string
	// Value is the Go constant expression: 7, -1, 1 << 4, 0x30.
	Value string
	// Bits is the value as an unsigned number of the enum's size.
	Bits uint64
	// StringName is what String returns for the value, empty when String
	// leaves the enumerator out (_COUNT, and aliases of an earlier value).
	StringName string
}

// buildEnum mirrors the BTF enum e, commented by d.
func buildEnum(spec enumSpec, e *btf.Enum, d *cDecl) (*goEnum, error) {
	if d.Doc == "" {
		return nil, fmt.Errorf("enum %s has no comment (%s)", spec.CName, d.Pos)
	}
	underlying, err := intType(e.Size, e.Signed)
	if err != nil {
		return nil, fmt.Errorf("enum %s: %w", spec.CName, err)
	}
	ge := &goEnum{
		Spec:       spec,
		Doc:        fmt.Sprintf("%s mirrors enum %s: %s", spec.GoName, spec.CName, lowerFirst(d.Doc)),
		Underlying: underlying,
		Signed:     e.Signed,
	}
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("enum %s: "+format, append([]any{spec.CName}, args...)...))
	}
	bits := 8 * e.Size
	seen := map[uint64]bool{}
	for _, v := range e.Values {
		rest, ok := strings.CutPrefix(v.Name, spec.CPrefix)
		if !ok || rest == "" {
			fail("enumerator %s does not start with %q", v.Name, spec.CPrefix)
			continue
		}
		doc, ok := d.Members[v.Name]
		switch {
		case !ok:
			fail("enumerator %s is not in the header at %s", v.Name, d.Pos)
		case doc == "":
			fail("enumerator %s has no comment (%s)", v.Name, d.Pos)
		}
		c := goConst{
			Name:  spec.GoPrefix + goName(strings.ToLower(rest)),
			CName: v.Name,
			Bits:  v.Value & (1<<bits - 1),
		}
		if bits == 64 {
			c.Bits = v.Value
		}
		c.Doc = fmt.Sprintf("%s is %s: %s", c.Name, v.Name, lowerFirst(doc))
		c.Value = constValue(c.Bits, bits, e.Signed, spec.Flags)
		if !seen[c.Bits] && !strings.HasSuffix(v.Name, "_COUNT") {
			c.StringName = strings.ToLower(rest)
		}
		seen[c.Bits] = true
		ge.Consts = append(ge.Consts, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return ge, nil
}

// constValue spells an enumerator's value: decimal, or for flags a shift
// (one bit) or hex (several).
func constValue(v uint64, bits uint32, signed, flags bool) string {
	switch {
	case signed:
		shift := 64 - bits
		return fmt.Sprint(int64(v<<shift) >> shift)
	case flags && v != 0 && v&(v-1) == 0:
		n := 0
		for v > 1 {
			v >>= 1
			n++
		}
		return fmt.Sprintf("1 << %d", n)
	case flags && v != 0:
		return fmt.Sprintf("%#x", v)
	}
	return fmt.Sprint(v)
}

// typeNames are the Go names of the listed types, by C name.
type typeNames struct {
	structs map[string]string
	enums   map[string]string
}

// buildStruct mirrors the BTF struct s, commented by d. Fields sit at the
// BTF offsets, with blank fields for gaps and tail padding, and the Go
// alignment of every field must put it there without implicit padding, so
// that the in-memory layout, encoding/binary's and C's agree.
func buildStruct(spec structSpec, s *btf.Struct, d *cDecl, names typeNames) (*goStruct, error) {
	if d.Doc == "" {
		return nil, fmt.Errorf("struct %s has no comment (%s)", spec.CName, d.Pos)
	}
	gs := &goStruct{
		CName:  spec.CName,
		GoName: spec.GoName,
		Doc:    fmt.Sprintf("%s mirrors struct %s: %s", spec.GoName, spec.CName, lowerFirst(d.Doc)),
	}
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("struct %s: "+format, append([]any{spec.CName}, args...)...))
	}
	offset, align := uint32(0), uint32(1)
	used := map[string]string{}
	for _, m := range s.Members {
		if m.Name == "" {
			fail("anonymous member at byte %d: not supported", m.Offset.Bytes())
			continue
		}
		if m.BitfieldSize != 0 || m.Offset%8 != 0 {
			fail("member %s is a bitfield, which Go cannot mirror", m.Name)
			continue
		}
		typ, err := goTypeOf(m.Type, names)
		if err != nil {
			fail("member %s: %v", m.Name, err)
			continue
		}
		at := m.Offset.Bytes()
		if at < offset {
			fail("member %s at byte %d overlaps the previous member", m.Name, at)
			continue
		}
		if at%typ.align != 0 {
			fail("member %s at byte %d: Go aligns %s to %d bytes", m.Name, at, typ.expr, typ.align)
			continue
		}
		if at > offset {
			gs.Fields = append(gs.Fields, goField{Name: "_", Type: fmt.Sprintf("[%d]byte", at-offset)})
		}
		f := goField{Name: "_", CName: m.Name, Type: typ.expr}
		if !isPadding(m.Name) {
			f.Name = goName(m.Name)
			if prev, dup := used[f.Name]; dup {
				fail("members %s and %s are both Go field %s", prev, m.Name, f.Name)
			}
			used[f.Name] = m.Name
			doc, ok := d.Members[m.Name]
			switch {
			case !ok:
				fail("member %s is not in the header at %s", m.Name, d.Pos)
			case doc == "":
				fail("member %s has no comment (%s)", m.Name, d.Pos)
			}
			f.Doc = capitalize(doc)
		}
		gs.Fields = append(gs.Fields, f)
		offset = at + typ.size
		align = max(align, typ.align)
	}
	switch {
	case offset > s.Size:
		fail("members end at byte %d, past the size %d", offset, s.Size)
	case offset < s.Size:
		gs.Fields = append(gs.Fields, goField{Name: "_", Type: fmt.Sprintf("[%d]byte", s.Size-offset)})
	}
	if s.Size%align != 0 {
		fail("size %d is not a multiple of its Go alignment %d", s.Size, align)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return gs, nil
}

// goType is the Go spelling of a C type with its size and its alignment
// on 64-bit platforms, the strictest Go has.
type goType struct {
	expr        string
	size, align uint32
}

// goTypeOf maps a BTF type to Go: integers and their typedefs (__u32,
// __be16) to sized Go integers, listed enums and structs to their Go
// names, other enums to their integer type, and arrays element-wise.
func goTypeOf(t btf.Type, names typeNames) (goType, error) {
	switch t := btf.UnderlyingType(t).(type) {
	case *btf.Int:
		if t.Encoding&btf.Bool != 0 && t.Size == 1 {
			return goType{"bool", 1, 1}, nil
		}
		expr, err := intType(t.Size, t.Encoding&btf.Signed != 0)
		return goType{expr, t.Size, t.Size}, err
	case *btf.Enum:
		if goName, ok := names.enums[t.Name]; ok {
			return goType{goName, t.Size, t.Size}, nil
		}
		expr, err := intType(t.Size, t.Signed)
		return goType{expr, t.Size, t.Size}, err
	case *btf.Struct:
		goName, ok := names.structs[t.Name]
		if !ok {
			return goType{}, fmt.Errorf("struct %q is not generated (add -struct %s=GoName)", t.Name, t.Name)
		}
		align := uint32(1)
		for _, m := range t.Members {
			mt, err := goTypeOf(m.Type, names)
			if err != nil {
				return goType{}, fmt.Errorf("struct %s: %w", t.Name, err)
			}
			align = max(align, mt.align)
		}
		return goType{goName, t.Size, align}, nil
	case *btf.Array:
		if t.Nelems == 0 {
			return goType{}, errors.New("zero-length array: not supported")
		}
		elem, err := goTypeOf(t.Type, names)
		if err != nil {
			return goType{}, err
		}
		return goType{fmt.Sprintf("[%d]%s", t.Nelems, elem.expr), t.Nelems * elem.size, elem.align}, nil
	case *btf.Union:
		return goType{}, errors.New("unions are not supported")
	case *btf.Pointer:
		return goType{}, errors.New("pointers are not supported")
	default:
		return goType{}, fmt.Errorf("%v cannot be mirrored", t)
	}
}

// intType is the Go integer of size bytes.
func intType(size uint32, signed bool) (string, error) {
	switch size {
	case 1, 2, 4, 8:
	default:
		return "", fmt.Errorf("no Go integer of %d bytes", size)
	}
	name := fmt.Sprintf("int%d", 8*size)
	if !signed {
		name = "u" + name
	}
	return name, nil
}

// lowerFirst lower-cases the first letter of text when its first word is an
// ordinary capitalised word ("Canonical IPv4 flow key" → "canonical IPv4
// flow key", "A flow" → "a flow"), so that it reads on after "X mirrors
// struct x: ". Initialisms and identifiers (IPv4, SL_CT_NORMAL, TCP) are
// left alone.
func lowerFirst(text string) string {
	word, _, _ := strings.Cut(text, " ")
	if word == "A" {
		return "a" + text[1:]
	}
	if len(word) < 2 || word[0] < 'A' || word[0] > 'Z' {
		return text
	}
	for _, r := range word[1:] {
		if (r < 'a' || r > 'z') && r != '\'' && r != ',' && r != ':' && r != '.' {
			return text
		}
	}
	return strings.ToLower(text[:1]) + text[1:]
}

// capitalize upper-cases the first letter of each paragraph of a member's
// comment when it begins with a plain lower-case word ("host order" →
// "Host order"), leaving identifiers (sl_policy_jumps, ct_key) alone.
func capitalize(doc string) string {
	paras := strings.Split(doc, "\n\n")
	for i, p := range paras {
		word, _, _ := strings.Cut(p, " ")
		word = strings.TrimRight(word, ",;:.")
		plain := word != ""
		for _, r := range word {
			if (r < 'a' || r > 'z') && r != '\'' {
				plain = false
				break
			}
		}
		if plain {
			paras[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(paras, "\n\n")
}
