package attach

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestAttackNetNSLock: the clsact qdisc and filters of a network namespace
// are shared by every Attacher in it, whatever its pin directory, so TC
// operations also hold an exclusive flock on the namespace (its nsfs
// inode). Without it an agent's DetachTC deleting the qdisc it made could
// take with it the filter another agent (another pin directory) had just
// added, leaving that agent's hook with no program. While the namespace's
// lock is held here, a second process attaching through a pin directory
// of its own waits and attaches nothing; it goes on once the lock is let
// go.
func TestAttackNetNSLock(t *testing.T) {
	testutil.RequirePrivileged(t)
	forceNoTCX(t)
	p := newPair(t)
	counters := newCounters(t)
	fd, err := unix.Open("/run/netns/"+p.B.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	locked := true
	defer func() {
		if locked {
			unix.Flock(fd, unix.LOCK_UN)
		}
	}()
	pinDir := testutil.TempBPFFS(t)
	h := startHelper(t, "replace-hook", counters, nil, helperPinDir+"="+pinDir, helperNetNS+"="+p.B.Name,
		helperCase+"=clsact-ingress", helperSlot+"=1")
	waitBlockedOnFlock(t, h.cmd.Process.Pid)
	var state kernelState
	in(t, p.B, func() (err error) { state, err = stateOf("slb"); return err })
	if diff := cmp.Diff(kernelState{}, state); diff != "" {
		t.Fatalf("attached while the namespace's lock was held (-want +got):\n%s", diff)
	}
	unix.Flock(fd, unix.LOCK_UN)
	locked = false
	line := h.next(t)
	if err := h.wait(); err != nil {
		t.Fatalf("second process: %v (%s)", err, line)
	}
	id := ebpf.ProgramID(parseReport(t, line, "program")[0])
	in(t, p.B, func() (err error) { state, err = stateOf("slb"); return err })
	if diff := cmp.Diff(kernelState{Clsact: true, FiltersIngress: []string{filterDesc("count1", id)}}, state); diff != "" {
		t.Errorf("kernel after the lock was let go (-want +got):\n%s", diff)
	}
	a := open(t, pinDir)
	in(t, p.B, func() error { return a.DetachTC("slb", Ingress) })
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins after detach: %v", got)
	}
}

// TestAttackLockRecreatedPinDir: a process waiting for the pin
// directory's lock while the directory is replaced (removed and made
// again) must not go on holding the lock
// of the old directory while another holds that of the new one, in which
// both then pin: once the old directory's lock is let go, it waits again,
// on the new directory's.
func TestAttackLockRecreatedPinDir(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.TempCgroup(t)
	root := testutil.TempBPFFS(t)
	pinDir := filepath.Join(root, "pins")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	counters := newCounters(t)
	old := open(t, pinDir)
	unlockOld, err := old.lock()
	if err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, "attach-cgroup", counters, nil, helperPinDir+"="+pinDir, helperCgroup+"="+cg)
	if line := h.next(t); line != "attaching" {
		t.Fatalf("second process: %s", line)
	}
	waitBlockedOnFlock(t, h.cmd.Process.Pid)

	// The directory is replaced while the lock of the old one is held and
	// waited for. (bpffs cannot rename a directory, so it is removed.)
	if err := os.RemoveAll(pinDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	now := open(t, pinDir)
	unlockNow, err := now.lock()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(pinDir, &st); err != nil {
		t.Fatal(err)
	}
	unlockOld()
	waitBlockedOnInode(t, h.cmd.Process.Pid, st.Ino)
	if got := cgroupProgs(t, cg, ebpf.AttachCGroupInet4Connect); len(got) != 0 {
		t.Errorf("attached while the new directory's lock was held: %v", got)
	}
	unlockNow()
	line := h.next(t)
	if err := h.wait(); err != nil {
		t.Fatalf("second process: %v (%s)", err, line)
	}
	if err := now.DetachCgroup(cg, ebpf.AttachCGroupInet4Connect); err != nil {
		t.Fatal(err)
	}
}

// waitBlockedOnInode waits until /proc/locks shows process pid waiting
// for a flock on the inode ino.
func waitBlockedOnInode(t *testing.T, pid int, ino uint64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile("/proc/locks")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 7 && f[1] == "->" && f[2] == "FLOCK" && f[5] == strconv.Itoa(pid) &&
				strings.HasSuffix(f[6], ":"+strconv.FormatUint(ino, 10)) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d never waited on inode %d:\n%s", pid, ino, b)
		}
	}
}
