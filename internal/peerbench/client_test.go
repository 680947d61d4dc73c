package peerbench

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The client runs in a child process (the test binary again, started by
// TestMain when clientEnv is set): connect-time balancing acts on the
// sockets of the processes of a cgroup, so the child is started inside one
// (CLONE_INTO_CGROUP), and every side's client is such a child so that all
// are timed alike.

// clientEnv names the variable holding the path of a child's request.
const clientEnv = "SLUICE_PEERBENCH_CLIENT"

// clientCPU is the CPU the client pins itself to, as the reference run
// did (its servers ran on CPU 0).
const clientCPU = 1

// request is what the parent asks of a client.
type request struct {
	// NetNS is the name of the namespace to connect from.
	NetNS string
	// Dests are connected to in turn, each Warmup times untimed and then
	// Count times timed.
	Dests         []netip.AddrPort
	Warmup, Count int
	// FloodFor, when set, makes the client send floodPayload-byte UDP
	// datagrams to Dests[0] from one socket for that long instead of
	// connecting.
	FloodFor time.Duration
	// ConnectTimeout bounds each connect; zero means
	// defaultConnectTimeout. A test that expects a connect to fail sets
	// it short.
	ConnectTimeout time.Duration
	// RealTime makes the client's thread SCHED_FIFO at realTimePriority,
	// so that no ordinary task on its CPU preempts it between a SYN and
	// its SYN-ACK; the client fails if the kernel refuses.
	RealTime bool
}

// defaultConnectTimeout fails a connect whose SYN was lost after 3 s
// rather than after minutes of retries.
const defaultConnectTimeout = 3 * time.Second

// realTimePriority is a RealTime client's SCHED_FIFO priority: low, so
// that the kernel's own real-time threads (threaded interrupts at 50,
// migration) still preempt it.
const realTimePriority = 10

// floodPayload is the flood's UDP payload: 18 bytes make a 64-byte
// Ethernet frame with its FCS, as the reference run sent.
const floodPayload = 18

// reply is what a client saw: per destination, the nanoseconds of each
// timed connect.
type reply struct {
	Nanos [][]int64
	// Policy is the scheduling policy the client's thread ran under
	// (unix.SCHED_FIFO with request.RealTime), so that a test can see it
	// took.
	Policy uint32
	// Sent, Elapsed and CPU are a flood's datagrams sent, its
	// nanoseconds and the nanoseconds of CPU its thread was charged (user
	// and system: the whole forwarding path runs in the sender's
	// syscalls on veth).
	Sent, Elapsed, CPU int64
	Err                string
}

// TestMain makes the test binary a client (runClient) when clientEnv is
// set, and runs the tests otherwise.
func TestMain(m *testing.M) {
	if path := os.Getenv(clientEnv); path != "" {
		if err := runClient(path); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runClient is the child: it reads the request at path and writes its
// reply to path+".out".
func runClient(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var req request
	if err := json.Unmarshal(b, &req); err != nil {
		return err
	}
	var rep reply
	err = enterClient(req)
	if err == nil {
		var attr *unix.SchedAttr
		if attr, err = unix.SchedGetAttr(0, 0); err == nil {
			rep.Policy = attr.Policy
		}
	}
	if err == nil && req.FloodFor > 0 {
		rep.Sent, rep.Elapsed, rep.CPU, err = flood(req.Dests[0], req.FloodFor)
	} else if err == nil {
		rep.Nanos, err = connectLoop(req)
	}
	if err != nil {
		rep.Err = err.Error()
	}
	out, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	return os.WriteFile(path+".out", out, 0o600)
}

// enterClient pins the calling thread to clientCPU, moves it into the
// request's namespace and, with RealTime, makes it SCHED_FIFO, for good:
// the child exits after one request.
func enterClient(req request) error {
	runtime.LockOSThread()
	var cpus unix.CPUSet
	cpus.Set(clientCPU)
	if runtime.NumCPU() > clientCPU {
		if err := unix.SchedSetaffinity(0, &cpus); err != nil {
			return fmt.Errorf("pin to CPU %d: %w", clientCPU, err)
		}
	}
	ns, err := netns.GetFromName(req.NetNS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", req.NetNS, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter netns %s: %w", req.NetNS, err)
	}
	if req.RealTime {
		attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: realTimePriority}
		if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
			return fmt.Errorf("make the client thread SCHED_FIFO %d (request.RealTime): %w", realTimePriority, err)
		}
	}
	return nil
}

