package attach

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

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
	// ErrNoBPFFS means the pin directory is not a directory on a bpffs
	// mount.
	ErrNoBPFFS = errors.New("not on a bpffs mount")
	// ErrNoCgroup2 means the path given as a cgroup is missing or not a
	// directory on a cgroup v2 mount.
	ErrNoCgroup2 = errors.New("not a cgroup v2 directory")
	// ErrProgramType means the program's type does not fit the hook: TC
	// takes SchedCLS programs, XDP takes XDP programs, and each cgroup
	// attach type its own program type and expected attach type. An attach
	// type this library does not attach to, and a nil or closed program,
	// are refused with it too.
	ErrProgramType = errors.New("wrong program type for hook")
	// ErrPosition means a TC program was asked to go first or last among
	// the programs on its hook where that cannot be done: the clsact
	// fallback orders filters by priority, and other agents' priorities
	// are theirs to choose.
	ErrPosition = errors.New("position among programs not supported")
	// ErrModeMismatch means an XDP program is already attached through this
	// library in another mode than the one asked for; replacing it in place
	// cannot change the mode, so the caller has to detach first.
	ErrModeMismatch = errors.New("attached in another mode")
	// ErrOccupied means a hook holds another agent's program that
	// attaching ours would replace or that keeps ours out: the clsact
	// fallback's filter slot (ClsactHandle at ClsactPriority) holds a
	// filter that is not this Attacher's, the XDP hook has a program not
	// attached through this Attacher's pin directory, or the pin of the
	// hook holds the link of another network namespace's interface of the
	// same name and index (a pin directory shared between namespaces).
	ErrOccupied = errors.New("filter slot held by another agent")
	// ErrNotAttached means there is nothing of this library's to detach
	// from the hook.
	ErrNotAttached = errors.New("nothing attached")
	// ErrNilAttacher means a method was called on a nil *Attacher (one
	// that Open did not return).
	ErrNilAttacher = errors.New("nil Attacher")
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
	// HookConnect4 is the cgroup hook ebpf.AttachCGroupInet4Connect, and
	// the Hooks after it the other cgroup attach types AttachCgroup takes,
	// each named after its attach type.
	HookConnect4
	// HookConnect6 is ebpf.AttachCGroupInet6Connect.
	HookConnect6
	// HookSendmsg4 is ebpf.AttachCGroupUDP4Sendmsg.
	HookSendmsg4
	// HookSendmsg6 is ebpf.AttachCGroupUDP6Sendmsg.
	HookSendmsg6
	// HookRecvmsg4 is ebpf.AttachCGroupUDP4Recvmsg.
	HookRecvmsg4
	// HookRecvmsg6 is ebpf.AttachCGroupUDP6Recvmsg.
	HookRecvmsg6
	// HookGetpeername4 is ebpf.AttachCgroupInet4GetPeername.
	HookGetpeername4
	// HookGetpeername6 is ebpf.AttachCgroupInet6GetPeername.
	HookGetpeername6
	// HookGetsockname4 is ebpf.AttachCgroupInet4GetSockname.
	HookGetsockname4
	// HookGetsockname6 is ebpf.AttachCgroupInet6GetSockname.
	HookGetsockname6
	// HookBind4 is ebpf.AttachCGroupInet4Bind.
	HookBind4
	// HookBind6 is ebpf.AttachCGroupInet6Bind.
	HookBind6
	// HookPostBind4 is ebpf.AttachCGroupInet4PostBind.
	HookPostBind4
	// HookPostBind6 is ebpf.AttachCGroupInet6PostBind.
	HookPostBind6
	// HookSockCreate is ebpf.AttachCGroupInetSockCreate.
	HookSockCreate
	// HookSockRelease is ebpf.AttachCgroupInetSockRelease.
	HookSockRelease
	// HookCgroupIngress is ebpf.AttachCGroupInetIngress.
	HookCgroupIngress
	// HookCgroupEgress is ebpf.AttachCGroupInetEgress.
	HookCgroupEgress
	// HookSockOps is ebpf.AttachCGroupSockOps.
	HookSockOps
	// HookGetsockopt is ebpf.AttachCGroupGetsockopt.
	HookGetsockopt
	// HookSetsockopt is ebpf.AttachCGroupSetsockopt.
	HookSetsockopt
	// HookSysctl is ebpf.AttachCGroupSysctl.
	HookSysctl
	// HookDevice is ebpf.AttachCGroupDevice.
	HookDevice
)

