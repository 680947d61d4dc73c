package polprog

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
)

// The classifier: a run of rules becomes a bit-vector search. Each rule of
// the run is a position, and each field of the packet (a dimension) picks a
// row: the bitmap of positions whose rule that field's value satisfies. The
// rules a packet matches are the positions set in every dimension's row;
// the first in order decides, log positions count and the search goes on.
//
// Rows are exact because each dimension's values fall into classes that
// every rule treats alike: protocols, ICMP type and code pairs, the port
// intervals between range ends, the addresses whose longest matching
// prefix (among the run's prefixes) is the same, and the membership vector
// of the IP sets the run names. A rule whose ports are ranges ORed with
// named-port sets becomes two positions (ranges, or sets) with the same ID
// and action; the first one matched decides.

// dimKind is one dimension of the classifier.
type dimKind int

const (
	dimProto dimKind = iota
	dimICMP
	dimSrcAddr
	dimDstAddr
	dimSrcPort
	dimDstPort
	dimSrcSets
	dimDstSets
	dimSrcNamed
	dimDstNamed
	dimCount
)

// Classifier limits.
const (
	// DefaultClassifierRules is the run length from which consecutive
	// rules are classified rather than checked one by one (see
	// Options.ClassifierRules). Measured (docs/benchmarks.md): at 100
	// random rules the classifier's fixed cost (a lookup per field and per
	// IP set named) still exceeds the linear checks; at 1,000 it is well
	// below.
	DefaultClassifierRules = 256
	// DefaultClassifierBytes bounds the rows one classified run may take
	// (Options.ClassifierBytes); a run that needs more is halved.
	DefaultClassifierBytes = 64 << 20
	// maxClassSets is the most IP sets (or named-port sets) one
	// membership dimension tracks: its rows are every membership vector.
	maxClassSets = 8
	// maxPositions bounds a run's positions (rules plus the extra
	// positions of rules with named ports).
	maxPositions = 1 << 16
)

// Table actions: the u32 after the rule ID in a classifier table value.
// The u64 after the action (and a pad) are the bits of a log rule's other
// positions, which the search clears once the rule logged.
const (
	tableAllow = 1
	tableDeny  = 2
	tablePass  = 3
	tableLog   = 4
)

// tableValueSize is a table value: u64 rule ID, u32 action, u32 pad, u64
// the other positions' bits.
const tableValueSize = 24

// position is one bit of the classifier's bitmaps: a rule, or one
// alternative of a rule whose ports OR ranges with named-port sets.
type position struct {
	r *rule
	// srcNamedAlt, dstNamedAlt: this alternative matches the positive
	// src (dst) ports by named-port set membership, not by range.
	srcNamedAlt, dstNamedAlt bool
}

// classDim is one dimension as built: its rows and how a packet picks one.
type classDim struct {
	kind dimKind
	// rows are the distinct bitmaps; a packet's row index is relative
	// to the first row of this dimension (classLayout.base).
	rows [][]uint64
	// index maps an array dimension's keys to row indexes; keys absent
	// mean row 0. For address dimensions it maps the LPM prefixes.
	index map[uint32]uint32
	// dense is index as a slice by key, made when an update needs it
	// (rowsByKey).
	dense  []uint32
	prefix []prefixRow
	// sets are a membership dimension's set IDs: bit i of the row index
	// is membership of sets[i].
	sets []uint64
	// v4 and v6 are an address dimension's IPv4 and IPv6 stride tables
	// (see buildStride), nil when too large.
	v4, v6 []strideChunk
}

type prefixRow struct {
	p   netip.Prefix
	row uint32
}

// classifier is a built run.
type classifier struct {
	rules []rule
	pos   []position
	words int
	dims  []*classDim
}

// classifiable reports whether r can be a position. Every rule can; the
// function is where a field the classifier does not handle would send its
// rules to the linear code.
func classifiable(r *rule) bool { return r != nil }

