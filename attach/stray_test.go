package attach

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestNilAttacher: every method of a nil *Attacher returns ErrNilAttacher
// (wrapped), none panics.
func TestNilAttacher(t *testing.T) {
	var a *Attacher
	for name, call := range map[string]func() error{
		"AttachTC":  func() error { _, err := a.AttachTC("lo", Ingress, nil); return err },
		"DetachTC":  func() error { return a.DetachTC("lo", Ingress) },
		"AttachXDP": func() error { _, err := a.AttachXDP("lo", nil, XDPAuto); return err },
		"DetachXDP": func() error { return a.DetachXDP("lo") },
		"AttachCgroup": func() error {
			_, err := a.AttachCgroup("/sys/fs/cgroup", ebpf.AttachCGroupInet4Connect, nil)
			return err
		},
		"DetachCgroup": func() error { return a.DetachCgroup("/sys/fs/cgroup", ebpf.AttachCGroupInet4Connect) },
		"List":         func() error { _, err := a.List(); return err },
	} {
		if err := call(); !errors.Is(err, ErrNilAttacher) {
			t.Errorf("%s on a nil Attacher: %v, want ErrNilAttacher", name, err)
		}
	}
	if got := a.PinDir(); got != "" {
		t.Errorf("PinDir of a nil Attacher = %q", got)
	}
}

// TestStrayPin: a map and a program pinned under links/ with the names of
// a TC and a cgroup link are not attachments: List leaves them out and
// still reports the real link, and attaching at the map's name fails with
// ErrOccupied, leaving the map's pin alone.
func TestStrayPin(t *testing.T) {
	testutil.RequirePrivileged(t)
	p := newPair(t)
	pinDir := testutil.TempBPFFS(t)
	tc := passProg(t, ebpf.SchedCLS)
	a := open(t, pinDir)
	in(t, p.B, func() error { _, err := a.AttachTC("slb", Ingress, tc); return err })

	stray, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer stray.Close()
	mapPin := filepath.Join(pinDir, linksDir, "tc-egress-slb")
	if err := stray.Pin(mapPin); err != nil {
		t.Fatal(err)
	}
	progPin := filepath.Join(pinDir, linksDir, "cgroup-connect4-%2Fsys%2Ffs%2Fcgroup%2Fnowhere")
	if err := passProg(t, ebpf.SchedCLS).Pin(progPin); err != nil {
		t.Fatal(err)
	}

	var list []Attachment
	in(t, p.B, func() (err error) { list, err = a.List(); return })
	want := []Attachment{{Hook: HookTCIngress, Ifname: "slb", Ifindex: p.VB.Index, Mode: ModeTCX,
		Program: progID(t, tc), Pin: filepath.Join(pinDir, linksDir, "tc-ingress-slb")}}
	if diff := cmp.Diff(want, list); diff != "" {
		t.Errorf("list with stray pins (-want +got):\n%s", diff)
	}
	var attachErr error
	in(t, p.B, func() error { _, attachErr = a.AttachTC("slb", Egress, tc); return nil })
	if !errors.Is(attachErr, ErrOccupied) {
		t.Errorf("attach over a pinned map: %v, want ErrOccupied", attachErr)
	}
	if m, err := ebpf.LoadPinnedMap(mapPin, nil); err != nil {
		t.Errorf("the stray map's pin is gone: %v", err)
	} else {
		m.Close()
	}
	in(t, p.B, func() error { return a.DetachTC("slb", Ingress) })
}
