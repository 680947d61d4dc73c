package conntrack

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// Sizes of the kernel map's key and value; the layout tests hold them to
// BTF.
const (
	keySize   = int(unsafe.Sizeof(Key{}))
	valueSize = int(unsafe.Sizeof(Value{}))
)

// Map is the conntrack table: a hash or LRU hash map from Key to Value.
// It is safe for concurrent use as far as the kernel map is.
//
// A Map made from the datapath's array of tables (bpf.MapConntrackTables)
// follows its live table: after a resize replaces the table, every
// operation goes to the new one, and the handle of the old one is closed
// only once no operation uses it. Entries a resize is still moving out of
// the draining table are seen once they have moved.
//
// Every operation goes through the maps package's typed map. Range
// streams the table in its fixed-size chunks (maps.Map.Range) instead of
// reading it whole, so a sweep of a 512,000-entry table every few seconds
// needs a quarter of a megabyte rather than tens of megabytes.
type Map struct {
	// tables is the array of tables, or nil for a Map of one table.
	tables *ebpf.Map

	// mu guards cur, closed and the users counts; it is held only to
	// pick a table up or put it down, never during a kernel call.
	mu     sync.Mutex
	cur    *tableRef
	closed bool
}

// tableRef is a table the Map has open, with the operations using it: a
// table the Map no longer follows is closed when the last one finishes.
type tableRef struct {
	t     *maps.Map[Key, Value]
	id    ebpf.MapID // in tables mode
	users int
}

// Entry is one key and value of the table.
type Entry struct {
	// Key is the entry's flow tuple.
	Key Key
	// Value is the entry's state.
	Value Value
}

// NewMap wraps m: a hash or LRU hash map with the conntrack key and value
// sizes, or an array of such tables (the datapath's
// bpf.MapConntrackTables, whose live entry the Map follows). The Map does
// not own m: closing m is the caller's; in tables mode the Map owns the
// handles it opens on the live table, and Close releases them.
func NewMap(m *ebpf.Map) (*Map, error) {
	if m == nil {
		return nil, errors.New("conntrack map: nil map")
	}
	if m.Type() == ebpf.ArrayOfMaps {
		cm := &Map{tables: m}
		if err := cm.follow(); err != nil {
			return nil, fmt.Errorf("conntrack map %s: %w", m, err)
		}
		return cm, nil
	}
	typed, err := newTable(m)
	if err != nil {
		return nil, fmt.Errorf("conntrack map %s: %w", m, err)
	}
	return &Map{cur: &tableRef{t: typed}}, nil
}

func newTable(m *ebpf.Map) (*maps.Map[Key, Value], error) {
	if t := m.Type(); t != ebpf.LRUHash && t != ebpf.Hash {
		return nil, fmt.Errorf("type %s, want LRU hash or hash", t)
	}
	if int(m.KeySize()) != keySize || int(m.ValueSize()) != valueSize {
		return nil, fmt.Errorf("key/value size %d/%d, want %d/%d", m.KeySize(), m.ValueSize(), keySize, valueSize)
	}
	return maps.New[Key, Value](m)
}

// follow opens the array's live table if it is not the one held.
func (m *Map) follow() error {
	var id uint32
	if err := m.tables.Lookup(uint32(bpf.CTTableLive), &id); err != nil {
		return fmt.Errorf("find the live table: %w", err)
	}
	m.mu.Lock()
	same := m.cur != nil && m.cur.id == ebpf.MapID(id)
	m.mu.Unlock()
	if same {
		return nil
	}
	live, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return fmt.Errorf("open the live table: %w", err)
	}
	typed, err := newTable(live)
	if err != nil {
		live.Close()
		return fmt.Errorf("live table: %w", err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		live.Close()
		return errClosed
	}
	old := m.cur
	m.cur = &tableRef{t: typed, id: ebpf.MapID(id)}
	closeOld := old != nil && old.users == 0
	m.mu.Unlock()
	if closeOld {
		old.t.EBPF().Close()
	}
	return nil
}

// Errors of a Map that cannot act.
var (
	errClosed  = errors.New("conntrack map is closed")
	errNotMade = errors.New("conntrack map not made by NewMap")
)

