package polprog

import (
	"encoding/binary"
	"errors"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
)

// TestUpdateGenerations holds Update to its rotation of generations: each
// one writes only the generation packets left two switches ago, makes it
// hold the new rules' contents exactly and switches to it, and leaves the
// generation in use and the one just left (which packets may still read
// until a grace period passes) as they were. It reads every classifier
// map back from the kernel around each of a dozen updates of all kinds.
func TestUpdateGenerations(t *testing.T) {
	k := newKernel(t)
	const n = 600
	policy := func(u int) Rules {
		rs := benchRules(n, func(i int) Rule { return benchRule(i, "tcp", true) })
		mid := &rs[n/2]
		switch u % 4 {
		case 1:
			mid.Action, mid.ID = ActionDeny, mid.ID+1<<20
		case 2:
			mid.SrcNets = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(u), 0}), 24)}
		case 3:
			mid.DstPorts = []PortRange{{First: uint16(9000 + u), Last: uint16(9100 + u)}}
		}
		return Rules{NoMatchRuleID: 1 << 40, Tiers: []Tier{{Name: "t", EndAction: EndDeny, EndRuleID: 1 << 41,
			Policies: []Policy{{Name: "p", Rules: rs}}}}}
	}
	c, err := Compile(policy(0), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.classes) == 0 {
		t.Fatal("no classified run")
	}
	p := k.loadCompiled(t, c)
	s := p.class
	before := kernelGenerations(t, s)
	for u := 1; u <= 12; u++ {
		cur := s.gen
		if err := p.Update(policy(u)); err != nil {
			t.Fatalf("update %d: %v", u, err)
		}
		next := (cur + 1) % generations
		var epoch uint32
		if err := s.lookups[genMapName].Lookup(uint32(0), &epoch); err != nil {
			t.Fatal(err)
		}
		if got := int(epoch & genMask); got != next || s.gen != next {
			t.Fatalf("update %d: generation map says %d, Program %d; want %d", u, got, s.gen, next)
		}
		after := kernelGenerations(t, s)
		if want := wantGeneration(s, next); !cmp.Equal(after[next], want) {
			t.Errorf("update %d: generation %d (switched to) differs from the rules (-kernel +want):\n%s", u, next, cmp.Diff(after[next], want))
		}
		for _, g := range []int{cur, (cur + generations - 1) % generations} {
			if !cmp.Equal(after[g], before[g]) {
				t.Errorf("update %d: generation %d, which packets may read, was written (-after +before):\n%s", u, g, cmp.Diff(after[g], before[g]))
			}
		}
		before = after
	}
}

// kernelGenerations reads every generation of every classifier map of s
// from the kernel: by generation and map name, the entries keyed as in
// generation 0, zero values of arrays left out. Arrays are read in
// batches (the port dimensions' have 64 Ki keys a generation).
func kernelGenerations(t *testing.T, s *classState) []map[string]map[string]string {
	t.Helper()
	out := make([]map[string]map[string]string, generations)
	for g := range out {
		out[g] = map[string]map[string]string{}
	}
	for _, name := range slices.Sorted(maps.Keys(s.written[s.gen])) {
		shape := s.written[s.gen][name]
		for g := range out {
			out[g][name] = map[string]string{}
		}
		add := func(key, val []byte) {
			g, k := 0, slices.Clone(key)
			if shape.stride == 0 {
				g = int(binary.NativeEndian.Uint32(k[4:8]))
				binary.NativeEndian.PutUint32(k[4:8], 0)
			} else {
				i := binary.NativeEndian.Uint32(k)
				g, k = int(i/shape.stride), []byte(u32Key(i%shape.stride))
			}
			if g >= generations {
				t.Fatalf("map %s: key %x of generation %d", name, key, g)
			}
			if shape.array && !slices.ContainsFunc(val, func(b byte) bool { return b != 0 }) {
				return
			}
			out[g][name][string(k)] = string(val)
		}
		m := s.lookups[name]
		if !shape.array {
			var key, val []byte
			it := m.Iterate()
			for it.Next(&key, &val) {
				add(key, val)
			}
			if err := it.Err(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		const chunk = 4096
		keys := make([]uint32, chunk)
		vals := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(shape.valueSize, reflect.TypeFor[byte]())), chunk, chunk)
		var cursor ebpf.MapBatchCursor
		for {
			n, err := m.BatchLookup(&cursor, keys, vals.Interface(), nil)
			for i := range n {
				add([]byte(u32Key(keys[i])), vals.Index(i).Bytes())
			}
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			if err != nil {
				t.Fatalf("map %s: %v", name, err)
			}
		}
	}
	return out
}

// wantGeneration is what s says generation g holds, in kernelGeneration's
// form.
func wantGeneration(s *classState, g int) map[string]map[string]string {
	out := map[string]map[string]string{}
	for name, m := range s.written[g] {
		want := map[string]string{}
		for k, v := range m.entries {
			if m.array && !slices.ContainsFunc([]byte(v), func(b byte) bool { return b != 0 }) {
				continue
			}
			want[k] = v
		}
		out[name] = want
	}
	return out
}
