package attach

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

// addIface creates the interface name in ns, up: one end of a veth pair
// whose other end, atkp<n>, is in ns too (the kernel here has no dummy
// driver). It returns the index of name; the namespace takes both ends
// with it when the test ends.
func addIface(t *testing.T, ns *testutil.NetNS, name string) int {
	t.Helper()
	peer := fmt.Sprintf("atkp%d", peers.Add(1))
	if err := ns.Veth(name, ns.NS, peer); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{peer, name} {
		if _, err := ns.LinkUp(n); err != nil {
			t.Fatal(err)
		}
	}
	l, err := ns.Handle.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

var peers atomic.Uint32

// foreignFilter adds a direct-action cls_bpf filter of another agent's to
// the ingress of ifname at handle and prio, creating the clsact qdisc if
// there is none; it runs inside the namespace.
func foreignFilter(ifname string, prog *ebpf.Program, name string, handle uint32, prio uint16) error {
	dev, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	if err := netlink.QdiscAdd(clsact(dev.Attrs().Index)); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return netlink.FilterAdd(&netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: dev.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: handle, Priority: prio, Protocol: unix.ETH_P_ALL},
		Fd: prog.FD(), Name: name, DirectAction: true,
	})
}

// TestAttackClosedProgram: a closed program is bad input on every hook: a
// wrapped ErrProgramType, and no qdisc, filter, link or pin left behind
// (the clsact fallback used to create the qdisc before the kernel refused
// the filter, and leave it, with its marker, for good).
func TestAttackClosedProgram(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	closed := func(typ ebpf.ProgramType) *ebpf.Program {
		p := passProg(t, typ)
		p.Close()
		return p
	}
	cases := []struct {
		name  string
		force func(*testing.T)
		run   func() error
	}{
		{"tcx", nil, func() error { _, err := a.AttachTC("atk0", Ingress, closed(ebpf.SchedCLS)); return err }},
		{"clsact", forceNoTCX, func() error { _, err := a.AttachTC("atk0", Ingress, closed(ebpf.SchedCLS)); return err }},
		{"xdp", nil, func() error { _, err := a.AttachXDP("atk0", closed(ebpf.XDP), XDPAuto); return err }},
		{"xdp-generic", forceNoNativeXDP, func() error { _, err := a.AttachXDP("atk0", closed(ebpf.XDP), XDPAuto); return err }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.force != nil {
				c.force(t)
			}
			var err error
			var state kernelState
			in(t, ns, func() (serr error) {
				err = c.run()
				state, serr = stateOf("atk0")
				return serr
			})
			if !errors.Is(err, ErrProgramType) {
				t.Errorf("error %v, want ErrProgramType", err)
			}
			if diff := cmp.Diff(kernelState{}, state); diff != "" {
				t.Errorf("kernel (-want +got):\n%s", diff)
			}
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins left: %v", got)
			}
		})
	}
	t.Run("cgroup", func(t *testing.T) {
		cg := testutil.TempCgroup(t)
		ch, _ := cgroupHookFor(ebpf.AttachCGroupInet4Connect)
		p := cgroupCountProg(t, ch, newCounters(t), 0)
		p.Close()
		if _, err := a.AttachCgroup(cg, ebpf.AttachCGroupInet4Connect, p); !errors.Is(err, ErrProgramType) {
			t.Errorf("error %v, want ErrProgramType", err)
		}
		if got := pins(t, pinDir); len(got) != 0 {
			t.Errorf("pins left: %v", got)
		}
	})
}

