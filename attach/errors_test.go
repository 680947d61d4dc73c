package attach

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/internal/testutil"
)

// TestOpenErrors: a pin directory off bpffs is refused with ErrNoBPFFS.
func TestOpenErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		dir  string
	}{
		{"tmpfs-or-disk", t.TempDir()},
		{"missing", filepath.Join(t.TempDir(), "missing")},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Open(c.dir); !errors.Is(err, ErrNoBPFFS) {
				t.Errorf("Open(%s): %v, want ErrNoBPFFS", c.dir, err)
			}
		})
	}
}

// TestAttachErrors: bad input gets a wrapped sentinel error and leaves
// nothing attached or pinned.
func TestAttachErrors(t *testing.T) {
	testutil.RequirePrivileged(t)
	p := newPair(t)
	pinDir := testutil.TempBPFFS(t)
	a := open(t, pinDir)
	tc, xdp := passProg(t, ebpf.SchedCLS), passProg(t, ebpf.XDP)
	cases := []struct {
		name  string
		force func(*testing.T)
		run   func() error
		want  error
	}{
		{name: "tc-no-interface", want: ErrNoInterface,
			run: func() error { _, err := a.AttachTC("nosuch0", Ingress, tc); return err }},
		{name: "tc-bad-name", want: ErrNoInterface,
			run: func() error { _, err := a.AttachTC("../x", Ingress, tc); return err }},
		{name: "xdp-no-interface", want: ErrNoInterface,
			run: func() error { _, err := a.AttachXDP("nosuch0", xdp, XDPAuto); return err }},
		{name: "tc-xdp-program", want: ErrProgramType,
			run: func() error { _, err := a.AttachTC("slb", Egress, xdp); return err }},
		{name: "tc-nil-program", want: ErrProgramType,
			run: func() error { _, err := a.AttachTC("slb", Egress, nil); return err }},
		{name: "clsact-xdp-program", force: forceNoTCX, want: ErrProgramType,
			run: func() error { _, err := a.AttachTC("slb", Ingress, xdp); return err }},
		{name: "xdp-tc-program", want: ErrProgramType,
			run: func() error { _, err := a.AttachXDP("slb", tc, XDPAuto); return err }},
		{name: "detach-tc-nothing", want: ErrNotAttached,
			run: func() error { return a.DetachTC("slb", Ingress) }},
		{name: "detach-tc-no-interface", want: ErrNoInterface,
			run: func() error { return a.DetachTC("nosuch0", Ingress) }},
		{name: "detach-xdp-nothing", want: ErrNotAttached,
			run: func() error { return a.DetachXDP("slb") }},
		{name: "xdp-native-refused", force: forceNoNativeXDP, want: errNative,
			run: func() error { _, err := a.AttachXDP("slb", xdp, XDPNative); return err }},
		{name: "xdp-mode-mismatch", want: ErrModeMismatch, run: func() error {
			if _, err := a.AttachXDP("slb", xdp, XDPNative); err != nil {
				return err
			}
			defer a.DetachXDP("slb")
			_, err := a.AttachXDP("slb", xdp, XDPGeneric)
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.force != nil {
				c.force(t)
			}
			var err error
			var list []Attachment
			var state kernelState
			in(t, p.B, func() (lerr error) {
				err = c.run()
				if list, lerr = a.List(); lerr != nil {
					return lerr
				}
				state, lerr = stateOf("slb")
				return lerr
			})
			if c.want == errNative {
				if err == nil || errors.Is(err, ErrModeMismatch) {
					t.Errorf("error %v, want the refusal of native mode", err)
				}
			} else if !errors.Is(err, c.want) {
				t.Errorf("error %v, want %v", err, c.want)
			}
			if len(list) != 0 {
				t.Errorf("left attached: %v", list)
			}
			if diff := cmp.Diff(kernelState{}, state); diff != "" {
				t.Errorf("kernel (-want +got):\n%s", diff)
			}
			if got := pins(t, pinDir); len(got) != 0 {
				t.Errorf("pins left: %v", got)
			}
		})
	}
}