// String returns "tc-ingress", "tc-egress", "xdp", or "cgroup-" and
// bpftool's name of the attach type (cgroup-connect4, cgroup-post_bind4,
// ...): the stem of the hook's pin name.
func (h Hook) String() string {
	switch h {
	case HookTCIngress:
		return "tc-ingress"
	case HookTCEgress:
		return "tc-egress"
	case HookXDP:
		return "xdp"
	}
	if c, ok := cgroupHookOf(h); ok {
		return "cgroup-" + c.name
	}
	return fmt.Sprintf("Hook(%d)", uint8(h))
}

// AttachType returns the kernel attach type of a cgroup hook, and false
// for the TC and XDP hooks (whose attach type depends on the mode).
func (h Hook) AttachType() (ebpf.AttachType, bool) {
	c, ok := cgroupHookOf(h)
	return c.attach, ok
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
	// ModeCgroup is a multi-attach cgroup bpf_link, pinned.
	ModeCgroup
)

// String returns "tcx", "clsact", "xdp-native", "xdp-generic" or
// "cgroup".
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
	case ModeCgroup:
		return "cgroup"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Attachment describes one program this library attached.
type Attachment struct {
	// Hook is where the program runs.
	Hook Hook
	// Ifname and Ifindex name the interface of a TC or XDP hook. Ifindex
	// is 0 for a pinned link whose interface has gone (the link is
	// defunct).
	Ifname  string
	Ifindex int
	// Cgroup is the cgroup v2 directory of a cgroup hook, the path given
	// to AttachCgroup made absolute, its symlinks resolved.
	Cgroup string
	// Mode is the mechanism the program is attached through.
	Mode Mode
	// Program is the ID of the attached program.
	Program ebpf.ProgramID
	// Pin is the path of the pinned link, empty for ModeClsact.
	Pin string
}

// Attacher attaches programs to TC, XDP and cgroup hooks and pins what it
// attaches under one bpffs directory, so that a restarted process opening
// the same directory replaces the programs in place instead of detaching
// them.
//
// An Attacher works in the network namespace of the calling thread: run
// its methods on a thread locked into the namespace whose interfaces they
// name, and give each namespace its own pin directory. Its methods are safe
// for concurrent use, and processes may share a pin directory: each method
// holds an exclusive flock on the directory while it runs, so the
// attaches, replaces and detaches of two agents never interleave.
type Attacher struct {
	pinDir string
}

// linksDir, qdiscsDir and filtersDir are the sub-directories of the pin
// directory: the pinned links, one empty marker directory per clsact
// qdisc this library created (so that it removes only its own qdiscs),
// and one per clsact filter this Attacher added (so that two agents with
// pin directories of their own never take each other's filters).
const (
	linksDir   = "links"
	qdiscsDir  = "qdiscs"
	filtersDir = "filters"
)

// Open returns an Attacher pinning under pinDir, which must be a directory
// on a bpffs mount (a relative path is made absolute now); it creates
// pinDir's sub-directories if needed.
func Open(pinDir string) (*Attacher, error) {
	if err := checkBPFFS(pinDir); err != nil {
		return nil, fmt.Errorf("attach: open %s: %w", pinDir, err)
	}
	// Every call names its pins and takes its lock through this path, so
	// a relative one must not follow later changes of working directory.
	pinDir, err := filepath.Abs(pinDir)
	if err != nil {
		return nil, fmt.Errorf("attach: open %s: %w", pinDir, err)
	}
	for _, sub := range []string{linksDir, qdiscsDir, filtersDir} {
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
	if fi, err := os.Stat(dir); err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("%w: a pinned object, not a directory", ErrNoBPFFS)
	}
	return nil
}

