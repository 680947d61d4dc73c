package attach

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// cgroupHook is one cgroup attach type this library attaches to: the Hook
// naming it, the program type the kernel wants for it and the short name
// in its pin (bpftool's).
type cgroupHook struct {
	hook   Hook
	attach ebpf.AttachType
	prog   ebpf.ProgramType
	name   string
}

// cgroupHooks lists the cgroup attach types AttachCgroup takes, in Hook
// order.
var cgroupHooks = []cgroupHook{
	{HookConnect4, ebpf.AttachCGroupInet4Connect, ebpf.CGroupSockAddr, "connect4"},
	{HookConnect6, ebpf.AttachCGroupInet6Connect, ebpf.CGroupSockAddr, "connect6"},
	{HookSendmsg4, ebpf.AttachCGroupUDP4Sendmsg, ebpf.CGroupSockAddr, "sendmsg4"},
	{HookSendmsg6, ebpf.AttachCGroupUDP6Sendmsg, ebpf.CGroupSockAddr, "sendmsg6"},
	{HookRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg, ebpf.CGroupSockAddr, "recvmsg4"},
	{HookRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg, ebpf.CGroupSockAddr, "recvmsg6"},
	{HookGetpeername4, ebpf.AttachCgroupInet4GetPeername, ebpf.CGroupSockAddr, "getpeername4"},
	{HookGetpeername6, ebpf.AttachCgroupInet6GetPeername, ebpf.CGroupSockAddr, "getpeername6"},
	{HookGetsockname4, ebpf.AttachCgroupInet4GetSockname, ebpf.CGroupSockAddr, "getsockname4"},
	{HookGetsockname6, ebpf.AttachCgroupInet6GetSockname, ebpf.CGroupSockAddr, "getsockname6"},
	{HookBind4, ebpf.AttachCGroupInet4Bind, ebpf.CGroupSockAddr, "bind4"},
	{HookBind6, ebpf.AttachCGroupInet6Bind, ebpf.CGroupSockAddr, "bind6"},
	{HookPostBind4, ebpf.AttachCGroupInet4PostBind, ebpf.CGroupSock, "post_bind4"},
	{HookPostBind6, ebpf.AttachCGroupInet6PostBind, ebpf.CGroupSock, "post_bind6"},
	{HookSockCreate, ebpf.AttachCGroupInetSockCreate, ebpf.CGroupSock, "sock_create"},
	{HookSockRelease, ebpf.AttachCgroupInetSockRelease, ebpf.CGroupSock, "sock_release"},
	{HookCgroupIngress, ebpf.AttachCGroupInetIngress, ebpf.CGroupSKB, "ingress"},
	{HookCgroupEgress, ebpf.AttachCGroupInetEgress, ebpf.CGroupSKB, "egress"},
	{HookSockOps, ebpf.AttachCGroupSockOps, ebpf.SockOps, "sock_ops"},
	{HookGetsockopt, ebpf.AttachCGroupGetsockopt, ebpf.CGroupSockopt, "getsockopt"},
	{HookSetsockopt, ebpf.AttachCGroupSetsockopt, ebpf.CGroupSockopt, "setsockopt"},
	{HookSysctl, ebpf.AttachCGroupSysctl, ebpf.CGroupSysctl, "sysctl"},
	{HookDevice, ebpf.AttachCGroupDevice, ebpf.CGroupDevice, "device"},
}

func cgroupHookOf(h Hook) (cgroupHook, bool) {
	if h < HookConnect4 || int(h-HookConnect4) >= len(cgroupHooks) {
		return cgroupHook{}, false
	}
	return cgroupHooks[h-HookConnect4], true
}

func cgroupHookFor(at ebpf.AttachType) (cgroupHook, bool) {
	for _, c := range cgroupHooks {
		if c.attach == at {
			return c, true
		}
	}
	return cgroupHook{}, false
}

// cgroupPinName is the pin name of the link of h on the cgroup at the
// absolute path dir: the hook, then the path with its slashes (and
// percent signs) escaped, for example
// cgroup-connect4-%2Fsys%2Ffs%2Fcgroup%2Fagent. Naming the pin after the
// path, not the cgroup's ID, lets a cgroup re-created at the same path
// take over the pin, and lets DetachCgroup remove the pin of a cgroup
// that is gone.
func cgroupPinName(h Hook, dir string) string {
	return h.String() + "-" + url.PathEscape(dir)
}

// cgroupDir makes path absolute and clean, the form pin names carry, with
// its symlinks resolved where it exists: one cgroup named through a
// symlink, or through a ".." after one, has one pin, not one per
// spelling, each attaching a program of ours. A path that no longer
// resolves (a cgroup gone, for DetachCgroup) is only made absolute.
func cgroupDir(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%w: empty path", ErrNoCgroup2)
	}
	dir, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoCgroup2, err)
	}
	// Resolve the path as given, not the lexically cleaned one: the
	// kernel takes the ".." of a symlink's target.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		if dir, err = filepath.Abs(real); err != nil {
			return "", fmt.Errorf("%w: %w", ErrNoCgroup2, err)
		}
	}
	return dir, nil
}

