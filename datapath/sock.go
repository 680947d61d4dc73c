package datapath

import (
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicenet/sluice/bpf"
)

// SockProgram is a program of connect-time load balancing and the cgroup
// hook it is written for.
type SockProgram struct {
	// Program is the loaded program, closed with the Datapath.
	Program *ebpf.Program
	// Attach is the cgroup hook to attach Program to
	// (ebpf.AttachCGroupInet4Connect, ...).
	Attach ebpf.AttachType
}

// SockPrograms are the programs of connect-time load balancing, for the
// cgroup v2 hooks of an embedder's choice (the root cgroup's, for every
// process of the host and its pods). A connect or unconnected UDP sendmsg
// to a service frontend goes to the backend the TC service stage would
// choose, over the same maps; recvmsg and getpeername show the frontend
// again. The Datapath does not attach them: an agent passes each to
// attach.Attacher.AttachCgroup with its Attach type.
type SockPrograms struct {
	// Connect4 and Connect6 balance connect (TCP, UDP) to a frontend.
	Connect4, Connect6 SockProgram
	// Sendmsg4 and Sendmsg6 balance unconnected UDP sendmsg.
	Sendmsg4, Sendmsg6 SockProgram
	// Recvmsg4 and Recvmsg6 show a backend's datagrams as the frontend's.
	Recvmsg4, Recvmsg6 SockProgram
	// Getpeername4 and Getpeername6 show a balanced socket's peer as the
	// frontend.
	Getpeername4, Getpeername6 SockProgram
}

// All returns the programs in a fixed order, for attaching every hook in
// a loop.
func (s SockPrograms) All() []SockProgram {
	return []SockProgram{s.Connect4, s.Connect6, s.Sendmsg4, s.Sendmsg6, s.Recvmsg4, s.Recvmsg6,
		s.Getpeername4, s.Getpeername6}
}

// SockPrograms returns this generation's programs of connect-time load
// balancing (the zero SockPrograms for a nil Datapath). A restarted agent
// attaches these where the previous process attached its own
// (AttachCgroup on the same pin directory updates the pinned links):
// the maps are shared, so a socket balanced by the old programs keeps its
// translation under the new ones.
func (d *Datapath) SockPrograms() SockPrograms {
	if d == nil {
		return SockPrograms{}
	}
	o := &d.sock
	return SockPrograms{
		Connect4:     SockProgram{o.SlSockConnect4, ebpf.AttachCGroupInet4Connect},
		Connect6:     SockProgram{o.SlSockConnect6, ebpf.AttachCGroupInet6Connect},
		Sendmsg4:     SockProgram{o.SlSockSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		Sendmsg6:     SockProgram{o.SlSockSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		Recvmsg4:     SockProgram{o.SlSockRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
		Recvmsg6:     SockProgram{o.SlSockRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
		Getpeername4: SockProgram{o.SlSockGetpeername4, ebpf.AttachCgroupInet4GetPeername},
		Getpeername6: SockProgram{o.SlSockGetpeername6, ebpf.AttachCgroupInet6GetPeername},
	}
}

// DestroyStaleSockets aborts every connected UDP socket of the calling
// thread's network namespace that connect-time balancing sent to a
// backend its service no longer has (nat.Table removed it; a terminating
// backend is still the service's): the socket is disconnected, its next
// receive fails with ECONNABORTED (a send without an address with
// EDESTADDRREQ), so its application reconnects and meets a live
// backend rather than send to a removed one for ever (a DNS client's
// connected socket, say). Unconnected sockets choose again at every
// sendmsg and are left alone. It returns how many sockets it aborted.
//
// A socket iterator sees one network namespace, the one the calling OS
// thread is in: call it after a Sync that removed backends, once in each
// namespace whose processes are balanced (the host's, each pod's), from a
// goroutine locked to a thread in that namespace. Where the kernel lacks
// the bpf_sock_destroy kfunc (Linux 6.5) it returns an error wrapping
// ebpf.ErrNotSupported, and such sockets keep their removed backend until
// their application reconnects.
func (d *Datapath) DestroyStaleSockets() (int, error) {
	n, err := d.destroyStaleSockets()
	if err != nil {
		return 0, fmt.Errorf("destroy stale sockets: %w", err)
	}
	return n, nil
}

func (d *Datapath) destroyStaleSockets() (int, error) {
	if err := d.opened(); err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(); err != nil {
		return 0, err
	}
	// Loaded on first use: the kfunc is the only part of connect-time
	// balancing that needs Linux 6.5.
	if d.sockDestroy.SlSockDestroyUdp == nil {
		if err := haveSockDestroy(); err != nil {
			return 0, err
		}
		spec, err := bpf.LoadSockDestroySpec()
		if err != nil {
			return 0, err
		}
		err = spec.LoadAndAssign(&d.sockDestroy, &ebpf.CollectionOptions{MapReplacements: d.state.replacements(spec)})
		if err != nil {
			return 0, fmt.Errorf("load socket iterator: %w", err)
		}
	}
	it, err := link.AttachIter(link.IterOptions{Program: d.sockDestroy.SlSockDestroyUdp})
	if err != nil {
		return 0, fmt.Errorf("socket iterator: %w", err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return 0, fmt.Errorf("socket iterator: %w", err)
	}
	defer rd.Close()
	// One byte for each socket aborted.
	n, err := io.Copy(io.Discard, rd)
	if err != nil {
		return 0, fmt.Errorf("socket iterator: %w", err)
	}
	return int(n), nil
}

// haveSockDestroy says whether the kernel has the bpf_sock_destroy kfunc,
// from its BTF; a variable, so that a test can take the kfunc away.
var haveSockDestroy = func() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	var fn *btf.Func
	if err := spec.TypeByName("bpf_sock_destroy", &fn); errors.Is(err, btf.ErrNotFound) {
		return fmt.Errorf("kfunc bpf_sock_destroy: %w", ebpf.ErrNotSupported)
	} else if err != nil {
		return fmt.Errorf("kfunc bpf_sock_destroy: %w", err)
	}
	return nil
}
