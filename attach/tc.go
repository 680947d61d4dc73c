package attach

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The clsact fallback's filter identity. A filter is this library's when it
// sits at ClsactHandle and ClsactPriority and its name starts with
// FilterNamePrefix, and an Attacher's when its pin directory also has the
// filter's marker (filters/<hook>-<ifname>-<ifindex>); replacing it with
// the same parent, handle, priority and protocol swaps the program in
// place, with no moment without one. Another agent's filter in that slot
// (a foreign one, or that of an Attacher with another pin directory) is
// never replaced: AttachTC fails with ErrOccupied.
const (
	// ClsactHandle is the handle of every filter this library adds.
	ClsactHandle uint32 = 0x51ce
	// ClsactPriority is the priority of every filter this library adds.
	ClsactPriority uint16 = 0x51c
	// FilterNamePrefix starts the name of every filter this library adds;
	// the program's name follows it.
	FilterNamePrefix = "sluice:"
)

// kernel holds the kernel calls whose failure selects a fallback. They are
// the probes: TCX is present when AttachTCX does not fail with
// ebpf.ErrNotSupported, native XDP when attaching in driver mode succeeds.
// Tests replace the fields to force each fallback on a kernel that has
// every feature.
var kernel = struct {
	attachTCX func(link.TCXOptions) (link.Link, error)
	attachXDP func(link.XDPOptions) (link.Link, error)
}{
	attachTCX: link.AttachTCX,
	attachXDP: link.AttachXDP,
}

func tcxAttachType(d Direction) ebpf.AttachType {
	if d == Egress {
		return ebpf.AttachTCXEgress
	}
	return ebpf.AttachTCXIngress
}

func clsactParent(d Direction) uint32 {
	if d == Egress {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

// TCOption changes how AttachTC attaches a program. Position is the only
// one.
type TCOption interface {
	applyTC(*tcConfig)
}

type tcConfig struct {
	position Position
}

// Position is where among the other TCX programs on its hook AttachTC
// puts a program it attaches afresh. The zero Position leaves it to the
// kernel, which appends the program after those already there.
//
// The position is taken when the link is created: programs other agents
// attach later may go before or after it, and a replace (link.Update)
// keeps the program where its link is, whatever position it asks for.
type Position uint8

const (
	// First puts the program before every TCX program on the hook
	// (link.Head).
	First Position = iota + 1
	// Last puts the program after every TCX program on the hook
	// (link.Tail).
	Last
)

func (p Position) applyTC(c *tcConfig) { c.position = p }

// String returns "first", "last" or "any".
func (p Position) String() string {
	switch p {
	case 0:
		return "any"
	case First:
		return "first"
	case Last:
		return "last"
	}
	return fmt.Sprintf("Position(%d)", uint8(p))
}

func (p Position) anchor() link.Anchor {
	switch p {
	case First:
		return link.Head()
	case Last:
		return link.Tail()
	}
	return nil
}

// AttachTC attaches prog, a SchedCLS program, to the ingress or egress of
// the interface ifname, or atomically replaces the program this library
// attached there before (by this process or another using the same pin
// directory).
//
// Where the kernel has TCX the program is attached through a TCX link
// pinned at <pinDir>/links/tc-<direction>-<ifname>, at the Position among
// other TCX programs an option asks for, and any clsact filter of this
// library's on the same hook is removed afterwards. Otherwise it is
// attached as a direct-action filter on a clsact qdisc, which is created
// if the interface has none; a First or Last Position then fails with
// ErrPosition, since the order of filters is their priorities, and
// other agents' are theirs to choose, and a filter of another agent's at
// ClsactHandle and ClsactPriority fails it with ErrOccupied.
func (a *Attacher) AttachTC(ifname string, dir Direction, prog *ebpf.Program, opts ...TCOption) (Attachment, error) {
	unlock, err := a.lockTC()
	if err != nil {
		return Attachment{}, fmt.Errorf("attach: tc %s on %s: %w", dir, ifname, err)
	}
	defer unlock()
	var cfg tcConfig
	for _, o := range opts {
		if o != nil {
			o.applyTC(&cfg)
		}
	}
	at, err := a.attachTC(ifname, dir, prog, cfg)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach: tc %s on %s: %w", dir, ifname, err)
	}
	return at, nil
}

func (a *Attacher) attachTC(ifname string, dir Direction, prog *ebpf.Program, cfg tcConfig) (Attachment, error) {
	if dir != Ingress && dir != Egress {
		return Attachment{}, fmt.Errorf("invalid direction %d", dir)
	}
	if cfg.position > Last {
		return Attachment{}, fmt.Errorf("invalid position %d", cfg.position)
	}
	if err := checkProgram(prog, ebpf.SchedCLS); err != nil {
		return Attachment{}, err
	}
	dev, err := iface(ifname)
	if err != nil {
		return Attachment{}, err
	}
	ifindex := dev.Attrs().Index
	hook := tcHook(dir)
	pin := a.linkPin(hook, ifname)
	at := Attachment{Hook: hook, Ifname: ifname, Ifindex: ifindex, Mode: ModeTCX, Pin: pin}

	replaced, err := a.replacePinned(hook, ifname, ifindex, prog)
	if err != nil {
		return Attachment{}, err
	}
	if !replaced {
		l, err := kernel.attachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: tcxAttachType(dir),
			Anchor: cfg.position.anchor()})
		if errors.Is(err, ebpf.ErrNotSupported) {
			if cfg.position != 0 {
				return Attachment{}, fmt.Errorf("%w: no TCX, and the clsact fallback cannot put a filter %s", ErrPosition, cfg.position)
			}
			return a.attachClsact(dev, dir, prog)
		}
		if err != nil {
			return Attachment{}, err
		}
		err = l.Pin(pin)
		l.Close() // Without the pin, closing detaches.
		if err != nil {
			return Attachment{}, err
		}
	}
	// The TCX program now runs before any legacy filter, so a filter of
	// ours left from a clsact attachment can go without a gap.
	if err := a.removeFilter(dev, dir); err != nil {
		return Attachment{}, err
	}
	if at.Program, err = programID(prog); err != nil {
		return Attachment{}, err
	}
	return at, nil
}

