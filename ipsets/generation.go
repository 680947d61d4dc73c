package ipsets

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// current returns what the maps hold, reading the members map the first
// time. The caller holds m.mu.
func (m *Map) current() (Members, error) {
	if m.state == nil {
		sets, err := m.Read()
		if err != nil {
			return nil, err
		}
		m.state = sets
	}
	return m.state, nil
}

// readGenerations learns, the first time, which membership generation is
// in use and what each holds. The caller holds m.mu.
func (m *Map) readGenerations() error {
	if m.written[0] != nil && m.written[1] != nil {
		return nil
	}
	cur, err := m.gen.Lookup(0)
	if err != nil {
		return fmt.Errorf("read ip set generation: %w", err)
	}
	if cur > 1 {
		return fmt.Errorf("ip set generation %d, want 0 or 1", cur)
	}
	written := [2]map[MemberKey]MemberValue{{}, {}}
	var iterErr error
	for k, v := range m.members.All(&iterErr) {
		if k.Gen > 1 {
			return fmt.Errorf("%w: membership key of generation %d", ErrInvalidMember, k.Gen)
		}
		written[k.Gen][k] = v
	}
	if iterErr != nil {
		return fmt.Errorf("read ip set memberships: %w", iterErr)
	}
	m.cur, m.written = cur, written
	// Another writer (this Map's predecessor, before a restart) may have
	// switched just now: the idle generation waits a grace period too.
	m.grace.Start()
	return nil
}

// switchMembers makes the membership map's idle generation hold the
// entries of sets, where it differs, and then switches to it with one
// write of the generation map: a program reads the generation once, so it
// sees the old entries or the new ones, never some of each. The idle
// generation is rewritten only once no packet can still be reading it
// (grace). On error the generation in use is untouched. The caller holds
// m.mu.
func (m *Map) switchMembers(sets Members) error {
	if err := m.readGenerations(); err != nil {
		return err
	}
	next := 1 - m.cur
	want, err := sets.memberEntries(next)
	if err != nil {
		return err
	}
	if err := m.grace.Wait(); err != nil {
		return err
	}
	have := m.written[next]
	var keys, deletes []MemberKey
	var values []MemberValue
	for k, v := range want {
		if old, ok := have[k]; !ok || old != v {
			keys, values = append(keys, k), append(values, v)
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			deletes = append(deletes, k)
		}
	}
	// From here until the writes succeed, what the idle generation holds
	// is not known: read it again next time.
	m.written[next] = nil
	if _, err := m.members.BatchUpdate(keys, values, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write ip set memberships: %w", err)
	}
	if _, err := m.members.BatchDelete(deletes); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete ip set memberships: %w", err)
	}
	if err := m.gen.Update(0, next, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("switch ip set generation: %w", err)
	}
	m.cur, m.written[next], m.state = next, want, sets
	m.grace.Start()
	return nil
}

// Lookup makes the lookups a classified run makes for set id: the
// membership entry of addr (with proto and port for a named-port test,
// proto 0 for an address test) in the generation in use, and, when id's
// slot in it is shared, the set's own entry (Contains).
func (m *Map) Lookup(id uint64, addr netip.Addr, proto uint8, port uint16) (bool, error) {
	if err := m.made(); err != nil {
		return false, err
	}
	if !addr.IsValid() {
		return false, fmt.Errorf("look up ip set %d: invalid address", id)
	}
	if proto == 0 {
		port = 0
	}
	cur, err := m.gen.Lookup(0)
	if err != nil {
		return false, fmt.Errorf("look up ip set %d: %w", id, err)
	}
	v, err := m.members.Lookup(MemberLookupKey(cur, addr, proto, port))
	var found *MemberValue
	switch {
	case err == nil:
		found = &v
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return false, fmt.Errorf("look up ip set %d: %w", id, err)
	}
	return inMemberValue(found, id, func(id uint64) (bool, error) { return m.Contains(id, addr, proto, port) })
}

// Rebuild writes the membership map from the members map when it holds
// no entry while the members map holds some: what opening maps pinned by a
// version without the membership map finds (or a membership map lost while
// the members stayed). Otherwise it does nothing: Sync, Add and Remove
// keep both maps in step.
func (m *Map) Rebuild() error {
	if err := m.made(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.readGenerations(); err != nil {
		return fmt.Errorf("rebuild ip set memberships: %w", err)
	}
	if len(m.written[0]) != 0 || len(m.written[1]) != 0 {
		return nil
	}
	var iterErr error
	empty := true
	for range m.typed.All(&iterErr) {
		empty = false
		break
	}
	if iterErr != nil {
		return fmt.Errorf("rebuild ip set memberships: %w", iterErr)
	}
	if empty {
		return nil
	}
	sets, err := m.current()
	if err != nil {
		return fmt.Errorf("rebuild ip set memberships: %w", err)
	}
	if err := m.switchMembers(sets); err != nil {
		return fmt.Errorf("rebuild ip set memberships: %w", err)
	}
	return nil
}
