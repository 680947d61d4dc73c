package attach

import (
	"testing"

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
