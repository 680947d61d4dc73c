package attach

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

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

// TestAttackCgroupOtherMount: a restarted agent that sees the cgroup v2
// hierarchy at another mount point (a second process, in a mount
// namespace of its own with the test's cgroup bind-mounted elsewhere)
// replaces the program of the link the first attached, found by the
// cgroup's ID, instead of adding a second link of ours beside it.
func TestAttackCgroupOtherMount(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.TempCgroup(t)
	pinDir := testutil.TempBPFFS(t)
	counters := newCounters(t)
	a := open(t, pinDir)
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	if _, err := a.AttachCgroup(cg, ch.attach, cgroupCountProg(t, ch, counters, 0)); err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, "cgroup-other-mount", counters, func(cmd *exec.Cmd) {
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	}, helperPinDir+"="+pinDir, helperCgroup+"="+cg, helperSlot+"=1")
	line := h.next(t)
	if err := h.wait(); err != nil {
		t.Fatalf("second process: %v (%s)", err, line)
	}
	id := ebpf.ProgramID(parseReport(t, line, "program")[0])
	if diff := cmp.Diff([]ebpf.ProgramID{id}, cgroupProgs(t, cg, ch.attach)); diff != "" {
		t.Errorf("programs after the second process (-want +got):\n%s", diff)
	}
	if err := a.DetachCgroup(cg, ch.attach); err != nil {
		t.Error(err)
	}
	if got := cgroupProgs(t, cg, ch.attach); len(got) != 0 {
		t.Errorf("programs left: %v", got)
	}
	for _, p := range pins(t, pinDir) {
		os.Remove(filepath.Join(pinDir, p)) // what a failing run left
		t.Errorf("pin left: %s", p)
	}
}

// helperCgroupOtherMount runs in a mount namespace of its own: it
// bind-mounts the test's cgroup at a directory of its own and attaches a
// connect4 program through that path, reports the program and exits (the
// mount goes with its namespace; the directory it removes).
func helperCgroupOtherMount(t *testing.T) error {
	counters, err := helperCounters()
	if err != nil {
		return err
	}
	slot, err := helperSlotEnv()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sluice-atk-cg-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := unix.Mount(os.Getenv(helperCgroup), dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount the cgroup: %w", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	a, err := Open(os.Getenv(helperPinDir))
	if err != nil {
		return err
	}
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	at, err := a.AttachCgroup(dir, ch.attach, cgroupCountProg(t, ch, counters, slot))
	if err != nil {
		return err
	}
	report("program %d", at.Program)
	return nil
}
