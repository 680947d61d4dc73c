package peerbench

import (
	"math"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The statistics of BenchmarkServiceConnectPaired. A pair is one round
// of batches, one per side and state, close together in time; a ratio of
// two of its batch medians cancels what the machine did to both, and the
// pairs' ratios are summarised without assuming their distribution: the
// median, an interval for it from order statistics and a sign test, all
// exact under the one assumption that the pairs are independent.

// pairedLevel is the confidence the median's interval aims at: the
// narrowest order-statistic interval whose exact coverage is at least
// this (for 200 pairs it is 95.9 %).
const pairedLevel = 0.95

// ratioDef is one ratio of two batches of a pair.
type ratioDef struct {
	// Name is the ratio's name in the results.
	Name string
	// Num and Den are the batches' keys in a pair (batchKey).
	Num, Den string
	// Goal, when positive, is what the ratio's median should be below;
	// the sign test asks whether it is.
	Goal float64
}

// ratioSummary is a ratio over all pairs.
type ratioSummary struct {
	Name string
	// Pairs is the number of pairs that had both batches.
	Pairs int
	// Median is the median of the pairs' ratios; Lo and Hi are the
	// order statistics of ranks LoRank and HiRank (from 1) around it,
	// an interval that holds the true median with probability Coverage.
	Median, Lo, Hi float64
	LoRank, HiRank int
	Coverage       float64
	Goal           float64
	// Below and Ties are the pairs whose ratio is below Goal and equal
	// to it; P is the sign test's p-value for a median below Goal.
	Below, Ties int
	P           float64
}

// sampleMedian returns the median of xs (the mean of the two middle values
// for an even count), or NaN for none.
func sampleMedian(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianNanos is the sampleMedian of connect times in ns.
func medianNanos(ns []int64) float64 {
	xs := make([]float64, len(ns))
	for i, v := range ns {
		xs[i] = float64(v)
	}
	return sampleMedian(xs)
}

// binomHalfCDF returns P(X <= k) for X binomial with n trials of
// probability 1/2, summing the terms in logarithms so that n in the
// hundreds neither overflows nor underflows.
func binomHalfCDF(n, k int) float64 {
	if k < 0 {
		return 0
	}
	if k >= n {
		return 1
	}
	sum := 0.0
	for i := 0; i <= k; i++ {
		sum += math.Exp(logChoose(n, i) - float64(n)*math.Ln2)
	}
	return min(sum, 1)
}

// binomHalfTail returns P(X >= k) for X binomial with n trials of
// probability 1/2, summed directly rather than as 1 - binomHalfCDF, so
// that a p-value far below 1e-16 is not rounded to 0.
func binomHalfTail(n, k int) float64 {
	if k <= 0 {
		return 1
	}
	sum := 0.0
	for i := k; i <= n; i++ {
		sum += math.Exp(logChoose(n, i) - float64(n)*math.Ln2)
	}
	return min(sum, 1)
}

// logChoose is the natural logarithm of n choose k.
func logChoose(n, k int) float64 {
	a, _ := math.Lgamma(float64(n + 1))
	b, _ := math.Lgamma(float64(k + 1))
	c, _ := math.Lgamma(float64(n - k + 1))
	return a - b - c
}

// medianInterval returns the ranks (from 1) of the order statistics
// x(lo) <= x(hi), hi = n+1-lo, that bound the median of n independent
// samples with probability coverage = 1 - 2 P(X <= lo-1), X binomial
// (n, 1/2): the largest lo whose coverage is at least level. When even
// the extremes fall short (n too small), it returns them, 1 and n, with
// their coverage. n < 1 gives zeros.
func medianInterval(n int, level float64) (lo, hi int, coverage float64) {
	if n < 1 {
		return 0, 0, 0
	}
	lo = 1
	for k := 2; k <= (n+1)/2; k++ {
		if 1-2*binomHalfCDF(n, k-1) < level {
			break
		}
		lo = k
	}
	return lo, n + 1 - lo, 1 - 2*binomHalfCDF(n, lo-1)
}

// signTestBelow counts the xs below goal and equal to it, and returns
// the one-sided sign test's p-value for "the median is below goal": the
// chance of at least below values under goal out of the len(xs)-ties
// that differ from it, were the median goal. Ties carry no sign and are
// left out.
func signTestBelow(xs []float64, goal float64) (below, ties int, p float64) {
	for _, x := range xs {
		switch {
		case x < goal:
			below++
		case x == goal:
			ties++
		}
	}
	m := len(xs) - ties
	return below, ties, binomHalfTail(m, below)
}

// pairRatios returns def's ratio in every pair that has both of its
// batches, in the pairs' order.
func pairRatios(pairs []map[string]float64, def ratioDef) []float64 {
	var out []float64
	for _, p := range pairs {
		num, ok1 := p[def.Num]
		den, ok2 := p[def.Den]
		if ok1 && ok2 && den > 0 {
			out = append(out, num/den)
		}
	}
	return out
}

// summarize summarises every ratio of defs over the pairs; a ratio
// that no pair has (a side skipped) is left out.
func summarize(pairs []map[string]float64, defs []ratioDef) []ratioSummary {
	var out []ratioSummary
	for _, def := range defs {
		rs := pairRatios(pairs, def)
		if len(rs) == 0 {
			continue
		}
		s := ratioSummary{Name: def.Name, Pairs: len(rs), Median: sampleMedian(rs), Goal: def.Goal}
		s.LoRank, s.HiRank, s.Coverage = medianInterval(len(rs), pairedLevel)
		sorted := slices.Sorted(slices.Values(rs))
		s.Lo, s.Hi = sorted[s.LoRank-1], sorted[s.HiRank-1]
		if def.Goal > 0 {
			s.Below, s.Ties, s.P = signTestBelow(rs, def.Goal)
		}
		out = append(out, s)
	}
	return out
}

// approx compares the statistics' floats to within rounding, NaN equal
// to NaN.
var approx = cmp.Options{cmpopts.EquateApprox(0, 1e-12), cmpopts.EquateNaNs()}

// TestSampleMedian checks the median of odd, even, unsorted and empty
// inputs.
func TestSampleMedian(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{
		{nil, math.NaN()},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{5, 5, 1, 9, 5}, 5},
	} {
		if diff := cmp.Diff(tc.want, sampleMedian(tc.xs), approx); diff != "" {
			t.Errorf("sampleMedian(%v) (-want +got):\n%s", tc.xs, diff)
		}
	}
}

// TestBinomHalf checks the binomial (n, 1/2) distribution function and
// tail against sums of binomial coefficients over 2^n.
func TestBinomHalf(t *testing.T) {
	type got struct{ CDF, Tail float64 }
	for _, tc := range []struct {
		n, k int
		want got
	}{
		{5, -1, got{0, 1}},
		{5, 0, got{1.0 / 32, 1}},
		{5, 1, got{6.0 / 32, 31.0 / 32}},
		{5, 2, got{16.0 / 32, 26.0 / 32}},
		{5, 5, got{1, 1.0 / 32}},
		{5, 6, got{1, 0}},
		{10, 1, got{11.0 / 1024, 1023.0 / 1024}},
		{4, 3, got{15.0 / 16, 5.0 / 16}},
		// The tail far out is summed, not 1 - CDF rounded to 0:
		// P(X >= 200) for n = 200 is 2^-200.
		{200, 200, got{1, math.Ldexp(1, -200)}},
	} {
		g := got{binomHalfCDF(tc.n, tc.k), binomHalfTail(tc.n, tc.k)}
		if diff := cmp.Diff(tc.want, g, approx); diff != "" {
			t.Errorf("n=%d k=%d (-want +got):\n%s", tc.n, tc.k, diff)
		}
	}
}

// TestMedianInterval checks the order-statistic interval's ranks and
// exact coverage, 1 - 2 P(X <= lo-1), at the level the benchmark uses.
func TestMedianInterval(t *testing.T) {
	type got struct {
		Lo, Hi   int
		Coverage float64
	}
	for _, tc := range []struct {
		n    int
		want got
	}{
		{0, got{0, 0, 0}},
		// One sample: the interval is the sample, which misses the
		// median with probability 1.
		{1, got{1, 1, 0}},
		// Five fall short even with the extremes: 1 - 2/32.
		{5, got{1, 5, 1 - 2.0/32}},
		{6, got{1, 6, 1 - 2.0/64}},
		// x(2), x(8): 1 - 2*10/512; x(3) would give 1 - 2*46/512 < 0.95.
		{9, got{2, 8, 1 - 20.0/512}},
		{10, got{2, 9, 1 - 22.0/1024}},
		// The benchmark's 200 pairs, from exact fractions in Python:
		// x(86), x(115) cover 0.95996...; x(87), x(114) only 0.94403.
		{200, got{86, 115, 0.9599628083866005}},
	} {
		var g got
		g.Lo, g.Hi, g.Coverage = medianInterval(tc.n, pairedLevel)
		if diff := cmp.Diff(tc.want, g, approx); diff != "" {
			t.Errorf("n=%d (-want +got):\n%s", tc.n, diff)
		}
	}
}

// TestSignTestBelow checks the counts and the one-sided p-value, ties
// left out.
func TestSignTestBelow(t *testing.T) {
	type got struct {
		Below, Ties int
		P           float64
	}
	for _, tc := range []struct {
		xs   []float64
		goal float64
		want got
	}{
		// Three of the four non-ties below: P(X >= 3), n = 4, is 5/16.
		{[]float64{0.9, 0.95, 1.2, 1, 0.8}, 1, got{3, 1, 5.0 / 16}},
		{[]float64{1, 2, 3, 4, 5}, 10, got{5, 0, 1.0 / 32}},
		{[]float64{11, 12}, 10, got{0, 0, 1}},
		{[]float64{10, 10}, 10, got{0, 2, 1}},
		{nil, 10, got{0, 0, 1}},
	} {
		var g got
		g.Below, g.Ties, g.P = signTestBelow(tc.xs, tc.goal)
		if diff := cmp.Diff(tc.want, g, approx); diff != "" {
			t.Errorf("%v < %g (-want +got):\n%s", tc.xs, tc.goal, diff)
		}
	}
}

// TestPairRatios checks that a ratio is taken in the pairs with both
// batches and a positive denominator only, in order.
func TestPairRatios(t *testing.T) {
	def := ratioDef{Name: "a-over-b", Num: "a", Den: "b"}
	pairs := []map[string]float64{
		{"a": 6, "b": 3},
		{"a": 5},
		{"a": 1, "b": 0},
		{"a": 9, "b": 12, "c": 1},
	}
	if diff := cmp.Diff([]float64{2, 0.75}, pairRatios(pairs, def), approx); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestSummarize checks the summary of a hand-made set of pairs: the
// median, the interval's order statistics for six pairs (the extremes),
// the sign test against the goal, and that a ratio without any pair is
// left out.
func TestSummarize(t *testing.T) {
	var pairs []map[string]float64
	// Ratios 1.0, 1.2, 0.9, 1.05, 1.3, 1.0 (sorted 0.9 1.0 1.0 1.05
	// 1.2 1.3).
	for _, num := range []float64{10, 12, 9, 10.5, 13, 10} {
		pairs = append(pairs, map[string]float64{"big": num, "small": 10})
	}
	defs := []ratioDef{
		{Name: "big-over-small", Num: "big", Den: "small", Goal: 1.1},
		{Name: "no-goal", Num: "small", Den: "big"},
		{Name: "missing", Num: "big", Den: "other", Goal: 1},
	}
	want := []ratioSummary{
		{
			Name: "big-over-small", Pairs: 6, Median: 1.025, Lo: 0.9, Hi: 1.3, LoRank: 1, HiRank: 6,
			Coverage: 1 - 2.0/64, Goal: 1.1,
			// Four of six below 1.1: P(X >= 4), n = 6, is 22/64.
			Below: 4, P: 22.0 / 64,
		},
		{
			Name: "no-goal", Pairs: 6, Median: (1/1.05 + 1) / 2, Lo: 1 / 1.3, Hi: 1 / 0.9, LoRank: 1, HiRank: 6,
			Coverage: 1 - 2.0/64,
		},
	}
	if diff := cmp.Diff(want, summarize(pairs, defs), approx); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
