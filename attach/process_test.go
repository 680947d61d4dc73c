package attach

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// helperEnv selects what the test binary does when a test re-executes it
// as a second process (TestHelperProcess); the helper's arguments follow
// in the variables below.
const (
	helperEnv       = "SLUICE_ATTACH_HELPER"
	helperPinDir    = "SLUICE_ATTACH_PINDIR"
	helperNetNS     = "SLUICE_ATTACH_NETNS"
	helperCase      = "SLUICE_ATTACH_CASE"
	helperCgroup    = "SLUICE_ATTACH_CGROUP"
	helperSlot      = "SLUICE_ATTACH_SLOT"
	helperPortFrom  = "SLUICE_ATTACH_FROM"
	helperPortTo    = "SLUICE_ATTACH_TO"
	helperCountersF = 3 // the counters map, passed as the first extra file
)

// helper is a second process running this test binary.
type helper struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	lines chan string
}

// startHelper re-executes the test binary as the helper mode with env
// (name=value pairs), passing counters (if any) as file descriptor 3.
// setup, if not nil, changes the command before it starts.
func startHelper(t *testing.T, mode string, counters *ebpf.Map, setup func(*exec.Cmd), env ...string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + mode}, env...)...)
	cmd.Stderr = os.Stderr
	if counters != nil {
		fd, err := unix.Dup(counters.FD())
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "counters")
		defer f.Close() // the child has its own copy once started
		cmd.ExtraFiles = []*os.File{f}
	}
	if setup != nil {
		setup(cmd)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, in: in, out: bufio.NewScanner(stdout), lines: make(chan string, 16)}
	go func() {
		defer close(h.lines)
		for h.out.Scan() {
			if line, ok := strings.CutPrefix(h.out.Text(), "helper: "); ok {
				h.lines <- line
			}
		}
	}()
	t.Cleanup(func() {
		in.Close()
		if h.cmd.ProcessState == nil {
			h.cmd.Process.Kill()
			h.cmd.Wait()
		}
	})
	return h
}

// next returns the helper's next report line, failing if it exits first.
func (h *helper) next(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-h.lines:
		if !ok {
			t.Fatalf("helper exited: %v", h.wait())
		}
		return line
	case <-time.After(30 * time.Second):
		t.Fatal("no report from helper")
	}
	return ""
}

// wait closes the helper's input and waits for it to exit.
func (h *helper) wait() error {
	h.in.Close()
	for range h.lines {
	}
	return h.cmd.Wait()
}

// report prints a line for the parent to read.
func report(format string, args ...any) {
	fmt.Printf("helper: "+format+"\n", args...)
}

// TestHelperProcess is the second process the tests re-execute this binary
// as; without helperEnv it does nothing.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("only runs as a helper process")
	}
	var err error
	switch mode {
	case "replace-hook":
		err = helperReplaceHook(t)
	case "attach-cgroup":
		err = helperAttachCgroup(t)
	case "cgroup-other-mount":
		err = helperCgroupOtherMount(t)
	case "replace-loop":
		err = helperReplaceLoop(t)
	case "connect-loop":
		err = helperConnectLoop()
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		report("error %v", err)
		t.Fatal(err)
	}
}

func helperCounters() (*ebpf.Map, error) {
	m, err := ebpf.NewMapFromFD(helperCountersF)
	if err != nil {
		return nil, fmt.Errorf("counters from fd %d: %w", helperCountersF, err)
	}
	return m, nil
}

func helperSlotEnv() (uint32, error) {
	slot, err := strconv.ParseUint(os.Getenv(helperSlot), 10, 32)
	return uint32(slot), err
}

// helperReplaceHook is a restarted agent: it opens the pin directory and
// replaces the program of one TC or XDP hook case (in the named network
// namespace) or of one cgroup hook with a counting program of its own,
// reports the program's ID and exits, leaving the program to the pinned
// link.
func helperReplaceHook(t *testing.T) error {
	counters, err := helperCounters()
	if err != nil {
		return err
	}
	slot, err := helperSlotEnv()
	if err != nil {
		return err
	}
	a, err := Open(os.Getenv(helperPinDir))
	if err != nil {
		return err
	}
	if dir := os.Getenv(helperCgroup); dir != "" {
		ch, ok := cgroupHookOf(hookByName(os.Getenv(helperCase)))
		if !ok {
			return fmt.Errorf("no cgroup hook %q", os.Getenv(helperCase))
		}
		prog := cgroupCountProg(t, ch, counters, slot)
		at, err := a.AttachCgroup(dir, ch.attach, prog)
		if err != nil {
			return err
		}
		report("program %d", at.Program)
		return nil
	}
	var c *hookCase
	for i := range hookCases {
		if hookCases[i].name == os.Getenv(helperCase) {
			c = &hookCases[i]
		}
	}
	if c == nil {
		return fmt.Errorf("no hook case %q", os.Getenv(helperCase))
	}
	if c.force != nil {
		c.force(t) // the same kernel features as the first process saw
	}
	prog := countProg(t, c.progType(), counters, slot)
	var at Attachment
	err = inNamedNetNS(os.Getenv(helperNetNS), func() (err error) {
		at, err = c.attach(a, "slb", prog)
		return err
	})
	if err != nil {
		return err
	}
	report("program %d", at.Program)
	return nil
}

func hookByName(name string) Hook {
	for h := HookTCIngress; h <= HookDevice; h++ {
		if h.String() == name {
			return h
		}
	}
	return Hook(255)
}

// inNamedNetNS runs fn on a thread in the network namespace named name
// (under /run/netns); the thread is thrown away afterwards.
func inNamedNetNS(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// helperAttachCgroup is a second agent attaching a connect4 program to a
// cgroup: it reports when it is about to take the lock, then when it has
// attached.
func helperAttachCgroup(t *testing.T) error {
	a, err := Open(os.Getenv(helperPinDir))
	if err != nil {
		return err
	}
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	counters, err := helperCounters()
	if err != nil {
		return err
	}
	prog := cgroupCountProg(t, ch, counters, 9)
	report("attaching")
	at, err := a.AttachCgroup(os.Getenv(helperCgroup), ch.attach, prog)
	if err != nil {
		return err
	}
	report("program %d", at.Program)
	return nil
}

// helperConnectLoop runs in the test's cgroup and a network namespace of
// its own: it serves TCP on 127.0.0.1 at the "to" port and connects to
// the "from" port, which only a connect4 program rewriting it to "to" makes
// reachable, over and over until its input closes; it reports the first
// successful connect, then the number of connects and of failures.
func helperConnectLoop() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:"+os.Getenv(helperPortTo))
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	to := "127.0.0.1:" + os.Getenv(helperPortFrom)
	var connects, failures int
	var first error
	for {
		select {
		case <-stop:
			report("connects %d failures %d first %v", connects, failures, first)
			return nil
		default:
		}
		c, err := net.Dial("tcp4", to)
		connects++
		if err != nil {
			failures++
			if first == nil {
				first = err
			}
			continue
		}
		c.Close()
		if connects == 1 {
			report("ready")
		}
	}
}

// parseReport reads the numbers out of a helper's report line of the form
// "word N word N ...".
func parseReport(t *testing.T, line string, words ...string) []int {
	t.Helper()
	fields := strings.Fields(line)
	var out []int
	for _, w := range words {
		found := false
		for i := 0; i+1 < len(fields); i++ {
			if fields[i] == w {
				n, err := strconv.Atoi(fields[i+1])
				if err != nil {
					t.Fatalf("report %q: %v", line, err)
				}
				out = append(out, n)
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("report %q has no %s", line, w)
		}
	}
	return out
}
