package datapath

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSlotPool(t *testing.T) {
	p := newSlotPool("policy slots", 10, 4)
	got, err := p.take(3)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint32{10, 11, 12}, got); diff != "" {
		t.Errorf("first take (-want +got):\n%s", diff)
	}
	if _, err := p.take(2); err == nil {
		t.Error("took 2 slots with 1 free")
	}
	p.release(11, 99, 11) // outside and double releases are ignored
	got, err = p.take(2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint32{13, 11}, got); diff != "" {
		t.Errorf("take after release (-want +got):\n%s", diff)
	}
	if p.free != 0 {
		t.Errorf("free = %d, want 0", p.free)
	}
	if p.mark(9) || p.mark(14) {
		t.Error("marked a slot outside the pool")
	}
	p.release(10, 11, 12, 13)
	if !p.mark(12) || p.free != 3 {
		t.Errorf("mark(12): free = %d, want 3", p.free)
	}
}
