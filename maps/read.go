package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Every read of a whole Map (Range, All, Dump) goes through one reader,
// Map.read: it asks BPF_MAP_LOOKUP_BATCH for a fixed number of entries at
// a time, hands each chunk on, and falls back to BPF_MAP_GET_NEXT_KEY
// iteration, chunk by chunk as well, where the kernel has no batch lookup
// for the map. The callers differ only in the chunk size and in where the
// chunks land: Range reuses one buffer, Dump reads straight into the
// slices it returns.

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
// does. When the iteration stops early because of an error, it stores the
// error in *errOut (a nil errOut drops it); a complete iteration, or one
// the caller breaks off, leaves *errOut untouched.
//
//	var err error
//	for key, value := range m.All(&err) { ... }
//	if err != nil { ... }
func (m *Map[K, V]) All(errOut *error) iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if err := m.Range(yield); err != nil && errOut != nil {
			*errOut = err
		}
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
	if err != nil {
		return keys, values, fmt.Errorf("dump: %w", err)
	}
	return keys, values, nil
}

// rangeChunk is the number of entries Range reads at a time.
func (m *Map[K, V]) rangeChunk() int {
	var k K
	var v V
	entrySize := binary.Size(k) + binary.Size(v)
	return m.chunk(max(rangeBufferBytes/max(entrySize, 1), 1))
}

// dumpChunk is the number of entries Dump reads at a time.
func (m *Map[K, V]) dumpChunk() int { return m.chunk(dumpChunk) }

// chunk caps want at the map's capacity, unless a test has set readChunk.
func (m *Map[K, V]) chunk(want int) int {
	if m.readChunk > 0 {
		return m.readChunk
	}
	return min(want, max(int(m.m.MaxEntries()), 1))
}

// read passes every entry of the map to consume, chunk entries at a time
// (the last chunk may be shorter), until consume returns false. buffers
// returns key and value slices of length n for the reader to fill; it is
// called before every chunk, and the reader uses the slices only until
// the next call.
func (m *Map[K, V]) read(chunk int, buffers func(n int) ([]K, []V), consume func([]K, []V) bool) error {
	if !m.noBatchLookup.Load() {
		err := m.readBatches(chunk, buffers, consume)
		if !errors.Is(err, errNoBatchLookup) {
			return err
		}
		m.noBatchLookup.Store(true)
	}
	return m.readIterate(chunk, buffers, consume)
}

// errNoBatchLookup tells read that the kernel refused the batch lookup
// before any entry was read, so iteration can take over.
var errNoBatchLookup = errors.New("no batch lookup")

func (m *Map[K, V]) readBatches(chunk int, buffers func(int) ([]K, []V), consume func([]K, []V) bool) error {
	var cursor ebpf.MapBatchCursor
	started := false
	for {
		keys, values := buffers(chunk)
		n, err := m.m.BatchLookup(&cursor, keys, values, nil)
		if n > 0 {
			started = true
			if !consume(keys[:n], values[:n]) {
				return nil
			}
		}
		switch {
		case err == nil && n == 0:
			// The kernel ends a read with ENOENT; a chunk with neither
			// entries nor an end would repeat forever.
			return fmt.Errorf("batch lookup in %s: no entries and no end", m.m)
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
			return fmt.Errorf("batch lookup in %s: %w", m.m, err)
		}
	}
}

func (m *Map[K, V]) readIterate(chunk int, buffers func(int) ([]K, []V), consume func([]K, []V) bool) error {
	entries := m.m.Iterate()
	keys, values := buffers(chunk)
	n := 0
	for entries.Next(&keys[n], &values[n]) {
		n++
		if n < chunk {
			continue
		}
		if !consume(keys, values) {
			return nil
		}
		keys, values = buffers(chunk)
		n = 0
	}
	if n > 0 && !consume(keys[:n], values[:n]) {
		return nil
	}
	if err := entries.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", m.m, err)
	}
	return nil
}
