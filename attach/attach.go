package attach

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Errors the Attacher's methods wrap; test for them with errors.Is.
var (
	// ErrNoInterface means the named interface does not exist in the
	// calling thread's network namespace.
	ErrNoInterface = errors.New("no such interface")
	// ErrNoBPFFS means the pin directory is not on a bpffs mount.
	ErrNoBPFFS = errors.New("not on a bpffs mount")
	// ErrProgramType means the program's type does not fit the hook: TC
	// takes SchedCLS programs, XDP takes XDP programs.
	ErrProgramType = errors.New("wrong program type for hook")
	// ErrModeMismatch means an XDP program is already attached through this
	// library in another mode than the one asked for; replacing it in place
	// cannot change the mode, so the caller has to detach first.
	ErrModeMismatch = errors.New("attached in another mode")
	// ErrNotAttached means there is nothing of this library's to detach
	// from the hook.
	ErrNotAttached = errors.New("nothing attached")
)

// Direction is the side of an interface a TC program runs on.
type Direction uint8

const (
	// Ingress runs the program on packets the interface receives.
	Ingress Direction = iota
	// Egress runs the program on packets the interface sends.
	Egress
)

// String returns "ingress" or "egress".
func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// Hook is where an Attachment sits.
type Hook uint8

const (
	// HookTCIngress is the TC ingress hook.
	HookTCIngress Hook = iota
	// HookTCEgress is the TC egress hook.
	HookTCEgress
	// HookXDP is the XDP hook.
	HookXDP
)

// String returns "tc-ingress", "tc-egress" or "xdp", the stem of the
// hook's pin name.
func (h Hook) String() string {
	switch h {
	case HookTCIngress:
		return "tc-ingress"
	case HookTCEgress:
		return "tc-egress"
	case HookXDP:
		return "xdp"
	}
	return fmt.Sprintf("Hook(%d)", uint8(h))
}

func tcHook(d Direction) Hook {
	if d == Egress {
		return HookTCEgress
	}
	return HookTCIngress
}

// Mode is the kernel mechanism an Attachment is in force through.
type Mode uint8

const (
	// ModeTCX is a TCX bpf_link (no qdisc), pinned.
	ModeTCX Mode = iota + 1
	// ModeClsact is a direct-action cls_bpf filter on a clsact qdisc,
	// named with FilterNamePrefix, at ClsactHandle and ClsactPriority.
	ModeClsact
	// ModeXDPNative is an XDP bpf_link in the driver's receive path, pinned.
	ModeXDPNative
	// ModeXDPGeneric is an XDP bpf_link in the generic (skb) path, pinned.
	ModeXDPGeneric
)

// String returns "tcx", "clsact", "xdp-native" or "xdp-generic".
func (m Mode) String() string {
	switch m {
	case ModeTCX:
		return "tcx"
	case ModeClsact:
		return "clsact"
	case ModeXDPNative:
		return "xdp-native"
	case ModeXDPGeneric:
		return "xdp-generic"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Attachment describes one program this library attached.
type Attachment struct {
	// Hook is where the program runs.
	Hook Hook
	// Ifname and Ifindex name the interface. Ifindex is 0 for a pinned link
	// whose interface has gone (the link is defunct).
	Ifname  string
	Ifindex int
	// Mode is the mechanism the program is attached through.
	Mode Mode
	// Program is the ID of the attached program.
	Program ebpf.ProgramID
	// Pin is the path of the pinned link, empty for ModeClsact.
	Pin string
}

// Attacher attaches programs to TC and XDP hooks and pins what it attaches
// under one bpffs directory, so that a restarted process opening the same
// directory replaces the programs in place instead of detaching them.
//
// An Attacher works in the network namespace of the calling thread: run
// its methods on a thread locked into the namespace whose interfaces they
// name, and give each namespace its own pin directory. Its methods are safe
// for concurrent use; one process at a time should use a pin directory.
type Attacher struct {
	mu     sync.Mutex
	pinDir string
}

// linksDir and qdiscsDir are the sub-directories of the pin directory:
// the pinned links, and one empty marker directory per clsact qdisc this
// library created (so that it removes only its own qdiscs).
const (
	linksDir  = "links"
	qdiscsDir = "qdiscs"
)

// Open returns an Attacher pinning under pinDir, which must be a directory
// on a bpffs mount; it creates pinDir's sub-directories if needed.
func Open(pinDir string) (*Attacher, error) {
	if err := checkBPFFS(pinDir); err != nil {
		return nil, fmt.Errorf("attach: open %s: %w", pinDir, err)
	}
	for _, sub := range []string{linksDir, qdiscsDir} {
		if err := os.MkdirAll(filepath.Join(pinDir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("attach: open %s: %w", pinDir, err)
		}
	}
	return &Attacher{pinDir: pinDir}, nil
}

func checkBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%w: %w", ErrNoBPFFS, err)
		}
		return err
	}
	if uint32(st.Type) != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%w (filesystem magic %#x)", ErrNoBPFFS, uint32(st.Type))
	}
	return nil
}

