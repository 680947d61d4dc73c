package nat

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestCheckHostPorts: an SNAT range is refused where the host's own
// sockets may pick a port of it (in ip_local_port_range, not reserved),
// and allowed outside the range or where every such port is reserved.
func TestCheckHostPorts(t *testing.T) {
	for _, tc := range []struct {
		name            string
		portRange       string
		reserved        string
		lo, hi          uint16
		wantRefused     bool
		wantParseFailed bool
	}{
		{"default range, default SNAT ports", "32768\t60999\n", "\n", DefaultSNATPortMin, DefaultSNATPortMax, false, false},
		{"last port overlaps", "32768\t61000\n", "\n", 61000, 61010, true, false},
		{"widened range", "1024\t65535\n", "\n", 61000, 61010, true, false},
		{"widened, SNAT ports reserved", "1024\t65535\n", "8080,61000-61010\n", 61000, 61010, false, false},
		{"widened, one port not reserved", "1024\t65535\n", "61000-61009\n", 61000, 61010, true, false},
		{"widened, reserved singly", "1024\t65535\n", "61000,61001\n", 61000, 61001, false, false},
		{"below the range", "32768\t60999\n", "", 1000, 2000, false, false},
		{"garbage range", "a b\n", "", 61000, 61001, false, true},
		{"garbage reserved", "32768\t60999\n", "61000-x\n", 61000, 61001, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rangeFile, reservedFile := filepath.Join(dir, "range"), filepath.Join(dir, "reserved")
			if err := os.WriteFile(rangeFile, []byte(tc.portRange), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(reservedFile, []byte(tc.reserved), 0o600); err != nil {
				t.Fatal(err)
			}
			oldRange, oldReserved := localPortRangeFile, localReservedPortFile
			localPortRangeFile, localReservedPortFile = rangeFile, reservedFile
			t.Cleanup(func() { localPortRangeFile, localReservedPortFile = oldRange, oldReserved })
			err := checkHostPorts(tc.lo, tc.hi)
			switch {
			case tc.wantRefused && !errors.Is(err, ErrInvalidSNAT):
				t.Errorf("ports %d-%d: %v, want ErrInvalidSNAT", tc.lo, tc.hi, err)
			case tc.wantParseFailed && (err == nil || errors.Is(err, ErrInvalidSNAT)):
				t.Errorf("ports %d-%d: %v, want a parse error", tc.lo, tc.hi, err)
			case !tc.wantRefused && !tc.wantParseFailed && err != nil:
				t.Errorf("ports %d-%d: %v, want none", tc.lo, tc.hi, err)
			}
		})
	}
	// Without the files (no /proc) nothing is checked.
	oldRange := localPortRangeFile
	localPortRangeFile = filepath.Join(t.TempDir(), "missing")
	t.Cleanup(func() { localPortRangeFile = oldRange })
	if err := checkHostPorts(1, 65535); err != nil {
		t.Errorf("without the range file: %v", err)
	}
}
