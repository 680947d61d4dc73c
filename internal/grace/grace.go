// Package grace waits for the BPF programs running at the time of the call
// to finish, which writers of multi-buffered maps (generations and a
// switch) need before they rewrite a generation packets used until then.
package grace

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Wait returns once every BPF program that was running when it was called
// has finished: the kernel ends an update of an array of maps with an RCU
// grace period (synchronize_rcu: milliseconds, 15 ms on a busy 2-CPU
// machine), so that user space knows no program still reads the old
// value, and TC and XDP programs run inside RCU read-side sections. A
// sleep would only make that likely. The maps live for one call.
func Wait() error {
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	defer inner.Close()
	outer, err := ebpf.NewMap(&ebpf.MapSpec{
		Type: ebpf.ArrayOfMaps, KeySize: 4, MaxEntries: 1,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1},
	})
	if err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	defer outer.Close()
	if err := outer.Put(uint32(0), inner); err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	return nil
}

// Pending is a grace period started in the background after a switch. The
// zero Pending has none. It is not safe for concurrent use.
type Pending struct {
	done chan error
}

// Start begins a grace period in the background, to be waited for by
// the next Wait.
func (p *Pending) Start() {
	p.done = make(chan error, 1)
	go func(done chan<- error) { done <- Wait() }(p.done)
}

// Wait returns at once when no grace period is pending, else when the one
// Start began ends. Should that one have failed it waits again here, and
// an error leaves the grace period owed to the next call.
func (p *Pending) Wait() error {
	if p.done == nil {
		return nil
	}
	if err := <-p.done; err != nil {
		if err := Wait(); err != nil {
			p.done = make(chan error, 1)
			p.done <- err
			return err
		}
	}
	p.done = nil
	return nil
}