// padRule fills the positions left free so that the alternatives of a log
// rule share one bitmap word (its table entry clears the others once it
// logged). Its bits are cleared from every row.
var padRule = rule{proto: -1, notProto: -1, where: "padding"}

// classifierRun returns how many rules from rs[i] one classifier can take:
// classifiable rules naming at most maxClassSets sets per membership
// dimension and adding up to at most maxPositions positions.
func classifierRun(rs []rule, i int) int {
	var sets [4]map[uint64]bool
	for k := range sets {
		sets[k] = map[uint64]bool{}
	}
	npos := 0
	j := i
	for ; j < len(rs); j++ {
		r := &rs[j]
		if !classifiable(r) {
			break
		}
		lists := [4][][]uint64{{r.srcSets, r.notSrcSets}, {r.dstSets, r.notDstSets},
			{r.srcNamed, r.notSrcNamed}, {r.dstNamed, r.notDstNamed}}
		fits := true
		for k, ls := range lists {
			n := len(sets[k])
			for _, l := range ls {
				for _, id := range l {
					if !sets[k][id] {
						n++
					}
				}
			}
			if n > maxClassSets {
				fits = false
			}
		}
		np := len(alternatives(r))
		if !fits || npos+np > maxPositions {
			break
		}
		for k, ls := range lists {
			for _, l := range ls {
				for _, id := range l {
					sets[k][id] = true
				}
			}
		}
		npos += np
	}
	return j - i
}

// alternatives returns r's positions.
func alternatives(r *rule) []position {
	srcAlts, dstAlts := []bool{false}, []bool{false}
	if len(r.srcNamed) > 0 {
		srcAlts = []bool{true}
		if len(r.srcPorts) > 0 {
			srcAlts = []bool{false, true}
		}
	}
	if len(r.dstNamed) > 0 {
		dstAlts = []bool{true}
		if len(r.dstPorts) > 0 {
			dstAlts = []bool{false, true}
		}
	}
	var out []position
	for _, s := range srcAlts {
		for _, d := range dstAlts {
			out = append(out, position{r: r, srcNamedAlt: s, dstNamedAlt: d})
		}
	}
	return out
}

// buildClassifier builds the rows of rs. It returns nil when they would
// take more than maxBytes.
func buildClassifier(rs []rule, maxBytes int) *classifier {
	cl := &classifier{rules: rs}
	for i := range rs {
		alts := alternatives(&rs[i])
		if n := len(alts); n > 1 && rs[i].action == ActionLog && len(cl.pos)%64+n > 64 {
			for len(cl.pos)%64 != 0 {
				cl.pos = append(cl.pos, position{r: &padRule})
			}
		}
		cl.pos = append(cl.pos, alts...)
	}
	cl.words = (len(cl.pos) + 63) / 64
	valid := make([]uint64, cl.words)
	for i := range cl.pos {
		if cl.pos[i].r != &padRule {
			valid[i/64] |= 1 << (i % 64)
		}
	}
	used := [dimCount]bool{}
	for i := range cl.pos {
		for k := range dimCount {
			used[k] = used[k] || cl.pos[i].uses(k)
		}
	}
	if !slices.Contains(used[:], true) {
		// Every rule matches every packet: one all-ones dimension.
		used[dimProto] = true
	}
	rows := 0
	for k := dimKind(0); k < dimCount; k++ {
		if !used[k] {
			continue
		}
		d := cl.buildDim(k)
		for _, row := range d.rows {
			for w := range row {
				row[w] &= valid[w]
			}
		}
		rows += len(d.rows)
		if rows*cl.words*8 > maxBytes {
			return nil
		}
		cl.dims = append(cl.dims, d)
	}
	return cl
}

// rowSet dedupes rows.
type rowSet struct {
	words int
	rows  [][]uint64
	index map[string]uint32
}

func newRowSet(words int) *rowSet { return &rowSet{words: words, index: map[string]uint32{}} }

