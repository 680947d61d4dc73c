package routes

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/maps"
)

// Map is the routes map: an LPM trie from Key to Value, normally the
// datapath's bpf.MapRoutes. It is safe for concurrent use as far as the
// kernel map is; Sync calls are serialised.
type Map struct {
	typed *maps.Map[Key, Value]

	mu     sync.Mutex // guards syncer
	syncer *maps.Syncer[Key, Value]
}

// NewMap wraps m, which must be an LPM trie with the routes key and value
// sizes. The Map does not own m: closing m is the caller's.
func NewMap(m *ebpf.Map) (*Map, error) {
	if m == nil {
		return nil, errors.New("routes map: nil map")
	}
	if t := m.Type(); t != ebpf.LPMTrie {
		return nil, fmt.Errorf("routes map %s: type %s, want LPM trie", m, t)
	}
	// maps.New checks the key and value sizes.
	typed, err := maps.New[Key, Value](m)
	if err != nil {
		return nil, fmt.Errorf("routes map: %w", err)
	}
	return &Map{typed: typed, syncer: maps.NewSyncer(typed)}, nil
}

// errNotMade is the error of every operation on a nil or zero Map.
var errNotMade = errors.New("routes map not made by NewMap")

// made returns errNotMade unless m came from NewMap.
func (m *Map) made() error {
	if m == nil || m.typed == nil {
		return errNotMade
	}
	return nil
}

// EBPF returns the underlying map (nil for a Map not made by NewMap).
func (m *Map) EBPF() *ebpf.Map {
	if m.made() != nil {
		return nil
	}
	return m.typed.EBPF()
}

// MaxEntries returns the map's capacity in routes (0 for a Map not made
// by NewMap).
func (m *Map) MaxEntries() int {
	if m.made() != nil {
		return 0
	}
	return int(m.typed.EBPF().MaxEntries())
}

// Lookup returns the route with the longest prefix containing addr, as
// the datapath's sl_route_of finds it: a lookup with all 128 bits of the
// address, IPv4 mapped. The kernel returns the value, not the prefix it
// matched, so the result's Prefix is the zero Prefix. No route yields an
// error wrapping ebpf.ErrKeyNotExist.
func (m *Map) Lookup(addr netip.Addr) (Route, error) {
	if err := m.made(); err != nil {
		return Route{}, fmt.Errorf("routes lookup: %w", err)
	}
	k, ok := addrKey(addr)
	if !ok {
		return Route{}, errors.New("routes lookup: no valid address")
	}
	v, err := m.typed.Lookup(k)
	if err != nil {
		return Route{}, fmt.Errorf("routes lookup %s: %w", addr, err)
	}
	r, err := Decode(k, v)
	if err != nil {
		return Route{}, fmt.Errorf("routes lookup %s: %w", addr, err)
	}
	r.Prefix = netip.Prefix{}
	return r, nil
}

// Get returns the route stored under exactly prefix p. A prefix the map
// does not hold yields an error wrapping ebpf.ErrKeyNotExist, even when a
// shorter prefix covers it.
//
// The kernel's lookup cannot tell: asked for p it returns the longest
// prefix of at most p's length that covers p. So Get asks
// BPF_MAP_GET_NEXT_KEY, which is exact, whether the map holds p (see
// holds), and only then looks p up, which then finds p itself. That takes
// three syscalls; a concurrent writer can make Get miss a prefix added
// meanwhile, or, rarely, return the route of a covering prefix for one
// deleted meanwhile.
func (m *Map) Get(p netip.Prefix) (Route, error) {
	if err := m.made(); err != nil {
		return Route{}, fmt.Errorf("routes get: %w", err)
	}
	k, err := NewKey(p)
	if err != nil {
		return Route{}, fmt.Errorf("routes get: %w", err)
	}
	ok, err := m.holds(k)
	if err != nil {
		return Route{}, fmt.Errorf("routes get %s: %w", p, err)
	}
	if !ok {
		return Route{}, fmt.Errorf("routes get %s: %w", p, ebpf.ErrKeyNotExist)
	}
	v, err := m.typed.Lookup(k)
	if err != nil {
		return Route{}, fmt.Errorf("routes get %s: %w", p, err)
	}
	r, err := Decode(k, v)
	if err != nil {
		return Route{}, fmt.Errorf("routes get %s: %w", p, err)
	}
	return r, nil
}

