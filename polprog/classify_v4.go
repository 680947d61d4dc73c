package polprog

import (
	"cmp"
	"slices"
)

// An address dimension's IPv4 addresses are classified by a stride table
// as well as by the trie: four array lookups, one per address byte, which
// the verifier inlines, where a trie lookup walks a node per branching
// bit (measured, BenchmarkClassifierSteps: the two address tries were
// about half of what a cache hit of 10,000 random rules costs). Chunk 0
// is indexed by the first byte; an entry is the row of the addresses
// under it, or v4ChunkFlag and the chunk that the next byte indexes. The
// table holds, for every IPv4 address, the row of its longest match among
// the dimension's IPv4 prefixes (row 0 for none), as the trie does: an
// IPv6 prefix never contains an IPv4-mapped address there, since such
// prefixes are refused and one covering ::ffff:0:0/96 brings the IPv4 /0
// (see addrIndex). IPv6 addresses look the trie up.

// v4Chunk is one stride of the table: 256 entries.
type v4Chunk [256]uint32

const (
	// v4ChunkFlag marks an entry that names a chunk, not a row.
	v4ChunkFlag = 1 << 30
	// maxV4Chunks bounds a dimension's table (1 KiB a chunk, per
	// generation); a dimension that needs more uses the trie alone.
	maxV4Chunks = 2048
)

// buildV4 returns the stride table of the IPv4 prefixes among prefix, or
// nil when it would take more than maxV4Chunks chunks. Prefixes are
// painted shortest first, each over the entries its addresses have in the
// chunk of its last byte, so longer ones overwrite what they hold; a
// chunk is made, from the entry's row, when a longer prefix needs the
// next byte, after every prefix ending at the entry's byte was painted.
func buildV4(prefix []prefixRow) []v4Chunk {
	var v4 []prefixRow
	for _, pr := range prefix {
		if pr.p.Addr().Is4() {
			v4 = append(v4, pr)
		}
	}
	slices.SortStableFunc(v4, func(a, b prefixRow) int { return cmp.Compare(a.p.Bits(), b.p.Bits()) })
	chunks := []v4Chunk{{}}
	for _, pr := range v4 {
		a, bits := pr.p.Addr().As4(), pr.p.Bits()
		c, level := 0, 0
		for ; bits > 8*(level+1); level++ {
			e := chunks[c][a[level]]
			if e&v4ChunkFlag == 0 {
				if len(chunks) == maxV4Chunks {
					return nil
				}
				var next v4Chunk
				for i := range next {
					next[i] = e
				}
				chunks = append(chunks, next)
				e = v4ChunkFlag | uint32(len(chunks)-1)
				chunks[c][a[level]] = e
			}
			c = int(e &^ v4ChunkFlag)
		}
		span := 1 << (8*(level+1) - bits)
		first := int(a[level]) &^ (span - 1)
		for i := first; i < first+span; i++ {
			chunks[c][i] = pr.row
		}
	}
	return chunks
}

// v4Row returns the row the table gives the IPv4 address a (the program's
// walk, in Go).
func v4Row(chunks []v4Chunk, a [4]byte) uint32 {
	c := 0
	for level := range 4 {
		e := chunks[c][a[level]]
		if e&v4ChunkFlag == 0 {
			return e
		}
		c = int(e &^ v4ChunkFlag)
	}
	return 0 // not reached: the last byte's entries are rows
}

// v4Contents is the stride tables of cl's dimensions, laid out by l, as
// their map's contents: dimension i's chunks from l.v4Base(i) on, the
// chunks they name offset by as much.
func v4Contents(cl *classifier, l *classLayout) *mapContents {
	m := newContents(4, 4, true, l.v4Chunks()*256)
	for di, d := range cl.dims {
		if l.v4Cap[di] == 0 {
			continue
		}
		base := l.v4Base(di)
		for c := range d.v4 {
			for i, v := range d.v4[c] {
				if v&v4ChunkFlag != 0 {
					v += base
				}
				if v != 0 {
					m.entries[u32Key((base+uint32(c))*256+uint32(i))] = u32Key(v)
				}
			}
		}
	}
	return m
}

// setV4 changes m, the stride tables' contents, from the table was to
// is at chunk base, setting only the entries that differ (and dropping
// those that become zero).
func setV4(m *mapContents, base uint32, was, is []v4Chunk) {
	for c := range max(len(was), len(is)) {
		var from, to v4Chunk
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
				if v&v4ChunkFlag != 0 {
					v += base
				}
				m.set(k, u32Key(v))
			}
		}
	}
}
