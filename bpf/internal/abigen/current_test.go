package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestGeneratedFileIsCurrent regenerates ../../abi.go with the options in
// ../../gen.go, from the committed object and headers, so that a header
// comment edited without `make generate`, or a hand edit of abi.go, fails
// here and not only in make check-generate.
func TestGeneratedFileIsCurrent(t *testing.T) {
	t.Chdir("../..")
	gen, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for line := range strings.SplitSeq(string(gen), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go run ./internal/abigen "); ok {
			args = strings.Fields(rest)
		}
	}
	if args == nil {
		t.Fatal("gen.go has no abigen go:generate line")
	}
	t.Setenv("GOPACKAGE", "bpf")
	opts, err := parseArgs(args)
	if err != nil {
		t.Fatal(err)
	}
	got, err := generate(opts)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(opts.out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not what abigen generates; run make generate:\n%s", opts.out, cmp.Diff(string(want), string(got)))
	}
}