// holds reports whether the trie has an entry of exactly k. It relies on
// BPF_MAP_GET_NEXT_KEY's contract, which LPM tries keep: for a key the
// map holds it returns the key after it, or ENOENT after the last; for a
// key the map does not hold it returns the first key. Iteration never
// returns to the first key, so k is held unless the answer is the first
// key. The first key is read again afterwards, and the question asked
// again when it moved, so that a concurrent insert or delete at the front
// cannot pass for k.
func (m *Map) holds(k Key) (bool, error) {
	em := m.typed.EBPF()
	first, empty, err := m.firstKey()
	if err != nil || empty {
		return false, err
	}
	for range 3 {
		var next Key
		err := em.NextKey(&k, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return true, nil // k is the last key
		}
		if err != nil {
			return false, fmt.Errorf("map %s: %w", em, err)
		}
		again, empty, err := m.firstKey()
		if err != nil || empty {
			return false, err
		}
		if again == first {
			return next != first, nil
		}
		first = again
	}
	return false, fmt.Errorf("map %s: first key keeps changing", em)
}

// firstKey returns the key BPF_MAP_GET_NEXT_KEY starts an iteration at,
// or empty when the map has no entries.
func (m *Map) firstKey() (first Key, empty bool, err error) {
	em := m.typed.EBPF()
	err = em.NextKey(nil, &first)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Key{}, true, nil
	}
	if err != nil {
		return Key{}, false, fmt.Errorf("map %s: %w", em, err)
	}
	return first, false, nil
}

// Put stores r, replacing the route of the same prefix if there is one.
// An invalid route (Route.Validate) is an error wrapping ErrInvalidRoute
// and changes nothing.
func (m *Map) Put(r Route) error {
	if err := m.made(); err != nil {
		return fmt.Errorf("routes put: %w", err)
	}
	k, v, err := r.Encode()
	if err != nil {
		return fmt.Errorf("routes put: %w", err)
	}
	if err := m.typed.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("routes put %s: %w", r, err)
	}
	return nil
}

// Delete removes the route of exactly prefix p; routes of longer or
// shorter prefixes stay. A prefix the map does not hold yields an error
// wrapping ebpf.ErrKeyNotExist.
func (m *Map) Delete(p netip.Prefix) error {
	if err := m.made(); err != nil {
		return fmt.Errorf("routes delete: %w", err)
	}
	k, err := NewKey(p)
	if err != nil {
		return fmt.Errorf("routes delete: %w", err)
	}
	if err := m.typed.Delete(k); err != nil {
		return fmt.Errorf("routes delete %s: %w", p, err)
	}
	return nil
}

// All iterates over the map's routes for range-over-func, by prefix (as
// Key.Prefix reads it) and route, in the kernel's order, reading the map
// as maps.Map.All does. When the iteration stops early because of an
// error, All stores the error in *errOut; a nil errOut discards it. A
// complete iteration, or one the caller breaks off, leaves *errOut
// untouched.
//
// The kernel walks an LPM trie key by key, and a walk whose current key
// vanishes restarts from the first: a route deleted during the iteration
// can make it yield other routes twice. Routes removes the repeats.
//
//	var err error
//	for prefix, route := range m.All(&err) { ... }
//	if err != nil { ... }
func (m *Map) All(errOut *error) iter.Seq2[netip.Prefix, Route] {
	return func(yield func(netip.Prefix, Route) bool) {
		if err := m.made(); err != nil {
			if errOut != nil {
				*errOut = fmt.Errorf("read routes: %w", err)
			}
			return
		}
		var decodeErr error
		err := m.typed.Range(func(k Key, v Value) bool {
			r, err := Decode(k, v)
			if err != nil {
				decodeErr = err
				return false
			}
			return yield(r.Prefix, r)
		})
		err = errors.Join(err, decodeErr)
		if err != nil && errOut != nil {
			*errOut = fmt.Errorf("read routes: %w", err)
		}
	}
}

