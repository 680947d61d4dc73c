package attach

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestClsactToTCX: a hook attached through clsact on a kernel without TCX
// moves to TCX when the kernel has it (after an upgrade), under traffic
// without a lost packet; the filter goes at once, the qdisc this library
// created (deleting it would deactivate the device for a moment) when the
// hook is detached.
func TestClsactToTCX(t *testing.T) {
	testutil.RequirePrivileged(t)
	p := newPair(t)
	pinDir := testutil.TempBPFFS(t)
	srv := p.echo(t)
	counters := newCounters(t)
	old, upgraded := countProg(t, ebpf.SchedCLS, counters, 0), countProg(t, ebpf.SchedCLS, counters, 1)

	t.Run("without-tcx", func(t *testing.T) {
		forceNoTCX(t)
		a := open(t, pinDir)
		var at Attachment
		in(t, p.B, func() (err error) { at, err = a.AttachTC("slb", Ingress, old); return })
		if at.Mode != ModeClsact {
			t.Fatalf("mode %s, want clsact", at.Mode)
		}
	})

	// Migrate once the old program has seen traffic, and stop the traffic
	// once the new one has too.
	traffic := startFlow(p.A.ListenPacket(t, "udp4", "10.0.0.1:0"), srv)
	traffic.waitCount(t, counters, 0, 50)
	a := open(t, pinDir)
	var at Attachment
	var state kernelState
	in(t, p.B, func() (err error) {
		if at, err = a.AttachTC("slb", Ingress, upgraded); err != nil {
			return err
		}
		state, err = stateOf("slb")
		return err
	})
	traffic.waitCount(t, counters, 1, 50)
	answered, err := traffic.end()
	if err != nil {
		t.Fatalf("after %d answered: %v", answered, err)
	}
	if got := counts(t, counters); sum(got) != uint64(answered) {
		t.Errorf("programs counted %v, want %d in all", got[:2], answered)
	}
	want := Attachment{Hook: HookTCIngress, Ifname: "slb", Ifindex: p.VB.Index, Mode: ModeTCX,
		Program: progID(t, upgraded), Pin: filepath.Join(pinDir, linksDir, "tc-ingress-slb")}
	if diff := cmp.Diff(want, at); diff != "" {
		t.Errorf("attachment (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(kernelState{TCXIngress: []ebpf.ProgramID{want.Program}, Clsact: true}, state); diff != "" {
		t.Errorf("kernel (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"links/tc-ingress-slb", fmt.Sprintf("qdiscs/clsact-slb-%d", p.VB.Index)}, pins(t, pinDir)); diff != "" {
		t.Errorf("pins (-want +got):\n%s", diff)
	}

	in(t, p.B, func() (err error) {
		if err = a.DetachTC("slb", Ingress); err != nil {
			return err
		}
		state, err = stateOf("slb")
		return err
	})
	if diff := cmp.Diff(kernelState{}, state); diff != "" {
		t.Errorf("kernel after detach (-want +got):\n%s", diff)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins after detach: %v", got)
	}
}

// TestForeignTC: another agent's clsact qdisc, its filter and its TCX
// program on the same interface are neither listed nor removed.
func TestForeignTC(t *testing.T) {
	testutil.RequirePrivileged(t)
	p := newPair(t)
	pinDir := testutil.TempBPFFS(t)
	foreign, ours := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.SchedCLS)
	foreignFilter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: p.VB.Index, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
		Fd: foreign.FD(), Name: "other-agent", DirectAction: true}
	in(t, p.B, func() error {
		if err := netlink.QdiscAdd(clsact(p.VB.Index)); err != nil {
			return err
		}
		if err := netlink.FilterAdd(foreignFilter); err != nil {
			return err
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: p.VB.Index, Program: foreign, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	})
	foreignDesc := fmt.Sprintf("other-agent handle 0x1 prio 0x1 id %d", progID(t, foreign))

	for _, force := range []bool{false, true} {
		name := "tcx"
		if force {
			name = "clsact"
		}
		t.Run(name, func(t *testing.T) {
			if force {
				forceNoTCX(t)
			}
			a := open(t, pinDir)
			var list []Attachment
			var state kernelState
			in(t, p.B, func() (err error) {
				for _, d := range []Direction{Ingress, Egress} {
					if _, err = a.AttachTC("slb", d, ours); err != nil {
						return err
					}
				}
				if list, err = a.List(); err != nil {
					return err
				}
				for _, d := range []Direction{Ingress, Egress} {
					if err = a.DetachTC("slb", d); err != nil {
						return err
					}
				}
				state, err = stateOf("slb")
				return err
			})
			if len(list) != 2 || list[0].Program != progID(t, ours) || list[1].Program != progID(t, ours) {
				t.Errorf("list: %+v, want our two attachments only", list)
			}
			want := kernelState{TCXEgress: []ebpf.ProgramID{progID(t, foreign)}, Clsact: true,
				FiltersIngress: []string{foreignDesc}}
			if diff := cmp.Diff(want, state); diff != "" {
				t.Errorf("kernel after detach (-want +got):\n%s", diff)
			}
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins after detach: %v", got)
			}
		})
	}
}

