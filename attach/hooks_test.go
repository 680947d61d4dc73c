package attach

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// hookCase is one hook in one mode, attached to B's end of the pair.
type hookCase struct {
	name  string
	hook  Hook
	xdp   XDPMode
	force func(*testing.T) // forces the fallback, if any
	want  Mode
}

var hookCases = []hookCase{
	{name: "tcx-ingress", hook: HookTCIngress, want: ModeTCX},
	{name: "tcx-egress", hook: HookTCEgress, want: ModeTCX},
	{name: "clsact-ingress", hook: HookTCIngress, force: forceNoTCX, want: ModeClsact},
	{name: "clsact-egress", hook: HookTCEgress, force: forceNoTCX, want: ModeClsact},
	{name: "xdp-auto", hook: HookXDP, xdp: XDPAuto, want: ModeXDPNative},
	{name: "xdp-native", hook: HookXDP, xdp: XDPNative, want: ModeXDPNative},
	{name: "xdp-generic", hook: HookXDP, xdp: XDPGeneric, want: ModeXDPGeneric},
	{name: "xdp-auto-fallback", hook: HookXDP, xdp: XDPAuto, force: forceNoNativeXDP, want: ModeXDPGeneric},
}

func (c hookCase) progType() ebpf.ProgramType {
	if c.hook == HookXDP {
		return ebpf.XDP
	}
	return ebpf.SchedCLS
}

func (c hookCase) dir() Direction {
	if c.hook == HookTCEgress {
		return Egress
	}
	return Ingress
}

func (c hookCase) attach(a *Attacher, ifname string, p *ebpf.Program) (Attachment, error) {
	if c.hook == HookXDP {
		return a.AttachXDP(ifname, p, c.xdp)
	}
	return a.AttachTC(ifname, c.dir(), p)
}

func (c hookCase) detach(a *Attacher, ifname string) error {
	if c.hook == HookXDP {
		return a.DetachXDP(ifname)
	}
	return a.DetachTC(ifname, c.dir())
}

// pinned reports whether the case's mode goes through a pinned link.
func (c hookCase) pinned() bool { return c.want != ModeClsact }

// state is the kernel state expected with prog (named name) attached.
func (c hookCase) state(name string, id ebpf.ProgramID) kernelState {
	var s kernelState
	switch c.want {
	case ModeTCX:
		if c.hook == HookTCIngress {
			s.TCXIngress = []ebpf.ProgramID{id}
		} else {
			s.TCXEgress = []ebpf.ProgramID{id}
		}
	case ModeClsact:
		s.Clsact = true
		if c.hook == HookTCIngress {
			s.FiltersIngress = []string{filterDesc(name, id)}
		} else {
			s.FiltersEgr = []string{filterDesc(name, id)}
		}
	default:
		s.XDP, s.XDPProgram = c.want, id
	}
	return s
}