// flockExclusive waits for the exclusive flock on fd, through signals.
func flockExclusive(fd int) error {
	for {
		if err := unix.Flock(fd, unix.LOCK_EX); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// lock takes the exclusive flock on the pin directory that every method
// holds while it runs, waiting for another holder (in this or another
// process) to let go, and returns its release. The lock is on a file
// descriptor of its own, so two Attachers in one process exclude each
// other as two processes do.
func (a *Attacher) lock() (func(), error) {
	if a == nil {
		return nil, ErrNilAttacher
	}
	for {
		fd, err := unix.Open(a.pinDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("lock pin directory: %w", err)
		}
		if err := flockExclusive(fd); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("lock pin directory: %w", err)
		}
		// The directory may have been removed and made again while this
		// waited: the lock of the old one excludes no one using the new
		// one, so it is taken again there.
		var held, now unix.Stat_t
		if err := unix.Fstat(fd, &held); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("lock pin directory: %w", err)
		}
		if err := unix.Stat(a.pinDir, &now); err == nil && (held.Dev != now.Dev || held.Ino != now.Ino) {
			unix.Close(fd)
			continue
		}
		// Closing the only descriptor of the open file releases the lock.
		return func() { unix.Close(fd) }, nil
	}
}

// lockTC takes the pin directory's lock and then an exclusive flock on the
// calling thread's network namespace (its nsfs inode, the same for every
// process in it), and returns their release. The clsact qdisc and filters
// of a namespace are shared by every Attacher in it, whatever its pin
// directory: without the second lock one agent deleting the qdisc it made,
// having found no filter on it, could take with it the filter another
// agent had added in the meantime. The locks are always taken in this
// order, so no two holders wait on each other.
func (a *Attacher) lockTC() (func(), error) {
	unlock, err := a.lock()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("lock network namespace: %w", err)
	}
	if err := flockExclusive(fd); err != nil {
		unix.Close(fd)
		unlock()
		return nil, fmt.Errorf("lock network namespace: %w", err)
	}
	return func() { unix.Close(fd); unlock() }, nil
}

// PinDir returns the directory the Attacher pins under, "" for a nil
// Attacher.
func (a *Attacher) PinDir() string {
	if a == nil {
		return ""
	}
	return a.pinDir
}

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

// validIfname refuses a name no interface can have; it is checked before
// the name goes into a pin path, where "/" and ".." would reach pins
// outside the pin directory.
func validIfname(ifname string) error {
	if ifname == "" || ifname == "." || ifname == ".." || strings.ContainsAny(ifname, "/\x00") ||
		len(ifname) >= unix.IFNAMSIZ {
		return fmt.Errorf("%w: invalid name %q", ErrNoInterface, ifname)
	}
	return nil
}

// ifaceIfAny looks ifname up like iface, but returns a nil link and index
// 0, not an error, for a valid name no interface has.
func ifaceIfAny(ifname string) (netlink.Link, int, error) {
	if err := validIfname(ifname); err != nil {
		return nil, 0, err
	}
	dev, err := iface(ifname)
	if errors.Is(err, ErrNoInterface) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	return dev, dev.Attrs().Index, nil
}

// iface looks ifname up in the calling thread's namespace.
func iface(ifname string) (netlink.Link, error) {
	if err := validIfname(ifname); err != nil {
		return nil, err
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
// strayObject reports whether the pin at path, which is not a link, is a
// map or a program: an object someone else pinned under a link's name.
func strayObject(path string) bool {
	if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
		m.Close()
		return true
	}
	if p, err := ebpf.LoadPinnedProgram(path, nil); err == nil {
		p.Close()
		return true
	}
	return false
}

// loadPin opens the link pinned at path, nil if there is none. A map or
// program pinned there instead is no attachment of this library's: the
// error wraps ErrOccupied, List leaves it out, and attaching at that name
// fails rather than remove another's object.
func loadPin(path string) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		if strayObject(path) {
			return nil, fmt.Errorf("%w: %s holds a map or program, not a link", ErrOccupied, path)
		}
		return nil, err
	}
	return l, nil
}