// add returns the index of row, adding it if new.
func (s *rowSet) add(row []uint64) uint32 {
	key := make([]byte, 8*len(row))
	for i, w := range row {
		binary.LittleEndian.PutUint64(key[8*i:], w)
	}
	if i, ok := s.index[string(key)]; ok {
		return i
	}
	i := uint32(len(s.rows))
	s.rows = append(s.rows, slices.Clone(row))
	s.index[string(key)] = i
	return i
}

// rowOf returns the bitmap of positions for which ok holds.
func (cl *classifier) rowOf(ok func(p *position) bool) []uint64 {
	row := make([]uint64, cl.words)
	for i := range cl.pos {
		if ok(&cl.pos[i]) {
			row[i/64] |= 1 << (i % 64)
		}
	}
	return row
}

func (cl *classifier) buildDim(k dimKind) *classDim {
	d := &classDim{kind: k}
	rs := newRowSet(cl.words)
	switch k {
	case dimProto:
		rows := make([][]uint64, 256)
		classOf := make([]int, 256)
		for v := range 256 {
			rows[v] = cl.rowOf(func(p *position) bool { return p.arrayHolds(dimProto, v) })
			classOf[v] = v
		}
		cl.indexByFrequency(d, rs, rows, classOf)
	case dimICMP:
		cl.buildICMP(d, rs)
	case dimSrcAddr, dimDstAddr:
		cl.buildAddr(d, rs, k == dimSrcAddr)
	case dimSrcPort, dimDstPort:
		cl.buildPort(d, rs, k == dimSrcPort)
	default:
		// Row v is membership vector v: no dedupe.
		d.rows = cl.buildSets(d, k)
		return d
	}
	d.rows = rs.rows
	return d
}

// indexByFrequency adds the rows of classes and indexes key v by the row
// of classes[classOf[v]], the most frequent row first so that it is row 0
// (absent from the index).
func (cl *classifier) indexByFrequency(d *classDim, rs *rowSet, classes [][]uint64, classOf []int) {
	tmp := newRowSet(cl.words)
	ids := make([]uint32, len(classes))
	for i, row := range classes {
		ids[i] = tmp.add(row)
	}
	count := make([]int, len(tmp.rows))
	for _, c := range classOf {
		count[ids[c]]++
	}
	best := uint32(0)
	for id, n := range count {
		if n > count[best] {
			best = uint32(id)
		}
	}
	rs.add(tmp.rows[best])
	// Each class's row is added once, at its first key, not once per key
	// (65,536 ports): the rows are numbered as keys first reach them.
	rowOf := make([]uint32, len(classes))
	added := make([]bool, len(classes))
	d.index = map[uint32]uint32{}
	for v, c := range classOf {
		if ids[c] == best {
			continue
		}
		if !added[c] {
			rowOf[c], added[c] = rs.add(classes[c]), true
		}
		d.index[uint32(v)] = rowOf[c]
	}
}

func icmpMatch(m *ICMPMatch, t, c uint8) bool {
	return m.Type == t && (!m.HasCode || m.Code == c)
}

// buildICMP indexes type<<8|code. Values fall into classes: each (type,
// code) that a rule names, each named type with any other code, and any
// other type.
func (cl *classifier) buildICMP(d *classDim, rs *rowSet) {
	codes := map[uint8]map[uint8]bool{}
	for _, p := range cl.pos {
		for _, m := range []*ICMPMatch{p.r.icmp, p.r.notICMP} {
			if m == nil {
				continue
			}
			if codes[m.Type] == nil {
				codes[m.Type] = map[uint8]bool{}
			}
			if m.HasCode {
				codes[m.Type][m.Code] = true
			}
		}
	}
	row := func(t, c uint8) []uint64 {
		return cl.rowOf(func(p *position) bool { return p.arrayHolds(dimICMP, int(t)<<8|int(c)) })
	}
	classes := [][]uint64{row(0, 0)}
	if codes[0] != nil {
		// Type 0 is named: find an unnamed type for the other-type class.
		for t := range 256 {
			if codes[uint8(t)] == nil {
				classes[0] = row(uint8(t), 0)
				break
			}
		}
	}
	classOf := make([]int, 1<<16)
	for t := range 256 {
		cs, named := codes[uint8(t)]
		if !named {
			continue // class 0
		}
		otherCode := -1
		for c := range 256 {
			v := t<<8 | c
			if cs[uint8(c)] {
				classOf[v] = len(classes)
				classes = append(classes, row(uint8(t), uint8(c)))
				continue
			}
			if otherCode < 0 {
				otherCode = len(classes)
				classes = append(classes, row(uint8(t), uint8(c)))
			}
			classOf[v] = otherCode
		}
	}
	cl.indexByFrequency(d, rs, classes, classOf)
}