// openCgroup opens the cgroup v2 directory dir and returns it with the
// cgroup's ID.
func openCgroup(dir string) (*os.File, uint64, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ErrNoCgroup2, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		f.Close()
		return nil, 0, fmt.Errorf("%w: %s has filesystem magic %#x (%s)", ErrNoCgroup2, dir, uint32(st.Type), cgroup2Mounts())
	}
	id, err := cgroupID(f)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("cgroup ID of %s: %w", dir, err)
	}
	return f, id, nil
}

// cgroupID returns the ID of the cgroup open as f, which the kernel
// reports in the info of a cgroup link: the kernfs node ID, which is the
// cgroup's file handle.
func cgroupID(f *os.File) (uint64, error) {
	h, _, err := unix.NameToHandleAt(int(f.Fd()), "", unix.AT_EMPTY_PATH)
	if err != nil {
		return 0, err
	}
	b := h.Bytes()
	if len(b) != 8 {
		return 0, fmt.Errorf("file handle of %d bytes, want 8", len(b))
	}
	id := binary.NativeEndian.Uint64(b) // the kernel copies the u64 ID as it is
	return id, nil
}

// cgroup2Mounts says where /proc/mounts has cgroup v2, to make an error
// about a path off cgroup v2 actionable.
func cgroup2Mounts() string {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "cannot read /proc/mounts: " + err.Error()
	}
	defer f.Close()
	var at []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) >= 3 && fields[2] == "cgroup2" {
			at = append(at, fields[1])
		}
	}
	if len(at) == 0 {
		return "no cgroup2 mount in /proc/mounts"
	}
	return "cgroup v2 is mounted at " + strings.Join(at, ", ")
}

// AttachCgroup attaches prog to the cgroup v2 directory cgroupPath at the
// cgroup attach type at, or atomically replaces the program this library
// attached there before (by this process or another using the same pin
// directory): the link is updated in place, so no socket operation in the
// cgroup meets the hook without a program.
//
// at is one of the attach types of the Hook constants from HookConnect4
// on (the sock_addr hooks connect, sendmsg, recvmsg, getpeername,
// getsockname and bind for IPv4 and IPv6, and the other inet, skb,
// sock_ops, sockopt, sysctl and device hooks); prog must be of the
// program type the kernel wants for it, and loaded with at as its expected
// attach type where the kernel asks for one (ErrProgramType otherwise).
// The link is a multi-attach bpf_link pinned at
// <pinDir>/links/<hook>-<escaped absolute path>: programs others attach
// to the same cgroup and hook keep running beside it.
func (a *Attacher) AttachCgroup(cgroupPath string, at ebpf.AttachType, prog *ebpf.Program) (Attachment, error) {
	unlock, err := a.lock()
	if err != nil {
		return Attachment{}, fmt.Errorf("attach: cgroup %s on %s: %w", at, cgroupPath, err)
	}
	defer unlock()
	att, err := a.attachCgroup(cgroupPath, at, prog)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach: cgroup %s on %s: %w", at, cgroupPath, err)
	}
	return att, nil
}

func (a *Attacher) attachCgroup(cgroupPath string, at ebpf.AttachType, prog *ebpf.Program) (Attachment, error) {
	ch, ok := cgroupHookFor(at)
	if !ok {
		return Attachment{}, fmt.Errorf("%w: %s is not a cgroup attach type this library attaches", ErrProgramType, at)
	}
	if err := checkProgram(prog, ch.prog); err != nil {
		return Attachment{}, err
	}
	dir, err := cgroupDir(cgroupPath)
	if err != nil {
		return Attachment{}, err
	}
	cg, id, err := openCgroup(dir)
	if err != nil {
		return Attachment{}, err
	}
	defer cg.Close()
	name := cgroupPinName(ch.hook, dir)
	if len(name) > unix.NAME_MAX {
		return Attachment{}, fmt.Errorf("pin name for %s is %d bytes, more than the %d a file name may have", dir, len(name), unix.NAME_MAX)
	}
	pin := filepath.Join(a.pinDir, linksDir, name)
	att := Attachment{Hook: ch.hook, Cgroup: dir, Mode: ModeCgroup, Pin: pin}
	if att.Program, err = programID(prog); err != nil {
		return Attachment{}, err
	}

	if l, err := loadPin(pin); err != nil {
		return Attachment{}, err
	} else if l != nil {
		bound, _, err := linkCgroup(l)
		if err != nil {
			l.Close()
			return Attachment{}, err
		}
		if bound != id {
			// The cgroup this pin was made for is gone; a new one has its path.
			if err := removeLink(l, pin); err != nil {
				return Attachment{}, err
			}
		} else {
			defer l.Close()
			if err := l.Update(prog); err != nil {
				return Attachment{}, refused(ch, fmt.Errorf("update link pinned at %s: %w", pin, err))
			}
			return att, nil
		}
	}

	if l, err := a.findCgroupPin(ch.hook, pin, id); err != nil {
		return Attachment{}, err
	} else if l != nil {
		defer l.Close()
		if err := l.Update(prog); err != nil {
			return Attachment{}, refused(ch, fmt.Errorf("update link pinned at %s: %w", pin, err))
		}
		return att, nil
	}

	l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: prog, Attach: at})
	if err != nil {
		return Attachment{}, refused(ch, fmt.Errorf("create cgroup link: %w", err))
	}
	err = l.Pin(pin)
	l.Close() // Without the pin, closing detaches.
	if err != nil {
		return Attachment{}, err
	}
	return att, nil
}

