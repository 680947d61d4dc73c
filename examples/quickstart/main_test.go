package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestQuickstart runs the quickstart as `go run ./examples/quickstart`
// does and checks each flow's verdict and deciding rule.
func TestQuickstart(t *testing.T) {
	testutil.RequirePrivileged(t)
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	for _, want := range []string{
		`tcp/80 +passed +rule 101`,
		`tcp/81 +denied +rule 102`,
		`tcp/8080 +denied +rule 199`,
		`udp/53 +passed +rule 103`,
		`udp/54 +denied +rule 199`,
		`icmp echo +passed +rule 104`,
		`received: map\[.*accepted_by_policy:3`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output has no line matching %q", want)
		}
	}
}

// TestReadmeShowsQuickstart keeps the README's embedding code the code of
// this compiled example: the block after <!-- embed:quickstart --> must
// be the lines between the markers in main.go.
func TestReadmeShowsQuickstart(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)<!-- embed:quickstart -->\n```go\n(.*?)```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README.md has no go block after <!-- embed:quickstart -->")
	}
	region := regexp.MustCompile(`(?s)// embed:start\n(.*?)\t// embed:end`).FindSubmatch(src)
	if region == nil {
		t.Fatal("main.go has no embed:start/embed:end region")
	}
	var code []string
	for _, line := range strings.SplitAfter(string(region[1]), "\n") {
		code = append(code, strings.TrimPrefix(line, "\t"))
	}
	if got, want := string(block[1]), strings.Join(code, ""); got != want {
		t.Errorf("README.md's quickstart block differs from main.go's embed region:\n--- README\n%s--- main.go\n%s", got, want)
	}
}