// TestStalePin: when the interface a pinned link was bound to is deleted
// and another of the same name appears, AttachTC and AttachXDP drop the
// defunct link and attach afresh to the new interface.
func TestStalePin(t *testing.T) {
	testutil.RequirePrivileged(t)
	p := newPair(t)
	pinDir := testutil.TempBPFFS(t)
	tc, xdp := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.XDP)
	a := open(t, pinDir)
	in(t, p.B, func() error {
		if _, err := a.AttachTC("slb", Ingress, tc); err != nil {
			return err
		}
		_, err := a.AttachXDP("slb", xdp, XDPAuto)
		return err
	})
	if err := p.A.DeleteLink("sla"); err != nil {
		t.Fatal(err)
	}
	var list []Attachment
	in(t, p.B, func() (err error) { list, err = a.List(); return })
	wantDefunct := []Attachment{
		{Hook: HookTCIngress, Ifname: "slb", Mode: ModeTCX, Program: progID(t, tc), Pin: filepath.Join(pinDir, linksDir, "tc-ingress-slb")},
		{Hook: HookXDP, Ifname: "slb", Program: progID(t, xdp), Pin: filepath.Join(pinDir, linksDir, "xdp-slb")},
	}
	if diff := cmp.Diff(wantDefunct, list); diff != "" {
		t.Errorf("list of defunct links (-want +got):\n%s", diff)
	}

	_, vb := testutil.ConnectVeth(t, p.A, "sla", netip.MustParsePrefix("10.0.0.1/24"), p.B, "slb", netip.MustParsePrefix("10.0.0.2/24"))
	var state kernelState
	in(t, p.B, func() (err error) {
		if _, err = a.AttachTC("slb", Ingress, tc); err != nil {
			return err
		}
		if _, err = a.AttachXDP("slb", xdp, XDPAuto); err != nil {
			return err
		}
		if list, err = a.List(); err != nil {
			return err
		}
		state, err = stateOf("slb")
		return err
	})
	for i := range wantDefunct {
		wantDefunct[i].Ifindex = vb.Index
	}
	wantDefunct[1].Mode = ModeXDPNative
	if diff := cmp.Diff(wantDefunct, list); diff != "" {
		t.Errorf("list after re-attach (-want +got):\n%s", diff)
	}
	want := kernelState{TCXIngress: []ebpf.ProgramID{progID(t, tc)}, XDP: ModeXDPNative, XDPProgram: progID(t, xdp)}
	if diff := cmp.Diff(want, state); diff != "" {
		t.Errorf("kernel (-want +got):\n%s", diff)
	}
	in(t, p.B, func() error {
		if err := a.DetachTC("slb", Ingress); err != nil {
			return err
		}
		return a.DetachXDP("slb")
	})
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins after detach: %v", got)
	}
}

// TestTCXPosition: First and Last put our program before or after another
// agent's TCX program on the same hook, a replace keeps it where its link
// is, and the clsact fallback refuses a position with ErrPosition,
// changing nothing.
func TestTCXPosition(t *testing.T) {
	testutil.RequirePrivileged(t)
	p := newPair(t)
	pinDir := testutil.TempBPFFS(t)
	foreign, ours, again := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.SchedCLS), passProg(t, ebpf.SchedCLS)
	in(t, p.B, func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: p.VB.Index, Program: foreign, Attach: at})
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
		}
		return nil
	})
	f, o, g := progID(t, foreign), progID(t, ours), progID(t, again)
	a := open(t, pinDir)
	steps := []struct {
		name string
		dir  Direction
		prog *ebpf.Program
		opts []TCOption
		want kernelState
	}{
		{"ingress-first", Ingress, ours, []TCOption{First},
			kernelState{TCXIngress: []ebpf.ProgramID{o, f}, TCXEgress: []ebpf.ProgramID{f}}},
		{"egress-last", Egress, ours, []TCOption{Last},
			kernelState{TCXIngress: []ebpf.ProgramID{o, f}, TCXEgress: []ebpf.ProgramID{f, o}}},
		{"ingress-replace-keeps-first", Ingress, again, []TCOption{Last},
			kernelState{TCXIngress: []ebpf.ProgramID{g, f}, TCXEgress: []ebpf.ProgramID{f, o}}},
		{"egress-default-option", Egress, again, []TCOption{nil},
			kernelState{TCXIngress: []ebpf.ProgramID{g, f}, TCXEgress: []ebpf.ProgramID{f, g}}},
	}
	for _, s := range steps {
		var state kernelState
		in(t, p.B, func() (err error) {
			if _, err = a.AttachTC("slb", s.dir, s.prog, s.opts...); err != nil {
				return err
			}
			state, err = stateOf("slb")
			return err
		})
		if diff := cmp.Diff(s.want, state); diff != "" {
			t.Errorf("%s: kernel (-want +got):\n%s", s.name, diff)
		}
	}
	in(t, p.B, func() error {
		for _, d := range []Direction{Ingress, Egress} {
			if err := a.DetachTC("slb", d); err != nil {
				return err
			}
		}
		return nil
	})

	var bad error
	in(t, p.B, func() error { _, bad = a.AttachTC("slb", Ingress, ours, Position(9)); return nil })
	if bad == nil || !strings.Contains(bad.Error(), "invalid position") {
		t.Errorf("Position(9): %v, want an invalid position", bad)
	}

	t.Run("clsact", func(t *testing.T) {
		forceNoTCX(t)
		for _, pos := range []Position{First, Last} {
			var err error
			var state kernelState
			in(t, p.B, func() (serr error) {
				_, err = a.AttachTC("slb", Ingress, ours, pos)
				state, serr = stateOf("slb")
				return serr
			})
			if !errors.Is(err, ErrPosition) {
				t.Errorf("%s: %v, want ErrPosition", pos, err)
			}
			want := kernelState{TCXIngress: []ebpf.ProgramID{f}, TCXEgress: []ebpf.ProgramID{f}}
			if diff := cmp.Diff(want, state); diff != "" {
				t.Errorf("%s: kernel (-want +got):\n%s", pos, diff)
			}
		}
	})
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins left: %v", got)
	}
}