// replacePinned updates the link of ours on the hook of ifname to run
// prog, if it is live and bound to ifindex, and reports whether it did. A
// stale pin (its interface gone) is removed.
func (a *Attacher) replacePinned(h Hook, ifname string, ifindex int, prog *ebpf.Program) (bool, error) {
	l, bound, pin, err := a.findPin(h, ifname, ifindex)
	if err != nil || l == nil {
		return false, err
	}
	if bound != ifindex {
		return false, removeLink(l, pin)
	}
	defer l.Close()
	if err := l.Update(prog); err != nil {
		return false, fmt.Errorf("update link pinned at %s: %w", pin, err)
	}
	return true, nil
}

// checkProgram refuses a program that is nil, closed or not of type want
// with ErrProgramType, before anything is attached: a closed program's
// descriptor would otherwise reach the kernel only after a qdisc was
// made for it.
func checkProgram(p *ebpf.Program, want ebpf.ProgramType) error {
	switch {
	case p == nil:
		return fmt.Errorf("%w: need %s, have no program", ErrProgramType, want)
	case p.FD() < 0:
		return fmt.Errorf("%w: the %s program is closed", ErrProgramType, p.Type())
	case p.Type() != want:
		return fmt.Errorf("%w: need %s, have %s", ErrProgramType, want, p.Type())
	}
	return nil
}

func programID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, err
	}
	id, ok := info.ID()
	if !ok {
		return 0, fmt.Errorf("program info has no ID")
	}
	return id, nil
}

// ourFilter returns the filter of ours on the hook of dev: at our handle
// and priority, with our name prefix, and marked under this Attacher's pin
// directory. Without the marker the filter is another agent's that uses
// this library with a pin directory of its own.
func (a *Attacher) ourFilter(dev netlink.Link, dir Direction) (*netlink.BpfFilter, error) {
	filters, err := filterList(dev, clsactParent(dir))
	if err != nil {
		return nil, err
	}
	for _, f := range filters {
		if !ours(f) {
			continue
		}
		if has, err := a.findMarker(filtersDir, tcHook(dir).String(), dev); err != nil || !has {
			return nil, err
		}
		return f.(*netlink.BpfFilter), nil
	}
	return nil, nil
}