// refused marks the kernel's EINVAL for a program of the right type as
// ErrProgramType: when creating a link and when replacing the program of
// one, the kernel checks the program's expected attach type.
func refused(ch cgroupHook, err error) error {
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%w: kernel refused the program for %s (was it loaded with that expected attach type?): %w", ErrProgramType, ch.name, err)
	}
	return err
}

// linkCgroup returns the ID of the cgroup a cgroup link is bound to (0
// once the kernel has released the cgroup) and the program it runs.
func linkCgroup(l link.Link) (uint64, ebpf.ProgramID, error) {
	info, err := l.Info()
	if err != nil {
		return 0, 0, err
	}
	c := info.Cgroup()
	if c == nil {
		return 0, 0, fmt.Errorf("pinned link %d is of type %d, not cgroup", info.ID, info.Type)
	}
	return c.CgroupId, info.Program, nil
}

// DetachCgroup detaches and unpins the link this library attached to the
// cgroup cgroupPath at attach type at. The cgroup need not exist any more:
// the pin is found by the path. It returns an error wrapping
// ErrNotAttached if there was nothing to detach.
func (a *Attacher) DetachCgroup(cgroupPath string, at ebpf.AttachType) error {
	unlock, err := a.lock()
	if err != nil {
		return fmt.Errorf("attach: detach cgroup %s on %s: %w", at, cgroupPath, err)
	}
	defer unlock()
	if err := a.detachCgroup(cgroupPath, at); err != nil {
		return fmt.Errorf("attach: detach cgroup %s on %s: %w", at, cgroupPath, err)
	}
	return nil
}

func (a *Attacher) detachCgroup(cgroupPath string, at ebpf.AttachType) error {
	ch, ok := cgroupHookFor(at)
	if !ok {
		return fmt.Errorf("%w: %s is not a cgroup attach type this library attaches", ErrProgramType, at)
	}
	dir, err := cgroupDir(cgroupPath)
	if err != nil {
		return err
	}
	pin := filepath.Join(a.pinDir, linksDir, cgroupPinName(ch.hook, dir))
	l, err := loadPin(pin)
	if err != nil {
		return err
	}
	if l == nil {
		// The cgroup may have a pin under another of its paths.
		if cg, id, err := openCgroup(dir); err == nil {
			cg.Close()
			if l, err = a.findCgroupPin(ch.hook, pin, id); err != nil {
				return err
			}
		}
	}
	if l == nil {
		return ErrNotAttached
	}
	return removeLink(l, pin)
}

// findCgroupPin looks for a link of ours on hook h of the cgroup with ID id
// pinned under another path of the cgroup than the one pin is named after
// (a cgroup v2 hierarchy mounted twice, or seen by a restarted agent at
// another mount point), and moves it to pin, which must be free: one
// cgroup has one link of ours on a hook, however its path is spelt.
func (a *Attacher) findCgroupPin(h Hook, pin string, id uint64) (link.Link, error) {
	dir := filepath.Join(a.pinDir, linksDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		other := filepath.Join(dir, e.Name())
		if hook, _, ok := parseCgroupPin(e.Name()); !ok || hook != h || other == pin {
			continue
		}
		// A pin that is gone or holds no cgroup link is not the one
		// looked for.
		l, err := loadPin(other)
		if err != nil || l == nil {
			continue
		}
		if bound, _, err := linkCgroup(l); err != nil || bound != id {
			l.Close()
			continue
		}
		if err := movePin(other, pin); err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	}
	return nil, nil
}

// parseCgroupPin splits the name of a cgroup link's pin into its hook and
// cgroup path.
func parseCgroupPin(name string) (Hook, string, bool) {
	for _, c := range cgroupHooks {
		rest, ok := strings.CutPrefix(name, c.hook.String()+"-")
		if !ok {
			continue
		}
		dir, err := url.PathUnescape(rest)
		if err != nil || !filepath.IsAbs(dir) {
			return 0, "", false
		}
		return c.hook, dir, true
	}
	return 0, "", false
}