// TestAttackClsactForeignFilterAtOurHandle: another agent's filter that
// happens to sit at ClsactHandle and ClsactPriority, under a name of its
// own, is not this library's: AttachTC must not replace it, DetachTC must
// not delete it, and List must not report it.
func TestAttackClsactForeignFilterAtOurHandle(t *testing.T) {
	testutil.RequirePrivileged(t)
	forceNoTCX(t)
	ns := testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	a := open(t, testutil.TempBPFFS(t))
	foreign, ours := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.SchedCLS)
	var attachErr, detachErr error
	var list []Attachment
	var state kernelState
	in(t, ns, func() (err error) {
		if err := foreignFilter("atk0", foreign, "other-agent", ClsactHandle, ClsactPriority); err != nil {
			return err
		}
		_, attachErr = a.AttachTC("atk0", Ingress, ours)
		detachErr = a.DetachTC("atk0", Ingress)
		if list, err = a.List(); err != nil {
			return err
		}
		state, err = stateOf("atk0")
		return err
	})
	if !errors.Is(attachErr, ErrOccupied) {
		t.Errorf("AttachTC: %v, want ErrOccupied", attachErr)
	}
	if !errors.Is(detachErr, ErrNotAttached) {
		t.Errorf("DetachTC: %v, want ErrNotAttached", detachErr)
	}
	if len(list) != 0 {
		t.Errorf("List reports another agent's filter: %v", list)
	}
	want := kernelState{Clsact: true, FiltersIngress: []string{
		fmt.Sprintf("other-agent handle %#x prio %#x id %d", ClsactHandle, ClsactPriority, progID(t, foreign))}}
	if diff := cmp.Diff(want, state); diff != "" {
		t.Errorf("kernel (-want +got):\n%s", diff)
	}
}

