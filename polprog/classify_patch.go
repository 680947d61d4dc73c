package polprog

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
)

// maxPatchPositions bounds the positions one map-only update may change:
// each key's new bits for them are one word.
const maxPatchPositions = 64

// patchRows returns, when np, of the program's shape, differs from the
// program's rules only in classified rules that keep their positions (the
// same port and named-port alternatives) and whose fields the run's
// dimensions and IP sets can tell, the maps' contents with the changed
// rows, keys and table entries written over those in use, and the
// Compiled that describes them. Any field may change: protocols, ICMP,
// ports, CIDRs (a rule gaining or losing them too), set references and
// negations, IDs and actions.
//
// Only the changed positions' bits are made again, for every key of every
// dimension (each protocol, ICMP type and code, port, prefix and the
// addresses under none, each membership vector): the other positions' bits
// of a key's row are what they were. Of the keys that shared a row, those
// whose new bits are the most common keep it, changed in place, and the
// others move to new rows; so a change writes the rows it changes and the
// keys that move, not the dimension. A compile would make every row of
// every dimension again, a hundred times the work for a one-rule change in
// 10,000 rules.
//
// When np was validated against the program in force (s.prog), only its
// fresh rules can differ from those; otherwise each is compared.
func (s *classState) patchRows(np *program) (map[string]*mapContents, *Compiled, bool) {
	olds, news := s.prog.ruleList(), np.ruleList()
	compare := np.fresh
	if np.against != s.prog.serial {
		compare = make([]int, len(news))
		for k := range compare {
			compare[k] = k
		}
	}
	touched := map[int][]int{} // run -> positions whose rule matches otherwise
	var entries []int          // rules whose table entries change
	for _, k := range compare {
		o, r := olds[k], news[k]
		match := sameMatch(o, r)
		if match && o.id == r.id && o.action == r.action {
			continue
		}
		rp := s.posOf[k]
		if rp.run < 0 || (len(rp.pos) > 1 && (o.action == ActionLog) != (r.action == ActionLog)) {
			return nil, nil, false
		}
		entries = append(entries, k)
		if match {
			continue
		}
		if !slices.EqualFunc(alternatives(o), alternatives(r), func(a, b position) bool {
			return a.srcNamedAlt == b.srcNamedAlt && a.dstNamedAlt == b.dstNamedAlt
		}) {
			return nil, nil, false // other positions
		}
		touched[rp.run] = append(touched[rp.run], rp.pos...)
	}
	old := s.compiled
	nc := *old
	nc.prog = np
	nc.classes = slices.Clone(old.classes)
	want := maps.Clone(s.written[s.gen])
	// The positions of a changed run hold the new rules (posOf is by rule
	// index, so those of a table-only update's rules too); the other runs
	// keep theirs, whose rules match as the new ones do.
	pos := make([][]position, len(old.classes))
	for ci := range touched {
		pos[ci] = slices.Clone(old.classes[ci].cl.pos)
	}
	for k, rp := range s.posOf {
		if rp.run >= 0 && pos[rp.run] != nil {
			for _, i := range rp.pos {
				pos[rp.run][i].r = news[k]
			}
		}
	}
	for _, ci := range slices.Sorted(maps.Keys(touched)) {
		changed := touched[ci]
		cc := old.classes[ci]
		cl := &classifier{rules: cc.cl.rules, words: cc.cl.words, dims: slices.Clone(cc.cl.dims), pos: pos[ci]}
		if len(changed) > maxPatchPositions || !cl.tells(changed) {
			return nil, nil, false
		}
		ncc := *cc
		ncc.cl = cl
		nc.classes[ci] = &ncc
		l := cc.layout
		for di, d := range cl.dims {
			// Only the positions whose field of this dimension changed
			// get other bits in it.
			var in []int
			for _, i := range changed {
				if !sameIn(d.kind, &cc.cl.pos[i], &cl.pos[i]) {
					in = append(in, i)
				}
			}
			if len(in) == 0 {
				continue
			}
			nd, moved, ok := cl.patchDim(d, cc.cl.pos, in, l.rowCap[di], l.lpmCap[di])
			if !ok {
				return nil, nil, false
			}
			if moved.rows == nil && moved.keys == nil && moved.prefixes == nil {
				continue // no bit of this dimension changed
			}
			cl.dims[di] = nd
			if len(moved.rows) > 0 {
				if want[cc.names[0]] == s.written[s.gen][cc.names[0]] {
					want[cc.names[0]] = cloneContents(want[cc.names[0]])
				}
				for _, i := range moved.rows {
					want[cc.names[0]].set(u32Key(l.base(di)+i), l.rowValue(nd.rows[i]))
				}
			}
			name := cc.names[2+di]
			if name == "" || len(moved.keys) == 0 && len(moved.prefixes) == 0 {
				continue
			}
			m := cloneContents(want[name])
			want[name] = m
			for _, v := range moved.keys {
				m.set(u32Key(v), u32Key(nd.index[v]))
			}
			for _, pr := range moved.prefixes {
				m.set(trieKey(pr.p), u32Key(pr.row))
			}
			if len(moved.prefixes) == 0 {
				continue
			}
			// The stride tables again, from every prefix (what they
			// hold depends on the longer prefixes under each); only
			// the entries that differ are set.
			for _, t := range []struct {
				v6        bool
				cap, base uint32
				was, is   *[]strideChunk
			}{{false, l.v4Cap[di], l.v4Base(di), &d.v4, &nd.v4}, {true, l.v6Cap[di], l.v6Base(di), &d.v6, &nd.v6}} {
				if t.cap == 0 {
					continue
				}
				*t.is = buildStride(nd.prefix, t.v6)
				if *t.is == nil || uint32(len(*t.is)) > t.cap {
					return nil, nil, false
				}
				if want[cc.strides] == s.written[s.gen][cc.strides] {
					want[cc.strides] = cloneContents(want[cc.strides])
				}
				setStride(want[cc.strides], t.base, *t.was, *t.is)
			}
		}
	}
	tables := map[int]*mapContents{}
	for _, k := range entries {
		rp := s.posOf[k]
		cc := nc.classes[rp.run]
		table := tables[rp.run]
		if table == nil {
			table = cloneContents(want[cc.names[1]])
			tables[rp.run], want[cc.names[1]] = table, table
		}
		for _, i := range rp.pos {
			table.set(u32Key(uint32(i)), tableValue(cc.cl, i, news[k].id, news[k].action))
		}
	}
	return want, &nc, true
}