// buildPort indexes ports by the intervals between the run's range ends.
func (cl *classifier) buildPort(d *classDim, rs *rowSet, src bool) {
	ranges := func(p *position) (pos, neg []PortRange, any bool) { return p.portRanges(src) }
	// starts are the first ports of the intervals.
	startSet := map[int]bool{0: true}
	for i := range cl.pos {
		pos, neg, any := ranges(&cl.pos[i])
		if any {
			pos = nil
		}
		for _, pr := range append(slices.Clone(pos), neg...) {
			startSet[int(pr.First)] = true
			startSet[int(pr.Last)+1] = true
		}
	}
	delete(startSet, 1<<16)
	starts := make([]int, 0, len(startSet))
	for s := range startSet {
		starts = append(starts, s)
	}
	slices.Sort(starts)
	// Sweep the intervals: count each position's ranges that hold the
	// interval's ports.
	type event struct{ pos, delta int }
	events := map[int][]event{}
	posCount := make([]int, len(cl.pos))
	negCount := make([]int, len(cl.pos))
	anyPos := make([]bool, len(cl.pos))
	for i := range cl.pos {
		pos, neg, any := ranges(&cl.pos[i])
		anyPos[i] = any
		if !any {
			for _, pr := range pos {
				events[int(pr.First)] = append(events[int(pr.First)], event{i + 1, 1})
				events[int(pr.Last)+1] = append(events[int(pr.Last)+1], event{i + 1, -1})
			}
		}
		for _, pr := range neg {
			events[int(pr.First)] = append(events[int(pr.First)], event{-i - 1, 1})
			events[int(pr.Last)+1] = append(events[int(pr.Last)+1], event{-i - 1, -1})
		}
	}
	cur := make([]uint64, cl.words)
	set := func(i int) {
		if (anyPos[i] || posCount[i] > 0) && negCount[i] == 0 {
			cur[i/64] |= 1 << (i % 64)
		} else {
			cur[i/64] &^= 1 << (i % 64)
		}
	}
	for i := range cl.pos {
		set(i)
	}
	rows := make([][]uint64, len(starts))
	for k, s := range starts {
		for _, e := range events[s] {
			if e.pos > 0 {
				posCount[e.pos-1] += e.delta
				set(e.pos - 1)
			} else {
				negCount[-e.pos-1] += e.delta
				set(-e.pos - 1)
			}
		}
		rows[k] = slices.Clone(cur)
	}
	classOf := make([]int, 1<<16)
	for k, s := range starts {
		end := 1 << 16
		if k+1 < len(starts) {
			end = starts[k+1]
		}
		for v := s; v < end; v++ {
			classOf[v] = k
		}
	}
	cl.indexByFrequency(d, rs, rows, classOf)
}

// mappedZero is ::ffff:0.0.0.0, the first IPv4-mapped address, as IPv6.
var mappedZero = netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff})

// buildAddr indexes addresses by their longest match among the run's
// prefixes: the prefixes containing an address are exactly those that
// contain that longest match, so every address under it is treated alike.
// Row 0 is for addresses no prefix contains.
func (cl *classifier) buildAddr(d *classDim, rs *rowSet, src bool) {
	x := cl.addrIndex(src)
	rs.add(x.wild) // no prefix contains the address
	row := make([]uint64, cl.words)
	for _, p := range x.prefixes {
		x.row(p, row)
		d.prefix = append(d.prefix, prefixRow{p: p, row: rs.add(row)})
	}
	d.v4, d.v6 = buildStride(d.prefix, false), buildStride(d.prefix, true)
}