// rename renames the interface from to to inside ns (down, rename, up).
func rename(t *testing.T, ns *testutil.NetNS, from, to string) {
	t.Helper()
	l, err := ns.Handle.LinkByName(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Handle.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	if err := ns.Handle.LinkSetName(l, to); err != nil {
		t.Fatalf("rename %s to %s: %v", from, to, err)
	}
	if err := ns.Handle.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// TestAttackRenamedInterface: the pin follows an interface that is
// renamed. Replacing the program of the interface under its new name
// updates the link in place (not a second program beside the first, and
// for XDP not an EBUSY), and a new interface taking the old name gets a
// link of its own without the renamed interface losing its program.
func TestAttackRenamedInterface(t *testing.T) {
	testutil.RequirePrivileged(t)
	type step struct {
		Old, New kernelState
		List     []string
	}
	for _, c := range []struct {
		name   string
		attach func(a *Attacher, ifname string, p *ebpf.Program) error
		typ    ebpf.ProgramType
		state  func(ids ...ebpf.ProgramID) kernelState
	}{
		{"tcx", func(a *Attacher, ifname string, p *ebpf.Program) error {
			_, err := a.AttachTC(ifname, Ingress, p)
			return err
		}, ebpf.SchedCLS, func(ids ...ebpf.ProgramID) kernelState { return kernelState{TCXIngress: ids} }},
		{"xdp", func(a *Attacher, ifname string, p *ebpf.Program) error {
			_, err := a.AttachXDP(ifname, p, XDPNative)
			return err
		}, ebpf.XDP, func(ids ...ebpf.ProgramID) kernelState {
			if len(ids) == 0 {
				return kernelState{}
			}
			return kernelState{XDP: ModeXDPNative, XDPProgram: ids[0]}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			addIface(t, ns, "atk0")
			pinDir := testutil.TempBPFFS(t)
			a := open(t, pinDir)
			p1, p2, p3 := passProg(t, c.typ), passProg(t, c.typ), passProg(t, c.typ)
			in(t, ns, func() error { return c.attach(a, "atk0", p1) })
			rename(t, ns, "atk0", "atk1")
			var listed []Attachment
			in(t, ns, func() (err error) { listed, err = a.List(); return err })
			if len(listed) != 1 || listed[0].Ifname != "atk1" || filepath.Base(listed[0].Pin) != listed[0].Hook.String()+"-atk1" {
				t.Errorf("List after the rename: %v, want the interface under its new name", listed)
			}

			var renamed, fresh kernelState
			var list []Attachment
			var errRenamed, errFresh error
			in(t, ns, func() (err error) {
				errRenamed = c.attach(a, "atk1", p2)
				if renamed, err = stateOf("atk1"); err != nil {
					return err
				}
				return nil
			})
			if errRenamed != nil {
				t.Errorf("replace on the renamed interface: %v", errRenamed)
			}
			if diff := cmp.Diff(c.state(progID(t, p2)), renamed); diff != "" {
				t.Errorf("renamed interface after the replace (-want +got):\n%s", diff)
			}

			// A detach under the old name, which no interface has now, is
			// not a detach of the renamed interface.
			in(t, ns, func() (err error) {
				if c.typ == ebpf.XDP {
					err = a.DetachXDP("atk0")
				} else {
					err = a.DetachTC("atk0", Ingress)
				}
				if !errors.Is(err, ErrNotAttached) && !errors.Is(err, ErrNoInterface) {
					t.Errorf("detach under the old name: %v, want ErrNotAttached or ErrNoInterface", err)
				}
				renamed, err = stateOf("atk1")
				return err
			})
			if diff := cmp.Diff(c.state(progID(t, p2)), renamed); diff != "" {
				t.Errorf("renamed interface after a detach under its old name (-want +got):\n%s", diff)
			}

			addIface(t, ns, "atk0")
			in(t, ns, func() (err error) {
				errFresh = c.attach(a, "atk0", p3)
				if renamed, err = stateOf("atk1"); err != nil {
					return err
				}
				if fresh, err = stateOf("atk0"); err != nil {
					return err
				}
				list, err = a.List()
				return err
			})
			if errFresh != nil {
				t.Errorf("attach to the new interface of the old name: %v", errFresh)
			}
			if diff := cmp.Diff(c.state(progID(t, p2)), renamed); diff != "" {
				t.Errorf("renamed interface after attaching to a new one of its old name (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(c.state(progID(t, p3)), fresh); diff != "" {
				t.Errorf("new interface (-want +got):\n%s", diff)
			}
			var got []string
			for _, at := range list {
				got = append(got, fmt.Sprintf("%s %s %d", at.Hook, at.Ifname, at.Program))
			}
			h := HookTCIngress
			if c.typ == ebpf.XDP {
				h = HookXDP
			}
			want := []string{fmt.Sprintf("%s atk0 %d", h, progID(t, p3)), fmt.Sprintf("%s atk1 %d", h, progID(t, p2))}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("List (-want +got):\n%s", diff)
			}
			in(t, ns, func() error {
				for _, ifname := range []string{"atk0", "atk1"} {
					var err error
					if c.typ == ebpf.XDP {
						err = a.DetachXDP(ifname)
					} else {
						err = a.DetachTC(ifname, Ingress)
					}
					if err != nil {
						t.Errorf("detach %s: %v", ifname, err)
					}
				}
				return nil
			})
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins left: %v", got)
			}
		})
	}
}

// TestAttackDetachNameTraversal: an interface name with "/" and ".." is
// refused before it goes into a pin path: it must not reach the pins of
// another Attacher (here one on a sibling pin directory) and detach its
// links.
func TestAttackDetachNameTraversal(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	root := testutil.TempBPFFS(t)
	for _, d := range []string{"a", "b"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	a, b := open(t, filepath.Join(root, "a")), open(t, filepath.Join(root, "b"))
	tc, xdp := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.XDP)
	var tcErr, xdpErr error
	var state kernelState
	in(t, ns, func() (err error) {
		if _, err := b.AttachTC("atk0", Ingress, tc); err != nil {
			return err
		}
		if _, err := b.AttachXDP("atk0", xdp, XDPAuto); err != nil {
			return err
		}
		tcErr = a.DetachTC("x/../../../b/links/tc-ingress-atk0", Ingress)
		xdpErr = a.DetachXDP("x/../../../b/links/xdp-atk0")
		state, err = stateOf("atk0")
		return err
	})
	for _, e := range []error{tcErr, xdpErr} {
		if !errors.Is(e, ErrNoInterface) {
			t.Errorf("detach through a traversing name: %v, want ErrNoInterface", e)
		}
	}
	want := kernelState{TCXIngress: []ebpf.ProgramID{progID(t, tc)}, XDP: ModeXDPNative, XDPProgram: progID(t, xdp)}
	if diff := cmp.Diff(want, state); diff != "" {
		t.Errorf("other Attacher's hooks (-want +got):\n%s", diff)
	}
	in(t, ns, func() error {
		if err := b.DetachTC("atk0", Ingress); err != nil {
			return err
		}
		return b.DetachXDP("atk0")
	})
}

// TestAttackQdiscMarkerOfGoneInterface: the record that this library made
// an interface's clsact qdisc dies with the interface. An interface
// deleted without DetachTC and made again under the same name, whose
// clsact qdisc another agent then adds, keeps that qdisc when our filter
// on it is detached.
func TestAttackQdiscMarkerOfGoneInterface(t *testing.T) {
	testutil.RequirePrivileged(t)
	forceNoTCX(t)
	ns := testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	p := passProg(t, ebpf.SchedCLS)
	in(t, ns, func() error { _, err := a.AttachTC("atk0", Ingress, p); return err })
	if err := ns.DeleteLink("atk0"); err != nil {
		t.Fatal(err)
	}
	idx := addIface(t, ns, "atk0")
	var state kernelState
	in(t, ns, func() (err error) {
		if err := netlink.QdiscAdd(clsact(idx)); err != nil {
			return fmt.Errorf("another agent's qdisc: %w", err)
		}
		if _, err := a.AttachTC("atk0", Ingress, p); err != nil {
			return err
		}
		if err := a.DetachTC("atk0", Ingress); err != nil {
			return err
		}
		state, err = stateOf("atk0")
		return err
	})
	if diff := cmp.Diff(kernelState{Clsact: true}, state); diff != "" {
		t.Errorf("kernel (-want +got):\n%s", diff)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins left: %v", got)
	}
}

// TestAttackStrayPin: a pin under links/ that holds no TC or XDP link (a
// map an embedder pinned there by mistake) does not stop attaching to
// another interface, which looks through the pins for one that followed
// a rename.
func TestAttackStrayPin(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	stray := newCounters(t)
	for _, name := range []string{"tc-ingress-junk0", "xdp-junk0"} {
		path := filepath.Join(pinDir, linksDir, name)
		if err := stray.Pin(path); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(path) })
	}
	in(t, ns, func() error {
		if _, err := a.AttachTC("atk0", Ingress, passProg(t, ebpf.SchedCLS)); err != nil {
			return err
		}
		if _, err := a.AttachXDP("atk0", passProg(t, ebpf.XDP), XDPAuto); err != nil {
			return err
		}
		if err := a.DetachTC("atk0", Ingress); err != nil {
			return err
		}
		return a.DetachXDP("atk0")
	})
}