// sameIn reports whether positions a and b accept the same values in
// dimension k.
func sameIn(k dimKind, a, b *position) bool {
	switch k {
	case dimProto:
		return a.r.proto == b.r.proto && a.r.notProto == b.r.notProto
	case dimICMP:
		return sameICMP(a.r.icmp, b.r.icmp) && sameICMP(a.r.notICMP, b.r.notICMP)
	case dimSrcAddr, dimDstAddr:
		ap, an := a.nets(k == dimSrcAddr)
		bp, bn := b.nets(k == dimSrcAddr)
		return slices.Equal(ap, bp) && slices.Equal(an, bn)
	case dimSrcPort, dimDstPort:
		ap, an, aany := a.portRanges(k == dimSrcPort)
		bp, bn, bany := b.portRanges(k == dimSrcPort)
		return aany == bany && (aany || slices.Equal(ap, bp)) && slices.Equal(an, bn)
	}
	ap, an, aany := a.setLists(k)
	bp, bn, bany := b.setLists(k)
	return aany == bany && slices.Equal(ap, bp) && slices.Equal(an, bn)
}

// tells reports whether cl's dimensions can tell what the rules of the
// changed positions match: each field they use has its dimension, and each
// IP set or named-port set they name is one of its dimension's sets.
func (cl *classifier) tells(changed []int) bool {
	dims := map[dimKind]*classDim{}
	for _, d := range cl.dims {
		dims[d.kind] = d
	}
	for _, i := range changed {
		p := &cl.pos[i]
		for k := dimKind(0); k < dimCount; k++ {
			if !p.uses(k) {
				continue
			}
			d := dims[k]
			if d == nil {
				return false
			}
			if k >= dimSrcSets {
				pos, neg, _ := p.setLists(k)
				for _, id := range slices.Concat(pos, neg) {
					if !slices.Contains(d.sets, id) {
						return false
					}
				}
			}
		}
	}
	return true
}

