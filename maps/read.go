package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"reflect"
	"slices"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Every read of a whole map goes through one reader, readChunks: Range,
// All and Dump of Map and PerCPUMap, the copy of a migration and Drain.
// It asks BPF_MAP_LOOKUP_BATCH for a fixed number of entries at a time,
// hands each chunk on, and falls back to BPF_MAP_GET_NEXT_KEY iteration,
// chunk by chunk as well, where the kernel has no batch lookup for the
// map. The callers differ only in the chunk size and in where the chunks
// land (a chunkBuffer): Range reuses one buffer, Dump reads straight into
// the slices it returns, and the untyped reads of pin.go and drain.go use
// byte arrays of the map's sizes (rawChunk).

// rangeBufferBytes bounds the buffer Range and All read into: as many
// entries as fit in 256 KiB, so that sweeping a 512,000-entry conntrack
// table (112 bytes an entry) takes a few hundred syscalls and a quarter
// of a megabyte, however large the table.
const rangeBufferBytes = 256 << 10

// dumpChunk is how many entries one batch lookup asks for in Dump. Dump
// holds every entry anyway, so the chunk only sets the number of
// syscalls: a dozen for a 100,000-entry map.
const dumpChunk = 8192

// maxChunk bounds the retries with a larger buffer when one hash bucket
// holds more entries than the buffer.
const maxChunk = 1 << 20

// chunkBuffer is room for one chunk of entries, in the form cilium/ebpf
// reads into. For per-CPU maps every entry has one value per possible CPU,
// stored one after the other.
type chunkBuffer interface {
	// batchOut returns the key and value slices BPF_MAP_LOOKUP_BATCH
	// fills: as many keys as the chunk holds entries.
	batchOut() (keys, values any)
	// slotOut returns where MapIterator.Next writes the key and value of
	// entry i of the chunk.
	slotOut(i int) (key, value any)
}

// readChunks passes every entry of m to consume, chunk entries at a time
// (the last chunk may be shorter), until consume returns false. next(n)
// returns room for n entries; it is called before every chunk, and consume
// is told how many entries of the latest room were filled. noBatch
// records that the kernel has no batch lookup for m, so that later reads
// go straight to iteration.
func readChunks(m *ebpf.Map, noBatch *atomic.Bool, chunk int, next func(n int) chunkBuffer, consume func(n int) bool) error {
	if !noBatch.Load() {
		err := readBatches(m, chunk, next, consume)
		if !errors.Is(err, errNoBatchLookup) {
			return err
		}
		noBatch.Store(true)
	}
	return readIterate(m, chunk, next, consume)
}

// errNoBatchLookup tells readChunks that the kernel refused the batch
// lookup before any entry was read, so iteration can take over.
var errNoBatchLookup = errors.New("no batch lookup")

func readBatches(m *ebpf.Map, chunk int, next func(int) chunkBuffer, consume func(int) bool) error {
	var cursor ebpf.MapBatchCursor
	started := false
	for {
		keys, values := next(chunk).batchOut()
		n, err := m.BatchLookup(&cursor, keys, values, nil)
		if n > 0 {
			started = true
			if !consume(n) {
				return nil
			}
		}
		switch {
		case err == nil && n == 0:
			// The kernel ends a read with ENOENT; a chunk with neither
			// entries nor an end would repeat forever.
			return fmt.Errorf("map %s: batch lookup returned no entries and no end", m)
		case err == nil:
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, unix.ENOSPC) && n == 0 && chunk < maxChunk:
			// A hash bucket holds more entries than the buffer: the
			// kernel copies nothing and keeps the cursor, so retry
			// with a larger buffer.
			chunk = min(2*chunk, maxChunk)
		case errors.Is(err, ebpf.ErrNotSupported) && !started:
			return errNoBatchLookup
		default:
			// cilium/ebpf's message names the command.
			return fmt.Errorf("map %s: %w", m, err)
		}
	}
}

func readIterate(m *ebpf.Map, chunk int, next func(int) chunkBuffer, consume func(int) bool) error {
	entries := m.Iterate()
	buf := next(chunk)
	n := 0
	for {
		key, value := buf.slotOut(n)
		if !entries.Next(key, value) {
			break
		}
		n++
		if n < chunk {
			continue
		}
		if !consume(n) {
			return nil
		}
		buf = next(chunk)
		n = 0
	}
	if n > 0 && !consume(n) {
		return nil
	}
	if err := entries.Err(); err != nil {
		// "get next key: ..." or "look up next key: ...".
		return fmt.Errorf("map %s: %w", m, err)
	}
	return nil
}

// typedChunk is a chunkBuffer of Go values: perEntry values per key (1,
// or the number of possible CPUs).
type typedChunk[K, V any] struct {
	keys     []K
	values   []V
	perEntry int
}

