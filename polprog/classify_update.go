package polprog

import (
	"maps"
	"net/netip"
	"slices"
)

// addrOnly returns, when np, of the program's shape, differs from the
// program's rules only in the source and destination CIDRs, IDs and actions of classified rules, the
// maps' contents with the changed rows, trie entries and table entries
// written over those in use, and the Compiled that describes them. Only
// the rows of the prefixes under a CIDR that a changed rule names, before
// or after, are made again: their bits of every other rule are what they
// were. A compile would make every row of every dimension again, a
// hundred times the work for a one-rule change in 10,000 rules.
func (s *classState) addrOnly(np *program) (map[string]*mapContents, *Compiled, bool) {
	var olds, news []*rule
	s.prog.eachRule(func(_ int, r *rule) { olds = append(olds, r) })
	np.eachRule(func(_ int, r *rule) { news = append(news, r) })
	// touched[run] are the positions of the run's rules whose CIDRs
	// change, and the source ([0]) and destination CIDRs they name before
	// or after.
	type change struct {
		pos  []int
		nets [2][]netip.Prefix
	}
	touched := map[int]*change{}
	var entries []int // rules whose table entries change
	for k, o := range olds {
		r := news[k]
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
		if !sameBeyondNets(o, r) {
			return nil, nil, false
		}
		t := touched[rp.run]
		if t == nil {
			t = &change{}
			touched[rp.run] = t
		}
		t.pos = append(t.pos, rp.pos...)
		for side, nets := range [2][][]netip.Prefix{
			{o.srcNets, o.notSrcNets, r.srcNets, r.notSrcNets},
			{o.dstNets, o.notDstNets, r.dstNets, r.notDstNets},
		} {
			if (len(nets[0]) == 0) != (len(nets[2]) == 0) {
				// The row of no prefix changes: every row does.
				return nil, nil, false
			}
			if !slices.Equal(nets[0], nets[2]) || !slices.Equal(nets[1], nets[3]) {
				t.nets[side] = append(t.nets[side], slices.Concat(nets...)...)
			}
		}
	}
	if len(touched) == 0 {
		return nil, nil, false // tableOnly's
	}
	old := s.compiled
	nc := *old
	nc.prog = np
	nc.classes = make([]*compiledClass, len(old.classes))
	want := maps.Clone(s.written[s.gen])
	// The positions of a changed run hold the new rules (posOf is by
	// rule index, so those of a table-only update's rules too); the other
	// runs keep theirs, whose rules match as the new ones do.
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
	copy(nc.classes, old.classes)
	for ci, t := range touched {
		cc := old.classes[ci]
		cl := &classifier{words: cc.cl.words, dims: slices.Clone(cc.cl.dims), pos: pos[ci]}
		ncc := *cc
		ncc.cl = cl
		nc.classes[ci] = &ncc
		l := cc.layout
		var rows *mapContents
		for di, d := range cl.dims {
			side := 0
			switch {
			case d.kind == dimSrcAddr:
			case d.kind == dimDstAddr:
				side = 1
			default:
				continue
			}
			if len(t.nets[side]) == 0 {
				continue
			}
			nd, changed, written, ok := cl.updateAddr(d, side == 0, t.nets[side], t.pos, l.rowCap[di], l.lpmCap[di])
			if !ok {
				return nil, nil, false
			}
			cl.dims[di] = nd
			if rows == nil {
				rows = cloneContents(want[cc.names[0]])
				want[cc.names[0]] = rows
			}
			for _, i := range written {
				rows.set(u32Key(l.base(di)+i), l.rowValue(nd.rows[i]))
			}
			trie := cloneContents(want[cc.names[2+di]])
			for _, pr := range changed {
				trie.set(trieKey(pr.p), u32Key(pr.row))
			}
			want[cc.names[2+di]] = trie
			if l.v4Cap[di] > 0 {
				// The stride table again, from every prefix (what it
				// holds depends on the longer prefixes under each);
				// only the entries that differ are set.
				nd.v4 = buildV4(nd.prefix)
				if nd.v4 == nil || uint32(len(nd.v4)) > l.v4Cap[di] {
					return nil, nil, false
				}
				if want[cc.v4] == s.written[s.gen][cc.v4] {
					want[cc.v4] = cloneContents(want[cc.v4])
				}
				setV4(want[cc.v4], l.v4Base(di), d.v4, nd.v4)
			}
		}
		// A changed side without its dimension needs other code.
		if len(t.nets[0]) > 0 && !slices.ContainsFunc(cl.dims, func(d *classDim) bool { return d.kind == dimSrcAddr }) ||
			len(t.nets[1]) > 0 && !slices.ContainsFunc(cl.dims, func(d *classDim) bool { return d.kind == dimDstAddr }) {
			return nil, nil, false
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

// cloneContents returns a copy of m whose entries can be changed (by
// set), which remembers m and the keys that made m of its own origin: a
// write of the copy over either needs only the keys changed since. m
// forgets its origin, so that no chain of old contents stays reachable.
func cloneContents(m *mapContents) *mapContents {
	c := &mapContents{keySize: m.keySize, valueSize: m.valueSize, entries: maps.Clone(m.entries), array: m.array,
		stride: m.stride, from: m, fromFrom: m.from, fromChanged: m.changed}
	m.from, m.fromFrom, m.fromChanged = nil, nil, nil
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
	switch {
	case had == nil || m.from == nil:
		return nil, false
	case had == m.from:
		return m.changed, true
	case had == m.fromFrom:
		return slices.Concat(m.changed, m.fromChanged), true
	}
	return nil, false
}

// sameBeyondNets reports whether a and b differ at most in their CIDRs.
func sameBeyondNets(a, b *rule) bool {
	x, y := *a, *b
	x.srcNets, x.notSrcNets, x.dstNets, x.notDstNets = nil, nil, nil, nil
	y.srcNets, y.notSrcNets, y.dstNets, y.notDstNets = nil, nil, nil, nil
	return sameMatch(&x, &y)
}

// updateAddr returns address dimension d of cl's positions, where only
// those in changed (rules that name other CIDRs, none gaining or losing
// positive ones) differ: the rows of the prefixes under touched get those
// positions' bits again (a row that differs is added after d's rows), and
// each new prefix gets the row of its longest match among the old ones
// with those bits. A prefix no rule names any more keeps its entry, with
// the row its addresses have. It returns the trie entries and the rows that
// change, or
// false when the rows or the prefixes would pass their capacities.
//
// Exact because a position's bit in a prefix's row depends only on its
// own rule's CIDRs, and a new prefix, named by changed rules only, holds
// for the other positions what its longest old match does.
func (cl *classifier) updateAddr(d *classDim, src bool, touched []netip.Prefix, changed []int, rowCap, lpmCap uint32) (
	*classDim, []prefixRow, []uint32, bool) {
	covers := func(nets []netip.Prefix, p netip.Prefix) bool {
		for _, n := range nets {
			if n.Addr().BitLen() == p.Addr().BitLen() && n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
				return true
			}
		}
		return false
	}
	// bits sets, in row, changed positions' bits for addresses whose
	// longest match is p.
	bits := func(p netip.Prefix, row []uint64) {
		for _, i := range changed {
			r := cl.pos[i].r
			pos, neg := r.srcNets, r.notSrcNets
			if !src {
				pos, neg = r.dstNets, r.notDstNets
			}
			if (len(pos) == 0 || covers(pos, p)) && !covers(neg, p) {
				row[i/64] |= 1 << (i % 64)
			} else {
				row[i/64] &^= 1 << (i % 64)
			}
		}
	}
	find := func(ps []prefixRow, p netip.Prefix) (int, bool) {
		return slices.BinarySearchFunc(ps, p, func(pr prefixRow, p netip.Prefix) int { return comparePrefixes(pr.p, p) })
	}
	nd := &classDim{kind: d.kind, rows: slices.Clone(d.rows), prefix: slices.Clone(d.prefix)}
	var out []prefixRow
	row := make([]uint64, cl.words)
	// added dedupes the rows added (under a changed /8, say, many
	// prefixes get the same).
	added := newRowSet(cl.words)
	set := func(k int, from uint32) {
		p := nd.prefix[k].p
		copy(row, nd.rows[from])
		bits(p, row)
		if slices.Equal(row, nd.rows[nd.prefix[k].row]) {
			return
		}
		n := len(added.rows)
		r := added.add(row)
		if int(r) == n {
			nd.rows = append(nd.rows, added.rows[r])
		}
		nd.prefix[k].row = uint32(len(d.rows)) + r
		out = append(out, nd.prefix[k])
	}
	for k := range nd.prefix {
		if covers(touched, nd.prefix[k].p) {
			set(k, nd.prefix[k].row)
		}
	}
	// New prefixes: the changed rules' CIDRs, and the IPv4 /0 that an
	// IPv6 prefix covering ::ffff:0:0/96 needs (see addrIndex).
	var fresh []netip.Prefix
	for _, i := range changed {
		r := cl.pos[i].r
		if src {
			fresh = slices.Concat(fresh, r.srcNets, r.notSrcNets)
		} else {
			fresh = slices.Concat(fresh, r.dstNets, r.notDstNets)
		}
	}
	for _, n := range fresh {
		if n.Addr().Is6() && n.Bits() <= 96 && n.Contains(mappedZero) {
			fresh = append(fresh, netip.PrefixFrom(netip.IPv4Unspecified(), 0))
			break
		}
	}
	for _, p := range fresh {
		k, found := find(nd.prefix, p)
		if found {
			continue
		}
		from := uint32(0) // no prefix contains p: the row of none
		for b := p.Bits() - 1; b >= 0; b-- {
			a, _ := p.Addr().Prefix(b)
			if j, ok := find(nd.prefix, a); ok {
				from = nd.prefix[j].row
				break
			}
		}
		nd.prefix = slices.Insert(nd.prefix, k, prefixRow{p: p, row: from})
		// A new prefix's entry is written even when its row is its
		// longest match's.
		before := len(out)
		set(k, from)
		if len(out) == before {
			out = append(out, nd.prefix[k])
		}
	}
	// Rows that no prefix refers to any more are free in the idle
	// generation: when there is no room after d's rows, the rows added
	// move into them.
	written := make([]uint32, 0, len(nd.rows)-len(d.rows))
	for i := len(d.rows); i < len(nd.rows); i++ {
		written = append(written, uint32(i))
	}
	if uint32(len(nd.rows)) > rowCap {
		ref := make([]bool, len(nd.rows))
		ref[0] = true
		for _, pr := range nd.prefix {
			ref[pr.row] = true
		}
		var free []uint32
		for i := 1; i < len(d.rows); i++ {
			if !ref[i] {
				free = append(free, uint32(i))
			}
		}
		rows := slices.Clone(nd.rows[:len(d.rows)])
		move := map[uint32]uint32{}
		written = written[:0]
		for a := len(d.rows); a < len(nd.rows); a++ {
			to := uint32(len(rows))
			if len(free) > 0 {
				to, free = free[0], free[1:]
				rows[to] = nd.rows[a]
			} else {
				rows = append(rows, nd.rows[a])
			}
			move[uint32(a)] = to
			written = append(written, to)
		}
		for k, pr := range nd.prefix {
			if to, ok := move[pr.row]; ok {
				nd.prefix[k].row = to
			}
		}
		for k, pr := range out {
			if to, ok := move[pr.row]; ok {
				out[k].row = to
			}
		}
		nd.rows = rows
	}
	if uint32(len(nd.rows)) > rowCap || uint32(len(nd.prefix)) > lpmCap {
		return nil, nil, nil, false
	}
	return nd, out, written, true
}
