package main

import (
	"strings"
	"testing"
)

// TestReviewDuplicateNames: a state file that names an object twice
// (encoding/json keeps the last one silently) is refused with the JSON path
// of the second, rather than applying whichever came last: an operator who
// merges two files by hand must not lose an interface's policy unseen.
func TestReviewDuplicateNames(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"interface twice", `{"interfaces":{"eth0":{"kind":"host"},"eth0":{"kind":"workload"}}}`, `interfaces["eth0"]: given twice`},
		{"service twice", `{"services":{"web":{"frontends":[{"addr":"10.96.0.1","port":80,"protocol":"tcp"}]},"web":{"frontends":[{"addr":"10.96.0.2","port":80,"protocol":"tcp"}]}}}`, `services["web"]: given twice`},
		{"ip set twice", `{"ipsets":{"s":{"nets":["10.0.0.0/8"]},"s":{}}}`, `ipsets["s"]: given twice`},
		{"field twice", `{"interfaces":{"eth0":{"kind":"host","kind":"workload"}}}`, `interfaces["eth0"].kind: given twice`},
		{"top level twice", `{"interfaces":{},"interfaces":{"eth0":{"kind":"host"}}}`, `interfaces: given twice`},
		{"field twice in another case", `{"Interfaces":{},"interfaces":{"eth0":{"kind":"host"}}}`, `interfaces: given twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseState([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// Names that differ only in case are different interfaces (Linux names
	// are case-sensitive) and stay allowed.
	if _, err := parseState([]byte(`{"interfaces":{"eth0":{"kind":"host"},"ETH0":{"kind":"host"}}}`)); err != nil {
		t.Errorf("names differing in case: %v", err)
	}
}

// TestReviewHugeStateFile: a state file larger than maxStateSize is refused
// without reading it whole into memory.
func TestReviewHugeStateFile(t *testing.T) {
	_, err := readState(strings.NewReader(`{"interfaces":{"` + strings.Repeat("a", maxStateSize) + `":{}}}`))
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("error %v, want one saying the file is larger than the limit", err)
	}
}