func (c typedChunk[K, V]) batchOut() (any, any) { return c.keys, c.values }

func (c typedChunk[K, V]) slotOut(i int) (any, any) {
	if c.perEntry == 1 {
		return &c.keys[i], &c.values[i]
	}
	// cilium/ebpf fills a slice of exactly one value per possible CPU.
	return &c.keys[i], c.values[i*c.perEntry : (i+1)*c.perEntry]
}

// readTyped reads m into the slices buffers returns: buffers(n) returns n
// keys and n*perEntry values, and consume gets the filled prefix of both.
func readTyped[K, V any](m *ebpf.Map, noBatch *atomic.Bool, perEntry, chunk int,
	buffers func(n int) ([]K, []V), consume func([]K, []V) bool) error {
	var c typedChunk[K, V]
	return readChunks(m, noBatch, chunk, func(n int) chunkBuffer {
		keys, values := buffers(n)
		c = typedChunk[K, V]{keys: keys, values: values, perEntry: perEntry}
		return c
	}, func(n int) bool {
		return consume(c.keys[:n], c.values[:n*perEntry])
	})
}

// chunkFor is how many entries fit in rangeBufferBytes when one entry
// takes entryBytes, capped at the map's capacity (override, when positive,
// replaces it: tests).
func chunkFor(m *ebpf.Map, entryBytes, override int) int {
	return capChunk(m, max(rangeBufferBytes/max(entryBytes, 1), 1), override)
}

// capChunk caps want at the map's capacity, unless override is positive.
func capChunk(m *ebpf.Map, want, override int) int {
	if override > 0 {
		return override
	}
	return min(want, max(int(m.MaxEntries()), 1))
}

// Range calls fn for every entry of the map until fn returns false. It
// reads the map in chunks of as many entries as fit in 256 KiB (fewer
// when the map is smaller), so its memory stays fixed whatever the map's
// size, and it hands fn one chunk's entries after the kernel has copied
// them out.
//
// Range uses BPF_MAP_LOOKUP_BATCH. For hash maps its cursor is a bucket,
// so fn may delete entries, and the datapath may insert and evict them,
// without disturbing the read: every entry present throughout is seen
// exactly once. When one bucket holds more entries than the buffer, the
// kernel answers ENOSPC and Range retries with a buffer twice as large.
// Where the kernel has no batch lookup for the map (kernels before 5.6;
// map types such as devmaps), Range iterates with BPF_MAP_GET_NEXT_KEY
// and from then on skips the batch command for this map (BatchSupport).
// That iteration can restart, and so yield an entry twice, when the entry
// it stands on vanishes; fn must not delete entries on that path.
//
// Range returns nil when every entry was read or fn stopped it, and the
// read's error otherwise; entries read before an error have been passed
// to fn.
func (m *Map[K, V]) Range(fn func(K, V) bool) error {
	var keys []K
	var values []V
	reuse := func(chunk int) ([]K, []V) {
		if len(keys) < chunk {
			keys, values = make([]K, chunk), make([]V, chunk)
		}
		return keys[:chunk], values[:chunk]
	}
	return m.read(m.rangeChunk(), reuse, func(keys []K, values []V) bool {
		for i := range keys {
			if !fn(keys[i], values[i]) {
				return false
			}
		}
		return true
	})
}

// All iterates over the map for range-over-func, reading it as Range
// does. When the iteration stops early because of an error, All stores
// the error in *errOut; a nil errOut discards it, for callers that treat
// a partial read like a complete one. A complete iteration, or one the
// caller breaks off, leaves *errOut untouched.
//
//	var err error
//	for key, value := range m.All(&err) { ... }
//	if err != nil { ... }
func (m *Map[K, V]) All(errOut *error) iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		reportErr(errOut, m.Range(yield))
	}
}

// reportErr stores a non-nil err in *errOut unless errOut is nil: the
// one error contract of every All.
func reportErr(errOut *error, err error) {
	if err != nil && errOut != nil {
		*errOut = err
	}
}

// Dump returns every entry of the map. It reads as Range does, in chunks
// of 8192 entries written straight into the returned slices, so it needs
// no memory beyond its result.
func (m *Map[K, V]) Dump() ([]K, []V, error) {
	return m.dumpInto(nil, nil)
}

// dumpInto appends every entry to keys and values, so callers can reuse
// their buffers between dumps.
func (m *Map[K, V]) dumpInto(keys []K, values []V) ([]K, []V, error) {
	// The kernel writes into the spare capacity of keys and values: no
	// staging buffer, and no new memory once the caller's buffers have
	// grown to the map's size.
	spare := func(chunk int) ([]K, []V) {
		keys, values = slices.Grow(keys, chunk), slices.Grow(values, chunk)
		return keys[len(keys) : len(keys)+chunk], values[len(values) : len(values)+chunk]
	}
	err := m.read(m.dumpChunk(), spare, func(chunkKeys []K, chunkValues []V) bool {
		// The chunk is the start of the spare capacity: extend over it.
		keys = keys[:len(keys)+len(chunkKeys)]
		values = values[:len(values)+len(chunkValues)]
		return true
	})
	return keys, values, err
}

