package datapath

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
)

// TestAttack11XDPSwitchEveryCPU: test runs pinned to every CPU while the
// interface's XDP policy switches between policies that deny SSH (split
// into parts or not, so slots are retired and handed out again) and, in a
// second phase, is removed and put back: a denied packet meets a policy
// or none, never another's part or a stale handoff; an allowed one always
// passes; and each drop is counted once, as dropped by policy.
func TestAttack11XDPSwitchEveryCPU(t *testing.T) {
	d := openXDP(t)
	denySSH := func(id uint64) []polprog.Tier {
		return []polprog.Tier{{Name: "t", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Rules: []polprog.Rule{
			{ID: id + 100, Action: polprog.ActionAllow, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(80)}},
			{ID: id + 200, Action: polprog.ActionPass, Protocol: "udp"},
			{ID: id, Action: polprog.ActionDeny, Protocol: "tcp", DstPorts: []polprog.PortRange{polprog.Port(22)}}}}}}}
	}
	denied := testpkt.MustBytes(t, testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:22"), testpkt.SYN, nil))
	allowed := testpkt.MustBytes(t, testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:80"), testpkt.SYN, nil))
	cpus := runtime.NumCPU()
	for _, phase := range []struct {
		name   string
		remove bool
	}{{"switch", false}, {"switch and remove", true}} {
		t.Run(phase.name, func(t *testing.T) {
			if err := d.SetInterface(loIfindex, Interface{Kind: Host, XDP: denySSH(1)}); err != nil {
				t.Fatal(err)
			}
			before := xdpCounts(t, d)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			drops := make([]uint64, cpus)
			errs := make([]error, cpus)
			var runs atomic.Uint64
			var failed atomic.Bool
			for cpu := range cpus {
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer failed.Store(true)
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
					var set unix.CPUSet
					set.Set(cpu)
					if err := unix.SchedSetaffinity(0, &set); err != nil {
						errs[cpu] = err
						return
					}
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						for _, f := range []struct {
							frame []byte
							deny  bool
						}{{denied, true}, {allowed, false}} {
							ret, err := d.XDP().Run(&ebpf.RunOptions{Data: f.frame})
							if err != nil {
								errs[cpu] = err
								return
							}
							runs.Add(1)
							if ret == xdpDrop {
								drops[cpu]++
							}
							if (!f.deny && ret != xdpPass) || (f.deny && !phase.remove && ret != xdpDrop) || (ret != xdpDrop && ret != xdpPass) {
								errs[cpu] = fmt.Errorf("cpu %d run %d: xdp returned %d for the packet denied %v", cpu, i, ret, f.deny)
								return
							}
						}
					}
				}()
			}
			var swapErr error
			for i := range 30 {
				cfg := Interface{Kind: Host, XDP: denySSH(uint64(i%3) + 1)}
				d.opts.Policy.SplitJumps = []int{0, 1, 2}[i%3]
				if phase.remove && i%2 == 1 {
					cfg.XDP = nil
				}
				if swapErr = d.SetInterface(loIfindex, cfg); swapErr != nil {
					break
				}
				// Each configuration meets some runs on every CPU.
				for at := runs.Load(); runs.Load() < at+uint64(4*cpus) && !failed.Load(); {
					runtime.Gosched()
				}
			}
			close(stop)
			wg.Wait()
			d.opts.Policy.SplitJumps = 0
			for _, err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			if swapErr != nil {
				t.Fatal(swapErr)
			}
			var total uint64
			for _, n := range drops {
				total += n
			}
			if total == 0 {
				t.Fatal("no drops")
			}
			got := diffCounts(before, xdpCounts(t, d))
			if got[bpf.ReasonDroppedByPolicy] != total || countSum(got) != total {
				t.Errorf("%d drops returned, counted %v", total, got)
			}
		})
	}
}
