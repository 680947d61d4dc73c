package attach

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestAttackKillMidReplace: for every hook in every mode, a second process
// replaces the program over and over (two programs of its own, in turn)
// and is killed with SIGKILL, by its PID, at some point of a replace,
// several times. After each kill the hook still has exactly one program
// of ours, no UDP request crossing the pair was lost, and a third agent
// (this process) replaces that program in place.
func TestAttackKillMidReplace(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, c := range hookCases {
		t.Run(c.name, func(t *testing.T) {
			if c.force != nil {
				c.force(t)
			}
			p := newPair(t)
			pinDir := testutil.TempBPFFS(t)
			srv := p.echo(t)
			counters := newCounters(t)
			a := open(t, pinDir)
			in(t, p.B, func() error { _, err := c.attach(a, "slb", countProg(t, c.progType(), counters, 0)); return err })
			traffic := startFlow(p.A.ListenPacket(t, "udp4", "10.0.0.1:0"), srv)
			traffic.waitCount(t, counters, 0, 5)
			for round, delay := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond} {
				h := startHelper(t, "replace-loop", counters, nil, helperPinDir+"="+pinDir, helperNetNS+"="+p.B.Name,
					helperCase+"="+c.name, helperSlot+"=1")
				if line := h.next(t); line != "ready" {
					t.Fatalf("round %d: helper: %s", round, line)
				}
				time.Sleep(delay) // kill at some point of a replace, not a chosen one
				if err := h.cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				h.wait()

				var list []Attachment
				in(t, p.B, func() (err error) { list, err = a.List(); return err })
				if len(list) != 1 {
					t.Fatalf("round %d: after the kill, attached: %v", round, list)
				}
				slot := uint32(10 + round)
				next := countProg(t, c.progType(), counters, slot)
				var at Attachment
				in(t, p.B, func() (err error) { at, err = c.attach(a, "slb", next); return err })
				traffic.waitCount(t, counters, slot, 5)
				var state kernelState
				in(t, p.B, func() (err error) { state, err = stateOf("slb"); return err })
				if diff := cmp.Diff(c.state(fmt.Sprintf("count%d", slot), at.Program), state); diff != "" {
					t.Errorf("round %d: kernel after the replace (-want +got):\n%s", round, diff)
				}
			}
			answered, err := traffic.end()
			if err != nil {
				t.Fatalf("after %d answered: %v", answered, err)
			}
			if got := counts(t, counters); sum(got) != uint64(answered) {
				t.Errorf("programs counted %v, want %d in all", got[:16], answered)
			}
			in(t, p.B, func() error { return c.detach(a, "slb") })
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins after detach: %v", got)
			}
		})
	}
}

// helperReplaceLoop is an agent killed while it works: it replaces the
// program of one TC or XDP hook case (or the connect4 hook of a cgroup)
// with two counting programs in turn
// (slots slot and slot+1), reports "ready" after the first replace, and
// goes on until it is killed.
func helperReplaceLoop(t *testing.T) error {
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
		ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
		progs := []*ebpf.Program{cgroupCountProg(t, ch, counters, slot), cgroupCountProg(t, ch, counters, slot+1)}
		for i := 0; ; i++ {
			if _, err := a.AttachCgroup(dir, ch.attach, progs[i%2]); err != nil {
				return err
			}
			if i == 0 {
				report("ready")
			}
		}
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
		c.force(t)
	}
	progs := []*ebpf.Program{countProg(t, c.progType(), counters, slot), countProg(t, c.progType(), counters, slot+1)}
	return inNamedNetNS(os.Getenv(helperNetNS), func() error {
		for i := 0; ; i++ {
			if _, err := c.attach(a, "slb", progs[i%2]); err != nil {
				return err
			}
			if i == 0 {
				report("ready")
			}
		}
	})
}

// TestAttackKillMidReplaceCgroup: as TestAttackKillMidReplace, for a
// cgroup hook: after each kill the cgroup has exactly one program of ours
// on the hook, and this process replaces it in place.
func TestAttackKillMidReplaceCgroup(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.TempCgroup(t)
	pinDir := testutil.TempBPFFS(t)
	counters := newCounters(t)
	a := open(t, pinDir)
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	if _, err := a.AttachCgroup(cg, ch.attach, cgroupCountProg(t, ch, counters, 0)); err != nil {
		t.Fatal(err)
	}
	pin := cgroupPin(pinDir, ch.hook, cg)
	linkID := pinnedLinkID(t, pin)
	for round, delay := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond} {
		h := startHelper(t, "replace-loop", counters, nil, helperPinDir+"="+pinDir, helperCgroup+"="+cg, helperSlot+"=1")
		if line := h.next(t); line != "ready" {
			t.Fatalf("round %d: helper: %s", round, line)
		}
		time.Sleep(delay) // kill at some point of a replace, not a chosen one
		if err := h.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		h.wait()
		if got := cgroupProgs(t, cg, ch.attach); len(got) != 1 {
			t.Fatalf("round %d: after the kill, programs %v", round, got)
		}
		next := cgroupCountProg(t, ch, counters, uint32(10+round))
		if _, err := a.AttachCgroup(cg, ch.attach, next); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]ebpf.ProgramID{progID(t, next)}, cgroupProgs(t, cg, ch.attach)); diff != "" {
			t.Errorf("round %d: programs after the replace (-want +got):\n%s", round, diff)
		}
		if got := pinnedLinkID(t, pin); got != linkID {
			t.Errorf("round %d: pinned link %d, want %d", round, got, linkID)
		}
	}
	if err := a.DetachCgroup(cg, ch.attach); err != nil {
		t.Fatal(err)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins after detach: %v", got)
	}
}