// PinDir returns the directory the Attacher pins under.
func (a *Attacher) PinDir() string { return a.pinDir }

// linkPin returns where the link of hook on ifname is pinned:
// <pinDir>/links/<hook>-<ifname>, for example links/tc-ingress-eth0.
func (a *Attacher) linkPin(h Hook, ifname string) string {
	return filepath.Join(a.pinDir, linksDir, h.String()+"-"+ifname)
}

// parsePinName splits a pin name into its hook and interface name.
func parsePinName(name string) (Hook, string, bool) {
	for _, h := range []Hook{HookTCIngress, HookTCEgress, HookXDP} {
		if ifname, ok := strings.CutPrefix(name, h.String()+"-"); ok && ifname != "" {
			return h, ifname, true
		}
	}
	return 0, "", false
}

// iface looks ifname up in the calling thread's namespace.
func iface(ifname string) (netlink.Link, error) {
	if ifname == "" || strings.ContainsRune(ifname, '/') || len(ifname) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("%w: invalid name %q", ErrNoInterface, ifname)
	}
	l, err := netlink.LinkByName(ifname)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) || errors.Is(err, unix.ENODEV) {
		return nil, fmt.Errorf("%w: %s", ErrNoInterface, ifname)
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", ifname, err)
	}
	return l, nil
}

// loadPin opens the link pinned at path; it returns nil and no error if
// there is none.
func loadPin(path string) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// linkIfindex returns the interface index a TCX or XDP link is bound to,
// 0 once the interface is gone.
func linkIfindex(l link.Link) (int, ebpf.ProgramID, error) {
	info, err := l.Info()
	if err != nil {
		return 0, 0, err
	}
	if t := info.TCX(); t != nil {
		return int(t.Ifindex), info.Program, nil
	}
	if x := info.XDP(); x != nil {
		return int(x.Ifindex), info.Program, nil
	}
	return 0, 0, fmt.Errorf("pinned link %d is of type %d, not TCX or XDP", info.ID, info.Type)
}

// removeLink detaches the link l pinned at path and removes the pin. A
// defunct link (its interface gone) has nothing left to detach.
func removeLink(l link.Link, path string) error {
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) {
		return fmt.Errorf("detach link pinned at %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin: %w", err)
	}
	return nil
}

// List returns what this library attached in the calling thread's
// namespace: the links pinned under the pin directory (including defunct
// ones, with Ifindex 0) and the clsact filters carrying its name prefix,
// handle and priority. It is sorted by interface name, then hook.
func (a *Attacher) List() ([]Attachment, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	pinned, err := a.listPinned()
	if err != nil {
		return nil, fmt.Errorf("attach: list: %w", err)
	}
	filters, err := listFilters()
	if err != nil {
		return nil, fmt.Errorf("attach: list: %w", err)
	}
	all := append(pinned, filters...)
	sort.Slice(all, func(i, j int) bool {
		if all[i].Ifname != all[j].Ifname {
			return all[i].Ifname < all[j].Ifname
		}
		if all[i].Hook != all[j].Hook {
			return all[i].Hook < all[j].Hook
		}
		return all[i].Mode < all[j].Mode
	})
	return all, nil
}

func (a *Attacher) listPinned() ([]Attachment, error) {
	dir := filepath.Join(a.pinDir, linksDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Attachment
	for _, e := range entries {
		hook, ifname, ok := parsePinName(e.Name())
		if !ok {
			continue
		}
		path := filepath.Join(dir, e.Name())
		l, err := loadPin(path)
		if err != nil {
			return nil, fmt.Errorf("open pin %s: %w", path, err)
		}
		if l == nil {
			continue
		}
		ifindex, prog, err := linkIfindex(l)
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("pin %s: %w", path, err)
		}
		at := Attachment{Hook: hook, Ifname: ifname, Ifindex: ifindex, Program: prog, Pin: path, Mode: ModeTCX}
		if hook == HookXDP {
			at.Mode, err = xdpModeInForce(ifindex)
			if err != nil {
				return nil, fmt.Errorf("pin %s: %w", path, err)
			}
		}
		out = append(out, at)
	}
	return out, nil
}