// addrIndex is what an address dimension's rows are made of.
type addrIndex struct {
	// posOf and negOf are the positions that name each prefix,
	// positively and negatively; all are the prefixes, sorted in
	// prefixes; wild are the positions naming none positively.
	posOf, negOf map[netip.Prefix][]int
	all          map[netip.Prefix]bool
	prefixes     []netip.Prefix
	wild         []uint64
}

func (cl *classifier) addrIndex(src bool) *addrIndex {
	x := &addrIndex{posOf: map[netip.Prefix][]int{}, negOf: map[netip.Prefix][]int{}, all: map[netip.Prefix]bool{},
		wild: make([]uint64, cl.words)}
	for i := range cl.pos {
		pos, neg := cl.pos[i].nets(src)
		if len(pos) == 0 {
			x.wild[i/64] |= 1 << (i % 64)
		}
		for _, n := range pos {
			x.posOf[n] = append(x.posOf[n], i)
			x.all[n] = true
		}
		for _, n := range neg {
			x.negOf[n] = append(x.negOf[n], i)
			x.all[n] = true
		}
	}
	// An IPv6 prefix that covers ::ffff:0:0/96 (::/0, say) would be the
	// longest match of IPv4 addresses in the trie, which never contains
	// them (netip, Evaluate): the IPv4 /0, whose row is that of no
	// prefix, then comes first for every IPv4 address.
	for n := range x.all {
		if n.Addr().Is6() && n.Bits() <= 96 && n.Contains(mappedZero) {
			x.all[netip.PrefixFrom(netip.IPv4Unspecified(), 0)] = true
			break
		}
	}
	x.prefixes = make([]netip.Prefix, 0, len(x.all))
	for n := range x.all {
		x.prefixes = append(x.prefixes, n)
	}
	slices.SortFunc(x.prefixes, comparePrefixes)
	return x
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// row sets row to that of the addresses whose longest match is p.
func (x *addrIndex) row(p netip.Prefix, row []uint64) {
	copy(row, x.wild)
	var neg []int
	for bits := 0; bits <= p.Bits(); bits++ {
		a, err := p.Addr().Prefix(bits)
		if err != nil || !x.all[a] {
			continue
		}
		for _, i := range x.posOf[a] {
			row[i/64] |= 1 << (i % 64)
		}
		neg = append(neg, x.negOf[a]...)
	}
	for _, i := range neg {
		row[i/64] &^= 1 << (i % 64)
	}
}

// buildSets makes one row per membership vector of the dimension's sets.
func (cl *classifier) buildSets(d *classDim, k dimKind) [][]uint64 {
	bit := map[uint64]int{}
	for i := range cl.pos {
		pos, neg, _ := cl.pos[i].setLists(k)
		for _, id := range append(slices.Clone(pos), neg...) {
			if _, ok := bit[id]; !ok {
				bit[id] = len(d.sets)
				d.sets = append(d.sets, id)
			}
		}
	}
	rows := make([][]uint64, 0, 1<<len(d.sets))
	for v := range 1 << len(d.sets) {
		member := func(id uint64) bool { return v&(1<<bit[id]) != 0 }
		rows = append(rows, cl.rowOf(func(p *position) bool { return p.setsHold(k, member) }))
	}
	return rows
}

// What each position's rule accepts in each dimension: the rows are made
// of these, when a run is built and when an update changes its rules.

// uses reports whether p's rule tests the field of dimension k.
func (p *position) uses(k dimKind) bool {
	r := p.r
	switch k {
	case dimProto:
		return r.proto >= 0 || r.notProto >= 0
	case dimICMP:
		return r.icmp != nil || r.notICMP != nil
	case dimSrcAddr, dimDstAddr:
		pos, neg := p.nets(k == dimSrcAddr)
		return len(pos) > 0 || len(neg) > 0
	case dimSrcPort:
		return (len(r.srcPorts) > 0 && !p.srcNamedAlt) || len(r.notSrcPorts) > 0
	case dimDstPort:
		return (len(r.dstPorts) > 0 && !p.dstNamedAlt) || len(r.notDstPorts) > 0
	}
	pos, neg, _ := p.setLists(k)
	return len(pos) > 0 || len(neg) > 0
}

// arrayHolds reports whether p's rule accepts, in array dimension k
// (protocol, ICMP or a port), the packets whose key is v: the protocol,
// type<<8|code, or the port.
func (p *position) arrayHolds(k dimKind, v int) bool {
	r := p.r
	switch k {
	case dimProto:
		return (r.proto < 0 || r.proto == v) && r.notProto != v
	case dimICMP:
		t, c := uint8(v>>8), uint8(v)
		return (r.icmp == nil || icmpMatch(r.icmp, t, c)) && (r.notICMP == nil || !icmpMatch(r.notICMP, t, c))
	}
	pos, neg, any := p.portRanges(k == dimSrcPort)
	in := func(rs []PortRange) bool {
		return slices.ContainsFunc(rs, func(pr PortRange) bool { return int(pr.First) <= v && v <= int(pr.Last) })
	}
	return (any || in(pos)) && !in(neg)
}

// portRanges returns p's source (or destination) port ranges and
// negations; any when its positive ports do not count here (none, or this
// alternative matches them by named port).
func (p *position) portRanges(src bool) (pos, neg []PortRange, any bool) {
	r := p.r
	if src {
		return r.srcPorts, r.notSrcPorts, p.srcNamedAlt || len(r.srcPorts) == 0
	}
	return r.dstPorts, r.notDstPorts, p.dstNamedAlt || len(r.dstPorts) == 0
}

// nets returns p's source (or destination) CIDRs and negated CIDRs.
func (p *position) nets(src bool) (pos, neg []netip.Prefix) {
	if src {
		return p.r.srcNets, p.r.notSrcNets
	}
	return p.r.dstNets, p.r.notDstNets
}

// addrHolds reports whether p's rule accepts, in an address dimension, the
// addresses whose longest match among the run's prefixes is at (which
// holds every CIDR of the rule's): none when at is the zero Prefix.
func (p *position) addrHolds(src bool, at netip.Prefix) bool {
	pos, neg := p.nets(src)
	covers := func(nets []netip.Prefix) bool {
		return at.IsValid() && slices.ContainsFunc(nets, func(n netip.Prefix) bool {
			return n.Addr().BitLen() == at.Addr().BitLen() && n.Bits() <= at.Bits() && n.Contains(at.Addr())
		})
	}
	return (len(pos) == 0 || covers(pos)) && !covers(neg)
}

// setLists returns the sets (or named-port sets) of membership dimension
// k that p's rule names and negates; any when its positive named ports do
// not count here (this alternative matches its ports by range, or it has
// none).
func (p *position) setLists(k dimKind) (pos, neg []uint64, any bool) {
	r := p.r
	switch k {
	case dimSrcSets:
		return r.srcSets, r.notSrcSets, false
	case dimDstSets:
		return r.dstSets, r.notDstSets, false
	case dimSrcNamed:
		return r.srcNamed, r.notSrcNamed, !p.srcNamedAlt
	}
	return r.dstNamed, r.notDstNamed, !p.dstNamedAlt
}

// setsHold reports whether p's rule accepts, in membership dimension k,
// the packets whose address is in the sets member says.
func (p *position) setsHold(k dimKind, member func(id uint64) bool) bool {
	pos, neg, any := p.setLists(k)
	if slices.ContainsFunc(neg, member) {
		return false
	}
	if k == dimSrcSets || k == dimDstSets {
		// Every set must hold the address.
		return !slices.ContainsFunc(pos, func(id uint64) bool { return !member(id) })
	}
	// Named ports: any set holding (address, protocol, port).
	return any || slices.ContainsFunc(pos, member)
}
