package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/polprog"
)

// TestPolicy runs the example on its policy.json, as `go run
// ./examples/policy` does, and checks each flow's line against the
// verdict and rules that policy.json gives it (worked out by hand here,
// not by the evaluator): the result, the evaluator's decision, the hits
// that moved in the kernel, and the agreement; then the server's
// counters.
func TestPolicy(t *testing.T) {
	testutil.RequirePrivileged(t)
	*policyFile = "policy.json"
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	for _, want := range []string{
		`tcp/80 +passed +allow, rule 2001 +2001 +agree`,
		`tcp/443 +passed +allow, rule 2001 +2001 +agree`,
		`tcp/22 +denied +deny, rule 1001 +1001 +agree`,
		`tcp/8080 +denied +deny, rule 2999 +2999 +agree`,
		`udp/53 +passed +allow, rule 2002 \(hits 1002 2002\) +1002 2002 +agree`,
		`udp/1500 +passed +allow, rule 2003 +2003 +agree`,
		`udp/2500 +denied +deny, rule 2999 +2999 +agree`,
		`icmp echo code 0 +passed +allow, rule 2004 +2004 +agree`,
		`icmp echo code 1 +denied +deny, rule 2999 +2999 +agree`,
		`the kernel agrees with polprog.Evaluate on all 9 flows`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output has no line matching %q", want)
		}
	}
	// Five flows were allowed and four denied, each by the policy of its
	// first packet; a client slowed by load may give up on a denied TCP
	// flow only after its SYN was sent again, and denied again.
	received := regexp.MustCompile(`received: map\[.*\]`).FindString(out.String())
	for reason, least := range map[string]int{"accepted_by_policy": 5, "dropped_by_policy": 4} {
		m := regexp.MustCompile(reason + `:(\d+)`).FindStringSubmatch(received)
		if m == nil {
			t.Errorf("server received no %s: %q", reason, received)
		} else if n, _ := strconv.Atoi(m[1]); n < least {
			t.Errorf("server received %d %s, want at least %d", n, reason, least)
		}
	}
}

// TestAgrees holds the comparison the example fails on to its cases: a
// verdict that differs, a hit missing or extra, and repeated hits (a
// retransmission) that do not count as a difference.
func TestAgrees(t *testing.T) {
	allow := polprog.Decision{Verdict: polprog.VerdictAllow, RuleID: 2, Hits: []uint64{2, 1}}
	deny := polprog.Decision{Verdict: polprog.VerdictDeny, RuleID: 9, Hits: []uint64{9}}
	for _, tc := range []struct {
		name   string
		want   polprog.Decision
		passed bool
		moved  []uint64
		agree  bool
	}{
		{"allowed", allow, true, []uint64{1, 2}, true},
		{"allowed but dropped", allow, false, []uint64{1, 2}, false},
		{"denied but passed", deny, true, []uint64{9}, false},
		{"a log hit missing", allow, true, []uint64{2}, false},
		{"another rule decided", deny, false, []uint64{8}, false},
		{"no hit", deny, false, nil, false},
		{"denied, retransmitted", polprog.Decision{Verdict: polprog.VerdictDeny, RuleID: 9, Hits: []uint64{9, 9}}, false, []uint64{9}, true},
		{"denied without a rule ID", polprog.Decision{Verdict: polprog.VerdictDeny}, false, nil, true},
	} {
		if got := agrees(tc.want, tc.passed, tc.moved); got != tc.agree {
			t.Errorf("%s: agrees = %v, want %v", tc.name, got, tc.agree)
		}
	}
}

// TestReadPolicy: the example's file reads, and a misspelt field, an
// unknown action and a rule the compiler refuses are errors, not
// wildcards.
func TestReadPolicy(t *testing.T) {
	if _, _, err := readPolicy("policy.json"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, text := range map[string]string{
		"misspelt field": `{"Tiers": [{"Name": "t", "Policies": [{"Name": "p", "Rules": [{"ID": 1, "Action": "allow", "DstPort": ["80"]}]}]}]}`,
		"unknown action": `{"Tiers": [{"Name": "t", "Policies": [{"Name": "p", "Rules": [{"ID": 1, "Action": "accept"}]}]}]}`,
		"bad port range": `{"Tiers": [{"Name": "t", "Policies": [{"Name": "p", "Rules": [{"ID": 1, "Action": "allow", "DstPorts": ["90-80"]}]}]}]}`,
		"ICMP with tcp":  `{"Tiers": [{"Name": "t", "Policies": [{"Name": "p", "Rules": [{"ID": 1, "Action": "allow", "Protocol": "tcp", "ICMP": {"Type": 8}}]}]}]}`,
	} {
		path := filepath.Join(dir, "policy.json")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readPolicy(path); err == nil {
			t.Errorf("%s: read without an error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}
