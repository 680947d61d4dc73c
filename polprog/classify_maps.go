package polprog

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Every classifier map holds three generations of contents; the program
// reads the generation to use from the policy's generation map once per
// part, so Program.Update can fill an idle generation and switch to it
// with one map write. Three rather than two: the generation an update
// writes is the one packets left two switches ago, so its grace period
// (no packet still reading it) began an update earlier and back-to-back
// updates rarely wait for it.
const generations = 3

// genMapName is the instructions' reference to the generation map: one
// u32, the epoch (see genMask).
const genMapName = "polprog_gen"

// genMask selects the generation in use from the generation map's value,
// the epoch; the bits above count switches, so that each switch writes a
// value of its own (the outcome cache's key).
const genMask = 3

// classLayout is what a classified run's code depends on besides its
// maps' contents: its dimensions (and their sets), each dimension's row
// capacity, each trie's capacity and the words per row. Capacities leave
// room, so that an update which changes a few rules usually fits the same
// code.
type classLayout struct {
	dims   []dimKind
	sets   [][]uint64
	rowCap []uint32
	lpmCap []uint32
	// v4Cap and v6Cap are each address dimension's IPv4 and IPv6
	// stride table capacities in chunks, 0 when the dimension has none
	// (that family looks up the trie). The run's tables share one map:
	// the IPv4 ones in order of dimension, then the IPv6 ones.
	v4Cap, v6Cap []uint32
	words        int
}

// newLayout returns a layout for cl with room to grow.
func newLayout(cl *classifier) *classLayout {
	l := &classLayout{words: cl.words + cl.words/16 + 1}
	for _, d := range cl.dims {
		l.dims = append(l.dims, d.kind)
		l.sets = append(l.sets, slices.Clone(d.sets))
		n := uint32(len(d.rows))
		if d.kind < dimSrcSets {
			// Membership dimensions have exactly one row per vector.
			n += n/8 + 4
		}
		l.rowCap = append(l.rowCap, n)
		np := uint32(len(d.prefix))
		l.lpmCap = append(l.lpmCap, np+np/8+16)
		l.v4Cap = append(l.v4Cap, strideCap(d.v4))
		l.v6Cap = append(l.v6Cap, strideCap(d.v6))
	}
	return l
}

// strideCap is the capacity a layout gives a stride table: room for an
// update's prefixes under other bytes (16 chunks are 48 KiB over the
// three generations); 0 for none.
func strideCap(t []strideChunk) uint32 {
	if t == nil {
		return 0
	}
	n := uint32(len(t))
	return n + n/4 + 16
}

// fits reports whether cl can use l.
func (l *classLayout) fits(cl *classifier) bool {
	if cl.words > l.words || len(cl.dims) != len(l.dims) {
		return false
	}
	for i, d := range cl.dims {
		if d.kind != l.dims[i] || !slices.Equal(d.sets, l.sets[i]) ||
			uint32(len(d.rows)) > l.rowCap[i] || uint32(len(d.prefix)) > l.lpmCap[i] ||
			l.v4Cap[i] > 0 && (d.v4 == nil || uint32(len(d.v4)) > l.v4Cap[i]) ||
			l.v6Cap[i] > 0 && (d.v6 == nil || uint32(len(d.v6)) > l.v6Cap[i]) {
			return false
		}
	}
	return true
}

// base is the first row of dimension i in one generation.
func (l *classLayout) base(i int) uint32 {
	var n uint32
	for _, c := range l.rowCap[:i] {
		n += c
	}
	return n
}

// rows is the row count of one generation.
func (l *classLayout) rows() uint32 { return l.base(len(l.rowCap)) }

// summary is the number of summary words that start each row.
func (l *classLayout) summary() int { return (l.words + 63) / 64 }

// positions is the table size of one generation.
func (l *classLayout) positions() int { return l.words * 64 }

// v4Base is the first chunk of dimension i's IPv4 stride table in one
// generation.
func (l *classLayout) v4Base(i int) uint32 {
	var n uint32
	for _, c := range l.v4Cap[:i] {
		n += c
	}
	return n
}

// v6Base is the first chunk of dimension i's IPv6 stride table in one
// generation: after every IPv4 one.
func (l *classLayout) v6Base(i int) uint32 {
	n := l.v4Base(len(l.v4Cap))
	for _, c := range l.v6Cap[:i] {
		n += c
	}
	return n
}

