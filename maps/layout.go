package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unicode"

	"github.com/cilium/ebpf/btf"
)

// LayoutMismatch is one difference between a Go struct and the C type it
// mirrors.
type LayoutMismatch struct {
	// Field is the dotted Go path of the field ("A_toB.Packets"), or the
	// C member name when no Go field exists for it; empty for the type
	// as a whole.
	Field string
	// Reason says what differs.
	Reason string
}

// LayoutError reports every mismatch CheckLayout found.
type LayoutError struct {
	// CType is the C type's name in the BTF.
	CType string
	// GoType is the Go type's name.
	GoType string
	// Mismatches are the differences found, in field order.
	Mismatches []LayoutMismatch
}

// Error lists all mismatches on one line.
func (e *LayoutError) Error() string {
	parts := make([]string, 0, len(e.Mismatches))
	for _, m := range e.Mismatches {
		if m.Field == "" {
			parts = append(parts, m.Reason)
			continue
		}
		parts = append(parts, m.Field+": "+m.Reason)
	}
	return fmt.Sprintf("layout of %s differs from C %s: %s", e.GoType, e.CType, strings.Join(parts, "; "))
}

// CheckLayout verifies that the Go struct type of goValue (a value or a
// pointer to one) has the byte layout of the C struct or union named cType
// in types: the same size, and every named Go field at the byte offset and
// with the size of the C member it mirrors. Nested structs and arrays of
// structs are checked recursively.
//
// Offsets and sizes are those of the bytes cilium/ebpf exchanges with the
// kernel: it encodes a struct the way encoding/binary does, fields back to
// back, without the alignment padding Go would insert in memory. None of
// sluice's shared structs is packed: each is naturally aligned with
// explicit padding (sl_ipset_key keeps its 64-bit set ID in a byte array
// for that), so for their mirrors the encoded layout is also the
// in-memory one and unsafe.Offsetof gives the C offsets. A mirror of a
// packed C struct would pass this check and work as a map key or value,
// but its in-memory offsets would not be C's.
//
// A Go field mirrors the C member whose name bpf2go would turn into the
// field's name (src_addr → SrcAddr, a_to_b → A_toB), or whose plain
// CamelCase form it is (a_to_b → AToB); a `btf:"c_name"` struct tag
// overrides both. Blank fields (structs.HostLayout, padding) are skipped
// unless they carry a btf tag: a tagged blank field mirrors that member,
// which is how the generated mirrors in package bpf keep padding checked. A
// Go field without a C member, or a C member without a Go field, is a
// mismatch, except that union members beyond the ones Go declares are
// allowed (bpf2go keeps only the first) and bitfield members, which Go
// cannot express, are covered by the size check alone.
//
// The returned error is a *LayoutError listing every mismatch.
func CheckLayout(types *btf.Spec, cType string, goValue any) error {
	if types == nil {
		return errors.New("check layout: nil BTF spec")
	}
	goType := reflect.TypeOf(goValue)
	if goType != nil && goType.Kind() == reflect.Pointer {
		goType = goType.Elem()
	}
	if goType == nil || goType.Kind() != reflect.Struct {
		return fmt.Errorf("check layout of %s: Go value %T is not a struct or pointer to struct", cType, goValue)
	}
	cComposite, err := findComposite(types, cType)
	if err != nil {
		return fmt.Errorf("check layout of %s: %w", cType, err)
	}
	c := layoutChecker{}
	c.compare("", cComposite, goType)
	if len(c.mismatches) == 0 {
		return nil
	}
	return &LayoutError{CType: cType, GoType: goType.String(), Mismatches: c.mismatches}
}

// findComposite returns the struct or union named name, looking through
// typedefs so that "typedef struct {...} name" works too.
func findComposite(types *btf.Spec, name string) (btf.Type, error) {
	candidates, err := types.AnyTypesByName(name)
	if err != nil {
		return nil, fmt.Errorf("find C type: %w", err)
	}
	for _, t := range candidates {
		switch u := btf.UnderlyingType(t).(type) {
		case *btf.Struct, *btf.Union:
			return u, nil
		}
	}
	return nil, fmt.Errorf("C type %q is not a struct or union", name)
}