// Routes returns every route, sorted IPv4 first, then by address, then
// by prefix length.
func (m *Map) Routes() ([]Route, error) {
	if err := m.made(); err != nil {
		return nil, fmt.Errorf("read routes: %w", err)
	}
	keys, values, err := m.typed.Dump()
	if err != nil {
		return nil, fmt.Errorf("read routes: %w", err)
	}
	routes := make([]Route, len(keys))
	for i := range keys {
		if routes[i], err = Decode(keys[i], values[i]); err != nil {
			return nil, fmt.Errorf("read routes: %w", err)
		}
	}
	slices.SortFunc(routes, compareRoutes)
	// A restarted walk can yield a key twice.
	return slices.CompactFunc(routes, func(a, b Route) bool { return a.Prefix == b.Prefix }), nil
}

// Sync makes the map hold exactly desired, touching only the routes that
// differ, through maps.Syncer: it reads the map, then adds the missing
// routes, rewrites the changed ones and deletes the ones not desired, and
// reports the counts. A second Sync of the same routes writes nothing.
//
// maps.Syncer writes adds and changes before deletes when the map has room
// for the added routes next to the deleted ones, so a route whose value
// changes is replaced in place and never absent, and a route replaced by
// one of another prefix length (10.0.0.0/24 by 10.0.0.0/25 and
// 10.0.0.128/25) is covered throughout by one or the other. Without that
// room it deletes first, and an address may have no route for a moment:
// size the map (datapath.Options.RouteEntries) with headroom for the
// largest change.
//
// Every route must be valid (Route.Validate) and no two may have one
// prefix, or Sync returns an error wrapping ErrInvalidRoute; more routes
// than MaxEntries are an error too. Either way Sync changes nothing.
//
// The kernel matches a key by its first Prefixlen bits but stores all 16
// bytes of the address. Another writer may have left bits set past a
// key's length, a key the Syncer would see as a stranger to delete after
// writing the same entry under its clean key, removing it. Sync therefore
// first rewrites such entries under their clean keys, in place (each
// counted in SyncStats.Changed), at the cost of a second read of the map.
func (m *Map) Sync(desired []Route) (maps.SyncStats, error) {
	if err := m.made(); err != nil {
		return maps.SyncStats{}, fmt.Errorf("routes sync: %w", err)
	}
	entries, err := entriesOf(desired)
	if err != nil {
		return maps.SyncStats{}, fmt.Errorf("routes sync: %w", err)
	}
	if len(entries) > m.MaxEntries() {
		return maps.SyncStats{}, fmt.Errorf("routes sync: %d routes, map %s holds %d",
			len(entries), m.EBPF(), m.MaxEntries())
	}
	want := make(map[Key]Value, len(entries))
	for k, i := range entries {
		want[k] = desired[i].value()
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	cleaned, err := m.cleanKeys(want)
	if err != nil {
		return maps.SyncStats{Changed: cleaned}, fmt.Errorf("routes sync: %w", err)
	}
	stats, err := m.syncer.Apply(want)
	// The Syncer found the cleaned entries as desired.
	moved := min(cleaned, stats.Unchanged)
	stats.Unchanged -= moved
	stats.Changed += moved
	if err != nil {
		return stats, fmt.Errorf("routes sync: %w", err)
	}
	return stats, nil
}

// cleanKeys rewrites every entry whose key has bits set past its prefix
// length and whose clean key is desired, under the clean key with the
// desired value. The kernel takes the clean key as the same entry and
// replaces it in place, storing the clean key. Unwanted entries with such
// keys are left for the Syncer to delete. It returns how many entries it
// rewrote.
func (m *Map) cleanKeys(want map[Key]Value) (int, error) {
	var dirty []Key
	err := m.typed.Range(func(k Key, _ Value) bool {
		if c := k.canonical(); c != k {
			if _, ok := want[c]; ok {
				dirty = append(dirty, c)
			}
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	for i, k := range dirty {
		if err := m.typed.Update(k, want[k], ebpf.UpdateExist); err != nil {
			return i, err
		}
	}
	return len(dirty), nil
}