// errNative stands for "any error but a sentinel": native mode refused.
var errNative = errors.New("native refused")

// TestStrings: every named value prints its name, the pin names parse back.
func TestStrings(t *testing.T) {
	got := []string{Ingress.String(), Egress.String(), HookTCIngress.String(), HookTCEgress.String(),
		HookXDP.String(), ModeTCX.String(), ModeClsact.String(), ModeXDPNative.String(),
		ModeXDPGeneric.String(), XDPAuto.String(), XDPNative.String(), XDPGeneric.String(), Mode(0).String(),
		ModeCgroup.String(), HookConnect4.String(), HookPostBind6.String(), HookDevice.String(), Hook(HookDevice + 1).String(),
		Position(0).String(), First.String(), Last.String()}
	want := []string{"ingress", "egress", "tc-ingress", "tc-egress", "xdp", "tcx", "clsact",
		"xdp-native", "xdp-generic", "auto", "native", "generic", "Mode(0)",
		"cgroup", "cgroup-connect4", "cgroup-post_bind6", "cgroup-device", fmt.Sprintf("Hook(%d)", HookDevice+1),
		"any", "first", "last"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	type parsed struct {
		Hook   Hook
		Ifname string
		OK     bool
	}
	for _, c := range []struct {
		name string
		want parsed
	}{
		{"tc-ingress-eth0", parsed{HookTCIngress, "eth0", true}},
		{"tc-egress-my-dev", parsed{HookTCEgress, "my-dev", true}},
		{"xdp-veth1", parsed{HookXDP, "veth1", true}},
		{"xdp-", parsed{}},
		{"cgroup-x", parsed{}},
	} {
		h, ifname, ok := parsePinName(c.name)
		if diff := cmp.Diff(c.want, parsed{h, ifname, ok}); diff != "" {
			t.Errorf("parsePinName(%q) (-want +got):\n%s", c.name, diff)
		}
	}
	type parsedCgroup struct {
		Hook   Hook
		Cgroup string
		OK     bool
	}
	for _, c := range []struct {
		name string
		want parsedCgroup
	}{
		{cgroupPinName(HookConnect4, "/sys/fs/cgroup/a/b%c"), parsedCgroup{HookConnect4, "/sys/fs/cgroup/a/b%c", true}},
		{cgroupPinName(HookGetsockopt, "/"), parsedCgroup{HookGetsockopt, "/", true}},
		{"cgroup-connect4-%2Fsys%2Ffs", parsedCgroup{HookConnect4, "/sys/fs", true}},
		{"cgroup-connect4-relative", parsedCgroup{}},
		{"cgroup-connect4-%zz", parsedCgroup{}},
		{"cgroup-nosuch-%2F", parsedCgroup{}},
		{"tc-ingress-eth0", parsedCgroup{}},
	} {
		h, dir, ok := parseCgroupPin(c.name)
		if diff := cmp.Diff(c.want, parsedCgroup{h, dir, ok}); diff != "" {
			t.Errorf("parseCgroupPin(%q) (-want +got):\n%s", c.name, diff)
		}
	}
	// Every cgroup hook maps to its attach type and back; the others have
	// none.
	for _, ch := range cgroupHooks {
		at, ok := ch.hook.AttachType()
		back, _ := cgroupHookFor(at)
		if !ok || at != ch.attach || back.hook != ch.hook {
			t.Errorf("%s: attach type %s %v, back to %s", ch.hook, at, ok, back.hook)
		}
	}
	for _, h := range []Hook{HookTCIngress, HookTCEgress, HookXDP, HookDevice + 1} {
		if _, ok := h.AttachType(); ok {
			t.Errorf("%s has a cgroup attach type", h)
		}
	}
}