type layoutChecker struct {
	mismatches []LayoutMismatch
}

func (c *layoutChecker) addf(field, format string, args ...any) {
	c.mismatches = append(c.mismatches, LayoutMismatch{Field: field, Reason: fmt.Sprintf(format, args...)})
}

// compare checks goType against the composite cType; path prefixes field
// names in mismatches.
func (c *layoutChecker) compare(path string, cType btf.Type, goType reflect.Type) {
	cSize, err := btf.Sizeof(cType)
	if err != nil {
		c.addf(path, "size of C type: %v", err)
		return
	}
	goSize := binarySize(goType)
	if goSize < 0 {
		c.addf(path, "Go type %s has no fixed size", goType)
		return
	}
	if goSize != cSize {
		c.addf(path, "size %d, C has %d", goSize, cSize)
	}

	members, isUnion := compositeMembers(cType)
	byName := make(map[string]flatMember, len(members))
	for _, m := range members {
		byName[m.name] = m
	}
	matched := make(map[string]bool, len(members))

	offset := 0
	for i := range goType.NumField() {
		field := goType.Field(i)
		fieldOffset := offset
		offset += binarySize(field.Type)
		if _, tagged := field.Tag.Lookup("btf"); field.Name == "_" && !tagged {
			continue
		}
		fieldPath := joinPath(path, field.Name)
		member, ok := matchMember(field, byName)
		if !ok {
			c.addf(fieldPath, "no C member %s", strings.Join(candidateNames(field), " or "))
			continue
		}
		matched[member.name] = true
		c.compareMember(fieldPath, member, field, fieldOffset)
	}

	for _, m := range members {
		if matched[m.name] || isUnion || m.optional || m.bitfield {
			continue
		}
		c.addf(joinPath(path, m.name), "C member has no Go field (want %s)", goFieldName(m.name))
	}
}

// compareMember checks one matched field and recurses into composites.
func (c *layoutChecker) compareMember(path string, member flatMember, field reflect.StructField, offset int) {
	if member.bitfield {
		c.addf(path, "C member %s is a bitfield, which Go cannot mirror", member.name)
		return
	}
	if offset != int(member.offset) {
		c.addf(path, "offset %d, C member %s is at %d", offset, member.name, member.offset)
	}
	cSize, err := btf.Sizeof(member.typ)
	if err != nil {
		c.addf(path, "size of C member %s: %v", member.name, err)
		return
	}
	if size := binarySize(field.Type); size != cSize {
		c.addf(path, "size %d, C member %s has %d", size, member.name, cSize)
	}
	c.compareNested(path, member.typ, field.Type)
}

// compareNested recurses into struct members and arrays, so a nested
// struct with compensating errors (one field moved, total size unchanged)
// is still caught.
func (c *layoutChecker) compareNested(path string, cType btf.Type, goType reflect.Type) {
	switch ct := btf.UnderlyingType(cType).(type) {
	case *btf.Struct, *btf.Union:
		if goType.Kind() != reflect.Struct {
			c.addf(path, "Go %s mirrors C composite %s", goType.Kind(), ct.TypeName())
			return
		}
		c.compare(path, ct, goType)
	case *btf.Array:
		if goType.Kind() != reflect.Array {
			// Size already checked; a byte-compatible non-array is allowed
			// only when the element is not a composite.
			if _, composite := compositeOf(ct.Type); composite {
				c.addf(path, "Go %s mirrors C array of composites", goType.Kind())
			}
			return
		}
		if uint32(goType.Len()) != ct.Nelems {
			c.addf(path, "array length %d, C has %d", goType.Len(), ct.Nelems)
		}
		elemSize, err := btf.Sizeof(ct.Type)
		if err != nil {
			c.addf(path, "size of C array element: %v", err)
			return
		}
		if size := binarySize(goType.Elem()); size != elemSize {
			c.addf(path, "array element size %d, C has %d", size, elemSize)
			return
		}
		if _, composite := compositeOf(ct.Type); composite {
			// Every element has the same layout: checking [0] covers all.
			c.compareNested(path+"[0]", ct.Type, goType.Elem())
		}
	}
}