// TestAttackClsactTwoPinDirs: two agents built on this library, each with
// a pin directory of its own, in one network namespace without TCX. The
// clsact filter one attached is not the other's: the second's AttachTC
// fails with ErrOccupied instead of swapping the first's program for its
// own, its List does not report it, and its DetachTC does not delete it.
func TestAttackClsactTwoPinDirs(t *testing.T) {
	testutil.RequirePrivileged(t)
	forceNoTCX(t)
	ns := testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	pinA, pinB := testutil.TempBPFFS(t), testutil.TempBPFFS(t)
	a, b := open(t, pinA), open(t, pinB)
	pa, pb := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.SchedCLS)
	var attachErr, detachErr error
	var listA, listB []Attachment
	var state kernelState
	in(t, ns, func() (err error) {
		if _, err := a.AttachTC("atk0", Ingress, pa); err != nil {
			return err
		}
		_, attachErr = b.AttachTC("atk0", Ingress, pb)
		if listB, err = b.List(); err != nil {
			return err
		}
		detachErr = b.DetachTC("atk0", Ingress)
		if listA, err = a.List(); err != nil {
			return err
		}
		state, err = stateOf("atk0")
		return err
	})
	if !errors.Is(attachErr, ErrOccupied) {
		t.Errorf("second agent's AttachTC: %v, want ErrOccupied", attachErr)
	}
	if !errors.Is(detachErr, ErrNotAttached) {
		t.Errorf("second agent's DetachTC: %v, want ErrNotAttached", detachErr)
	}
	if len(listB) != 0 {
		t.Errorf("second agent's List: %v", listB)
	}
	if len(listA) != 1 || listA[0].Program != progID(t, pa) {
		t.Errorf("first agent's List: %v, want its filter of program %d", listA, progID(t, pa))
	}
	want := kernelState{Clsact: true, FiltersIngress: []string{filterDesc("pass", progID(t, pa))}}
	if diff := cmp.Diff(want, state); diff != "" {
		t.Errorf("kernel (-want +got):\n%s", diff)
	}
	in(t, ns, func() error { return a.DetachTC("atk0", Ingress) })
	for _, dir := range []string{pinA, pinB} {
		if got := pins(t, dir); len(got) != 0 {
			t.Errorf("pins left in %s: %v", dir, got)
		}
	}
}

