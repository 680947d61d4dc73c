package attach

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestAttackCgroupPathAliases: one cgroup named through different paths
// (a symlink to it, a trailing slash, a "." or ".." on the way) is one
// hook: a replace through any of them updates the one link, rather than
// adding a second program of ours beside the first, and a detach through
// any of them removes it.
func TestAttackCgroupPathAliases(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.TempCgroup(t)
	child := filepath.Join(cg, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(child) })
	links := t.TempDir()
	symlink := filepath.Join(links, "cg")
	if err := os.Symlink(cg, symlink); err != nil {
		t.Fatal(err)
	}
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	counters := newCounters(t)
	aliases := []string{symlink, cg + "/", cg + "/.", child + "/..", filepath.Join(symlink, "child") + "/.."}
	if _, err := a.AttachCgroup(cg, ch.attach, cgroupCountProg(t, ch, counters, 0)); err != nil {
		t.Fatal(err)
	}
	for i, path := range aliases {
		p := cgroupCountProg(t, ch, counters, uint32(i+1))
		at, err := a.AttachCgroup(path, ch.attach, p)
		if err != nil {
			t.Fatalf("replace through %s: %v", path, err)
		}
		if diff := cmp.Diff([]ebpf.ProgramID{progID(t, p)}, cgroupProgs(t, cg, ch.attach)); diff != "" {
			t.Errorf("programs after the replace through %s (-want +got):\n%s", path, diff)
		}
		if at.Cgroup != cg {
			t.Errorf("replace through %s: Attachment.Cgroup %s, want %s", path, at.Cgroup, cg)
		}
	}
	if err := a.DetachCgroup(symlink, ch.attach); err != nil {
		t.Errorf("detach through %s: %v", symlink, err)
	}
	if got := cgroupProgs(t, cg, ch.attach); len(got) != 0 {
		t.Errorf("programs left: %v", got)
	}
	for _, path := range append(aliases, cg) {
		a.DetachCgroup(path, ch.attach) // whatever a failing run left
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins left: %v", got)
	}
}
