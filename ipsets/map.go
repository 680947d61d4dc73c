package ipsets

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/internal/grace"
	smaps "github.com/sluicenet/sluice/maps"
)

// Maps are the kernel maps a Map writes, normally the datapath's.
type Maps struct {
	// Sets is the members map, bpf.MapIPSets: an LPM trie from Key to
	// a u32.
	Sets *ebpf.Map
	// Members is the membership map, bpf.MapIPSetMembers: an LPM trie
	// from MemberKey to MemberValue.
	Members *ebpf.Map
	// Gen is bpf.MapIPSetGen: an array of one u32, the generation of
	// Members in use.
	Gen *ebpf.Map
}

// Map writes IP sets into the members map, which inline rule checks look
// each set up in, and the membership map, which classified runs look an
// address up in once for all its sets. It is safe for concurrent use as
// far as the kernel maps are; writes are serialised.
type Map struct {
	typed   *smaps.Map[Key, uint32]
	members *smaps.Map[MemberKey, MemberValue]
	gen     *smaps.Map[uint32, uint32]

	mu     sync.Mutex // guards what follows
	syncer *smaps.Syncer[Key, uint32]
	// state is what the maps hold, nil until read or written.
	state Members
	// cur is the membership generation in use; written[g] what
	// generation g holds, nil until read.
	cur     uint32
	written [2]map[MemberKey]MemberValue
	// grace follows each switch: until it ends, packets may still read
	// the idle generation.
	grace grace.Pending
}

const keySize = int(unsafe.Sizeof(Key{}))

// NewMap wraps ms, whose maps must have the types and key and value sizes
// Maps describes. The Map does not own them: closing them is the caller's.
func NewMap(ms Maps) (*Map, error) {
	for _, c := range []struct {
		name string
		m    *ebpf.Map
		t    ebpf.MapType
	}{{"ip set map", ms.Sets, ebpf.LPMTrie}, {"ip set membership map", ms.Members, ebpf.LPMTrie},
		{"ip set generation map", ms.Gen, ebpf.Array}} {
		if c.m == nil {
			return nil, fmt.Errorf("%s: nil map", c.name)
		}
		if t := c.m.Type(); t != c.t {
			return nil, fmt.Errorf("%s %s: type %s, want %s", c.name, c.m, t, c.t)
		}
	}
	// maps.New refuses a map whose key or value is of another size.
	typed, err := smaps.New[Key, uint32](ms.Sets)
	if err != nil {
		return nil, fmt.Errorf("ip set map: %w", err)
	}
	members, err := smaps.New[MemberKey, MemberValue](ms.Members)
	if err != nil {
		return nil, fmt.Errorf("ip set membership map: %w", err)
	}
	gen, err := smaps.New[uint32, uint32](ms.Gen)
	if err != nil {
		return nil, fmt.Errorf("ip set generation map: %w", err)
	}
	return &Map{typed: typed, members: members, gen: gen, syncer: smaps.NewSyncer(typed)}, nil
}

// errNotMade is the error of every operation on a nil or zero Map.
var errNotMade = errors.New("ip set map not made by NewMap")

func (m *Map) made() error {
	if m == nil || m.typed == nil {
		return errNotMade
	}
	return nil
}

// EBPF returns the members map (nil for a Map not made by NewMap).
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
	m.mu.Lock()
	defer m.mu.Unlock()
	sets, err := m.current()
	if err != nil {
		return fmt.Errorf("add to ip set %d: %w", id, err)
	}
	s := sets[id]
	if mem.IsNamedPort() {
		s.NamedPorts = append(slices.Clone(s.NamedPorts), mem.NamedPort)
	} else {
		s.Nets = append(slices.Clone(s.Nets), mem.Net)
	}
	next := maps.Clone(sets)
	next[id] = s
	_, err = m.typed.Lookup(k)
	existed := err == nil
	if err := m.typed.Update(k, memberValue, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add to ip set %d: %w", id, err)
	}
	if err := m.switchMembers(next); err != nil {
		// The memberships keep the old contents: so must the members
		// map, or inline rules and classified runs disagree.
		if !existed {
			if derr := m.typed.Delete(k); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) {
				m.state = nil
				return fmt.Errorf("add to ip set %d: %w (and undo: %v)", id, err, derr)
			}
		}
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
	m.mu.Lock()
	defer m.mu.Unlock()
	sets, err := m.current()
	if err != nil {
		return fmt.Errorf("remove from ip set %d: %w", id, err)
	}
	s := sets[id]
	if mem.IsNamedPort() {
		s.NamedPorts = slices.DeleteFunc(slices.Clone(s.NamedPorts), func(np NamedPort) bool { return np == mem.NamedPort })
	} else {
		s.Nets = slices.DeleteFunc(slices.Clone(s.Nets), func(p netip.Prefix) bool { return p.Masked() == mem.Net.Masked() })
	}
	next := maps.Clone(sets)
	next[id] = s
	if err := m.switchMembers(next); err != nil {
		return fmt.Errorf("remove from ip set %d: %w", id, err)
	}
	if err := m.typed.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove from ip set %d: %w", id, err)
	}
	return nil
}

// Sync makes the maps hold exactly the members of sets. The members map
// gets only the entries that differ (maps.Syncer): a member present before
// and after is never missing in between. The membership map's idle
// generation is rewritten where it differs and then switched to with one
// write, so a classified run sees the whole change or none of it.
func (m *Map) Sync(sets Members) (smaps.SyncStats, error) {
	if err := m.made(); err != nil {
		return smaps.SyncStats{}, err
	}
	desired, err := sets.Keys()
	if err != nil {
		return smaps.SyncStats{}, fmt.Errorf("sync ip sets: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// old undoes a failed membership write; a map holding keys ipsets
	// would not write (which Sync removes) has none to go back to.
	old, oldErr := m.current()
	stats, err := m.syncer.Apply(desired)
	if err != nil {
		m.state = nil
		return stats, fmt.Errorf("sync ip sets: %w", err)
	}
	if err := m.switchMembers(sets); err != nil {
		// The memberships keep the old contents: so must the members
		// map, or inline rules and classified runs disagree.
		kerr := oldErr
		var oldKeys map[Key]uint32
		if kerr == nil {
			oldKeys, kerr = old.Keys()
		}
		if kerr == nil {
			_, kerr = m.syncer.Apply(oldKeys)
		}
		if kerr != nil {
			m.state = nil
			return stats, fmt.Errorf("sync ip sets: %w (and undo: %v)", err, kerr)
		}
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