// TestAttackRenamedInterfaceClsact: without TCX, the filter and qdisc of
// an interface that was renamed stay this Attacher's: a replace under the
// new name swaps the program in place, and a detach under it removes the
// filter and the qdisc this library made.
func TestAttackRenamedInterfaceClsact(t *testing.T) {
	testutil.RequirePrivileged(t)
	forceNoTCX(t)
	ns := testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	p1, p2 := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.SchedCLS)
	in(t, ns, func() error { _, err := a.AttachTC("atk0", Ingress, p1); return err })
	rename(t, ns, "atk0", "atk1")
	var replaced, detached kernelState
	in(t, ns, func() (err error) {
		if _, err := a.AttachTC("atk1", Ingress, p2); err != nil {
			return err
		}
		if replaced, err = stateOf("atk1"); err != nil {
			return err
		}
		if err := a.DetachTC("atk1", Ingress); err != nil {
			return err
		}
		detached, err = stateOf("atk1")
		return err
	})
	want := kernelState{Clsact: true, FiltersIngress: []string{filterDesc("pass", progID(t, p2))}}
	if diff := cmp.Diff(want, replaced); diff != "" {
		t.Errorf("after the replace (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(kernelState{}, detached); diff != "" {
		t.Errorf("after the detach (-want +got):\n%s", diff)
	}
	if got := pins(t, pinDir); len(got) != 0 {
		t.Errorf("pins left: %v", got)
	}
}

// TestAttackInterfaceMovedAway: an interface moved to another network
// namespace, with our TCX link on it, leaves a pin this namespace's
// Attacher cannot follow; a new interface of its name is still attached
// to afresh.
func TestAttackInterfaceMovedAway(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns, other := testutil.NewNetNS(t), testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	a := open(t, testutil.TempBPFFS(t))
	p1, p2 := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.SchedCLS)
	in(t, ns, func() error { _, err := a.AttachTC("atk0", Ingress, p1); return err })
	dev, err := ns.Handle.LinkByName("atk0")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open("/run/netns/"+other.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := ns.Handle.LinkSetNsFd(dev, fd); err != nil {
		t.Fatal(err)
	}
	addIface(t, ns, "atk0")
	var state kernelState
	in(t, ns, func() (err error) {
		if _, err := a.AttachTC("atk0", Ingress, p2); err != nil {
			return err
		}
		state, err = stateOf("atk0")
		return err
	})
	if diff := cmp.Diff(kernelState{TCXIngress: []ebpf.ProgramID{progID(t, p2)}}, state); diff != "" {
		t.Errorf("new interface (-want +got):\n%s", diff)
	}
	in(t, ns, func() error { return a.DetachTC("atk0", Ingress) })
}

