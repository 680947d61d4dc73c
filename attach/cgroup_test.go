package attach

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// cgroupCountProg returns a program for the cgroup hook ch that adds one
// to counters[slot] and allows the operation (1 is allowed on every
// cgroup hook).
func cgroupCountProg(t *testing.T, ch cgroupHook, counters *ebpf.Map, slot uint32) *ebpf.Program {
	t.Helper()
	return loadCgroupProg(t, ch, fmt.Sprintf("cg%d", slot), append(countInsns(counters, slot),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("out"),
		asm.Return(),
	))
}

// countInsns adds one to counters[slot], then jumps to "out" (or falls
// through to it).
func countInsns(counters *ebpf.Map, slot uint32) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.R10, -4, int64(slot), asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, counters.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 0),
	}
}

// sockAddrUserPort is the offset of user_port in struct bpf_sock_addr.
const sockAddrUserPort = 24

func htons(p uint16) int32 { return int32(p>>8 | p<<8&0xff00) }

// rewriteProg returns a connect4 program that rewrites a connect to port
// from into one to port to, and counts every connect into counters[slot].
func rewriteProg(t *testing.T, counters *ebpf.Map, slot uint32, from, to uint16) *ebpf.Program {
	t.Helper()
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, sockAddrUserPort, asm.Word),
		asm.JNE.Imm(asm.R2, htons(from), "count"),
		asm.Mov.Imm(asm.R2, htons(to)),
		asm.StoreMem(asm.R6, sockAddrUserPort, asm.R2, asm.Word),
	}
	count := countInsns(counters, slot)
	count[0] = count[0].WithSymbol("count")
	insns = append(insns, count...)
	insns = append(insns, asm.Mov.Imm(asm.R0, 1).WithSymbol("out"), asm.Return())
	return loadCgroupProg(t, ch, fmt.Sprintf("rw%d", slot), insns)
}

