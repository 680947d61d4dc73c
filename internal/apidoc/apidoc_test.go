package apidoc

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// root is the module's root, two levels up from this package.
const root = "../.."

// publicPackages returns the module's importable library packages by
// directory: not internal/ (test helpers no embedder can import), not the
// commands and examples (package main), not testdata.
func publicPackages(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		switch name := d.Name(); {
		case path == root:
		case strings.HasPrefix(name, "."), name == "internal", name == "testdata", name == "examples", name == "cmd", name == "docs":
			return filepath.SkipDir
		}
		files, _ := filepath.Glob(filepath.Join(path, "*.go"))
		if slices.ContainsFunc(files, func(f string) bool { return !strings.HasSuffix(f, "_test.go") }) {
			dirs = append(dirs, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 10 {
		t.Fatalf("found only %d packages under %s: %v", len(dirs), root, dirs)
	}
	return dirs
}

// parsePackage parses dir's non-test files with comments.
func parsePackage(t *testing.T, fset *token.FileSet, dir string) []*ast.File {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return files
}

// undocumented lists the exported names of f that have no doc comment: a
// field or interface method counts as documented by a comment of its own,
// a line comment, or the comment of the field on the line just above it
// (one comment for a group of fields).
func undocumented(fset *token.FileSet, f *ast.File) []string {
	var missing []string
	report := func(pos token.Pos, what string) {
		p := fset.Position(pos)
		missing = append(missing, fmt.Sprintf("%s:%d: %s", filepath.Base(p.Filename), p.Line, what))
	}
	fields := func(typeName, kind string, list *ast.FieldList) {
		if list == nil {
			return
		}
		prevDoc, prevLine := false, -1
		for _, field := range list.List {
			line := fset.Position(field.Pos()).Line
			doc := field.Doc != nil || field.Comment != nil || (prevDoc && prevLine == line-1)
			prevDoc, prevLine = doc, fset.Position(field.End()).Line
			if !doc && slices.ContainsFunc(field.Names, (*ast.Ident).IsExported) {
				report(field.Pos(), kind+" "+typeName+"."+field.Names[0].Name)
			}
		}
	}
	for _, decl := range f.Decls {
		switch decl := decl.(type) {
		case *ast.FuncDecl:
			if decl.Name.IsExported() && decl.Doc == nil && exportedReceiver(decl) {
				report(decl.Pos(), "func "+decl.Name.Name)
			}
		case *ast.GenDecl:
			for _, spec := range decl.Specs {
				switch spec := spec.(type) {
				case *ast.TypeSpec:
					if !spec.Name.IsExported() {
						continue
					}
					if spec.Doc == nil && decl.Doc == nil {
						report(spec.Pos(), "type "+spec.Name.Name)
					}
					switch typ := spec.Type.(type) {
					case *ast.StructType:
						fields(spec.Name.Name, "field", typ.Fields)
					case *ast.InterfaceType:
						fields(spec.Name.Name, "method", typ.Methods)
					}
				case *ast.ValueSpec:
					if slices.ContainsFunc(spec.Names, (*ast.Ident).IsExported) &&
						spec.Doc == nil && spec.Comment == nil && decl.Doc == nil {
						report(spec.Pos(), "value "+spec.Names[0].Name)
					}
				}
			}
		}
	}
	return missing
}

// exportedReceiver reports whether decl is a function or a method of an
// exported type (methods of unexported types are not API).
func exportedReceiver(decl *ast.FuncDecl) bool {
	if decl.Recv == nil {
		return true
	}
	typ := decl.Recv.List[0].Type
	for {
		switch t := typ.(type) {
		case *ast.StarExpr:
			typ = t.X
		case *ast.IndexExpr:
			typ = t.X
		case *ast.IndexListExpr:
			typ = t.X
		case *ast.Ident:
			return t.IsExported()
		default:
			return true
		}
	}
}

func TestExportedNamesDocumented(t *testing.T) {
	for _, dir := range publicPackages(t) {
		fset := token.NewFileSet()
		files := parsePackage(t, fset, dir)
		hasPackageDoc := false
		var missing []string
		for _, f := range files {
			hasPackageDoc = hasPackageDoc || f.Doc != nil
			missing = append(missing, undocumented(fset, f)...)
		}
		rel, _ := filepath.Rel(root, dir)
		if !hasPackageDoc {
			t.Errorf("package %s has no package doc comment", rel)
		}
		for _, m := range missing {
			t.Errorf("%s/%s has no doc comment", rel, m)
		}
	}
}

// TestUndocumentedFound shows the check sees a missing comment, so the test
// above passes because the names are documented, not because it looks at
// nothing.
func TestUndocumentedFound(t *testing.T) {
	const src = `package p

// T is documented.
type T struct {
	// A is documented.
	A int
	B int // B too.
	// C and D share one comment.
	C int
	D int

	E int
}

func F() {}

// G is documented.
func G() {}

func (T) M() {}

type u struct{}

func (u) M() {}

const K = 1
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	got := undocumented(fset, f)
	want := []string{"p.go:12: field T.E", "p.go:15: func F", "p.go:20: func M", "p.go:26: value K"}
	if !slices.Equal(got, want) {
		t.Fatalf("undocumented = %q, want %q", got, want)
	}
}

// kernelFeaturesPage renders each public package's "Kernel features"
// section (a doc comment heading that starts with those words) as
// Markdown, one section per package, in directory order.
func kernelFeaturesPage(t *testing.T) []byte {
	var page bytes.Buffer
	page.WriteString("# Kernel features by package\n\n")
	page.WriteString("<!-- Generated from each package's doc comment by internal/apidoc; do not edit.\n")
	page.WriteString("     Regenerate: SLUICE_UPDATE_DOCS=1 go test ./internal/apidoc/ -->\n\n")
	page.WriteString("Every package probes the kernel features it needs (cilium/ebpf's `features` package, or by\n")
	page.WriteString("trying the operation) and never compares kernel versions; the versions below say where a\n")
	page.WriteString("feature first appeared, for orientation only. Each section is the package's own\n")
	page.WriteString("documentation (`go doc`), kept identical to it by a test.\n")
	// Doc links ([Name]) print as their text: the page is read in the
	// repository, where no go doc server resolves them.
	parser := comment.Parser{LookupSym: func(recv, name string) bool { return true }}
	printer := comment.Printer{HeadingLevel: 3, DocLinkURL: func(*comment.DocLink) string { return "" }}
	for _, dir := range publicPackages(t) {
		fset := token.NewFileSet()
		var text string
		for _, f := range parsePackage(t, fset, dir) {
			if f.Doc != nil {
				text = f.Doc.Text()
			}
		}
		doc := parser.Parse(text)
		var section []comment.Block
		in := false
		for _, block := range doc.Content {
			if h, ok := block.(*comment.Heading); ok {
				in = strings.HasPrefix(headingText(h), "Kernel features")
				continue
			}
			if in {
				section = append(section, block)
			}
		}
		rel, _ := filepath.Rel(root, dir)
		fmt.Fprintf(&page, "\n## %s\n\n", rel)
		if len(section) == 0 {
			page.WriteString("Needs no kernel feature of its own: it runs in user space only.\n")
			continue
		}
		page.Write(printer.Markdown(&comment.Doc{Content: section}))
	}
	return page.Bytes()
}

// headingText returns a heading's plain text.
func headingText(h *comment.Heading) string {
	var b strings.Builder
	for _, t := range h.Text {
		if p, ok := t.(comment.Plain); ok {
			b.WriteString(string(p))
		}
	}
	return b.String()
}

func TestKernelFeaturesPage(t *testing.T) {
	path := filepath.Join(root, "docs", "kernel-features.md")
	want := kernelFeaturesPage(t)
	if os.Getenv("SLUICE_UPDATE_DOCS") == "1" {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is not what the packages' doc comments give; regenerate it with SLUICE_UPDATE_DOCS=1 go test ./internal/apidoc/", path)
	}
}