// findPin returns the link of ours on hook h of the interface ifname, whose
// index is ifindex (0 if no interface has that name now), the interface
// index it is bound to and its pin, or a nil link if there is none. Pins
// follow renamed interfaces: a pin under ifname whose link runs on a live
// interface of another name moves to that name, and a pin under another
// name whose link runs on ifindex moves to ifname. A pin whose interface
// is gone (bound to 0) or has left the namespace is returned for the
// caller to remove; a live link on an interface of the namespace is never
// mistaken for a stale one and detached.
func (a *Attacher) findPin(h Hook, ifname string, ifindex int) (link.Link, int, string, error) {
	pin := a.linkPin(h, ifname)
	l, err := loadPin(pin)
	if err != nil {
		return nil, 0, "", err
	}
	if l != nil {
		bound, _, err := linkIfindex(l)
		if err != nil {
			l.Close()
			return nil, 0, "", fmt.Errorf("pin %s: %w", pin, err)
		}
		if bound == ifindex && ifindex != 0 {
			// The index alone does not say the namespace: another's
			// interface may have it, if the pin directory is shared.
			if here, err := linkHere(l, h, ifindex); err != nil || !here {
				l.Close()
				if err == nil {
					err = fmt.Errorf("%w: pin %s holds the link of an interface %d of another network namespace; give each namespace its own pin directory",
						ErrOccupied, pin, ifindex)
				}
				return nil, 0, "", err
			}
		}
		if bound == 0 || bound == ifindex {
			return l, bound, pin, nil
		}
		// The interface this pin was made for was renamed, or moved to
		// another namespace, where this one's pins do not reach (an
		// interface here may have its index then, without the link).
		dev, err := netlink.LinkByIndex(bound)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return l, bound, pin, nil
		}
		if err == nil {
			if here, herr := linkHere(l, h, bound); herr == nil && !here {
				return l, bound, pin, nil
			}
		}
		l.Close()
		if err != nil {
			return nil, 0, "", fmt.Errorf("pin %s: interface %d of its link: %w", pin, bound, err)
		}
		if err := movePin(pin, a.linkPin(h, dev.Attrs().Name)); err != nil {
			return nil, 0, "", err
		}
	}
	if ifindex == 0 {
		return nil, 0, "", nil
	}
	entries, err := os.ReadDir(filepath.Join(a.pinDir, linksDir))
	if err != nil {
		return nil, 0, "", err
	}
	for _, e := range entries {
		if hook, _, ok := parsePinName(e.Name()); !ok || hook != h {
			continue
		}
		// A pin that is gone or holds no TC or XDP link is not the one
		// looked for; it must not stop the attach of another interface.
		other := filepath.Join(a.pinDir, linksDir, e.Name())
		l, err := loadPin(other)
		if err != nil || l == nil {
			continue
		}
		bound, _, err := linkIfindex(l)
		if err != nil || bound != ifindex {
			l.Close()
			continue
		}
		if here, err := linkHere(l, h, ifindex); err != nil || !here {
			l.Close()
			continue
		}
		// ifname is the new name of the interface this pin was made for.
		if err := movePin(other, pin); err != nil {
			l.Close()
			return nil, 0, "", err
		}
		return l, bound, pin, nil
	}
	return nil, 0, "", nil
}

