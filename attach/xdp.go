package attach

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// XDPMode is the XDP mode AttachXDP is asked for.
type XDPMode uint8

const (
	// XDPAuto attaches in native (driver) mode, and in generic mode if the
	// driver refuses.
	XDPAuto XDPMode = iota
	// XDPNative attaches in native mode only.
	XDPNative
	// XDPGeneric attaches in generic (skb) mode only.
	XDPGeneric
)

// String returns "auto", "native" or "generic".
func (m XDPMode) String() string {
	switch m {
	case XDPAuto:
		return "auto"
	case XDPNative:
		return "native"
	case XDPGeneric:
		return "generic"
	}
	return fmt.Sprintf("XDPMode(%d)", uint8(m))
}

// fits reports whether an attachment in force in mode m satisfies the
// request r.
func (r XDPMode) fits(m Mode) bool {
	switch r {
	case XDPNative:
		return m == ModeXDPNative
	case XDPGeneric:
		return m == ModeXDPGeneric
	}
	return true
}

// AttachXDP attaches prog, an XDP program, to the interface ifname in the
// mode asked for, through an XDP link pinned at <pinDir>/links/xdp-<ifname>.
// If this library attached a program there before (by this process or an
// earlier one using the same pin directory), it replaces it atomically;
// the mode cannot change in place, so a request for another mode than the
// one in force fails with ErrModeMismatch. Another agent's XDP program on
// the interface fails it with ErrOccupied, in any mode. The returned
// Attachment's Mode is the mode the kernel reports in force.
func (a *Attacher) AttachXDP(ifname string, prog *ebpf.Program, mode XDPMode) (Attachment, error) {
	unlock, err := a.lock()
	if err != nil {
		return Attachment{}, fmt.Errorf("attach: xdp (%s) on %s: %w", mode, ifname, err)
	}
	defer unlock()
	at, err := a.attachXDP(ifname, prog, mode)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach: xdp (%s) on %s: %w", mode, ifname, err)
	}
	return at, nil
}

func (a *Attacher) attachXDP(ifname string, prog *ebpf.Program, mode XDPMode) (Attachment, error) {
	if mode > XDPGeneric {
		return Attachment{}, fmt.Errorf("invalid XDP mode %d", mode)
	}
	if err := checkProgram(prog, ebpf.XDP); err != nil {
		return Attachment{}, err
	}
	dev, err := iface(ifname)
	if err != nil {
		return Attachment{}, err
	}
	ifindex := dev.Attrs().Index
	pin := a.linkPin(HookXDP, ifname)
	at := Attachment{Hook: HookXDP, Ifname: ifname, Ifindex: ifindex, Pin: pin}

	if l, bound, pin, err := a.findPin(HookXDP, ifname, ifindex); err != nil {
		return Attachment{}, err
	} else if l != nil {
		if bound != ifindex {
			if err := removeLink(l, pin); err != nil {
				return Attachment{}, err
			}
		} else {
			defer l.Close()
			if at.Mode, err = xdpModeInForce(ifindex); err != nil {
				return Attachment{}, err
			}
			if !mode.fits(at.Mode) {
				return Attachment{}, fmt.Errorf("%w: %s is in force", ErrModeMismatch, at.Mode)
			}
			if err := l.Update(prog); err != nil {
				return Attachment{}, fmt.Errorf("update link pinned at %s: %w", pin, err)
			}
			if at.Program, err = programID(prog); err != nil {
				return Attachment{}, err
			}
			return at, nil
		}
	}

	l, err := attachXDPMode(ifindex, prog, mode)
	if err != nil {
		return Attachment{}, err
	}
	err = l.Pin(pin)
	l.Close() // Without the pin, closing detaches.
	if err != nil {
		return Attachment{}, err
	}
	if at.Mode, err = xdpModeInForce(ifindex); err != nil {
		return Attachment{}, err
	}
	if at.Program, err = programID(prog); err != nil {
		return Attachment{}, err
	}
	return at, nil
}

// attachXDPMode creates the XDP link in the mode asked for; XDPAuto falls
// back to generic mode when the driver refuses native mode.
func attachXDPMode(ifindex int, prog *ebpf.Program, mode XDPMode) (link.Link, error) {
	opts := link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode}
	if mode != XDPGeneric {
		l, err := kernel.attachXDP(opts)
		if err == nil || mode == XDPNative || occupied(err) {
			return l, occupiedErr(err)
		}
		opts.Flags = link.XDPGenericMode
		l, gerr := kernel.attachXDP(opts)
		if gerr != nil {
			return nil, errors.Join(fmt.Errorf("native: %w", err), fmt.Errorf("generic: %w", occupiedErr(gerr)))
		}
		return l, nil
	}
	opts.Flags = link.XDPGenericMode
	l, err := kernel.attachXDP(opts)
	return l, occupiedErr(err)
}

// occupied reports whether the kernel refused an XDP link because another
// program is attached to the interface: EBUSY for one in the same mode,
// EEXIST for one in the other (native and generic programs exclude each
// other). Another mode would meet the same program, so XDPAuto does not
// fall back past it.
func occupied(err error) bool {
	return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST)
}

func occupiedErr(err error) error {
	if occupied(err) {
		return fmt.Errorf("%w: another program is attached to the XDP hook: %w", ErrOccupied, err)
	}
	return err
}

// xdpModeInForce asks the kernel in which mode the XDP program on ifindex
// runs; 0 for an interface that is gone.
func xdpModeInForce(ifindex int) (Mode, error) {
	if ifindex == 0 {
		return 0, nil
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return 0, fmt.Errorf("look up interface %d: %w", ifindex, err)
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return 0, fmt.Errorf("no XDP program on %s", l.Attrs().Name)
	}
	switch x.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return ModeXDPNative, nil
	case nl.XDP_ATTACHED_SKB:
		return ModeXDPGeneric, nil
	}
	return 0, fmt.Errorf("XDP program on %s in unexpected attach mode %d", l.Attrs().Name, x.AttachMode)
}

// DetachXDP detaches and unpins the XDP link this library attached to
// ifname. It returns an error wrapping ErrNotAttached if there was none.
// The interface need not exist any more.
func (a *Attacher) DetachXDP(ifname string) error {
	unlock, err := a.lock()
	if err != nil {
		return fmt.Errorf("attach: detach xdp on %s: %w", ifname, err)
	}
	defer unlock()
	_, ifindex, err := ifaceIfAny(ifname)
	var l link.Link
	var pin string
	if err == nil {
		l, _, pin, err = a.findPin(HookXDP, ifname, ifindex)
	}
	if err == nil && l == nil {
		err = ErrNotAttached
	}
	if err == nil {
		err = removeLink(l, pin)
	}
	if err != nil {
		return fmt.Errorf("attach: detach xdp on %s: %w", ifname, err)
	}
	return nil
}
