package conntrack

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/maps"
)

// Sizes of the kernel map's key and value; the layout tests hold them to
// BTF.
const (
	keySize   = int(unsafe.Sizeof(Key{}))
	valueSize = int(unsafe.Sizeof(Value{}))
)

// Map is the conntrack table: a hash or LRU hash map from Key to Value,
// normally the datapath's bpf.MapConntrack. It is safe for concurrent use
// as far as the kernel map is.
//
// Every operation goes through the maps package's typed map. Range
// streams the table in its fixed-size chunks (maps.Map.Range) instead of
// reading it whole, so a sweep of a 512,000-entry table every few seconds
// needs a quarter of a megabyte rather than tens of megabytes.
type Map struct {
	typed *maps.Map[Key, Value]
}

// Entry is one key and value of the table.
type Entry struct {
	Key   Key
	Value Value
}

// NewMap wraps m, which must be a hash or LRU hash map with the conntrack
// key and value sizes. The Map does not own m: closing m is the caller's.
func NewMap(m *ebpf.Map) (*Map, error) {
	if m == nil {
		return nil, errors.New("conntrack map: nil map")
	}
	if t := m.Type(); t != ebpf.LRUHash && t != ebpf.Hash {
		return nil, fmt.Errorf("conntrack map %s: type %s, want LRU hash or hash", m, t)
	}
	if int(m.KeySize()) != keySize || int(m.ValueSize()) != valueSize {
		return nil, fmt.Errorf("conntrack map %s: key/value size %d/%d, want %d/%d",
			m, m.KeySize(), m.ValueSize(), keySize, valueSize)
	}
	typed, err := maps.New[Key, Value](m)
	if err != nil {
		return nil, fmt.Errorf("conntrack map: %w", err)
	}
	return &Map{typed: typed}, nil
}

// EBPF returns the underlying map.
func (m *Map) EBPF() *ebpf.Map { return m.typed.EBPF() }

// MaxEntries returns the table's capacity.
func (m *Map) MaxEntries() int { return int(m.typed.EBPF().MaxEntries()) }

// Lookup returns the entry stored under k. A missing key yields an error
// wrapping ebpf.ErrKeyNotExist.
func (m *Map) Lookup(k Key) (Value, error) {
	v, err := m.typed.Lookup(k)
	if err != nil {
		return Value{}, fmt.Errorf("conntrack key %s: %w", k, err)
	}
	return v, nil
}

// Update stores v under k; flags are ebpf.UpdateAny, UpdateNoExist or
// UpdateExist. In an LRU map, inserting into a full table evicts the
// least recently used entry.
func (m *Map) Update(k Key, v Value, flags ebpf.MapUpdateFlags) error {
	if err := m.typed.Update(k, v, flags); err != nil {
		return fmt.Errorf("conntrack key %s: %w", k, err)
	}
	return nil
}

// Delete removes k. A missing key yields an error wrapping
// ebpf.ErrKeyNotExist.
func (m *Map) Delete(k Key) error {
	if err := m.typed.Delete(k); err != nil {
		return fmt.Errorf("conntrack key %s: %w", k, err)
	}
	return nil
}

// lookupAndDelete removes k and returns the value it held, atomically
// (maps.Map.LookupAndDelete: errors wrap ebpf.ErrNotSupported where the
// kernel lacks the command for hash maps).
func (m *Map) lookupAndDelete(k Key) (Value, error) {
	v, err := m.typed.LookupAndDelete(k)
	if err != nil {
		return Value{}, fmt.Errorf("conntrack key %s: %w", k, err)
	}
	return v, nil
}

// All iterates over the table for range-over-func, reading it as Range
// does, with maps.Map.All's contract: when the iteration stops early
// because of an error it stores the error in *errOut (a nil errOut drops
// it); a complete iteration, or one the caller breaks off, leaves *errOut
// untouched. As with any read of a live table, entries the datapath adds
// or removes meanwhile may be missed.
//
//	var err error
//	for k, v := range m.All(&err) { ... }
//	if err != nil { ... }
func (m *Map) All(errOut *error) iter.Seq2[Key, Value] {
	return func(yield func(Key, Value) bool) {
		if err := m.Range(yield); err != nil && errOut != nil {
			*errOut = err
		}
	}
}

// Range calls fn for every entry until fn returns false, reading the
// table as maps.Map.Range does: in chunks with BPF_MAP_LOOKUP_BATCH, whose
// cursor is a hash bucket and so survives concurrent deletes, and by
// BPF_MAP_GET_NEXT_KEY iteration on kernels without it. fn must not
// delete entries when the fallback is in use; the Scanner collects its
// deletions and applies them after the read.
func (m *Map) Range(fn func(Key, Value) bool) error {
	if err := m.typed.Range(fn); err != nil {
		return fmt.Errorf("read conntrack table: %w", err)
	}
	return nil
}

// Entries returns every entry, sorted by key (Key.Compare).
func (m *Map) Entries() ([]Entry, error) {
	keys, values, err := m.typed.Dump()
	if err != nil {
		return nil, fmt.Errorf("read conntrack table: %w", err)
	}
	entries := make([]Entry, len(keys))
	for i := range keys {
		entries[i] = Entry{Key: keys[i], Value: values[i]}
	}
	slices.SortFunc(entries, func(x, y Entry) int { return x.Key.Compare(y.Key) })
	// The fallback iteration can restart and yield a key twice.
	entries = slices.CompactFunc(entries, func(x, y Entry) bool { return x.Key == y.Key })
	return entries, nil
}

// Count returns the number of entries.
func (m *Map) Count() (int, error) {
	n := 0
	err := m.Range(func(Key, Value) bool {
		n++
		return true
	})
	return n, err
}

// Dump writes one line per entry, sorted by key: the key, two spaces, the
// value, as Key.String and Value.String format them.
func (m *Map) Dump(w io.Writer) error {
	entries, err := m.Entries()
	if err != nil {
		return fmt.Errorf("dump conntrack: %w", err)
	}
	bw := bufio.NewWriter(w)
	for _, e := range entries {
		if _, err := fmt.Fprintf(bw, "%s  %s\n", e.Key, e.Value); err != nil {
			return fmt.Errorf("dump conntrack: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("dump conntrack: %w", err)
	}
	return nil
}