// linkHere reports whether the TCX or XDP link l of hook h runs on the
// interface ifindex of the calling thread's namespace: the kernel lists
// the link on the interface's TCX hook, or the interface's XDP program is
// the link's.
func linkHere(l link.Link, h Hook, ifindex int) (bool, error) {
	info, err := l.Info()
	if err != nil {
		return false, err
	}
	if h == HookXDP {
		dev, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return false, fmt.Errorf("look up interface %d: %w", ifindex, err)
		}
		x := dev.Attrs().Xdp
		return x != nil && x.Attached && ebpf.ProgramID(x.ProgId) == info.Program, nil
	}
	dir := Ingress
	if h == HookTCEgress {
		dir = Egress
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: tcxAttachType(dir)})
	if err != nil {
		return false, fmt.Errorf("query TCX programs of interface %d: %w", ifindex, err)
	}
	for _, p := range res.Programs {
		if id, ok := p.LinkID(); ok && id == info.ID {
			return true, nil
		}
	}
	return false, nil
}

// movePin renames the pin from to to (its interface renamed, its cgroup
// named by another path), failing if to exists: that pin is another
// link's, which the caller must not drop.
func movePin(from, to string) error {
	if err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("move pin %s to %s: %w", from, to, err)
	}
	return nil
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
// ones, with Ifindex 0, and those of cgroups that are gone, until
// DetachCgroup removes them) and the clsact filters carrying its name
// prefix, handle and priority. It is sorted by interface name, cgroup
// path, then hook; a cgroup hook's attach type is its Hook's AttachType.
func (a *Attacher) List() ([]Attachment, error) {
	unlock, err := a.lockTC()
	if err != nil {
		return nil, fmt.Errorf("attach: list: %w", err)
	}
	defer unlock()
	pinned, err := a.listPinned()
	if err != nil {
		return nil, fmt.Errorf("attach: list: %w", err)
	}
	filters, err := a.listFilters()
	if err != nil {
		return nil, fmt.Errorf("attach: list: %w", err)
	}
	all := append(pinned, filters...)
	sort.Slice(all, func(i, j int) bool {
		if all[i].Ifname != all[j].Ifname {
			return all[i].Ifname < all[j].Ifname
		}
		if all[i].Cgroup != all[j].Cgroup {
			return all[i].Cgroup < all[j].Cgroup
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
		path := filepath.Join(dir, e.Name())
		if hook, cgroup, ok := parseCgroupPin(e.Name()); ok {
			at, err := listCgroupPin(hook, cgroup, path)
			if err != nil {
				return nil, err
			}
			if at != nil {
				out = append(out, *at)
			}
			continue
		}
		hook, ifname, ok := parsePinName(e.Name())
		if !ok {
			continue
		}
		l, err := loadPin(path)
		if err != nil {
			if errors.Is(err, ErrOccupied) {
				continue
			}
			return nil, fmt.Errorf("open pin %s: %w", path, err)
		}
		if l == nil {
			continue
		}
		ifindex, prog, err := linkIfindex(l)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("pin %s: %w", path, err)
		}
		// A renamed interface is reported, and its pin moved, under the
		// name it has now, the one its owner will call it by.
		if dev, err := netlink.LinkByIndex(ifindex); ifindex != 0 && err == nil && dev.Attrs().Name != ifname {
			if here, _ := linkHere(l, hook, ifindex); here {
				if moved := a.linkPin(hook, dev.Attrs().Name); movePin(path, moved) == nil {
					ifname, path = dev.Attrs().Name, moved
				}
			}
		}
		l.Close()
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

// listCgroupPin describes the cgroup link pinned at path, nil if the pin
// has gone since the directory was read.
func listCgroupPin(hook Hook, cgroup, path string) (*Attachment, error) {
	l, err := loadPin(path)
	if err != nil {
		if errors.Is(err, ErrOccupied) {
			return nil, nil
		}
		return nil, fmt.Errorf("open pin %s: %w", path, err)
	}
	if l == nil {
		return nil, nil
	}
	defer l.Close()
	_, prog, err := linkCgroup(l)
	if err != nil {
		return nil, fmt.Errorf("pin %s: %w", path, err)
	}
	return &Attachment{Hook: hook, Cgroup: cgroup, Mode: ModeCgroup, Program: prog, Pin: path}, nil
}