func loadCgroupProg(t *testing.T, ch cgroupHook, name string, insns asm.Instructions) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ch.prog, AttachType: ch.attach,
		License: "Dual BSD/GPL", Instructions: insns})
	if err != nil {
		t.Fatalf("load %s program: %v", ch.name, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// cgroupProgs returns the programs the kernel runs at attach type at of
// the cgroup dir (attached there, not inherited).
func cgroupProgs(t *testing.T, dir string, at ebpf.AttachType) []ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		t.Fatalf("query %s of %s: %v", at, dir, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

func cgroupPin(pinDir string, h Hook, dir string) string {
	return filepath.Join(pinDir, linksDir, cgroupPinName(h, dir))
}

// TestCgroupHooks takes every cgroup hook through attach, replace, a
// restarted Attacher's replace and detach, checking the programs the
// kernel has on the cgroup, the pin directory and List at each step.
func TestCgroupHooks(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, ch := range cgroupHooks {
		t.Run(ch.name, func(t *testing.T) {
			cg := testutil.TempCgroup(t)
			pinDir := testutil.TempBPFFS(t)
			counters := newCounters(t)
			pin := cgroupPin(pinDir, ch.hook, cg)
			var linkID link.ID
			a := open(t, pinDir)
			for i := range 3 {
				if i == 2 {
					a = open(t, pinDir) // a restarted agent
				}
				prog := cgroupCountProg(t, ch, counters, uint32(i))
				want := Attachment{Hook: ch.hook, Cgroup: cg, Mode: ModeCgroup, Program: progID(t, prog), Pin: pin}
				got, err := a.AttachCgroup(cg, ch.attach, prog)
				if err != nil {
					t.Fatalf("attach %d: %v", i, err)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Fatalf("attach %d (-want +got):\n%s", i, diff)
				}
				list, err := a.List()
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff([]Attachment{want}, list); diff != "" {
					t.Fatalf("list after attach %d (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff([]ebpf.ProgramID{want.Program}, cgroupProgs(t, cg, ch.attach)); diff != "" {
					t.Fatalf("kernel after attach %d (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff([]string{filepath.Join(linksDir, filepath.Base(pin))}, pins(t, pinDir)); diff != "" {
					t.Fatalf("pins after attach %d (-want +got):\n%s", i, diff)
				}
				// Replacing updates the same link: no detach, no gap.
				if id := pinnedLinkID(t, pin); i == 0 {
					linkID = id
				} else if id != linkID {
					t.Fatalf("attach %d: pinned link %d, want the first one, %d", i, id, linkID)
				}
			}
			if err := a.DetachCgroup(cg, ch.attach); err != nil {
				t.Fatal(err)
			}
			if err := a.DetachCgroup(cg, ch.attach); !errors.Is(err, ErrNotAttached) {
				t.Errorf("second detach: %v, want ErrNotAttached", err)
			}
			if list, err := a.List(); err != nil || len(list) != 0 {
				t.Errorf("list after detach: %v, %v", list, err)
			}
			if got := cgroupProgs(t, cg, ch.attach); len(got) != 0 {
				t.Errorf("kernel after detach: %v", got)
			}
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins after detach: %v", got)
			}
		})
	}
}

// TestCgroupReplaceUnderTraffic: a process in the test's cgroup (and a
// network namespace of its own) connects over and over to a port nothing
// listens on, which a connect4 program rewrites to a port that has a
// listener. The program is replaced by others rewriting identically, half
// of the time by a second Attacher on the same pins; no connect may fail,
// and the programs together must have seen every connect exactly once.
func TestCgroupReplaceUnderTraffic(t *testing.T) {
	testutil.RequirePrivileged(t)
	const replacements = 60
	const from, to = 7777, 7778
	cg := testutil.TempCgroup(t)
	pinDir := testutil.TempBPFFS(t)
	counters := newCounters(t)
	progs := make([]*ebpf.Program, countSlots)
	for i := range progs {
		progs[i] = rewriteProg(t, counters, uint32(i), from, to)
	}
	a := open(t, pinDir)
	if _, err := a.AttachCgroup(cg, ebpf.AttachCGroupInet4Connect, progs[0]); err != nil {
		t.Fatal(err)
	}
	h := startConnectLoop(t, cg, from, to)
	if line := h.next(t); line != "ready" {
		t.Fatalf("connect loop: %s", line)
	}
	for i := 1; i <= replacements; i++ {
		if i == replacements/2 {
			a = open(t, pinDir) // a restarted agent takes over
		}
		if _, err := a.AttachCgroup(cg, ebpf.AttachCGroupInet4Connect, progs[i%countSlots]); err != nil {
			t.Fatalf("replacement %d: %v", i, err)
		}
		time.Sleep(time.Millisecond)
	}
	h.in.Close()
	line := h.next(t)
	if err := h.wait(); err != nil {
		t.Fatalf("connect loop: %v", err)
	}
	n := parseReport(t, line, "connects", "failures")
	if n[1] != 0 || n[0] == 0 {
		t.Fatalf("%d replacements under traffic: %s", replacements, line)
	}
	got := counts(t, counters)
	if s := sum(got); s != uint64(n[0]) {
		t.Errorf("programs counted %d connects, want %d: %v", s, n[0], got)
	}
	used := 0
	for _, c := range got {
		if c > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("only %d program(s) saw connects over %d replacements: %v", used, replacements, got)
	}
	t.Logf("%d replacements, %d programs saw the %d connects", replacements, used, n[0])
	if err := a.DetachCgroup(cg, ebpf.AttachCGroupInet4Connect); err != nil {
		t.Fatal(err)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins after detach: %v", got)
	}
}

// startConnectLoop starts the helper process connecting from inside the
// cgroup cg, in a new network namespace (created with the process, gone
// with it).
func startConnectLoop(t *testing.T, cg string, from, to uint16) *helper {
	t.Helper()
	dir, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	return startHelper(t, "connect-loop", nil, func(cmd *exec.Cmd) {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Cloneflags: syscall.CLONE_NEWNET}
	}, helperPortFrom+"="+strconv.Itoa(int(from)), helperPortTo+"="+strconv.Itoa(int(to)))
}

// TestCgroupSecondProcess: another process opens the pin directory and
// replaces the program of a cgroup hook the first attached; its program
// stays in force after it exits, through the same link.
func TestCgroupSecondProcess(t *testing.T) {
	testutil.RequirePrivileged(t)
	const from, to = 7787, 7788
	cg := testutil.TempCgroup(t)
	pinDir := testutil.TempBPFFS(t)
	counters := newCounters(t)
	a := open(t, pinDir)
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	if _, err := a.AttachCgroup(cg, ch.attach, rewriteProg(t, counters, 0, from, to)); err != nil {
		t.Fatal(err)
	}
	pin := cgroupPin(pinDir, ch.hook, cg)
	linkID := pinnedLinkID(t, pin)

	h := startHelper(t, "replace-hook", counters, nil, helperPinDir+"="+pinDir, helperCgroup+"="+cg,
		helperCase+"="+ch.hook.String(), helperSlot+"=1")
	line := h.next(t)
	if err := h.wait(); err != nil {
		t.Fatalf("second process: %v (%s)", err, line)
	}
	id := ebpf.ProgramID(parseReport(t, line, "program")[0])
	want := []Attachment{{Hook: ch.hook, Cgroup: cg, Mode: ModeCgroup, Program: id, Pin: pin}}
	list, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, list); diff != "" {
		t.Errorf("list after the second process (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]ebpf.ProgramID{id}, cgroupProgs(t, cg, ch.attach)); diff != "" {
		t.Errorf("kernel after the second process (-want +got):\n%s", diff)
	}
	if got := pinnedLinkID(t, pin); got != linkID {
		t.Errorf("pinned link %d after the second process, want %d", got, linkID)
	}
	if err := a.DetachCgroup(cg, ch.attach); err != nil {
		t.Fatal(err)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins after detach: %v", got)
	}
}

// TestLockAcrossProcesses: while one Attacher holds the pin directory's
// lock, a second process attaching through the same directory waits (the
// kernel lists it as blocked on the lock) and attaches nothing; it goes on
// once the lock is let go.
func TestLockAcrossProcesses(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.TempCgroup(t)
	pinDir := testutil.TempBPFFS(t)
	counters := newCounters(t)
	a := open(t, pinDir)
	unlock, err := a.lock()
	if err != nil {
		t.Fatal(err)
	}
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	h := startHelper(t, "attach-cgroup", counters, nil, helperPinDir+"="+pinDir, helperCgroup+"="+cg)
	if line := h.next(t); line != "attaching" {
		t.Fatalf("second process: %s", line)
	}
	waitBlockedOnFlock(t, h.cmd.Process.Pid)
	if got := cgroupProgs(t, cg, ebpf.AttachCGroupInet4Connect); len(got) != 0 {
		t.Fatalf("attached while the lock was held: %v", got)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Fatalf("pinned while the lock was held: %v", got)
	}
	unlock()
	locked = false
	line := h.next(t)
	if err := h.wait(); err != nil {
		t.Fatalf("second process: %v (%s)", err, line)
	}
	id := ebpf.ProgramID(parseReport(t, line, "program")[0])
	if diff := cmp.Diff([]ebpf.ProgramID{id}, cgroupProgs(t, cg, ebpf.AttachCGroupInet4Connect)); diff != "" {
		t.Errorf("kernel after the lock was let go (-want +got):\n%s", diff)
	}
	if err := a.DetachCgroup(cg, ebpf.AttachCGroupInet4Connect); err != nil {
		t.Fatal(err)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins after detach: %v", got)
	}
}

// waitBlockedOnFlock waits until /proc/locks shows process pid waiting
// for a flock ("->" marks a blocked request).
func waitBlockedOnFlock(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile("/proc/locks")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 6 && f[1] == "->" && f[2] == "FLOCK" && f[5] == strconv.Itoa(pid) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d never blocked on the lock:\n%s", pid, b)
		}
	}
}

// errWant marks a case whose error was not the one expected.
var errWant = errors.New("unexpected error")

// TestCgroupErrors: bad input gets a wrapped sentinel error and leaves
// nothing attached or pinned.
func TestCgroupErrors(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.TempCgroup(t)
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	counters := newCounters(t)
	connect4, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	sendmsg4, _ := cgroupHookFor(ebpf.AttachCGroupUDP4Sendmsg)
	conn := cgroupCountProg(t, connect4, counters, 0)
	send := cgroupCountProg(t, sendmsg4, counters, 0)
	tc := passProg(t, ebpf.SchedCLS)
	attach := func(path string, at ebpf.AttachType, p *ebpf.Program) func() error {
		return func() error { _, err := a.AttachCgroup(path, at, p); return err }
	}
	for _, c := range []struct {
		name string
		run  func() error
		want []error
	}{
		{"missing", attach(filepath.Join(cg, "nosuch"), connect4.attach, conn), []error{ErrNoCgroup2, os.ErrNotExist}},
		{"empty-path", attach("", connect4.attach, conn), []error{ErrNoCgroup2}},
		{"not-cgroup2", attach(t.TempDir(), connect4.attach, conn), []error{ErrNoCgroup2}},
		{"bpffs", attach(pinDir, connect4.attach, conn), []error{ErrNoCgroup2}},
		{"a-file", attach(filepath.Join(cg, "cgroup.procs"), connect4.attach, conn), []error{ErrNoCgroup2}},
		{"tc-program", attach(cg, connect4.attach, tc), []error{ErrProgramType}},
		{"nil-program", attach(cg, connect4.attach, nil), []error{ErrProgramType}},
		{"not-a-cgroup-type", attach(cg, ebpf.AttachTCXIngress, tc), []error{ErrProgramType}},
		{"expected-attach-type", attach(cg, connect4.attach, send), []error{ErrProgramType}},
		{"replace-expected-attach-type", func() error {
			if _, err := a.AttachCgroup(cg, connect4.attach, conn); err != nil {
				return err
			}
			_, err := a.AttachCgroup(cg, connect4.attach, send)
			if derr := a.DetachCgroup(cg, connect4.attach); derr != nil {
				return derr
			}
			return err
		}, []error{ErrProgramType}},
		{"path-too-long-for-a-pin", func() error {
			long := filepath.Join(cg, strings.Repeat("c", 250))
			if err := os.Mkdir(long, 0o755); err != nil {
				return err
			}
			defer os.Remove(long)
			_, err := a.AttachCgroup(long, connect4.attach, conn)
			if err == nil || !strings.Contains(err.Error(), "pin name") {
				return fmt.Errorf("%w: got %v", errWant, err)
			}
			return nil
		}, nil},
		{"detach-nothing", func() error { return a.DetachCgroup(cg, connect4.attach) }, []error{ErrNotAttached}},
		{"detach-not-a-cgroup-type", func() error { return a.DetachCgroup(cg, ebpf.AttachXDP) }, []error{ErrProgramType}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.run()
			if c.want == nil && err != nil {
				t.Errorf("error %v", err)
			}
			for _, w := range c.want {
				if !errors.Is(err, w) {
					t.Errorf("error %v, want %v", err, w)
				}
			}
			if list, err := a.List(); err != nil || len(list) != 0 {
				t.Errorf("left attached: %v, %v", list, err)
			}
			for _, at := range []ebpf.AttachType{connect4.attach, sendmsg4.attach} {
				if got := cgroupProgs(t, cg, at); len(got) != 0 {
					t.Errorf("kernel has %v at %s", got, at)
				}
			}
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins left: %v", got)
			}
		})
	}
}