// TestHooks takes every hook in every mode through attach, replace, a
// restarted process's replace and detach, checking the kernel's state,
// the pin directory and List at each step, and that the program in force
// is the one counting B's packets.
func TestHooks(t *testing.T) {
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
			progs := []*ebpf.Program{
				countProg(t, c.progType(), counters, 0),
				countProg(t, c.progType(), counters, 1),
				countProg(t, c.progType(), counters, 2),
			}
			var wantPins []string
			pin := ""
			if c.pinned() {
				pin = filepath.Join(pinDir, linksDir, c.hook.String()+"-slb")
				wantPins = []string{filepath.Join(linksDir, c.hook.String()+"-slb")}
			} else {
				wantPins = []string{filepath.Join(filtersDir, fmt.Sprintf("%s-slb-%d", c.hook, p.VB.Index)),
					filepath.Join(qdiscsDir, fmt.Sprintf("clsact-slb-%d", p.VB.Index))}
			}
			var linkID any
			a := open(t, pinDir)
			for i, prog := range progs {
				if i == 2 {
					a = open(t, pinDir) // a restarted process
				}
				want := Attachment{Hook: c.hook, Ifname: "slb", Ifindex: p.VB.Index, Mode: c.want,
					Program: progID(t, prog), Pin: pin}
				var got Attachment
				var list []Attachment
				var state kernelState
				in(t, p.B, func() (err error) {
					if got, err = c.attach(a, "slb", prog); err != nil {
						return err
					}
					if list, err = a.List(); err != nil {
						return err
					}
					state, err = stateOf("slb")
					return err
				})
				if diff := cmp.Diff(want, got); diff != "" {
					t.Fatalf("attach %d (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff([]Attachment{want}, list); diff != "" {
					t.Fatalf("list after attach %d (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff(c.state(fmt.Sprintf("count%d", i), want.Program), state); diff != "" {
					t.Fatalf("kernel after attach %d (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff(wantPins, pins(t, pinDir)); diff != "" {
					t.Fatalf("pins after attach %d (-want +got):\n%s", i, diff)
				}
				if c.pinned() {
					// Replacing updates the same link: no detach, no gap.
					id := pinnedLinkID(t, pin)
					if linkID == nil {
						linkID = id
					} else if id != linkID {
						t.Fatalf("attach %d: pinned link %d, want the first one, %d", i, id, linkID)
					}
				}
				if n, err := p.pingPong(t, srv, 10); err != nil {
					t.Fatalf("traffic after attach %d: %d answered: %v", i, n, err)
				}
				want10 := make([]uint64, countSlots)
				for j := 0; j <= i; j++ {
					want10[j] = 10
				}
				if diff := cmp.Diff(want10, counts(t, counters)); diff != "" {
					t.Fatalf("counters after attach %d (-want +got):\n%s", i, diff)
				}
			}

			var list []Attachment
			var state kernelState
			var again error
			in(t, p.B, func() (err error) {
				if err = c.detach(a, "slb"); err != nil {
					return err
				}
				again = c.detach(a, "slb")
				if list, err = a.List(); err != nil {
					return err
				}
				state, err = stateOf("slb")
				return err
			})
			if !errors.Is(again, ErrNotAttached) {
				t.Errorf("second detach: %v, want ErrNotAttached", again)
			}
			if len(list) != 0 {
				t.Errorf("list after detach: %v", list)
			}
			if diff := cmp.Diff(kernelState{}, state); diff != "" {
				t.Errorf("kernel after detach (-want +got):\n%s", diff)
			}
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins after detach: %v", got)
			}
			before := counts(t, counters)
			if n, err := p.pingPong(t, srv, 10); err != nil {
				t.Fatalf("traffic after detach: %d answered: %v", n, err)
			}
			if diff := cmp.Diff(before, counts(t, counters)); diff != "" {
				t.Errorf("a detached program counted (-before +after):\n%s", diff)
			}
		})
	}
}