// foreignAtOurSlot fails with ErrOccupied if a filter that is not this
// Attacher's sits at ClsactHandle and ClsactPriority on the hook: a filter
// replace there would swap another agent's program for ours.
func (a *Attacher) foreignAtOurSlot(dev netlink.Link, dir Direction) error {
	filters, err := filterList(dev, clsactParent(dir))
	if err != nil {
		return err
	}
	mine, err := a.ourFilter(dev, dir)
	if err != nil {
		return err
	}
	for _, f := range filters {
		at := f.Attrs()
		if at.Handle != ClsactHandle || at.Priority != ClsactPriority {
			continue
		}
		if !ours(f) {
			return fmt.Errorf("%w: a %s filter not named %s* sits at handle %#x priority %#x",
				ErrOccupied, f.Type(), FilterNamePrefix, ClsactHandle, ClsactPriority)
		}
		if mine == nil {
			return fmt.Errorf("%w: the filter at handle %#x priority %#x is of an Attacher with another pin directory",
				ErrOccupied, ClsactHandle, ClsactPriority)
		}
	}
	return nil
}

// ours reports whether f has the handle, priority and name prefix of the
// filters this library adds (through any pin directory).
func ours(f netlink.Filter) bool {
	bf, ok := f.(*netlink.BpfFilter)
	return ok && bf.Handle == ClsactHandle && bf.Priority == ClsactPriority &&
		strings.HasPrefix(bf.Name, FilterNamePrefix)
}

// filterList lists the filters on a clsact parent of dev, none if it has no
// clsact qdisc; it retries a dump the kernel interrupted.
func filterList(dev netlink.Link, parent uint32) ([]netlink.Filter, error) {
	has, err := hasClsact(dev)
	if err != nil || !has {
		return nil, err
	}
	var filters []netlink.Filter
	err = retryDump(func() (err error) { filters, err = netlink.FilterList(dev, parent); return })
	return filters, err
}

func hasClsact(dev netlink.Link) (bool, error) {
	var qdiscs []netlink.Qdisc
	err := retryDump(func() (err error) { qdiscs, err = netlink.QdiscList(dev); return })
	if err != nil {
		return false, err
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			return true, nil
		}
	}
	return false, nil
}

// retryDump runs a netlink dump again while the kernel reports it
// interrupted (its results may then be inconsistent).
func retryDump(dump func() error) error {
	var err error
	for range 10 {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

func clsact(ifindex int) *netlink.Clsact {
	return &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_CLSACT,
	}}
}

// marker is the path of a marker directory under sub recording that this
// Attacher made a clsact qdisc or filter (kind) on dev:
// <sub>/<kind>-<ifname>-<ifindex>. The index ties the marker to one
// interface, so that another made later under the same name does not
// inherit it, and the qdisc or filter another agent adds there is never
// taken for ours.
func (a *Attacher) marker(sub, kind string, dev netlink.Link) string {
	return filepath.Join(a.pinDir, sub, fmt.Sprintf("%s-%s-%d", kind, dev.Attrs().Name, dev.Attrs().Index))
}

// qdiscMarker records that this library created the clsact qdisc of dev.
func (a *Attacher) qdiscMarker(dev netlink.Link) string { return a.marker(qdiscsDir, "clsact", dev) }

// filterMarker records that the filter of ours on the hook of dev is this
// Attacher's (this pin directory's).
func (a *Attacher) filterMarker(dev netlink.Link, dir Direction) string {
	return a.marker(filtersDir, tcHook(dir).String(), dev)
}