// strideChunks is the stride tables' chunks of one generation.
func (l *classLayout) strideChunks() uint32 { return l.v6Base(len(l.v6Cap)) }

// bytes is the memory of the rows map.
func (l *classLayout) bytes() int { return generations * int(l.rows()) * (l.summary() + l.words) * 8 }

// compiledClass is a classified run of a Compiled: what its maps hold and
// where its code is.
type compiledClass struct {
	cl     *classifier
	layout *classLayout
	part   int
	// names are the maps: rows, table, then one per dimension that has
	// a map ("" for membership dimensions), then the stride tables'
	// when there are any.
	names []string
	// strides is the stride tables' map, "" for none.
	strides string
}

// mapContents are the entries of a map in any one generation, as raw
// bytes, keyed as in generation 0 (see key). They are not changed once
// built: an update builds new ones.
type mapContents struct {
	keySize, valueSize int
	// entries maps key bytes to value bytes.
	entries map[string]string
	// array: absent keys hold zeros (they are overwritten, not deleted).
	array bool
	// stride is, for u32 keys, how many keys one generation has; a
	// trie's key holds the generation after its prefixlen instead.
	stride uint32
	// changed is, for contents made by changing others (cloneContents),
	// the keys set since; from are those others and what they came from,
	// newest first, as far back as a generation's contents can be.
	changed []string
	from    []origin
}

// origin is contents that later ones were made from, and the keys set in
// making the next newer of them (nil for the newest, whose keys are
// changed).
type origin struct {
	m       *mapContents
	changed []string
}

func newContents(keySize, valueSize int, array bool, stride uint32) *mapContents {
	return &mapContents{keySize: keySize, valueSize: valueSize, entries: map[string]string{}, array: array, stride: stride}
}

// key returns k as generation g's key.
func (m *mapContents) key(k string, g int) string {
	if g == 0 {
		return k
	}
	if m.stride == 0 {
		b := []byte(k)
		binary.NativeEndian.PutUint32(b[4:8], uint32(g))
		return string(b)
	}
	return u32Key(binary.NativeEndian.Uint32([]byte(k)) + uint32(g)*m.stride)
}

func u32Key(k uint32) string {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], k)
	return string(b[:])
}

// contents returns the entries of every map of the run, by name.
func (cc *compiledClass) contents() map[string]*mapContents {
	cl, l := cc.cl, cc.layout
	out := map[string]*mapContents{}

	rows := newContents(4, l.rowSize(), true, l.rows())
	for di, d := range cl.dims {
		for i, row := range d.rows {
			rows.entries[u32Key(l.base(di)+uint32(i))] = l.rowValue(row)
		}
	}
	out[cc.names[0]] = rows

	table := newContents(4, tableValueSize, true, uint32(l.positions()))
	for i, p := range cl.pos {
		if p.r != &padRule {
			table.entries[u32Key(uint32(i))] = tableValue(cl, i, p.r.id, p.r.action)
		}
	}
	out[cc.names[1]] = table

	for di, d := range cl.dims {
		name := cc.names[2+di]
		switch {
		case name == "":
		case d.kind == dimSrcAddr || d.kind == dimDstAddr:
			m := newContents(lpmAddrKeySize, 4, false, 0)
			for _, pr := range d.prefix {
				m.entries[trieKey(pr.p)] = u32Key(pr.row)
			}
			out[name] = m
		default:
			size := dimArraySize(d.kind)
			m := newContents(4, 4, true, size)
			for k, v := range d.index {
				m.entries[u32Key(k)] = u32Key(v)
			}
			out[name] = m
		}
	}
	if cc.strides != "" {
		out[cc.strides] = strideContents(cl, l)
	}
	return out
}

// rowSize is a rows map value: the summary words, then the row.
func (l *classLayout) rowSize() int { return (l.summary() + l.words) * 8 }

// rowValue is row as a rows map value.
func (l *classLayout) rowValue(row []uint64) string {
	sum := l.summary()
	buf := make([]byte, l.rowSize())
	for w, v := range row {
		binary.NativeEndian.PutUint64(buf[8*(sum+w):], v)
		if v != 0 {
			s := buf[8*(w/64):]
			binary.NativeEndian.PutUint64(s, binary.NativeEndian.Uint64(s)|1<<(w%64))
		}
	}
	// buf is not written again: the string shares it rather than copying
	// a row (some KiB, thousands of them in an update of every row).
	return unsafe.String(&buf[0], len(buf))
}

