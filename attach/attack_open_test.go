package attach

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestAttackOpenNotADirectory: a pin directory that is a file on bpffs (a
// pinned map) is refused with ErrNoBPFFS, as a path off bpffs is, and
// nothing is made under it.
func TestAttackOpenNotADirectory(t *testing.T) {
	testutil.RequirePrivileged(t)
	root := testutil.TempBPFFS(t)
	m := newCounters(t)
	file := filepath.Join(root, "a-map")
	if err := m.Pin(file); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(file) })
	if _, err := Open(file); !errors.Is(err, ErrNoBPFFS) {
		t.Errorf("Open(%s): %v, want ErrNoBPFFS", file, err)
	}
}

// TestAttackOpenRelative: a relative pin directory is taken relative to
// the working directory at Open, not at each call: an agent that changes
// its working directory afterwards still pins, and locks, in the same
// place.
func TestAttackOpenRelative(t *testing.T) {
	testutil.RequirePrivileged(t)
	root := testutil.TempBPFFS(t)
	if err := os.Mkdir(filepath.Join(root, "pins"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(root)
	a, err := Open("pins")
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	if got, want := a.PinDir(), filepath.Join(root, "pins"); got != want {
		t.Errorf("PinDir %s, want %s", got, want)
	}
	if _, err := a.List(); err != nil {
		t.Errorf("List after a change of working directory: %v", err)
	}
}
