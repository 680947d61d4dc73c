package testpkt

import (
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The kernel tests can save the frames the kernel built as golden files:
// the bytes come from Linux, not from this package, so they check Bytes
// independently in unprivileged runs too.
var captureFlag = flag.Bool("capture-golden", false, "write the frames the kernel tests receive to testdata/*.hex")

func captureGolden(t *testing.T, name, description string, frame []byte) {
	t.Helper()
	if !*captureFlag {
		return
	}
	var sb strings.Builder
	sb.WriteString("# " + description + "\n# Captured from Linux by " + t.Name() + " with -capture-golden.\n")
	for i := 0; i < len(frame); i += 16 {
		sb.WriteString(hex.EncodeToString(frame[i:min(i+16, len(frame))]))
		sb.WriteString("\n")
	}
	path := filepath.Join("testdata", name+".hex")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}