// trieKey is p as an address trie's key in generation 0.
func trieKey(p netip.Prefix) string {
	var k [lpmAddrKeySize]byte
	bits := 32 + p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	binary.NativeEndian.PutUint32(k[:4], uint32(bits))
	a := p.Addr().As16()
	copy(k[8:], a[:])
	return string(k[:])
}

// tableValue is the table entry of position i, whose rule has id and
// action.
func tableValue(cl *classifier, i int, id uint64, action Action) string {
	var v [tableValueSize]byte
	binary.NativeEndian.PutUint64(v[:8], id)
	binary.NativeEndian.PutUint32(v[8:], tableAction(action))
	if action == ActionLog {
		// The rule's other positions, in this word (see padRule).
		var others uint64
		for j := i - i%64; j < i-i%64+64 && j < len(cl.pos); j++ {
			if j != i && cl.pos[j].r == cl.pos[i].r {
				others |= 1 << (j % 64)
			}
		}
		binary.NativeEndian.PutUint64(v[16:], others)
	}
	return string(v[:])
}

// dimArraySize is the keys of an array dimension in one generation.
func dimArraySize(k dimKind) uint32 {
	if k == dimProto {
		return 256
	}
	return 1 << 16
}

// specs returns the run's map specs, empty: Load fills them.
func (cc *compiledClass) specs() []LookupMap {
	l := cc.layout
	out := []LookupMap{
		{Name: cc.names[0], Spec: &ebpf.MapSpec{Name: shortName(cc.names[0]), Type: ebpf.Array, KeySize: 4,
			ValueSize: uint32((l.summary() + l.words) * 8), MaxEntries: generations * l.rows(), Flags: unix.BPF_F_MMAPABLE}},
		{Name: cc.names[1], Spec: &ebpf.MapSpec{Name: shortName(cc.names[1]), Type: ebpf.Array, KeySize: 4,
			ValueSize: tableValueSize, MaxEntries: uint32(generations * l.positions()), Flags: unix.BPF_F_MMAPABLE}},
	}
	for di, k := range l.dims {
		name := cc.names[2+di]
		switch {
		case name == "":
		case k == dimSrcAddr || k == dimDstAddr:
			out = append(out, LookupMap{Name: name, Spec: &ebpf.MapSpec{Name: shortName(name), Type: ebpf.LPMTrie,
				KeySize: lpmAddrKeySize, ValueSize: 4, MaxEntries: generations * l.lpmCap[di], Flags: unix.BPF_F_NO_PREALLOC}})
		default:
			out = append(out, LookupMap{Name: name, Spec: &ebpf.MapSpec{Name: shortName(name), Type: ebpf.Array,
				KeySize: 4, ValueSize: 4, MaxEntries: generations * dimArraySize(k), Flags: unix.BPF_F_MMAPABLE}})
		}
	}
	if cc.strides != "" {
		out = append(out, LookupMap{Name: cc.strides, Spec: &ebpf.MapSpec{Name: shortName(cc.strides), Type: ebpf.Array,
			KeySize: 4, ValueSize: 4, MaxEntries: generations * l.strideChunks() * 256, Flags: unix.BPF_F_MMAPABLE}})
	}
	return out
}

// The outcome cache. A classified run's outcome (the deciding rule's ID
// and action, or no decision) depends only on the packet's row in each
// dimension and on the maps' contents, which the generation map's value
// names: each Update writes a new value. For policies whose rules each
// constrain a few fields, each field accepts most rules (wildcards and
// negations) and the search visits every word, so the search's outcome is
// cached in an LRU hash keyed by the value, the run and the rows; a packet
// that matched a log rule is not cached (its hits must count again).
const (
	cacheMapName = "polprog_cls_cache"
	// cacheKeySize: u32 generation value, u32 run, u32 row per
	// dimension (zero for the dimensions a run does not have).
	cacheKeySize   = 8 + 4*uint32(dimCount)
	cacheValueSize = 16
	// cacheEntries bounds the outcomes kept for all runs of a program:
	// the distinct row combinations traffic meets, not flows.
	cacheEntries = 8192
)

