package polprog

import (
	"cmp"
	"slices"
)

// An address dimension's addresses are classified by stride tables as
// well as by the trie: one array lookup per address byte (4 for IPv4, 16
// for IPv6), which the verifier inlines, where a trie lookup walks a node
// per branching bit (measured, BenchmarkClassifierSteps: the two address
// tries were about half of what a cache hit of 10,000 random rules costs).
// A family's chunk 0 is indexed by the first byte; an entry is the row of
// the addresses under it, or strideFlag and the chunk that the next byte
// indexes. The table of a family holds, for every address of it, the row
// of its longest match among the dimension's prefixes of that family (row
// 0 for none), as the trie does: an IPv6 prefix never contains an
// IPv4-mapped address there, since such prefixes are refused and one
// covering ::ffff:0:0/96 brings the IPv4 /0 (see addrIndex); and IPv4
// addresses, which the state holds IPv4-mapped, never walk the IPv6 table.
// A family whose table would be too large looks the trie up.

// strideChunk is one stride of a table: 256 entries.
type strideChunk [256]uint32

const (
	// strideFlag marks an entry that names a chunk, not a row.
	strideFlag = 1 << 30
	// maxStrideChunks bounds a family's table in a dimension (1 KiB a
	// chunk, per generation); a family that needs more uses the trie.
	maxStrideChunks = 2048
)

// buildStride returns the stride table of the IPv6 (or IPv4) prefixes
// among prefix, or nil when it would take more than maxStrideChunks
// chunks. Prefixes are painted shortest first, each over the entries its
// addresses have in the chunk of its last byte, so longer ones overwrite
// what they hold; a chunk is made, from the entry's row, when a longer
// prefix needs the next byte, after every prefix ending at the entry's
// byte was painted.
func buildStride(prefix []prefixRow, v6 bool) []strideChunk {
	var fam []prefixRow
	for _, pr := range prefix {
		if pr.p.Addr().Is6() == v6 {
			fam = append(fam, pr)
		}
	}
	slices.SortStableFunc(fam, func(a, b prefixRow) int { return cmp.Compare(a.p.Bits(), b.p.Bits()) })
	chunks := []strideChunk{{}}
	for _, pr := range fam {
		a, bits := pr.p.Addr().AsSlice(), pr.p.Bits()
		c, level := 0, 0
		for ; bits > 8*(level+1); level++ {
			e := chunks[c][a[level]]
			if e&strideFlag == 0 {
				if len(chunks) == maxStrideChunks {
					return nil
				}
				var next strideChunk
				for i := range next {
					next[i] = e
				}
				chunks = append(chunks, next)
				e = strideFlag | uint32(len(chunks)-1)
				chunks[c][a[level]] = e
			}
			c = int(e &^ strideFlag)
		}
		span := 1 << (8*(level+1) - bits)
		first := int(a[level]) &^ (span - 1)
		for i := first; i < first+span; i++ {
			chunks[c][i] = pr.row
		}
	}
	return chunks
}

// strideRow returns the row the table gives address a, 4 or 16 bytes (the
// program's walk, in Go).
func strideRow(chunks []strideChunk, a []byte) uint32 {
	c := 0
	for level := range a {
		e := chunks[c][a[level]]
		if e&strideFlag == 0 {
			return e
		}
		c = int(e &^ strideFlag)
	}
	return 0 // not reached: the last byte's entries are rows
}

// strideContents is the stride tables of cl's dimensions, laid out by l,
// as their map's contents: dimension i's IPv4 chunks from l.v4Base(i) on
// and its IPv6 chunks from l.v6Base(i) on, the chunks they name offset by
// as much.
func strideContents(cl *classifier, l *classLayout) *mapContents {
	m := newContents(4, 4, true, l.strideChunks()*256)
	for di, d := range cl.dims {
		for _, t := range []struct {
			chunks []strideChunk
			cap    uint32
			base   uint32
		}{{d.v4, l.v4Cap[di], l.v4Base(di)}, {d.v6, l.v6Cap[di], l.v6Base(di)}} {
			if t.cap == 0 {
				continue
			}
			for c := range t.chunks {
				for i, v := range t.chunks[c] {
					if v&strideFlag != 0 {
						v += t.base
					}
					if v != 0 {
						m.entries[u32Key((t.base+uint32(c))*256+uint32(i))] = u32Key(v)
					}
				}
			}
		}
	}
	return m
}

// setStride changes m, the stride tables' contents, from the table was to
// is at chunk base, setting only the entries that differ (and dropping
// those that become zero).
func setStride(m *mapContents, base uint32, was, is []strideChunk) {
	for c := range max(len(was), len(is)) {
		var from, to strideChunk
		if c < len(was) {
			from = was[c]
		}
		if c < len(is) {
			to = is[c]
		}
		if from == to {
			continue
		}
		for i := range to {
			if from[i] == to[i] {
				continue
			}
			k := u32Key((base+uint32(c))*256 + uint32(i))
			if v := to[i]; v == 0 {
				delete(m.entries, k)
				m.changed = append(m.changed, k)
			} else {
				if v&strideFlag != 0 {
					v += base
				}
				m.set(k, u32Key(v))
			}
		}
	}
}
