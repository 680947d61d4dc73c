package ipsets

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/maps"
)

// Map is the IP set members map: an LPM trie from Key to a u32, normally
// the datapath's bpf.MapIPSets. It is safe for concurrent use as far as the
// kernel map is; Sync calls are serialised.
type Map struct {
	typed *maps.Map[Key, uint32]

	mu     sync.Mutex // guards syncer
	syncer *maps.Syncer[Key, uint32]
}

const keySize = int(unsafe.Sizeof(Key{}))

// NewMap wraps m, which must be an LPM trie with the IP set key and a u32
// value. The Map does not own m: closing m is the caller's.
func NewMap(m *ebpf.Map) (*Map, error) {
	if m == nil {
		return nil, errors.New("ip set map: nil map")
	}
	if t := m.Type(); t != ebpf.LPMTrie {
		return nil, fmt.Errorf("ip set map %s: type %s, want LPM trie", m, t)
	}
	// maps.New refuses a map whose key or value is of another size.
	typed, err := maps.New[Key, uint32](m)
	if err != nil {
		return nil, fmt.Errorf("ip set map: %w", err)
	}
	return &Map{typed: typed, syncer: maps.NewSyncer(typed)}, nil
}

// errNotMade is the error of every operation on a nil or zero Map.
var errNotMade = errors.New("ip set map not made by NewMap")

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

// Add writes member mem of set id.
func (m *Map) Add(id uint64, mem Member) error {
	if err := m.made(); err != nil {
		return err
	}
	k, err := mem.Key(id)
	if err != nil {
		return fmt.Errorf("add to ip set %d: %w", id, err)
	}
	if err := m.typed.Update(k, memberValue, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add to ip set %d: %w", id, err)
	}
	return nil
}

// Remove deletes member mem of set id; removing a member that is not there
// is not an error.
func (m *Map) Remove(id uint64, mem Member) error {
	if err := m.made(); err != nil {
		return err
	}
	k, err := mem.Key(id)
	if err != nil {
		return fmt.Errorf("remove from ip set %d: %w", id, err)
	}
	if err := m.typed.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove from ip set %d: %w", id, err)
	}
	return nil
}

// Sync makes the map hold exactly the members of sets, writing only the
// entries that differ (maps.Syncer): a member present before and after is
// never missing in between.
func (m *Map) Sync(sets Members) (maps.SyncStats, error) {
	if err := m.made(); err != nil {
		return maps.SyncStats{}, err
	}
	desired, err := sets.Keys()
	if err != nil {
		return maps.SyncStats{}, fmt.Errorf("sync ip sets: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	stats, err := m.syncer.Apply(desired)
	if err != nil {
		return stats, fmt.Errorf("sync ip sets: %w", err)
	}
	return stats, nil
}

// Read returns every set the map holds. A key that ipsets would not write
// (another writer's) is an error wrapping ErrInvalidMember.
func (m *Map) Read() (Members, error) {
	if err := m.made(); err != nil {
		return nil, err
	}
	out := Members{}
	var iterErr error
	for k := range m.typed.All(&iterErr) {
		id, mem, err := Decode(k)
		if err != nil {
			return nil, fmt.Errorf("read ip sets: %w", err)
		}
		s := out[id]
		if mem.IsNamedPort() {
			s.NamedPorts = append(s.NamedPorts, mem.NamedPort)
		} else {
			s.Nets = append(s.Nets, mem.Net)
		}
		out[id] = s
	}
	if iterErr != nil {
		return nil, fmt.Errorf("read ip sets: %w", iterErr)
	}
	return out, nil
}

// Contains makes the lookup a program makes: an address test of set id
// when proto is 0, else a named-port test with proto and port.
func (m *Map) Contains(id uint64, addr netip.Addr, proto uint8, port uint16) (bool, error) {
	if err := m.made(); err != nil {
		return false, err
	}
	if !addr.IsValid() {
		return false, fmt.Errorf("look up ip set %d: invalid address", id)
	}
	if proto == 0 {
		port = 0
	}
	_, err := m.typed.Lookup(LookupKey(id, addr, proto, port))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return false, nil
	}
	return false, fmt.Errorf("look up ip set %d: %w", id, err)
}
