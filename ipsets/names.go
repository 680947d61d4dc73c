package ipsets

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync"
)

// NameID returns the set ID of the set named name: the first 8 bytes of
// its SHA-256, big-endian. It depends on the name alone, so an agent that
// restarts, or two agents on one node, give a set the same ID without
// sharing state; Names detects the (astronomically rare) collision.
func NameID(name string) uint64 {
	sum := sha256.Sum256([]byte(name))
	return binary.BigEndian.Uint64(sum[:8])
}

// Names hands out the IDs of named sets and refuses a name whose ID
// another name already holds. The zero Names is ready to use; it is safe
// for concurrent use.
type Names struct {
	mu   sync.Mutex
	byID map[uint64]string
}

// ID returns NameID(name), recording it for name, or an error when
// another name recorded here has the same ID.
func (n *Names) ID(name string) (uint64, error) {
	if n == nil {
		return 0, fmt.Errorf("ip set %q: nil Names", name)
	}
	id := NameID(name)
	n.mu.Lock()
	defer n.mu.Unlock()
	if other, ok := n.byID[id]; ok && other != name {
		return 0, fmt.Errorf("ip set %q: ID %#x is already %q's", name, id, other)
	}
	if n.byID == nil {
		n.byID = map[uint64]string{}
	}
	n.byID[id] = name
	return id, nil
}

// Release forgets name, so that its ID may go to another name.
func (n *Names) Release(name string) {
	if n == nil {
		return
	}
	id := NameID(name)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byID[id] == name {
		delete(n.byID, id)
	}
}

// Members returns the members of named sets keyed by their IDs and
// records every name; on a collision it fails and records none of them.
func (n *Names) Members(named map[string]Set) (Members, error) {
	if n == nil {
		return nil, fmt.Errorf("ip sets: nil Names")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(Members, len(named))
	names := make(map[uint64]string, len(named))
	for name, s := range named {
		id := NameID(name)
		other, ok := names[id]
		if !ok {
			other, ok = n.byID[id]
		}
		if ok && other != name {
			return nil, fmt.Errorf("ip set %q: ID %#x is already %q's", name, id, other)
		}
		names[id] = name
		out[id] = s
	}
	if n.byID == nil {
		n.byID = map[uint64]string{}
	}
	for id, name := range names {
		n.byID[id] = name
	}
	return out, nil
}
