package nat

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func backendsN(n int, weight func(i int) uint32) []MaglevBackend {
	out := make([]MaglevBackend, n)
	for i := range out {
		out[i] = MaglevBackend{Key: fmt.Sprintf("10.0.%d.%d:8080", i/256, i%256), Weight: weight(i)}
	}
	return out
}

func shares(table []uint32, n int) []int {
	out := make([]int, n)
	for _, b := range table {
		out[b]++
	}
	return out
}

// TestMaglevEqualShares: with equal weights every backend holds
// floor(M/N) or ceil(M/N) entries.
func TestMaglevEqualShares(t *testing.T) {
	for _, n := range []int{1, 2, 3, 10, 100} {
		table, err := Maglev(backendsN(n, func(int) uint32 { return 1 }), DefaultMaglevSize)
		if err != nil {
			t.Fatal(err)
		}
		lo, hi := DefaultMaglevSize/n, (DefaultMaglevSize+n-1)/n
		for i, s := range shares(table, n) {
			if s < lo || s > hi {
				t.Errorf("%d backends: backend %d holds %d entries, want %d to %d", n, i, s, lo, hi)
			}
		}
	}
}

// TestMaglevWeights: shares follow weights to within 1% of the table.
func TestMaglevWeights(t *testing.T) {
	weights := []uint32{1, 2, 3, 10, 0, 5}
	bs := backendsN(len(weights), func(i int) uint32 { return weights[i] })
	table, err := Maglev(bs, DefaultMaglevSize)
	if err != nil {
		t.Fatal(err)
	}
	var sum uint32
	for _, w := range weights {
		sum += w
	}
	for i, s := range shares(table, len(bs)) {
		want := float64(DefaultMaglevSize) * float64(weights[i]) / float64(sum)
		if d := float64(s) - want; d > DefaultMaglevSize/100 || d < -DefaultMaglevSize/100 {
			t.Errorf("backend %d (weight %d) holds %d entries, want about %.0f", i, weights[i], s, want)
		}
	}
}

// TestMaglevOrderIndependent: the table depends on keys and weights, not
// on the order backends are given in.
func TestMaglevOrderIndependent(t *testing.T) {
	bs := backendsN(20, func(i int) uint32 { return uint32(1 + i%3) })
	a, err := Maglev(bs, 4099)
	if err != nil {
		t.Fatal(err)
	}
	rev := slices.Clone(bs)
	slices.Reverse(rev)
	b, err := Maglev(rev, 4099)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if bs[a[i]].Key != rev[b[i]].Key {
			t.Fatalf("entry %d: %s in one order, %s in the other", i, bs[a[i]].Key, rev[b[i]].Key)
		}
	}
}

// TestMaglevDisruption: removing one of N backends must move its own
// share, 1/N of the entries; Maglev moves more, less so in larger tables
// (measured over these trials: 1.6 times the ideal on average at 16,381
// entries, at worst 2.6; 1.18 at 65,537; 1.11 at 131,071). The bounds are
// 3 times the ideal at the default size and 1.5 times at Katran's 65,537,
// each over random backend sets of 5 to 64. Adding a backend is the same
// pair of tables read the other way.
func TestMaglevDisruption(t *testing.T) {
	for _, tc := range []struct {
		size  int
		bound float64
	}{{DefaultMaglevSize, 3}, {65537, 1.5}} {
		r := rand.New(rand.NewPCG(3, 4))
		var sum float64
		const trials = 10
		for trial := 0; trial < trials; trial++ {
			n := 5 + r.IntN(60)
			bs := backendsN(n, func(int) uint32 { return 1 })
			r.Shuffle(len(bs), func(i, j int) { bs[i], bs[j] = bs[j], bs[i] })
			before, err := Maglev(bs, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			gone := r.IntN(n)
			rest := slices.Delete(slices.Clone(bs), gone, gone+1)
			after, err := Maglev(rest, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			moved := 0
			for i := range before {
				if bs[before[i]].Key != rest[after[i]].Key {
					moved++
				}
			}
			ideal := float64(tc.size) / float64(n)
			if float64(moved) < ideal-1 || float64(moved) > tc.bound*ideal {
				t.Errorf("size %d, trial %d: removing 1 of %d backends moved %d entries, want %.0f to %.0f",
					tc.size, trial, n, moved, ideal, tc.bound*ideal)
			}
			sum += float64(moved) / ideal
		}
		t.Logf("size %d: removing one backend moved %.2f times the ideal share on average", tc.size, sum/trials)
	}
}

func TestMaglevErrors(t *testing.T) {
	one := backendsN(1, func(int) uint32 { return 1 })
	for _, tc := range []struct {
		name     string
		backends []MaglevBackend
		size     int
	}{
		{"not prime", one, 16380},
		{"too big", one, 131101},
		{"too small", one, 1},
		{"no backends", nil, 7},
		{"all weight 0", backendsN(3, func(int) uint32 { return 0 }), 7},
		{"more backends than entries", backendsN(11, func(int) uint32 { return 1 }), 7},
		{"duplicate key", []MaglevBackend{{Key: "a", Weight: 1}, {Key: "a", Weight: 2}}, 7},
	} {
		if _, err := Maglev(tc.backends, tc.size); !errors.Is(err, ErrMaglev) {
			t.Errorf("%s: error %v, want ErrMaglev", tc.name, err)
		}
	}
}

func BenchmarkMaglev(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		bs := backendsN(n, func(int) uint32 { return 1 })
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := Maglev(bs, DefaultMaglevSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
