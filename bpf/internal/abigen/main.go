// Command abigen generates the Go mirror of the datapath's C ABI: exported
// Go structs and enums with the layouts of the object's BTF and the
// comments of the C headers, which stay the single source of truth.
//
// bpf/gen.go runs it right after bpf2go:
//
//	go run ./internal/abigen -obj datapath_bpfel.o -headers include/sluice -out abi.go \
//		-struct sl_ct_key=CTKey -enum sl_reason=Reason:SL_REASON_:Reason ...
//
// Options:
//
//   - -struct c_name=GoName mirrors struct c_name as GoName. Repeatable.
//   - -enum c_name=GoName:C_PREFIX_:GoPrefix[:flags] mirrors enum c_name as
//     GoName; each enumerator becomes GoPrefix followed by the CamelCase of
//     its name without C_PREFIX_ (SL_REASON_IPV6_PASSED with prefixes
//     SL_REASON_ and Reason gives ReasonIPv6Passed). The suffix :flags
//     marks an enum of bits. Repeatable.
//   - -obj is a compiled object whose BTF gives sizes, offsets and values.
//     Repeatable: a type is read from the first object that has it.
//   - -headers is a directory whose *.h files give the comments. Repeatable.
//   - -out is the file to write; -pkg its package (default $GOPACKAGE).
//
// Structs: _ structs.HostLayout comes first, then one field per C member
// at its BTF offset, tagged `btf:"c_name"` for maps.CheckLayout. Members
// named pad, pad0, pad1, ... become blank fields (still tagged); gaps
// between members and tail padding become blank byte arrays. Members map
// to sized Go integers (__be types too: byte order is the caller's
// business), listed enums and structs to their Go names, unlisted enums to
// their integer type, and arrays element-wise. Bitfields, unions,
// anonymous members, pointers, zero-length arrays, nested structs that are
// not listed, and members Go would align differently from C are errors.
// For each struct the output also declares TypeGoName = "c_name", and
// abiLayouts lists them all with a zero value of their mirror, for a test
// in the package to run maps.CheckLayout on.
//
// Comments: a type's comment is the comment block directly above its
// "struct x {" or "enum x {" line: comments alone on their lines, with no
// blank line before the definition. A member's or enumerator's is the block
// directly above it followed by its trailing comment on the same line;
// either may be missing, not both. A missing comment is an error, except
// on padding.
//
// Enums: the Go type has the enum's size and signedness. String returns
// the lower-case C name without the prefix ("dropped_by_policy"), or
// "Reason(42)" for unnamed values. For a flags enum it joins the names of
// the set bits with "|" ("workload|ready"), adds unknown bits in hex, and
// returns "0" for no bits, or the name of a zero enumerator if there is
// one. Enumerators ending in _COUNT, and aliases of an earlier value, are
// constants but not String results.
//
// Names: snake_case becomes CamelCase; words in the initialisms table
// (names.go) keep their Go spelling (rule_id → RuleID, a_to_b → AToB).
//
// The output is gofmt'd and depends only on the inputs and the order of
// the options. It has no build tags: only the bpfel object is read, and
// layouts are the same for both byte orders.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf/btf"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "abigen:", err)
		os.Exit(1)
	}
}

// options are the parsed command line.
type options struct {
	objs    []string
	headers []string
	out     string
	pkg     string
	structs []structSpec
	enums   []enumSpec
}

