package datapath

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
)

// Connect-time balancing acts on the sockets of the processes in a
// cgroup, so its tests run their clients in a child process: the test
// binary again, started inside the test's cgroup (CLONE_INTO_CGROUP),
// which enters a network namespace, runs a list of socket operations and
// writes what each saw to a file.

// sockChildEnv names the variable that makes TestSockChild the client: the
// path of its request.
const sockChildEnv = "SLUICE_SOCK_CHILD"

// Kinds of sockOp.
const (
	sockTCP            = "tcp"              // connect, getpeername, read the server's name to EOF
	sockUDPConnected   = "udp-connected"    // connect, getpeername, send, recvfrom the name
	sockUDPUnconnected = "udp-unconnected"  // sendto, recvfrom the name
	sockUDPConnectOnly = "udp-connect"      // connect and getpeername, no traffic
	sockUDPHold        = "udp-hold"         // udp-connected, and the socket kept open for the hold
	sockUDPConnectLoop = "udp-connect-loop" // Repeat times socket, connect, close: Nanos
)

// sockOp is one socket a client opens.
type sockOp struct {
	Kind string
	// Dest is where the socket connects or sends.
	Dest netip.AddrPort
	// Bind, when valid, is the source address bound first.
	Bind netip.Addr
	// V6 opens an IPv6 socket even for an IPv4 (IPv4-mapped) Dest.
	V6 bool
	// Repeat is how many connects a sockUDPConnectLoop times.
	Repeat int
	// Steps are what a sockScript does with its one socket.
	Steps []sockStep
}

// sockResult is what one sockOp saw.
type sockResult struct {
	// Errno is the connect's or first send's error, 0 on success.
	Errno syscall.Errno
	// Reply is what the server answered.
	Reply string
	// Peer is getpeername's answer, From recvfrom's.
	Peer, From netip.AddrPort
	// Socket and NetNS are the socket's and its namespace's cookies.
	Socket, NetNS uint64
	// NAT is the socket's storage in bpf.MapSockNAT, if HasNAT.
	NAT    bpf.SockNAT
	HasNAT bool
	// After is the error a held socket meets after the hold: the one
	// pending, else its send's and receive's; AfterReply their answer.
	After      syscall.Errno
	AfterReply string
	// Nanos is the time a sockUDPConnectLoop took.
	Nanos int64
	// Steps is what each step of a sockScript saw.
	Steps []string
}

// sockRequest is what the parent asks of a client.
type sockRequest struct {
	// NetNS is the name of the namespace to run in.
	NetNS string
	Ops   []sockOp
	// Hold keeps the sockUDPHold sockets open until the parent releases
	// them (startSockClient).
	Hold bool
}

// runSockClient runs ops in a child process inside the cgroup and the
// named network namespace, and returns their results. natMap is
// bpf.MapSockNAT, handed to the child to read each socket's storage.
func runSockClient(t testing.TB, cgroup, netns string, natMap *ebpf.Map, ops []sockOp) []sockResult {
	t.Helper()
	return startSockClient(t, cgroup, netns, natMap, ops, false).wait(t)
}

// sockClient is a running child of startSockClient.
type sockClient struct {
	cmd *exec.Cmd
	req string
	out bytes.Buffer
	n   int
}

// startSockClient starts runSockClient's child. With hold, the child
// keeps its sockHold sockets open once the operations are done, says so
// (ready), and waits for release before it uses them once more.
func startSockClient(t testing.TB, cgroup, netns string, natMap *ebpf.Map, ops []sockOp, hold bool) *sockClient {
	t.Helper()
	c := &sockClient{req: filepath.Join(t.TempDir(), "request.json"), n: len(ops)}
	b, err := json.Marshal(sockRequest{NetNS: netns, Ops: ops, Hold: hold})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.req, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cg, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	fd, err := unix.Dup(natMap.FD())
	if err != nil {
		t.Fatal(err)
	}
	mapFile := os.NewFile(uintptr(fd), "sl_sock_nat")
	defer mapFile.Close()
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestSockChild$", "-test.count=1", "-test.v")
	c.cmd.Env = append(os.Environ(), sockChildEnv+"="+c.req)
	c.cmd.ExtraFiles = []*os.File{mapFile}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	return c
}