// rangeChunk is the number of entries Range reads at a time.
func (m *Map[K, V]) rangeChunk() int {
	var k K
	var v V
	return chunkFor(m.m, binary.Size(k)+binary.Size(v), m.readChunk)
}

// dumpChunk is the number of entries Dump reads at a time.
func (m *Map[K, V]) dumpChunk() int { return capChunk(m.m, dumpChunk, m.readChunk) }

// read passes every entry of the map to consume, chunk entries at a time
// (the last chunk may be shorter), until consume returns false. buffers
// returns key and value slices of length n for the reader to fill; it is
// called before every chunk, and the reader uses the slices only until
// the next call.
func (m *Map[K, V]) read(chunk int, buffers func(n int) ([]K, []V), consume func([]K, []V) bool) error {
	return readTyped(m.m, &m.noBatchLookup, 1, chunk, buffers, consume)
}

// rawChunk is a chunkBuffer for a map whose layout is known only at run
// time (migrations, Drain): keys and values are byte arrays of the map's
// key and value sizes, [KeySize]byte and [ValueSize]byte, made with
// reflect. cilium/ebpf's batch lookup wants slices with one element per
// key and per value (per CPU value, for per-CPU maps), which flat byte
// slices are not; arrays of the exact sizes also let it read into them
// without a copy, and per-CPU values need no padding on this side.
type rawChunk struct {
	keys, values reflect.Value // []([KeySize]byte), []([ValueSize]byte)
	perEntry     int
}

func (c rawChunk) batchOut() (any, any) { return c.keys.Interface(), c.values.Interface() }

func (c rawChunk) slotOut(i int) (any, any) { return c.entry(i) }

// entry returns entry i's key and value in the form ebpf.Map's Lookup,
// Update and MapIterator.Next take: pointers to the arrays, and for
// per-CPU maps a slice of one array per CPU.
func (c rawChunk) entry(i int) (key, value any) {
	key = c.keys.Index(i).Addr().Interface()
	if c.perEntry == 1 {
		return key, c.values.Index(i).Addr().Interface()
	}
	return key, c.values.Slice(i*c.perEntry, (i+1)*c.perEntry).Interface()
}

// key returns the bytes of entry i's key, which alias the chunk.
func (c rawChunk) key(i int) []byte { return c.keys.Index(i).Bytes() }

// value returns the bytes of CPU cpu's value of entry i (cpu 0 for maps
// with one value an entry), which alias the chunk.
func (c rawChunk) value(i, cpu int) []byte { return c.values.Index(i*c.perEntry + cpu).Bytes() }

// rawReader reads a map chunk by chunk into rawChunks, as Map.Range does.
type rawReader struct {
	m                  *ebpf.Map
	perEntry           int
	keyType, valueType reflect.Type
	// chunk is the number of entries one batch lookup asks for: as many
	// as fit in 256 KiB, as for Range.
	chunk   int
	noBatch atomic.Bool
}

func newRawReader(m *ebpf.Map) (*rawReader, error) {
	perEntry := 1
	if isPerCPU(m.Type()) {
		cpus, err := ebpf.PossibleCPU()
		if err != nil {
			return nil, err
		}
		perEntry = cpus
	}
	byteType := reflect.TypeFor[byte]()
	return &rawReader{
		m:         m,
		perEntry:  perEntry,
		keyType:   reflect.ArrayOf(int(m.KeySize()), byteType),
		valueType: reflect.ArrayOf(int(m.ValueSize()), byteType),
		chunk:     chunkFor(m, int(m.KeySize())+perEntry*align8(int(m.ValueSize())), 0),
	}, nil
}

// read passes every chunk to consume with the number of entries it holds,
// until consume returns false. The chunk's memory is reused for the next.
func (r *rawReader) read(consume func(c rawChunk, n int) bool) error {
	var room, c rawChunk
	return readChunks(r.m, &r.noBatch, r.chunk, func(n int) chunkBuffer {
		if !room.keys.IsValid() || room.keys.Len() < n {
			room = rawChunk{
				keys:     reflect.MakeSlice(reflect.SliceOf(r.keyType), n, n),
				values:   reflect.MakeSlice(reflect.SliceOf(r.valueType), n*r.perEntry, n*r.perEntry),
				perEntry: r.perEntry,
			}
		}
		c = rawChunk{keys: room.keys.Slice(0, n), values: room.values.Slice(0, n*r.perEntry), perEntry: r.perEntry}
		return c
	}, func(n int) bool { return consume(c, n) })
}