// flatMember is a C member with its byte offset from the start of the
// composite being compared; members of anonymous structs and unions are
// lifted into their parent, as C accesses them.
type flatMember struct {
	name     string
	typ      btf.Type
	offset   uint32
	bitfield bool
	// optional members come from an anonymous union, of which bpf2go
	// keeps only the first member.
	optional bool
}

func compositeOf(t btf.Type) ([]btf.Member, bool) {
	switch ct := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		return ct.Members, true
	case *btf.Union:
		return ct.Members, true
	}
	return nil, false
}

func compositeMembers(t btf.Type) (members []flatMember, isUnion bool) {
	_, isUnion = btf.UnderlyingType(t).(*btf.Union)
	raw, _ := compositeOf(t)
	return flattenMembers(raw, 0, false), isUnion
}

func flattenMembers(raw []btf.Member, base uint32, optional bool) []flatMember {
	var out []flatMember
	for _, m := range raw {
		offset := base + m.Offset.Bytes()
		if m.Name == "" {
			if inner, ok := compositeOf(m.Type); ok {
				_, innerIsUnion := btf.UnderlyingType(m.Type).(*btf.Union)
				out = append(out, flattenMembers(inner, offset, optional || innerIsUnion)...)
			}
			continue
		}
		out = append(out, flatMember{
			name:     m.Name,
			typ:      m.Type,
			offset:   offset,
			bitfield: m.BitfieldSize != 0 || m.Offset%8 != 0,
			optional: optional,
		})
	}
	return out
}

// matchMember finds the C member field mirrors.
func matchMember(field reflect.StructField, byName map[string]flatMember) (flatMember, bool) {
	if tag, ok := field.Tag.Lookup("btf"); ok {
		m, found := byName[tag]
		return m, found
	}
	for name, m := range byName {
		if goFieldName(name) == field.Name || camelCase(name) == field.Name {
			return m, true
		}
	}
	return flatMember{}, false
}

// candidateNames describes which C names a Go field could mirror, for the
// "no C member" message.
func candidateNames(field reflect.StructField) []string {
	if tag, ok := field.Tag.Lookup("btf"); ok {
		return []string{fmt.Sprintf("%q (from tag)", tag)}
	}
	return []string{fmt.Sprintf("named like %s", field.Name)}
}

// goFieldName is the Go identifier bpf2go gives the C name: underscores
// after a lower-case letter or digit are dropped and the next letter is
// upper-cased, so a_to_b becomes A_toB (the underscore after the upper-case
// A stays). It mirrors cilium/ebpf's internal.Identifier, which bpf2go
// uses and which is not importable.
func goFieldName(cName string) string {
	var b strings.Builder
	const none = rune(-1)
	prev := none
	for _, r := range cName {
		switch {
		case unicode.IsLetter(r):
			if prev == none {
				r = unicode.ToUpper(r)
			}
		case r == '_':
			if prev == none || unicode.IsDigit(prev) || unicode.IsLower(prev) {
				prev = none
				continue
			}
		case unicode.IsDigit(r):
		default:
			continue
		}
		b.WriteRune(r)
		prev = r
	}
	return b.String()
}

// camelCase upper-cases the first letter of every underscore-separated
// word and drops the underscores: a_to_b becomes AToB. Hand-written mirrors
// tend to use this form.
func camelCase(cName string) string {
	var b strings.Builder
	for word := range strings.SplitSeq(cName, "_") {
		if word == "" {
			continue
		}
		runes := []rune(word)
		runes[0] = unicode.ToUpper(runes[0])
		b.WriteString(string(runes))
	}
	return b.String()
}

// binarySize is the number of bytes encoding/binary, and so cilium/ebpf's
// map marshalling, uses for t: fields back to back without the alignment
// padding Go inserts in memory. -1 if t has no fixed size.
func binarySize(t reflect.Type) int {
	return binary.Size(reflect.Zero(t).Interface())
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}