// patchMoves is what patchDim changed: the rows it wrote (changed in place
// or new), and the array keys or prefixes whose row is another (prefixes:
// new ones too).
type patchMoves struct {
	rows     []uint32
	keys     []uint32
	prefixes []prefixRow
}

// patchDim returns dimension d of cl's positions, where only the rules of
// the changed positions differ from was (the positions d was made for),
// and what changed; false when its rows or prefixes would pass their
// capacities.
func (cl *classifier) patchDim(d *classDim, was []position, changed []int, rowCap, lpmCap uint32) (*classDim, patchMoves, bool) {
	nd := &classDim{kind: d.kind, rows: d.rows, index: d.index, dense: d.dense, prefix: d.prefix, sets: d.sets, v4: d.v4, v6: d.v6}
	var g regrouping
	switch d.kind {
	case dimSrcSets, dimDstSets, dimSrcNamed, dimDstNamed:
		// Row v is membership vector v: every row is its own key's,
		// changed in place.
		bit := map[uint64]int{}
		for i, id := range d.sets {
			bit[id] = i
		}
		var out patchMoves
		for v := range d.rows {
			row := cl.withBits(d.rows[v], changed, func(p *position) bool {
				return p.setsHold(d.kind, func(id uint64) bool { return v&(1<<bit[id]) != 0 })
			})
			if row != nil {
				if out.rows == nil {
					nd.rows = slices.Clone(d.rows)
				}
				nd.rows[v] = row
				out.rows = append(out.rows, uint32(v))
			}
		}
		return nd, out, true
	case dimSrcAddr, dimDstAddr:
		src := d.kind == dimSrcAddr
		nd.prefix = cl.withFresh(d.prefix, changed, src)
		if uint32(len(nd.prefix)) > lpmCap {
			return nil, patchMoves{}, false
		}
		// Key 0 is the addresses under no prefix (row 0, which no key
		// can leave), key 1+j the addresses whose longest match is
		// prefix j.
		g = cl.regroup(d.rows, len(nd.prefix)+1, true, was, changed,
			func(k int) uint32 {
				if k == 0 {
					return 0
				}
				return nd.prefix[k-1].row
			},
			func(k int, p *position) bool {
				if k == 0 {
					return p.addrHolds(src, netip.Prefix{})
				}
				return p.addrHolds(src, nd.prefix[k-1].p)
			})
	default:
		of := d.rowsByKey()
		g = cl.regroup(d.rows, len(of), false, was, changed, func(k int) uint32 { return of[k] },
			func(k int, p *position) bool { return p.arrayHolds(d.kind, k) })
	}
	if len(g.written) == 0 && len(g.moved) == 0 && len(nd.prefix) == len(d.prefix) {
		return nd, patchMoves{}, true
	}
	if uint32(len(g.rows)) > rowCap {
		return nil, patchMoves{}, false
	}
	nd.rows = g.rows
	out := patchMoves{rows: g.written}
	if d.kind == dimSrcAddr || d.kind == dimDstAddr {
		nd.prefix = slices.Clone(nd.prefix)
		for _, mv := range g.moved {
			nd.prefix[mv.key-1].row = mv.row
		}
		// Every new prefix's entry is written, and those that moved:
		// both lists are sorted, and nd.prefix holds every prefix of
		// d.prefix (withFresh only inserts), so one walk finds them.
		j := 0
		for _, pr := range nd.prefix {
			for j < len(d.prefix) && comparePrefixes(d.prefix[j].p, pr.p) < 0 {
				j++
			}
			if j == len(d.prefix) || d.prefix[j].p != pr.p || d.prefix[j].row != pr.row {
				out.prefixes = append(out.prefixes, pr)
			}
		}
		if out.prefixes == nil {
			out.prefixes = []prefixRow{}
		}
		return nd, out, true
	}
	if len(g.moved) > 0 {
		nd.index = maps.Clone(d.index)
		nd.dense = slices.Clone(d.rowsByKey())
		for _, mv := range g.moved {
			nd.index[uint32(mv.key)] = mv.row
			nd.dense[mv.key] = mv.row
			out.keys = append(out.keys, uint32(mv.key))
		}
	}
	return nd, out, true
}

