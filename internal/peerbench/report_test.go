package peerbench

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// columns are the result table's columns in order: the peers as peers
// lists them, each with its targets, among the peers that have results.
func columns(results []result) [][2]string {
	var cols [][2]string
	for _, p := range peers {
		for _, t := range []string{"direct", "first", "last"} {
			if slices.ContainsFunc(results, func(r result) bool { return r.Peer == p.name && r.Target == t }) {
				cols = append(cols, [2]string{p.name, t})
			}
		}
	}
	return cols
}

// size is the cell's size, for sizes.
func (r result) size() int { return r.N }

// sizes are the sizes with results, in increasing order.
func sizes[R interface{ size() int }](results []R) []int {
	var ns []int
	for _, r := range results {
		if !slices.Contains(ns, r.size()) {
			ns = append(ns, r.size())
		}
	}
	slices.Sort(ns)
	return ns
}

func find(results []result, n int, col [2]string) (result, bool) {
	i := slices.IndexFunc(results, func(r result) bool { return r.N == n && r.Peer == col[0] && r.Target == col[1] })
	if i < 0 {
		return result{}, false
	}
	return results[i], true
}

// resultsCSV is one line per cell, latencies in ns.
func resultsCSV(results []result) []byte {
	var b strings.Builder
	b.WriteString("n,peer,target,p50_ns,p99_ns,samples\n")
	for _, r := range results {
		fmt.Fprintf(&b, "%d,%s,%s,%.0f,%.0f,%d\n", r.N, r.Peer, r.Target, r.P50, r.P99, r.Samples)
	}
	return []byte(b.String())
}

// resultsMarkdown is a p50 and a p99 table, in µs, a row per size.
func resultsMarkdown(results []result) []byte {
	var b strings.Builder
	cols := columns(results)
	for _, q := range []struct {
		name string
		get  func(result) float64
	}{{"p50", func(r result) float64 { return r.P50 }}, {"p99", func(r result) float64 { return r.P99 }}} {
		fmt.Fprintf(&b, "**TCP connect latency %s (µs)**\n\n| N services |", q.name)
		for _, c := range cols {
			fmt.Fprintf(&b, " %s %s |", c[0], c[1])
		}
		b.WriteString("\n| --- |" + strings.Repeat(" --- |", len(cols)) + "\n")
		for _, n := range sizes(results) {
			fmt.Fprintf(&b, "| %d |", n)
			for _, c := range cols {
				if r, ok := find(results, n, c); ok {
					fmt.Fprintf(&b, " %s |", micros(q.get(r)))
				} else {
					b.WriteString(" - |")
				}
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}

// micros formats ns as µs with three significant digits, without an
// exponent.
func micros(ns float64) string {
	us := ns / 1000
	if us >= 100 {
		return fmt.Sprintf("%.0f", us)
	}
	return fmt.Sprintf("%.3g", us)
}

// svgColors are the lines' colours, by peer.
var svgColors = map[string]string{
	baseline: "#888888", "sluice-tc": "#1f77b4", "sluice-sock": "#17becf",
	"iptables-legacy": "#d62728", "iptables-nft": "#ff7f0e", "nftables": "#2ca02c",
	"exec": "#888888", "sluice": "#1f77b4", "sluice-nopolicy": "#17becf", "ipset": "#9467bd",
}

// resultsSVG plots p50 to the last service (the floor's direct
// connect) against N, on a logarithmic latency axis.
func resultsSVG(results []result) []byte {
	const w, h, left, right, top, bottom = 640, 400, 60, 170, 30, 50
	ns := sizes(results)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range results {
		lo, hi = min(lo, r.P50/1000), max(hi, r.P50/1000)
	}
	lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
	if hi <= lo {
		hi = lo * 10
	}
	x := func(i int) float64 {
		if len(ns) == 1 {
			return left
		}
		return left + float64(i)*float64(w-left-right)/float64(len(ns)-1)
	}
	y := func(us float64) float64 {
		return top + (math.Log10(hi)-math.Log10(us))/(math.Log10(hi)-math.Log10(lo))*float64(h-top-bottom)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14">TCP connect p50 to the last service (µs, log scale)</text>`+"\n", left)
	for d := lo; d <= hi*1.001; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			v := d * m
			if v > hi*1.001 {
				break
			}
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e0e0e0"/><text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n",
				left, w-right, y(v), y(v), left-6, y(v)+4, v)
		}
	}
	for i, n := range ns {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(i), h-bottom+18, n)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">N services</text>`+"\n", (left+w-right)/2, h-12)
	row := 0
	for _, p := range peers {
		target := "last"
		if p.name == baseline {
			target = "direct"
		}
		var pts []string
		for i, n := range ns {
			if r, ok := find(results, n, [2]string{p.name, target}); ok {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(i), y(r.P50/1000)))
			}
		}
		if len(pts) == 0 {
			continue
		}
		c := svgColors[p.name]
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", c, strings.Join(pts, " "))
		for _, pt := range pts {
			xy := strings.Split(pt, ",")
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], c)
		}
		ly := top + 10 + row*18
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"/><text x="%d" y="%d">%s</text>`+"\n",
			w-right+12, w-right+32, ly, ly, c, w-right+38, ly+4, p.name)
		row++
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

// bar is one bar of barsSVG.
type bar struct {
	Label string
	Value float64
	Color string
}

// barsSVG draws bars as horizontal bars on a logarithmic axis, labelled
// with their values, for the control-plane and policy figures.
func barsSVG(title string, bars []bar) []byte {
	const w, left, right, top, rowH = 720, 190, 70, 40, 18
	h := top + rowH*len(bars) + 30
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range bars {
		if r.Value > 0 {
			lo, hi = min(lo, r.Value), max(hi, r.Value)
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 1, 10
	}
	lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
	if hi <= lo {
		hi = lo * 10
	}
	x := func(v float64) float64 {
		return left + (math.Log10(max(v, lo))-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*float64(w-left-right)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="10" y="18" font-size="14">%s</text>`+"\n", html.EscapeString(title))
	for d := lo; d <= hi*1.001; d *= 10 {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#e0e0e0"/><text x="%.1f" y="%d" text-anchor="middle">%g</text>`+"\n",
			x(d), x(d), top-4, h-24, x(d), h-10, d)
	}
	for i, r := range bars {
		y := top + i*rowH
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-6, y+12, html.EscapeString(r.Label))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y+2, x(r.Value)-left, rowH-4, r.Color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", x(r.Value)+4, y+12, millis(r.Value))
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}
