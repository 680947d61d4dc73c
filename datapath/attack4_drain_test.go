package datapath

import (
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
)

// TestAttack4DrainKeepsPromotedFlows resizes the conntrack table again
// and again while replies of established flows run at lo's egress hook
// (whose policy denies everything) in the order the drain walks the
// table. A packet whose live lookup misses just before the drain writes
// the entry into the live table finds the drain's copy after its own
// NOEXIST copy fails; had it deleted the draining entry anyway, the
// drain's delete would find nothing and undo its write, and the flow
// would be gone from both tables, its next reply sent to policy (and
// dropped). Every flow must survive every resize.
func TestAttack4DrainKeepsPromotedFlows(t *testing.T) {
	h := newHarnessWith(t, Options{ConntrackEntries: 1 << 13})
	const flows = 4000
	h.openFlows(flows)
	frames := replyFrames(t, flows)
	index := map[bpf.CTKey]int{}
	for i := range flows {
		k, _ := ctKeyOf(testpkt.ProtoTCP, resizeServer, resizeClient(i))
		index[k] = i
	}
	// Before the fix the flow was lost within 10 to 145 resizes.
	resizes := 200
	if testing.Short() {
		resizes = 20
	}
	sizes := []uint32{1 << 14, 1 << 13}
	for iter := range resizes {
		// The drain's order: the table's iteration order.
		var order [][]byte
		var k bpf.CTKey
		var v []byte
		it := h.d.state.ct.Iterate()
		for it.Next(&k, &v) {
			if i, ok := index[k]; ok {
				order = append(order, frames[i])
			}
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		if len(order) != flows {
			t.Fatalf("iteration %d: table holds %d of the %d flows before the resize", iter, len(order), flows)
		}
		var stop atomic.Bool
		var drops atomic.Int64
		var wg sync.WaitGroup
		prog := h.program(progEgress)
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			r := rand.New(rand.NewSource(seed))
			pos := r.Intn(len(order))
			pace := r.Intn(3)
			for !stop.Load() {
				ret, err := prog.Run(&ebpf.RunOptions{Data: order[pos%len(order)]})
				if err != nil || ret != tcActOK {
					drops.Add(1)
				}
				for range pace {
					var vv []byte
					h.d.state.ct.Lookup(&k, &vv)
				}
				pos++
			}
		}(int64(iter))
		time.Sleep(time.Millisecond)
		if err := h.d.ResizeConntrack(sizes[iter%2]); err != nil {
			t.Fatal(err)
		}
		stop.Store(true)
		wg.Wait()
		n, err := h.d.Conntrack().Count()
		if err != nil {
			t.Fatal(err)
		}
		if n != flows || drops.Load() != 0 {
			before := h.counters(loIfindex, bpf.HookEgress)
			dropped := 0
			for _, f := range frames {
				if h.run(progEgress, f) != tcActOK {
					dropped++
				}
			}
			t.Logf("afterwards %d of %d replies of established flows dropped; egress reasons %v", dropped, flows, reasonDelta(before, h.counters(loIfindex, bpf.HookEgress)))
			t.Fatalf("resize %d: table holds %d of %d flows after the resize; %d replies of established flows dropped (sent to policy)", iter, n, flows, drops.Load())
		}
	}
}