func run(args []string) error {
	opts, err := parseArgs(args)
	if err != nil {
		return err
	}
	src, err := generate(opts)
	if err != nil {
		return err
	}
	if err := os.WriteFile(opts.out, src, 0o644); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

func parseArgs(args []string) (*options, error) {
	opts := &options{pkg: os.Getenv("GOPACKAGE")}
	fs := flag.NewFlagSet("abigen", flag.ContinueOnError)
	fs.Func("obj", "compiled BPF `object` whose BTF to read; repeatable", func(s string) error {
		opts.objs = append(opts.objs, s)
		return nil
	})
	fs.Func("headers", "`directory` of C headers (*.h) holding the comments; repeatable", func(s string) error {
		opts.headers = append(opts.headers, s)
		return nil
	})
	fs.StringVar(&opts.out, "out", "", "output `file`")
	fs.StringVar(&opts.pkg, "pkg", opts.pkg, "Go `package` of the output (default $GOPACKAGE)")
	fs.Func("struct", "`c_name=GoName`: mirror a struct; repeatable", func(s string) error {
		spec, err := parseStruct(s)
		if err != nil {
			return err
		}
		opts.structs = append(opts.structs, spec)
		return nil
	})
	fs.Func("enum", "`c_name=GoName:C_PREFIX_:GoPrefix[:flags]`: mirror an enum; repeatable", func(s string) error {
		spec, err := parseEnum(s)
		if err != nil {
			return err
		}
		opts.enums = append(opts.enums, spec)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var missing []string
	for name, v := range map[string]string{"-out": opts.out, "-pkg": opts.pkg} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(opts.headers) == 0 {
		missing = append(missing, "-headers")
	}
	if len(opts.objs) == 0 {
		missing = append(missing, "-obj")
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return opts, nil
}

func parseStruct(s string) (structSpec, error) {
	cName, goName, ok := strings.Cut(s, "=")
	if !ok || cName == "" || goName == "" {
		return structSpec{}, fmt.Errorf("%q: want c_name=GoName", s)
	}
	return structSpec{CName: cName, GoName: goName}, nil
}

func parseEnum(s string) (enumSpec, error) {
	cName, rest, ok := strings.Cut(s, "=")
	parts := strings.Split(rest, ":")
	if !ok || cName == "" || len(parts) < 3 || len(parts) > 4 || parts[0] == "" {
		return enumSpec{}, fmt.Errorf("%q: want c_name=GoName:C_PREFIX_:GoPrefix[:flags]", s)
	}
	spec := enumSpec{CName: cName, GoName: parts[0], CPrefix: parts[1], GoPrefix: parts[2]}
	if len(parts) == 4 {
		if parts[3] != "flags" {
			return enumSpec{}, fmt.Errorf("%q: unknown suffix %q, want flags", s, parts[3])
		}
		spec.Flags = true
	}
	return spec, nil
}

// generate reads the object and headers and renders the output.
func generate(opts *options) ([]byte, error) {
	var types btfSpecs
	for _, obj := range opts.objs {
		spec, err := btf.LoadSpec(obj)
		if err != nil {
			return nil, fmt.Errorf("read BTF: %w", err)
		}
		types = append(types, spec)
	}
	docs, err := readHeaders(opts.headers)
	if err != nil {
		return nil, err
	}

	names := typeNames{structs: map[string]string{}, enums: map[string]string{}}
	for _, s := range opts.structs {
		names.structs[s.CName] = s.GoName
	}
	for _, e := range opts.enums {
		names.enums[e.CName] = e.GoName
	}

	var errs []error
	var enums []*goEnum
	for _, spec := range opts.enums {
		e, err := enumType(types, docs, spec)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		enums = append(enums, e)
	}
	var structs []*goStruct
	for _, spec := range opts.structs {
		s, err := structType(types, docs, spec, names)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		structs = append(structs, s)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return render(opts.pkg, enums, structs)
}

// btfSpecs are the objects' BTF, searched in order.
type btfSpecs []*btf.Spec

// TypeByName finds name in the first spec that has it, as
// btf.Spec.TypeByName does in one.
func (ss btfSpecs) TypeByName(name string, typ any) error {
	err := fmt.Errorf("type %s: %w", name, btf.ErrNotFound)
	for _, s := range ss {
		if err = s.TypeByName(name, typ); !errors.Is(err, btf.ErrNotFound) {
			return err
		}
	}
	return err
}

func readHeaders(dirs []string) (*headerDocs, error) {
	docs := newHeaderDocs()
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.h"))
		if err != nil {
			return nil, fmt.Errorf("list headers: %w", err)
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("no headers in %s", dir)
		}
		for _, file := range files {
			src, err := os.ReadFile(file)
			if err != nil {
				return nil, fmt.Errorf("read header: %w", err)
			}
			if err := docs.add(filepath.ToSlash(file), string(src)); err != nil {
				return nil, fmt.Errorf("parse header: %w", err)
			}
		}
	}
	return docs, nil
}

func enumType(types btfSpecs, docs *headerDocs, spec enumSpec) (*goEnum, error) {
	var e *btf.Enum
	if err := types.TypeByName(spec.CName, &e); err != nil {
		return nil, fmt.Errorf("enum %s: %w (BTF has an enum only if the object uses it: as a member, map key or value, or variable type)", spec.CName, err)
	}
	d, ok := docs.Enums[spec.CName]
	if !ok {
		return nil, fmt.Errorf("enum %s: no definition in the headers", spec.CName)
	}
	return buildEnum(spec, e, d)
}

func structType(types btfSpecs, docs *headerDocs, spec structSpec, names typeNames) (*goStruct, error) {
	var s *btf.Struct
	if err := types.TypeByName(spec.CName, &s); err != nil {
		return nil, fmt.Errorf("struct %s: %w", spec.CName, err)
	}
	d, ok := docs.Structs[spec.CName]
	if !ok {
		return nil, fmt.Errorf("struct %s: no definition in the headers", spec.CName)
	}
	return buildStruct(spec, s, d, names)
}