// withFresh returns prefix with the changed positions' CIDRs that it lacks
// inserted, each with the row of its longest match among those before (the
// row of none when there is none), and the IPv4 /0 when a new IPv6 prefix
// covers ::ffff:0:0/96 (see addrIndex). A prefix no rule names any more
// stays: its row is made again, as that of the addresses it holds.
func (cl *classifier) withFresh(prefix []prefixRow, changed []int, src bool) []prefixRow {
	var fresh []netip.Prefix
	for _, i := range changed {
		pos, neg := cl.pos[i].nets(src)
		fresh = slices.Concat(fresh, pos, neg)
	}
	if slices.ContainsFunc(fresh, func(n netip.Prefix) bool { return n.Addr().Is6() && n.Bits() <= 96 && n.Contains(mappedZero) }) {
		fresh = append(fresh, netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	}
	find := func(ps []prefixRow, p netip.Prefix) (int, bool) {
		return slices.BinarySearchFunc(ps, p, func(pr prefixRow, p netip.Prefix) int { return comparePrefixes(pr.p, p) })
	}
	out := prefix
	for _, p := range fresh {
		k, found := find(out, p)
		if found {
			continue
		}
		from := uint32(0)
		for b := p.Bits() - 1; b >= 0; b-- {
			a, _ := p.Addr().Prefix(b)
			if j, ok := find(prefix, a); ok {
				from = prefix[j].row
				break
			}
		}
		if len(out) == len(prefix) {
			out = slices.Clone(prefix)
		}
		out = slices.Insert(out, k, prefixRow{p: p, row: from})
	}
	return out
}

// regrouping is a dimension's rows after a change: rows (the old ones
// changed in place, new ones after them or in rows no key held), written
// the rows that differ, and moved the keys whose row is another.
type regrouping struct {
	rows    [][]uint64
	written []uint32
	moved   []keyRow
}

type keyRow struct {
	key int
	row uint32
}

// regroup makes a dimension's rows again for keys 0 to n-1, key k having
// had row rowOf(k), when the positions in changed now hold for key k where
// holds says. Each old row's keys are grouped by their changed positions'
// bits: the largest group keeps the row, changed in place (for row 0 the
// one with key 0 when pin0: that key cannot leave row 0); each other
// group takes a row of its own (groups with the same bits share one).
//
// A row whose keeper bits are those its keys had, by was (the positions
// the rows were made for), is not read: rows are exact, so each key's
// old bits are its row's (taken from its lowest key: for row 0 of an
// address dimension, key 0), and a change of one rule among 10,000 rows
// leaves most rows as they are. (A prefix that the change adds has the
// row of its longest match among the old ones, and the old rules' CIDRs,
// all old prefixes, hold for both alike.)
func (cl *classifier) regroup(rows [][]uint64, n int, pin0 bool, was []position, changed []int, rowOf func(k int) uint32,
	holds func(k int, p *position) bool) regrouping {
	type group struct {
		row  uint32
		bits uint64
	}
	bitsOf := make([]uint64, n)
	for k := range n {
		for j, i := range changed {
			if holds(k, &cl.pos[i]) {
				bitsOf[k] |= 1 << j
			}
		}
	}
	// Most rows' keys all get the same bits: count the first bits seen
	// per row in slices, the others in a map.
	first := make([]uint64, len(rows))
	firstN := make([]int, len(rows))
	oldBits := make([]uint64, len(rows))
	others := map[group]int{}
	for k := range n {
		row := rowOf(k)
		switch {
		case firstN[row] == 0:
			first[row], firstN[row] = bitsOf[k], 1
			for j, i := range changed {
				if holds(k, &was[i]) {
					oldBits[row] |= 1 << j
				}
			}
		case first[row] == bitsOf[k]:
			firstN[row]++
		default:
			others[group{row, bitsOf[k]}]++
		}
	}
	keeper := first
	for _, g := range slices.SortedFunc(maps.Keys(others), func(a, b group) int {
		return cmp.Or(cmp.Compare(a.row, b.row), cmp.Compare(a.bits, b.bits))
	}) {
		if others[g] > firstN[g.row] && !(pin0 && g.row == 0) {
			keeper[g.row], firstN[g.row] = g.bits, others[g]
		}
	}
	if pin0 {
		keeper[0] = bitsOf[0]
	}
	out := regrouping{rows: slices.Clone(rows)}
	// Rows no key holds (left by earlier changes) take new rows first.
	var free []uint32
	for i := 1; i < len(rows); i++ {
		if firstN[i] == 0 {
			free = append(free, uint32(i))
		}
	}
	for row := range rows {
		if firstN[row] == 0 || keeper[row] == oldBits[row] {
			continue
		}
		if r := cl.withBitsOf(rows[row], changed, keeper[row]); r != nil {
			out.rows[row] = r
			out.written = append(out.written, uint32(row))
		}
	}
	added := map[group]uint32{}
	for k := range n {
		g := group{rowOf(k), bitsOf[k]}
		if keeper[g.row] == g.bits {
			continue
		}
		to, ok := added[g]
		if !ok {
			r := cl.withBitsOf(rows[g.row], changed, g.bits)
			if r == nil {
				r = rows[g.row]
			}
			if len(free) > 0 {
				to, free = free[0], free[1:]
				out.rows[to] = r
			} else {
				to = uint32(len(out.rows))
				out.rows = append(out.rows, r)
			}
			added[g] = to
			out.written = append(out.written, to)
		}
		out.moved = append(out.moved, keyRow{k, to})
	}
	slices.Sort(out.written)
	return out
}

// withBits returns row with the changed positions' bits set where holds
// says, or nil when that is row.
func (cl *classifier) withBits(row []uint64, changed []int, holds func(p *position) bool) []uint64 {
	var bits uint64
	for j, i := range changed {
		if holds(&cl.pos[i]) {
			bits |= 1 << j
		}
	}
	return cl.withBitsOf(row, changed, bits)
}

// withBitsOf returns row with changed[j]'s bit set as bit j of bits, or
// nil when that is row.
func (cl *classifier) withBitsOf(row []uint64, changed []int, bits uint64) []uint64 {
	var out []uint64
	for j, i := range changed {
		w, b := i/64, uint64(1)<<(i%64)
		if (row[w]&b != 0) == (bits&(1<<j) != 0) {
			continue
		}
		if out == nil {
			out = slices.Clone(row)
		}
		out[w] ^= b
	}
	return out
}

// cloneContents returns a copy of m whose entries can be changed (by
// set), which remembers m and its origins, generations deep, with the
// keys that made each from the one before: a write of the copy over any
// of them needs only the keys changed since. m forgets its origins, so
// that no longer chain of old contents stays reachable.
func cloneContents(m *mapContents) *mapContents {
	from := make([]origin, 0, generations)
	from = append(from, origin{m: m})
	for i, o := range m.from {
		if len(from) == generations {
			break
		}
		if i == 0 {
			o.changed = m.changed
		}
		from = append(from, o)
	}
	c := &mapContents{keySize: m.keySize, valueSize: m.valueSize, entries: maps.Clone(m.entries), array: m.array,
		stride: m.stride, from: from}
	m.from = nil
	return c
}

// set sets key k to v, remembering k as changed.
func (m *mapContents) set(k, v string) {
	m.entries[k] = v
	m.changed = append(m.changed, k)
}

// changedSince returns the keys in which m may differ from had, or false
// when only a comparison of every entry tells.
func (m *mapContents) changedSince(had *mapContents) ([]string, bool) {
	if had == nil {
		return nil, false
	}
	changed := m.changed
	for i, o := range m.from {
		if i > 0 {
			changed = slices.Concat(changed, o.changed)
		}
		if o.m == had {
			return changed, true
		}
	}
	return nil, false
}

// rowsByKey returns an array dimension's row of every key (index as a
// slice), made once.
func (d *classDim) rowsByKey() []uint32 {
	if d.dense == nil {
		d.dense = make([]uint32, dimArraySize(d.kind))
		for v, row := range d.index {
			d.dense[v] = row
		}
	}
	return d.dense
}