// mark creates the marker of kind on dev, and removes those of earlier
// interfaces of its name, whose qdiscs and filters went with them.
func (a *Attacher) mark(sub, kind string, dev netlink.Link) error {
	if err := a.pruneMarkers(sub, kind, dev); err != nil {
		return err
	}
	if err := os.Mkdir(a.marker(sub, kind, dev), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// pruneMarkers removes the markers of kind of earlier interfaces of dev's
// name that are gone; one whose interface was renamed stays, for
// findMarker to move when that interface is next attached or detached.
func (a *Attacher) pruneMarkers(sub, kind string, dev netlink.Link) error {
	dir := filepath.Join(a.pinDir, sub)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	prefix := kind + "-" + dev.Attrs().Name + "-"
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		index, err := strconv.Atoi(rest)
		if !ok || err != nil || index == dev.Attrs().Index {
			continue
		}
		var notFound netlink.LinkNotFoundError
		if _, err := netlink.LinkByIndex(index); !errors.As(err, &notFound) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// findMarker reports whether dev has the marker of kind, moving one made
// under an earlier name of the interface (the same index) to its name
// now.
func (a *Attacher) findMarker(sub, kind string, dev netlink.Link) (bool, error) {
	want := a.marker(sub, kind, dev)
	if _, err := os.Stat(want); err == nil {
		return true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	dir := filepath.Join(a.pinDir, sub)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	suffix := "-" + strconv.Itoa(dev.Attrs().Index)
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), kind+"-")
		if !ok || !strings.HasSuffix(name, suffix) || len(name) == len(suffix) {
			continue
		}
		if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(dir, e.Name()), unix.AT_FDCWD, want, unix.RENAME_NOREPLACE); err != nil {
			return false, fmt.Errorf("move marker %s after a rename of its interface: %w", e.Name(), err)
		}
		return true, nil
	}
	return false, nil
}

