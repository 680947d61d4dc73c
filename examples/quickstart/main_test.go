package main

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestQuickstart runs the quickstart as `go run ./examples/quickstart`
// does and checks each flow's verdict and deciding rule, and that every
// connection to the service was served by one of its backends, more than
// one backend serving (all 12 on one of 3 backends has odds of 3^-11).
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
	served := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^  connection +\d+ from 10\.70\.0\.1:\d+: served by (.*)$`).FindAllStringSubmatch(out.String(), -1) {
		served[m[1]]++
	}
	total := 0
	for name, n := range served {
		if name != "web-1" && name != "web-2" && name != "web-3" {
			t.Errorf("%d connections served by %q, not a backend", n, name)
		}
		total += n
	}
	if total != connections || len(served) < 2 {
		t.Errorf("connections served: %v, want %d over more than one backend", served, connections)
	}
	per := regexp.MustCompile(`connections per backend: web-1 (\d+) web-2 (\d+) web-3 (\d+)`).FindStringSubmatch(out.String())
	if per == nil {
		t.Fatal("output has no connections per backend")
	}
	for i, name := range []string{"web-1", "web-2", "web-3"} {
		if per[i+1] != strconv.Itoa(served[name]) {
			t.Errorf("%s: %s connections per backend, %d lines", name, per[i+1], served[name])
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
