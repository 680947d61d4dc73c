package main

import (
	"bytes"
	"regexp"
	"strconv"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestServiceLB runs the example as `go run ./examples/servicelb` does
// and checks its claims in its output: for each service, connections that
// add up, every backend's served count equal to its predicted count and
// the model's reasons; for sticky, each client on one backend (its first
// connection hashed, the rest by affinity); for maglev, the backend
// weighted 4 serving more than one weighted 1 (expected 45 against 11 of
// 90; the odds against are below 1e-9).
func TestServiceLB(t *testing.T) {
	testutil.RequirePrivileged(t)
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	text := out.String()
	total := perClient * len(clients)
	heads := regexp.MustCompile(`(?m)^service (\w+) [\d.:]+: (\d+) connections`).FindAllStringSubmatchIndex(text, -1)
	if len(heads) != 3 {
		t.Fatalf("%d service sections in the output, want 3", len(heads))
	}
	for i, m := range heads {
		end := len(text)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		name, section := text[m[2]:m[3]], text[m[0]:end]
		if n, _ := strconv.Atoi(text[m[4]:m[5]]); n != total {
			t.Errorf("%s: %d connections, want %d", name, n, total)
		}
		shownLines := regexp.MustCompile(`(?m)^  10\.72\.0\.\d:\d+ -> [\d.:]+: served by (be-\d), nat.Explain: (be-\d) \((\w+)\)$`).FindAllStringSubmatch(section, -1)
		if len(shownLines) != shown {
			t.Errorf("%s: %d connections shown, want %d", name, len(shownLines), shown)
		}
		for _, l := range shownLines {
			if l[1] != l[2] {
				t.Errorf("%s: %q", name, l[0])
			}
		}
		served, sum := map[string]int{}, 0
		for _, row := range regexp.MustCompile(`(?m)^  (be-\d) +(\d+) +(\d+)`).FindAllStringSubmatch(section, -1) {
			if row[2] != row[3] {
				t.Errorf("%s: %s served %s, predicted %s", name, row[1], row[2], row[3])
			}
			n, _ := strconv.Atoi(row[2])
			served[row[1]] = n
			sum += n
		}
		if len(served) != len(backends) || sum != total {
			t.Errorf("%s: served %v, want %d connections over %d backends", name, served, total, len(backends))
		}
		wantReasons := map[string]string{
			"random": "hash " + strconv.Itoa(total),
			"sticky": "hash 3 affinity " + strconv.Itoa(total-len(clients)),
			"maglev": "maglev " + strconv.Itoa(total),
		}[name]
		if !regexp.MustCompile(`(?m)^  reasons: ` + wantReasons + `$`).MatchString(section) {
			t.Errorf("%s: no line \"reasons: %s\"", name, wantReasons)
		}
		switch name {
		case "sticky":
			for _, c := range clients {
				if !regexp.MustCompile(`(?m)^  client ` + c + `: be-\d ` + strconv.Itoa(perClient) + `$`).MatchString(section) {
					t.Errorf("sticky: client %s is not on one backend for all %d connections", c, perClient)
				}
			}
		case "maglev":
			if served["be-4"] <= served["be-1"] {
				t.Errorf("maglev: be-4 (weight 4) served %d, be-1 (weight 1) %d", served["be-4"], served["be-1"])
			}
		}
	}
	if !regexp.MustCompile(`(?m)^every connection went to the backend nat's model predicted$`).MatchString(text) {
		t.Error("output does not say every connection went to the predicted backend")
	}
}
