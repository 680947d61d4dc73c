package attach

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/internal/testutil"
)

// addIface creates the interface name in ns, up: one end of a veth pair
// whose other end, name+"p", is in ns too (the kernel here has no dummy
// driver). It returns the index of name; the namespace takes both ends
// with it when the test ends.
func addIface(t *testing.T, ns *testutil.NetNS, name string) int {
	t.Helper()
	if err := ns.Veth(name, ns.NS, name+"p"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{name + "p", name} {
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
