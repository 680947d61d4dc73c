package datapath

import "fmt"

// slotPool hands out the indexes of a map the runtime owns: policy slots
// of sl_policy_jumps, counter slots of sl_counters. Slots need not be
// contiguous, so a pool never fragments into uselessness.
type slotPool struct {
	what  string
	first uint32
	used  []bool
	free  int
	next  int // where the next search starts, so slots rotate
}

// newSlotPool returns a pool of n slots numbered from first.
func newSlotPool(what string, first, n uint32) *slotPool {
	return &slotPool{what: what, first: first, used: make([]bool, n), free: int(n)}
}

// take allocates n slots, or none with an error when fewer are free.
func (p *slotPool) take(n int) ([]uint32, error) {
	if n > p.free {
		return nil, fmt.Errorf("%d %s needed, %d of %d free", n, p.what, p.free, len(p.used))
	}
	slots := make([]uint32, 0, n)
	for i := 0; len(slots) < n; i++ {
		j := (p.next + i) % len(p.used)
		if !p.used[j] {
			p.used[j] = true
			slots = append(slots, p.first+uint32(j))
		}
	}
	p.next = int(slots[n-1]-p.first+1) % len(p.used)
	p.free -= n
	return slots, nil
}

// mark records slot as in use, for slots found in pinned state at Open.
// It reports false for a slot outside the pool.
func (p *slotPool) mark(slot uint32) bool {
	i, ok := p.index(slot)
	if !ok {
		return false
	}
	if !p.used[i] {
		p.used[i] = true
		p.free--
	}
	return true
}

// release returns slots to the pool; slots outside it or already free are
// ignored.
func (p *slotPool) release(slots ...uint32) {
	for _, s := range slots {
		if i, ok := p.index(s); ok && p.used[i] {
			p.used[i] = false
			p.free++
		}
	}
}

func (p *slotPool) index(slot uint32) (int, bool) {
	if slot < p.first || slot-p.first >= uint32(len(p.used)) {
		return 0, false
	}
	return int(slot - p.first), true
}