// usable returns the reason m cannot act, or nil.
func (m *Map) usable() error {
	if m == nil || (m.tables == nil && m.cur == nil) {
		return errNotMade
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	return nil
}

// use runs fn on the table, the live one in tables mode.
func (m *Map) use(fn func(*maps.Map[Key, Value]) error) error {
	if err := m.usable(); err != nil {
		return err
	}
	if m.tables != nil {
		if err := m.follow(); err != nil {
			return err
		}
	}
	m.mu.Lock()
	ref := m.cur
	if m.closed {
		m.mu.Unlock()
		return errClosed
	}
	ref.users++
	m.mu.Unlock()
	defer m.putDown(ref)
	return fn(ref.t)
}

// putDown ends an operation's use of ref, closing ref if the Map has
// moved on from it (in tables mode) and this was its last user.
func (m *Map) putDown(ref *tableRef) {
	m.mu.Lock()
	ref.users--
	closeRef := m.tables != nil && ref != m.cur && ref.users == 0
	m.mu.Unlock()
	if closeRef {
		ref.t.EBPF().Close()
	}
}

// Close ends the Map's use: every later operation returns an error. A
// Map of an array of tables releases the handles it opened on the live
// table (one an operation still uses, when that operation ends); a Map of
// one table leaves the table, which the caller owns, open.
func (m *Map) Close() error {
	if err := m.usable(); err != nil {
		return nil // closing twice, or what was never opened, is a no-op
	}
	m.mu.Lock()
	m.closed = true
	ref := m.cur
	if m.tables != nil {
		m.cur = nil
	}
	m.mu.Unlock()
	if m.tables == nil || ref == nil || ref.users > 0 {
		return nil
	}
	return ref.t.EBPF().Close()
}

// EBPF returns the table's map: in tables mode, the live table's at the
// time of the call, valid until the Map follows a new one.
func (m *Map) EBPF() *ebpf.Map {
	var em *ebpf.Map
	m.use(func(t *maps.Map[Key, Value]) error { em = t.EBPF(); return nil })
	return em
}

// MaxEntries returns the table's capacity.
func (m *Map) MaxEntries() int {
	n := 0
	m.use(func(t *maps.Map[Key, Value]) error { n = int(t.EBPF().MaxEntries()); return nil })
	return n
}

// Lookup returns the entry stored under k. A missing key yields an error
// wrapping ebpf.ErrKeyNotExist.
func (m *Map) Lookup(k Key) (Value, error) {
	var v Value
	err := m.use(func(t *maps.Map[Key, Value]) (err error) { v, err = t.Lookup(k); return })
	if err != nil {
		return Value{}, fmt.Errorf("conntrack key %s: %w", k, err)
	}
	return v, nil
}

// Update stores v under k; flags are ebpf.UpdateAny, UpdateNoExist or
// UpdateExist. In an LRU map, inserting into a full table evicts the
// least recently used entry.
func (m *Map) Update(k Key, v Value, flags ebpf.MapUpdateFlags) error {
	if err := m.use(func(t *maps.Map[Key, Value]) error { return t.Update(k, v, flags) }); err != nil {
		return fmt.Errorf("conntrack key %s: %w", k, err)
	}
	return nil
}

// Delete removes k. A missing key yields an error wrapping
// ebpf.ErrKeyNotExist. In tables mode it also removes k from a table
// being drained, first, so that the drain cannot bring a deleted flow
// back; k is missing only if neither table held it.
func (m *Map) Delete(k Key) error {
	drained, err := m.deleteDraining(k)
	if err == nil {
		err = m.use(func(t *maps.Map[Key, Value]) error { return t.Delete(k) })
		if drained && errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("conntrack key %s: %w", k, err)
	}
	return nil
}

// deleteDraining removes k from the array's draining table, if there is
// one, and reports whether it held k. A packet of the flow that is
// moving the entry to the live table as this runs may still land it
// there; it was sent before the delete.
func (m *Map) deleteDraining(k Key) (bool, error) {
	if err := m.usable(); err != nil || m.tables == nil {
		return false, err
	}
	var id uint32
	err := m.tables.Lookup(uint32(bpf.CTTableDraining), &id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("find the draining table: %w", err)
	}
	draining, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if errors.Is(err, unix.ENOENT) {
		return false, nil // the drain finished and the table is gone
	}
	if err != nil {
		return false, fmt.Errorf("open the draining table: %w", err)
	}
	defer draining.Close()
	err = draining.Delete(&k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete from the draining table: %w", err)
	}
	return true, nil
}

// lookupAndDelete removes k and returns the value it held, atomically
// (maps.Map.LookupAndDelete: errors wrap ebpf.ErrNotSupported where the
// kernel lacks the command for hash maps).
func (m *Map) lookupAndDelete(k Key) (Value, error) {
	var v Value
	err := m.use(func(t *maps.Map[Key, Value]) (err error) { v, err = t.LookupAndDelete(k); return })
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
	if err := m.use(func(t *maps.Map[Key, Value]) error { return t.Range(fn) }); err != nil {
		return fmt.Errorf("read conntrack table: %w", err)
	}
	return nil
}

// Entries returns every entry, sorted by key (Key.Compare).
func (m *Map) Entries() ([]Entry, error) {
	var keys []Key
	var values []Value
	err := m.use(func(t *maps.Map[Key, Value]) (err error) { keys, values, err = t.Dump(); return })
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