// ready waits until a holding child has done its operations.
func (c *sockClient) ready(t testing.TB) {
	t.Helper()
	for range 200 {
		if _, err := os.Stat(c.req + ".ready"); err == nil {
			return
		}
		if c.cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("socket client never got ready:\n%s", c.out.String())
}

// release lets a holding child use its held sockets again.
func (c *sockClient) release(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(c.req+".go", nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// wait waits for the child and returns its results.
func (c *sockClient) wait(t testing.TB) []sockResult {
	t.Helper()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("socket client: %v\n%s", err, c.out.String())
	}
	b, err := os.ReadFile(c.req + ".out")
	if err != nil {
		t.Fatal(err)
	}
	var res []sockResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res) != c.n {
		t.Fatalf("socket client: %d results for %d operations", len(res), c.n)
	}
	return res
}

// TestSockChild is the socket client of the connect-time tests when
// sockChildEnv is set, and does nothing otherwise.
func TestSockChild(t *testing.T) {
	path := os.Getenv(sockChildEnv)
	if path == "" {
		return
	}
	if err := sockChild(path); err != nil {
		t.Fatal(err)
	}
}

func sockChild(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var req sockRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return err
	}
	// The thread's namespace is the sockets': this goroutine keeps its
	// thread, which is discarded when the process exits.
	runtime.LockOSThread()
	ns, err := os.Open(filepath.Join("/run/netns", req.NetNS))
	if err != nil {
		return err
	}
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter %s: %w", req.NetNS, err)
	}
	ns.Close()
	natMap, err := ebpf.NewMapFromFD(3)
	if err != nil {
		return fmt.Errorf("socket storage map: %w", err)
	}
	defer natMap.Close()
	res := make([]sockResult, len(req.Ops))
	held := map[int]int{}
	for i, op := range req.Ops {
		fd := -1
		if res[i], fd, err = sockRun(op, natMap); err != nil {
			return fmt.Errorf("operation %d %+v: %w", i, op, err)
		}
		if fd >= 0 {
			held[i] = fd
		}
	}
	if req.Hold {
		if err := sockHold(path, held, res); err != nil {
			return err
		}
	}
	if b, err = json.Marshal(res); err != nil {
		return err
	}
	return os.WriteFile(path+".out", b, 0o600)
}

// sockHold says the operations are done (path.ready), waits for the
// parent's release (path.go), and uses each held socket once more.
func sockHold(path string, held map[int]int, res []sockResult) error {
	if err := os.WriteFile(path+".ready", nil, 0o600); err != nil {
		return err
	}
	for {
		if _, err := os.Stat(path + ".go"); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 64)
	for i, fd := range held {
		// A pending error (an aborted socket's) comes first; a live
		// socket has nothing to read yet.
		_, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			if _, err = unix.Write(fd, []byte("who")); err == nil {
				var n int
				if n, _, err = unix.Recvfrom(fd, buf, 0); err == nil {
					res[i].AfterReply = string(buf[:n])
				}
			}
		}
		if res[i].After, err = errnoOf(err); err != nil {
			return err
		}
		unix.Close(fd)
	}
	return nil
}

// sockRun runs one operation, and returns the socket of a sockUDPHold
// (else -1), which the caller closes.
func sockRun(op sockOp, natMap *ebpf.Map) (sockResult, int, error) {
	if op.Kind == sockUDPConnectLoop {
		res, err := sockConnectLoop(op)
		return res, -1, err
	}
	if op.Kind == sockScript || op.Kind == sockScriptTCP {
		return sockRunScript(op, natMap)
	}
	res, fd, err := sockDo(op, natMap)
	if op.Kind == sockUDPHold && err == nil {
		return res, fd, nil
	}
	if fd >= 0 {
		unix.Close(fd)
	}
	return res, -1, err
}

// sockConnectLoop times op.Repeat UDP sockets opened, connected to
// op.Dest and closed.
func sockConnectLoop(op sockOp) (sockResult, error) {
	var res sockResult
	family := unix.AF_INET
	if op.Dest.Addr().Is6() {
		family = unix.AF_INET6
	}
	dest := sockaddrOf(op.Dest, family == unix.AF_INET6)
	start := time.Now()
	for range op.Repeat {
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return res, err
		}
		err = unix.Connect(fd, dest)
		unix.Close(fd)
		if err != nil {
			return res, fmt.Errorf("connect: %w", err)
		}
	}
	res.Nanos = time.Since(start).Nanoseconds()
	return res, nil
}