// connectLoop does the request's connects, on the thread enterClient
// prepared.
func connectLoop(req request) ([][]int64, error) {
	out := make([][]int64, len(req.Dests))
	timeout := req.ConnectTimeout
	if timeout == 0 {
		timeout = defaultConnectTimeout
	}
	for i, dest := range req.Dests {
		sa := &unix.SockaddrInet4{Port: int(dest.Port()), Addr: dest.Addr().As4()}
		for n := range req.Warmup + req.Count {
			d, err := connectOnce(sa, timeout)
			if err != nil {
				return nil, fmt.Errorf("connect %d to %s: %w", n, dest, err)
			}
			if n >= req.Warmup {
				out[i] = append(out[i], d.Nanoseconds())
			}
		}
	}
	return out, nil
}

// flood sends floodPayload-byte datagrams to dest from one connected
// socket for d and returns how many it sent and how long it took. A send
// the socket's buffer refuses is retried, so the count is of datagrams
// that left. It also returns the CPU time the thread was charged.
func flood(dest netip.AddrPort, d time.Duration) (sent, elapsed, cpu int64, err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, 0, 0, err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(dest.Port()), Addr: dest.Addr().As4()}); err != nil {
		return 0, 0, 0, err
	}
	payload := make([]byte, floodPayload)
	var before, after unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &before); err != nil {
		return 0, 0, 0, err
	}
	start := time.Now()
	for {
		// The clock is read every 256 sends, not every send.
		for range 256 {
			if _, err := unix.Write(fd, payload); err == nil {
				sent++
			} else if err != unix.ENOBUFS && err != unix.EAGAIN && err != unix.EINTR && err != unix.ECONNREFUSED {
				return sent, 0, 0, fmt.Errorf("send to %s: %w", dest, err)
			}
		}
		if e := time.Since(start); e >= d {
			if err := unix.Getrusage(unix.RUSAGE_THREAD, &after); err != nil {
				return 0, 0, 0, err
			}
			used := after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano()
			return sent, e.Nanoseconds(), used, nil
		}
	}
}

// connectOnce times one blocking connect to sa: the SYN's round trip, the
// only packet that walks the NAT rules. The socket closes with a reset
// (SO_LINGER 0) so that no TIME_WAIT piles up. A connect not done after
// timeout fails.
func connectOnce(sa unix.Sockaddr, timeout time.Duration) (time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return 0, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return 0, err
	}
	start := time.Now()
	for {
		err = unix.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
	}
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	return d, nil
}

// runClientIn runs a child client in the cgroup (the directory of a
// cgroup v2) and returns its reply: the connect times per destination,
// or a flood's counts.
func runClientIn(tb testing.TB, cgroup string, req request) (reply, error) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "request.json")
	b, err := json.Marshal(req)
	if err != nil {
		return reply{}, err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return reply{}, err
	}
	cg, err := os.Open(cgroup)
	if err != nil {
		return reply{}, err
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), clientEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if out, err := cmd.CombinedOutput(); err != nil {
		return reply{}, fmt.Errorf("client in %s: %w\n%s", req.NetNS, err, out)
	}
	b, err = os.ReadFile(path + ".out")
	if err != nil {
		return reply{}, err
	}
	var rep reply
	if err := json.Unmarshal(b, &rep); err != nil {
		return reply{}, err
	}
	if rep.Err != "" {
		return reply{}, fmt.Errorf("client in %s: %s", req.NetNS, rep.Err)
	}
	return rep, nil
}