// TestReplaceUnderTraffic replaces the program on every hook in every mode
// over and over while UDP requests and echoes cross the pair one at a
// time, half of the replacements from a second Attacher on the same pins
// (a restarted process). No request may go unanswered, and the programs'
// counters together must have seen every packet exactly once: at no moment
// was the hook without a program.
func TestReplaceUnderTraffic(t *testing.T) {
	testutil.RequirePrivileged(t)
	const replacements = 60
	for _, c := range hookCases {
		t.Run(c.name, func(t *testing.T) {
			if c.force != nil {
				c.force(t)
			}
			p := newPair(t)
			pinDir := testutil.TempBPFFS(t)
			srv := p.echo(t)
			counters := newCounters(t)
			progs := make([]*ebpf.Program, countSlots)
			for i := range progs {
				progs[i] = countProg(t, c.progType(), counters, uint32(i))
			}
			a := open(t, pinDir)
			in(t, p.B, func() error { _, err := c.attach(a, "slb", progs[0]); return err })

			traffic := startFlow(p.A.ListenPacket(t, "udp4", "10.0.0.1:0"), srv)
			var rerr error
			in(t, p.B, func() error {
				for i := 1; i <= replacements; i++ {
					if i == replacements/2 {
						// A restarted process takes over.
						var err error
						if a, err = Open(pinDir); err != nil {
							rerr = err
							return nil
						}
					}
					at, err := c.attach(a, "slb", progs[i%countSlots])
					if err != nil {
						rerr = fmt.Errorf("replacement %d: %w", i, err)
						return nil
					}
					if at.Mode != c.want {
						t.Errorf("replacement %d in mode %s, want %s", i, at.Mode, c.want)
					}
					time.Sleep(time.Millisecond)
				}
				return nil
			})
			answered, err := traffic.end()
			if rerr != nil {
				t.Fatal(rerr)
			}
			if err != nil || answered == 0 {
				t.Fatalf("%d requests answered during %d replacements, then: %v", answered, replacements, err)
			}
			got := counts(t, counters)
			if s := sum(got); s != uint64(answered) {
				t.Errorf("programs counted %d packets, want %d: %v", s, answered, got)
			}
			used := 0
			for _, n := range got {
				if n > 0 {
					used++
				}
			}
			if used < 2 {
				t.Errorf("only %d program(s) saw traffic over %d replacements: %v", used, replacements, got)
			}
			t.Logf("%d replacements, %d programs saw the %d requests", replacements, used, answered)
			in(t, p.B, func() error { return c.detach(a, "slb") })
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins after detach: %v", got)
			}
		})
	}
}

// TestSecondProcess: for every hook in every mode, another process (this
// test binary, re-executed) opens the pin directory and replaces the
// program while UDP requests cross the pair. No request is lost, the
// program it loaded stays in force after it exits, through the same
// pinned link, and the two programs together counted every packet once.
func TestSecondProcess(t *testing.T) {
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
			pin := ""
			var linkID link.ID
			if c.pinned() {
				pin = filepath.Join(pinDir, linksDir, c.hook.String()+"-slb")
				linkID = pinnedLinkID(t, pin)
			}

			traffic := startFlow(p.A.ListenPacket(t, "udp4", "10.0.0.1:0"), srv)
			traffic.waitCount(t, counters, 0, 20)
			h := startHelper(t, "replace-hook", counters, nil, helperPinDir+"="+pinDir, helperNetNS+"="+p.B.Name,
				helperCase+"="+c.name, helperSlot+"=1")
			line := h.next(t)
			if err := h.wait(); err != nil {
				t.Fatalf("second process: %v (%s)", err, line)
			}
			traffic.waitCount(t, counters, 1, 20)
			answered, err := traffic.end()
			if err != nil {
				t.Fatalf("after %d answered: %v", answered, err)
			}
			if got := counts(t, counters); sum(got) != uint64(answered) {
				t.Errorf("programs counted %v, want %d in all", got[:2], answered)
			}

			id := ebpf.ProgramID(parseReport(t, line, "program")[0])
			want := Attachment{Hook: c.hook, Ifname: "slb", Ifindex: p.VB.Index, Mode: c.want, Program: id, Pin: pin}
			var list []Attachment
			var state kernelState
			in(t, p.B, func() (err error) {
				if list, err = a.List(); err != nil {
					return err
				}
				state, err = stateOf("slb")
				return err
			})
			if diff := cmp.Diff([]Attachment{want}, list); diff != "" {
				t.Errorf("list after the second process (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(c.state("count1", id), state); diff != "" {
				t.Errorf("kernel after the second process (-want +got):\n%s", diff)
			}
			if c.pinned() {
				if got := pinnedLinkID(t, pin); got != linkID {
					t.Errorf("pinned link %d after the second process, want %d", got, linkID)
				}
			}
			in(t, p.B, func() error { return c.detach(a, "slb") })
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins after detach: %v", got)
			}
		})
	}
}