// TestAttackTCXKeepsOtherPinDirsFilter: an agent on TCX does not take the
// clsact filter of an agent with another pin directory for a leftover of
// its own: attaching through TCX, which removes our filter of an earlier
// clsact attachment, leaves the other agent's filter in place.
func TestAttackTCXKeepsOtherPinDirsFilter(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := testutil.NewNetNS(t)
	addIface(t, ns, "atk0")
	a, b := open(t, testutil.TempBPFFS(t)), open(t, testutil.TempBPFFS(t))
	pa, pb := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.SchedCLS)
	orig := kernel.attachTCX
	forceNoTCX(t)
	in(t, ns, func() error { _, err := a.AttachTC("atk0", Ingress, pa); return err })
	kernel.attachTCX = orig
	var state kernelState
	in(t, ns, func() (err error) {
		if _, err := b.AttachTC("atk0", Ingress, pb); err != nil {
			return err
		}
		state, err = stateOf("atk0")
		return err
	})
	want := kernelState{TCXIngress: []ebpf.ProgramID{progID(t, pb)}, Clsact: true,
		FiltersIngress: []string{filterDesc("pass", progID(t, pa))}}
	if diff := cmp.Diff(want, state); diff != "" {
		t.Errorf("kernel (-want +got):\n%s", diff)
	}
	in(t, ns, func() error {
		if err := b.DetachTC("atk0", Ingress); err != nil {
			return err
		}
		return a.DetachTC("atk0", Ingress)
	})
}

// TestAttackPinDirSharedAcrossNetNS: one pin directory used from two
// network namespaces (against the package doc's advice) whose interfaces
// of one name have one index, as new namespaces' interfaces often do. The
// second namespace's attach must not replace the program the first
// attached: it fails with ErrOccupied and the first keeps its program.
func TestAttackPinDirSharedAcrossNetNS(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, c := range []struct {
		name   string
		typ    ebpf.ProgramType
		attach func(a *Attacher, p *ebpf.Program) error
		state  func(id ebpf.ProgramID) kernelState
	}{
		{"tcx", ebpf.SchedCLS, func(a *Attacher, p *ebpf.Program) error { _, err := a.AttachTC("atk0", Ingress, p); return err },
			func(id ebpf.ProgramID) kernelState { return kernelState{TCXIngress: []ebpf.ProgramID{id}} }},
		{"xdp", ebpf.XDP, func(a *Attacher, p *ebpf.Program) error { _, err := a.AttachXDP("atk0", p, XDPAuto); return err },
			func(id ebpf.ProgramID) kernelState { return kernelState{XDP: ModeXDPNative, XDPProgram: id} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns1, ns2 := testutil.NewNetNS(t), testutil.NewNetNS(t)
			i1, i2 := addIface(t, ns1, "atk0"), addIface(t, ns2, "atk0")
			if i1 != i2 {
				t.Skipf("interfaces got indexes %d and %d", i1, i2)
			}
			a := open(t, testutil.TempBPFFS(t))
			p1, p2 := passProg(t, c.typ), passProg(t, c.typ)
			in(t, ns1, func() error { return c.attach(a, p1) })
			var err2 error
			var s1, s2 kernelState
			in(t, ns2, func() (err error) {
				err2 = c.attach(a, p2)
				s2, err = stateOf("atk0")
				return err
			})
			in(t, ns1, func() (err error) { s1, err = stateOf("atk0"); return err })
			if !errors.Is(err2, ErrOccupied) {
				t.Errorf("attach from the second namespace: %v, want ErrOccupied", err2)
			}
			if diff := cmp.Diff(c.state(progID(t, p1)), s1); diff != "" {
				t.Errorf("first namespace (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(kernelState{}, s2); diff != "" {
				t.Errorf("second namespace (-want +got):\n%s", diff)
			}
			in(t, ns1, func() error {
				if c.typ == ebpf.XDP {
					return a.DetachXDP("atk0")
				}
				return a.DetachTC("atk0", Ingress)
			})
		})
	}
}