// TestCgroupStalePin: when the cgroup a pinned link was made for is removed
// and another is made at the same path, AttachCgroup drops the old link
// and attaches afresh to the new cgroup; DetachCgroup finds a pin by its
// path after the cgroup has gone.
func TestCgroupStalePin(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := filepath.Join(testutil.TempCgroup(t), "child")
	pinDir := testutil.TempBPFFS(t)
	counters := newCounters(t)
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	old, fresh := cgroupCountProg(t, ch, counters, 0), cgroupCountProg(t, ch, counters, 1)
	pin := cgroupPin(pinDir, ch.hook, cg)
	a := open(t, pinDir)
	for i, prog := range []*ebpf.Program{old, fresh} {
		if err := os.Mkdir(cg, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := a.AttachCgroup(cg, ch.attach, prog); err != nil {
			os.Remove(cg)
			t.Fatal(err)
		}
		got := cgroupProgs(t, cg, ch.attach)
		if err := os.Remove(cg); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ebpf.ProgramID{progID(t, prog)}, got); diff != "" {
			t.Errorf("cgroup %d: kernel (-want +got):\n%s", i, diff)
		}
		list, err := a.List()
		if err != nil {
			t.Fatal(err)
		}
		want := []Attachment{{Hook: ch.hook, Cgroup: cg, Mode: ModeCgroup, Program: progID(t, prog), Pin: pin}}
		if diff := cmp.Diff(want, list); diff != "" {
			t.Errorf("cgroup %d removed: list (-want +got):\n%s", i, diff)
		}
	}
	if err := a.DetachCgroup(cg, ch.attach); err != nil {
		t.Fatal(err)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins after detach: %v", got)
	}
}