// unmark removes a marker.
func unmark(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (a *Attacher) attachClsact(dev netlink.Link, dir Direction, prog *ebpf.Program) (Attachment, error) {
	ifname, ifindex := dev.Attrs().Name, dev.Attrs().Index
	info, err := prog.Info()
	if err != nil {
		return Attachment{}, err
	}
	has, err := hasClsact(dev)
	if err != nil {
		return Attachment{}, err
	}
	if has {
		if err := a.foreignAtOurSlot(dev, dir); err != nil {
			return Attachment{}, err
		}
	}
	if !has {
		if err := a.mark(qdiscsDir, "clsact", dev); err != nil {
			return Attachment{}, fmt.Errorf("mark clsact qdisc: %w", err)
		}
		if err := netlink.QdiscAdd(clsact(ifindex)); err != nil && !errors.Is(err, unix.EEXIST) {
			os.Remove(a.qdiscMarker(dev))
			return Attachment{}, fmt.Errorf("add clsact qdisc: %w", err)
		}
	}
	// The marker goes first: a crash between the two leaves a marker with
	// no filter, which claims nothing, never a filter of ours unmarked,
	// which a restarted agent could not take back.
	if err := a.mark(filtersDir, tcHook(dir).String(), dev); err != nil {
		return Attachment{}, fmt.Errorf("mark filter: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    clsactParent(dir),
			Handle:    ClsactHandle,
			Priority:  ClsactPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         FilterNamePrefix + info.Name,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		err = fmt.Errorf("replace filter: %w", err)
		if mine, ferr := a.ourFilter(dev, dir); ferr != nil || mine == nil {
			err = errors.Join(err, ferr, unmark(a.filterMarker(dev, dir)))
		}
		if !has {
			// Take back the qdisc made for the filter the kernel refused.
			err = errors.Join(err, a.removeQdiscIfOurs(dev))
		}
		return Attachment{}, err
	}
	// A TCX link of ours would run before the filter and hide it; it can
	// only be left from a run that had TCX, and goes now that the filter
	// is in place.
	if err := a.removeStalePin(tcHook(dir), ifname, ifindex); err != nil {
		return Attachment{}, err
	}
	id, err := programID(prog)
	if err != nil {
		return Attachment{}, err
	}
	return Attachment{Hook: tcHook(dir), Ifname: ifname, Ifindex: ifindex, Mode: ModeClsact, Program: id}, nil
}

func (a *Attacher) removeStalePin(h Hook, ifname string, ifindex int) error {
	l, _, pin, err := a.findPin(h, ifname, ifindex)
	if err != nil || l == nil {
		return err
	}
	return removeLink(l, pin)
}

// removeFilter deletes our filter on the hook, if any. It leaves the
// clsact qdisc: deleting a qdisc deactivates the device for a moment,
// dropping the packets in flight, so the qdisc goes only when the hooks
// are detached (removeQdiscIfOurs).
func (a *Attacher) removeFilter(dev netlink.Link, dir Direction) error {
	f, err := a.ourFilter(dev, dir)
	if err != nil || f == nil {
		return err
	}
	if err := netlink.FilterDel(f); err != nil {
		return fmt.Errorf("delete filter: %w", err)
	}
	return unmark(a.filterMarker(dev, dir))
}

// removeQdiscIfOurs deletes the clsact qdisc of dev if this library
// created it and no filter is left on it.
func (a *Attacher) removeQdiscIfOurs(dev netlink.Link) error {
	if err := a.pruneMarkers(qdiscsDir, "clsact", dev); err != nil {
		return err
	}
	if has, err := a.findMarker(qdiscsDir, "clsact", dev); err != nil || !has {
		return err
	}
	marker := a.qdiscMarker(dev)
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := filterList(dev, parent)
		if err != nil {
			return err
		}
		if len(filters) > 0 {
			return nil
		}
	}
	if err := netlink.QdiscDel(clsact(dev.Attrs().Index)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete clsact qdisc: %w", err)
	}
	return os.Remove(marker)
}

// DetachTC detaches the program this library attached to the ingress or
// egress of ifname: it detaches and unpins the TCX link, or deletes the
// clsact filter (and the clsact qdisc, if this library created it and no
// filter is left on it). It returns an error wrapping ErrNotAttached if
// there was nothing to detach.
func (a *Attacher) DetachTC(ifname string, dir Direction) error {
	unlock, err := a.lockTC()
	if err != nil {
		return fmt.Errorf("attach: detach tc %s on %s: %w", dir, ifname, err)
	}
	defer unlock()
	if err := a.detachTC(ifname, dir); err != nil {
		return fmt.Errorf("attach: detach tc %s on %s: %w", dir, ifname, err)
	}
	return nil
}

func (a *Attacher) detachTC(ifname string, dir Direction) error {
	dev, ifindex, err := ifaceIfAny(ifname)
	if err != nil {
		return err
	}
	l, _, pin, err := a.findPin(tcHook(dir), ifname, ifindex)
	if err != nil {
		return err
	}
	found := l != nil
	if found {
		if err := removeLink(l, pin); err != nil {
			return err
		}
	}
	if dev == nil {
		if found {
			return nil // The interface took its filters with it.
		}
		return fmt.Errorf("%w: %s", ErrNoInterface, ifname)
	}
	f, err := a.ourFilter(dev, dir)
	if err != nil {
		return err
	}
	if f == nil && !found {
		return ErrNotAttached
	}
	if err := a.removeFilter(dev, dir); err != nil {
		return err
	}
	return a.removeQdiscIfOurs(dev)
}

// listFilters returns the clsact filters of ours on every interface of the
// calling thread's namespace.
func (a *Attacher) listFilters() ([]Attachment, error) {
	var links []netlink.Link
	if err := retryDump(func() (err error) { links, err = netlink.LinkList(); return }); err != nil {
		return nil, err
	}
	var out []Attachment
	for _, dev := range links {
		for _, dir := range []Direction{Ingress, Egress} {
			f, err := a.ourFilter(dev, dir)
			if err != nil {
				return nil, fmt.Errorf("filters of %s: %w", dev.Attrs().Name, err)
			}
			if f == nil {
				continue
			}
			out = append(out, Attachment{
				Hook:    tcHook(dir),
				Ifname:  dev.Attrs().Name,
				Ifindex: dev.Attrs().Index,
				Mode:    ModeClsact,
				Program: ebpf.ProgramID(f.Id),
			})
		}
	}
	return out, nil
}
