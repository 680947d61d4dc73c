package attach

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestAttackForeignXDP: another agent's XDP program on the interface,
// attached through netlink or through a link of its own in either mode,
// is never replaced, detached or listed: AttachXDP fails in every mode
// with ErrOccupied (XDPAuto does not go on to generic mode past it),
// DetachXDP finds nothing of ours, and the program stays in force.
func TestAttackForeignXDP(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, c := range []struct {
		name    string
		attach  func(t *testing.T, ifindex int, p *ebpf.Program) (link.Link, error)
		inForce Mode
	}{
		{"netlink-native", func(t *testing.T, ifindex int, p *ebpf.Program) (link.Link, error) {
			dev, err := netlink.LinkByIndex(ifindex)
			if err != nil {
				return nil, err
			}
			return nil, netlink.LinkSetXdpFdWithFlags(dev, p.FD(), nl.XDP_FLAGS_DRV_MODE)
		}, ModeXDPNative},
		{"netlink-generic", func(t *testing.T, ifindex int, p *ebpf.Program) (link.Link, error) {
			dev, err := netlink.LinkByIndex(ifindex)
			if err != nil {
				return nil, err
			}
			return nil, netlink.LinkSetXdpFdWithFlags(dev, p.FD(), nl.XDP_FLAGS_SKB_MODE)
		}, ModeXDPGeneric},
		{"link-native", func(t *testing.T, ifindex int, p *ebpf.Program) (link.Link, error) {
			return link.AttachXDP(link.XDPOptions{Program: p, Interface: ifindex, Flags: link.XDPDriverMode})
		}, ModeXDPNative},
		{"link-generic", func(t *testing.T, ifindex int, p *ebpf.Program) (link.Link, error) {
			return link.AttachXDP(link.XDPOptions{Program: p, Interface: ifindex, Flags: link.XDPGenericMode})
		}, ModeXDPGeneric},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			idx := addIface(t, ns, "atk0")
			pinDir := testutil.TempBPFFS(t)
			a := open(t, pinDir)
			foreign, ours := passProg(t, ebpf.XDP), passProg(t, ebpf.XDP)
			var attachErrs []error
			var detachErr error
			var list []Attachment
			var state kernelState
			in(t, ns, func() (err error) {
				l, err := c.attach(t, idx, foreign)
				if err != nil {
					return err
				}
				if l != nil {
					defer l.Close()
				}
				for _, m := range []XDPMode{XDPAuto, XDPNative, XDPGeneric} {
					_, err := a.AttachXDP("atk0", ours, m)
					attachErrs = append(attachErrs, err)
				}
				detachErr = a.DetachXDP("atk0")
				if list, err = a.List(); err != nil {
					return err
				}
				state, err = stateOf("atk0")
				return err
			})
			for i, err := range attachErrs {
				if !errors.Is(err, ErrOccupied) {
					t.Errorf("AttachXDP (%s) over another agent's program: %v, want ErrOccupied", XDPMode(i), err)
				}
			}
			if !errors.Is(detachErr, ErrNotAttached) {
				t.Errorf("DetachXDP: %v, want ErrNotAttached", detachErr)
			}
			if len(list) != 0 {
				t.Errorf("List: %v", list)
			}
			if diff := cmp.Diff(kernelState{XDP: c.inForce, XDPProgram: progID(t, foreign)}, state); diff != "" {
				t.Errorf("kernel (-want +got):\n%s", diff)
			}
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins left: %v", got)
			}
		})
	}
}

// TestAttackForeignCgroupLink: another agent's cgroup link on the same
// cgroup and hook keeps running beside ours, is not listed, and outlives
// our detach.
func TestAttackForeignCgroupLink(t *testing.T) {
	testutil.RequirePrivileged(t)
	cg := testutil.TempCgroup(t)
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	counters := newCounters(t)
	foreign, ours := cgroupCountProg(t, ch, counters, 0), cgroupCountProg(t, ch, counters, 1)
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ch.attach, Program: foreign})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	if _, err := a.AttachCgroup(cg, ch.attach, ours); err != nil {
		t.Fatal(err)
	}
	list, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Program != progID(t, ours) {
		t.Errorf("List: %v, want only our program %d", list, progID(t, ours))
	}
	if diff := cmp.Diff([]ebpf.ProgramID{progID(t, foreign), progID(t, ours)}, cgroupProgs(t, cg, ch.attach)); diff != "" {
		t.Errorf("programs (-want +got):\n%s", diff)
	}
	if err := a.DetachCgroup(cg, ch.attach); err != nil {
		t.Fatal(err)
	}
	if err := a.DetachCgroup(cg, ch.attach); !errors.Is(err, ErrNotAttached) {
		t.Errorf("second DetachCgroup: %v, want ErrNotAttached", err)
	}
	if diff := cmp.Diff([]ebpf.ProgramID{progID(t, foreign)}, cgroupProgs(t, cg, ch.attach)); diff != "" {
		t.Errorf("programs after detach (-want +got):\n%s", diff)
	}
}

// TestAttackCgroupV1: a cgroup v1 hierarchy is refused with ErrNoCgroup2
// before anything is attached (and nothing is written there).
func TestAttackCgroupV1(t *testing.T) {
	testutil.RequirePrivileged(t)
	v1 := ""
	for _, m := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/systemd"} {
		if isCgroupV1(m) {
			v1 = m
			break
		}
	}
	if v1 == "" {
		t.Skip("no cgroup v1 hierarchy mounted")
	}
	ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	if _, err := a.AttachCgroup(v1, ch.attach, cgroupCountProg(t, ch, newCounters(t), 0)); !errors.Is(err, ErrNoCgroup2) {
		t.Errorf("AttachCgroup(%s): %v, want ErrNoCgroup2", v1, err)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins left: %v", got)
	}
}

func isCgroupV1(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC
}