// sockDo runs one operation and returns its socket, or -1.
func sockDo(op sockOp, natMap *ebpf.Map) (sockResult, int, error) {
	var res sockResult
	v6 := op.V6 || op.Dest.Addr().Is6()
	family, typ := unix.AF_INET, unix.SOCK_DGRAM
	if v6 {
		family = unix.AF_INET6
	}
	if op.Kind == sockTCP {
		typ = unix.SOCK_STREAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return res, -1, err
	}
	tv := unix.Timeval{Sec: 3}
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			return res, fd, err
		}
	}
	if op.Bind.IsValid() {
		if err := unix.Bind(fd, sockaddrOf(netip.AddrPortFrom(op.Bind, 0), v6)); err != nil {
			return res, fd, fmt.Errorf("bind: %w", err)
		}
	}
	dest := sockaddrOf(op.Dest, v6)
	payload := []byte("who")
	if op.Kind == sockUDPUnconnected {
		err = unix.Sendto(fd, payload, 0, dest)
	} else {
		err = unix.Connect(fd, dest)
	}
	if res.Errno, err = errnoOf(err); err != nil {
		return res, fd, err
	}
	if res.Socket, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
		return res, fd, err
	}
	if res.NetNS, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err != nil {
		return res, fd, err
	}
	switch err := natMap.Lookup(int32(fd), &res.NAT); {
	case err == nil:
		res.HasNAT = true
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return res, fd, fmt.Errorf("socket storage: %w", err)
	}
	if res.Errno != 0 {
		return res, fd, nil
	}
	if op.Kind != sockUDPUnconnected {
		sa, err := unix.Getpeername(fd)
		if err != nil {
			return res, fd, fmt.Errorf("getpeername: %w", err)
		}
		res.Peer = addrPortOf(sa)
	}
	buf := make([]byte, 64)
	switch op.Kind {
	case sockTCP:
		for {
			n, err := unix.Read(fd, buf)
			if err != nil {
				return res, fd, fmt.Errorf("read: %w", err)
			}
			if n == 0 {
				break
			}
			res.Reply += string(buf[:n])
		}
	case sockUDPConnected, sockUDPHold:
		if _, err := unix.Write(fd, payload); err != nil {
			return res, fd, fmt.Errorf("send: %w", err)
		}
		fallthrough
	case sockUDPUnconnected:
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return res, fd, fmt.Errorf("recvfrom: %w", err)
		}
		res.Reply, res.From = string(buf[:n]), addrPortOf(from)
	}
	return res, fd, nil
}

// errnoOf splits err into an errno the test asserts on and any other error.
func errnoOf(err error) (syscall.Errno, error) {
	var errno syscall.Errno
	if err == nil || errors.As(err, &errno) {
		return errno, nil
	}
	return 0, err
}

// sockaddrOf is ap as a socket address of the family v6 says: an IPv4
// address on an IPv6 socket is IPv4-mapped.
func sockaddrOf(ap netip.AddrPort, v6 bool) unix.Sockaddr {
	if v6 {
		return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
}

// addrPortOf is a socket address as an AddrPort, IPv4-mapped ones
// unmapped.
func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// sockAttachment is connect-time balancing's programs attached to a
// cgroup through the attach package, as an agent attaches them.
type sockAttachment struct {
	a      *attach.Attacher
	cgroup string
}

// attachSock attaches every program of connect-time balancing to the
// cgroup (links pinned on a bpffs of the test's), detached in t.Cleanup.
func attachSock(t testing.TB, cgroup string, d *Datapath) *sockAttachment {
	t.Helper()
	a, err := attach.Open(testutil.TempBPFFS(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &sockAttachment{a: a, cgroup: cgroup}
	s.replace(t, d)
	t.Cleanup(func() {
		for _, p := range d.SockPrograms().All() {
			if err := a.DetachCgroup(cgroup, p.Attach); err != nil {
				t.Error(err)
			}
		}
	})
	return s
}

// replace attaches d's programs, replacing those attached before in place
// (the pinned links are updated: no socket call meets a hook without a
// program).
func (s *sockAttachment) replace(t testing.TB, d *Datapath) {
	t.Helper()
	for _, p := range d.SockPrograms().All() {
		if _, err := s.a.AttachCgroup(s.cgroup, p.Attach, p.Program); err != nil {
			t.Fatal(err)
		}
	}
}
