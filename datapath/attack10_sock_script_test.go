package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
)

// sockScript is a sockOp that runs its Steps on one UDP socket (IPv6 when
// V6 or Dest is IPv6), the calls a hostile or unusual application makes:
// the attack tests' client. A last step "hold" keeps the socket open for
// startSockClient's hold, like sockUDPHold.
const sockScript = "script"

// sockScriptTCP is sockScript on a TCP socket, whose "sendto" is a TCP
// fast open (MSG_FASTOPEN, without data) and whose "recv" reads what
// arrives.
const sockScriptTCP = "script-tcp"

// sockStep is one call of a sockScript.
type sockStep struct {
	// Do is the call: "bind" (Src), "freebind" (IP_FREEBIND,
	// IPV6_FREEBIND: bind may then name any address), "v6only"
	// (IPV6_V6ONLY), "connect" (Dest), "sendto" (Dest, with
	// Src, when valid, as the IP_PKTINFO or IPV6_PKTINFO source), "send"
	// (on the connected socket, with Src as a sendto's),
	// "recv", "peer" (getpeername), "disconnect" (connect to AF_UNSPEC),
	// "hold".
	Do string
	// Dest is where a connect or sendto goes.
	Dest netip.AddrPort
	// Src is the address a bind binds or a sendto sends from.
	Src netip.Addr
}

// sockRunScript runs a sockScript and returns its socket if held, else -1.
// Each step's result is "ok", an errno's name, getpeername's address, or
// what a recv got and from where.
func sockRunScript(op sockOp, natMap *ebpf.Map) (sockResult, int, error) {
	var res sockResult
	v6 := op.V6 || op.Dest.Addr().Is6()
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	typ, sendFlags, payload := unix.SOCK_DGRAM, 0, []byte("who")
	if op.Kind == sockScriptTCP {
		// No data: the server closes without reading, which would reset
		// the connection before getpeername.
		typ, sendFlags, payload = unix.SOCK_STREAM, unix.MSG_FASTOPEN, nil
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return res, -1, err
	}
	// Short: a policy test waits it out on each denied socket.
	tv := unix.Timeval{Usec: 500000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return res, -1, err
	}
	buf := make([]byte, 64)
	for _, s := range op.Steps {
		var out string
		switch s.Do {
		case "bind":
			err = unix.Bind(fd, sockaddrOf(netip.AddrPortFrom(s.Src, 0), v6))
		case "v6only":
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
		case "freebind":
			if v6 {
				err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
			} else {
				err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
			}
		case "connect":
			err = unix.Connect(fd, sockaddrOf(s.Dest, v6))
		case "sendto":
			_, err = unix.SendmsgN(fd, payload, pktinfo(s.Src, v6), sockaddrOf(s.Dest, v6), sendFlags)
		case "send":
			_, err = unix.SendmsgN(fd, payload, pktinfo(s.Src, v6), nil, 0)
		case "recv":
			var n int
			var from unix.Sockaddr
			if n, from, err = unix.Recvfrom(fd, buf, 0); err == nil && from == nil {
				out = string(buf[:n])
			} else if err == nil {
				out = fmt.Sprintf("%s from %s", buf[:n], addrPortOf(from))
			}
		case "peer":
			var sa unix.Sockaddr
			if sa, err = unix.Getpeername(fd); err == nil {
				out = addrPortOf(sa).String()
			}
		case "disconnect":
			sa := struct {
				family uint16
				pad    [26]byte
			}{family: unix.AF_UNSPEC}
			if _, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa)); e != 0 {
				err = e
			}
		case "hold":
			res.Steps = append(res.Steps, "held")
			res.NAT, res.HasNAT, err = sockStorage(fd, natMap)
			return res, fd, err
		default:
			unix.Close(fd)
			return res, -1, fmt.Errorf("unknown step %q", s.Do)
		}
		if err != nil {
			errno, other := errnoOf(err)
			if other != nil {
				unix.Close(fd)
				return res, -1, fmt.Errorf("%s: %w", s.Do, other)
			}
			out = unix.ErrnoName(errno)
		} else if out == "" {
			out = "ok"
		}
		res.Steps = append(res.Steps, s.Do+": "+out)
	}
	res.NAT, res.HasNAT, err = sockStorage(fd, natMap)
	unix.Close(fd)
	return res, -1, err
}

// pktinfo is the control message that sends from src (IP_PKTINFO,
// IPV6_PKTINFO), or nil when src is not valid.
func pktinfo(src netip.Addr, v6 bool) []byte {
	switch {
	case !src.IsValid():
		return nil
	case v6:
		return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: src.As16()})
	default:
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: src.As4()})
	}
}

// sockStorage reads socket fd's storage in natMap, if it has one.
func sockStorage(fd int, natMap *ebpf.Map) (bpf.SockNAT, bool, error) {
	var st bpf.SockNAT
	switch err := natMap.Lookup(int32(fd), &st); {
	case err == nil:
		return st, true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return st, false, nil
	default:
		return st, false, fmt.Errorf("socket storage: %w", err)
	}
}