// cacheSpec is the outcome cache.
func cacheSpec() LookupMap {
	return LookupMap{Name: cacheMapName, Spec: &ebpf.MapSpec{Name: "slp_cls_cache", Type: ebpf.LRUHash,
		KeySize: cacheKeySize, ValueSize: cacheValueSize, MaxEntries: cacheEntries}}
}

// genSpec is the generation map.
func genSpec() LookupMap {
	return LookupMap{Name: genMapName, Spec: &ebpf.MapSpec{Name: "slp_gen", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}}
}

// writeContents makes generation g of m hold want where it holds had (nil:
// nothing written yet): changed and new entries copied into mem (an
// array's mapping, see mapMemory) or, for maps without one, in one batch
// update; stale ones zeroed (arrays) or deleted (tries).
func writeContents(m *ebpf.Map, mem []byte, g int, had, want *mapContents) error {
	var keys, values, stale []string
	if changed, ok := want.changedSince(had); ok {
		seen := map[string]bool{}
		for _, k := range changed {
			if seen[k] {
				continue
			}
			seen[k] = true
			v, in := want.entries[k]
			_, was := had.entries[k]
			switch {
			case in && had.entries[k] != v:
				keys, values = append(keys, want.key(k, g)), append(values, v)
			case !in && was:
				stale = append(stale, k)
			}
		}
	} else {
		for k, v := range want.entries {
			if had == nil || had.entries[k] != v {
				keys, values = append(keys, want.key(k, g)), append(values, v)
			}
		}
		if had != nil {
			for k := range had.entries {
				if _, ok := want.entries[k]; !ok {
					stale = append(stale, k)
				}
			}
		}
	}
	slices.Sort(stale)
	for i, k := range stale {
		stale[i] = want.key(k, g)
	}
	if want.array {
		zero := string(make([]byte, want.valueSize))
		for _, k := range stale {
			keys, values = append(keys, k), append(values, zero)
		}
		stale = nil
	}
	if mem != nil {
		return writeMemory(mem, keys, values, want.valueSize)
	}
	// Stale entries go first: a trie holds every generation in its
	// capacity, so the new entries of one that changes every prefix find
	// room only once its old ones are gone (no packet reads generation g).
	for _, k := range stale {
		if err := m.Delete([]byte(k)); err != nil {
			return fmt.Errorf("delete entry: %w", err)
		}
	}
	if len(keys) > 0 {
		if _, err := m.BatchUpdate(rawSlice(keys, want.keySize), rawSlice(values, want.valueSize), nil); err != nil {
			return fmt.Errorf("write %d entries: %w", len(keys), err)
		}
	}
	return nil
}

// rawSlice is a slice of size-byte arrays holding items, for a batch
// operation.
func rawSlice(items []string, size int) any {
	v := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), len(items), len(items))
	if len(items) == 0 {
		return v.Interface()
	}
	// The slice's backing array as bytes: each item is copied straight in,
	// with no []byte conversion or reflect.Value per item.
	raw := unsafe.Slice((*byte)(v.UnsafePointer()), len(items)*size)
	for i, it := range items {
		copy(raw[i*size:(i+1)*size], it)
	}
	return v.Interface()
}

// Array lookup maps are created mmapable (BPF_F_MMAPABLE) and written
// through a shared mapping of their values: an update that changes
// thousands of rows of a KiB each copies them once, with no batch buffer
// and no syscall, into the generation no packet reads.

// mapMemory maps the values of m, an mmapable array.
func mapMemory(m *ebpf.Map) ([]byte, error) {
	page := unix.Getpagesize()
	size := (arrayElemSize(int(m.ValueSize()))*int(m.MaxEntries()) + page - 1) / page * page
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", size, err)
	}
	return mem, nil
}

// arrayElemSize is the bytes an array map's value takes in its memory:
// the kernel rounds values up to 8 bytes.
func arrayElemSize(valueSize int) int { return (valueSize + 7) &^ 7 }

// writeMemory writes each of values at its array key (a u32) of keys
// into mem, an array's mapping.
func writeMemory(mem []byte, keys, values []string, valueSize int) error {
	elem := arrayElemSize(valueSize)
	for i, k := range keys {
		off := int(binary.NativeEndian.Uint32([]byte(k))) * elem
		if len(values[i]) != valueSize || off+valueSize > len(mem) {
			return fmt.Errorf("write key %d: outside the array's %d bytes", off/elem, len(mem))
		}
		copy(mem[off:off+valueSize], values[i])
	}
	return nil
}
