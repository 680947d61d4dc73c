package datapath

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// TestAttack11XDPRestartUnderTraffic: while the first process's XDP
// program (as attached: a descriptor of its own) runs on every CPU, a
// second process opens the same pins, configures the interface and the
// first one closes: every run drops the denied packet, and each drop is
// counted once. After the close, the first program still drops (its
// generation's arrays are pinned); the second's drops too.
func TestAttack11XDPRestartUnderTraffic(t *testing.T) {
	opts := Options{ConntrackEntries: 1 << 10, MaxInterfaces: 4, PolicySlots: 32, PinDir: atk2PinDir(t)}
	cfg := Interface{Kind: Host, XDP: xdpTiers}
	denied := testpkt.MustBytes(t, testpkt.TCPv4(ap("10.1.1.1:1000"), ap("192.0.2.1:22"), testpkt.SYN, nil))
	d1 := openSmall(t, opts)
	if err := d1.SetInterface(loIfindex, cfg); err != nil {
		t.Fatal(err)
	}
	attached, err := d1.XDP().Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer attached.Close()
	before := xdpCounts(t, d1)
	cpus := runtime.NumCPU()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	drops := make([]uint64, cpus)
	errs := make([]error, cpus)
	for cpu := range cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if errs[cpu] = unix.SchedSetaffinity(0, &set); errs[cpu] != nil {
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ret, err := attached.Run(&ebpf.RunOptions{Data: denied})
				if err == nil && ret != xdpDrop {
					err = fmt.Errorf("cpu %d run %d: xdp returned %d", cpu, i, ret)
				}
				if err != nil {
					errs[cpu] = err
					return
				}
				drops[cpu]++
			}
		}()
	}
	d2 := openSmall(t, opts)
	err = d2.SetInterface(loIfindex, cfg)
	if err == nil {
		err = d1.Close()
	}
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		if e != nil {
			t.Error(e)
		}
	}
	var total uint64
	for _, n := range drops {
		total += n
	}
	got := diffCounts(before, xdpCounts(t, d2))
	if got[bpf.ReasonDroppedByPolicy] != total || countSum(got) != total {
		t.Errorf("%d drops returned, counted %v", total, got)
	}
	if ret, err := attached.Run(&ebpf.RunOptions{Data: denied}); err != nil || ret != xdpDrop {
		t.Errorf("first generation's program after its Close: %d, %v; want drop", ret, err)
	}
	if got := runXDP(t, d2, denied); got != xdpDrop {
		t.Errorf("second generation's program: %d, want drop", got)
	}
}
