package maps

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/cilium/ebpf"
)

// ErrNotPinned is wrapped by OpenPinned's error when no map of the name is
// pinned in the directory, at any version, or the directory is missing.
var ErrNotPinned = errors.New("map not pinned")

// ErrOtherVersion is wrapped by OpenPinned's error when the map is pinned
// only at other layout versions than the one asked for; the message names
// both.
var ErrOtherVersion = errors.New("map pinned at another layout version")

// OpenPinned opens the map p describes from its pin, read-only, for a
// reader beside the process that owns it (a debugging tool): it never
// creates, migrates or changes a map, and the handle refuses writes.
// Only p's Name, Version, PinDir, Type, KeySize and ValueSize are used:
// the capacity and flags are the owner's to change (a resize keeps the
// version), while a type or key/value size other than p's is an error.
// A pin directory or map that is missing wraps ErrNotPinned, a map pinned
// only at other versions ErrOtherVersion.
func OpenPinned(p Params) (*ebpf.Map, error) {
	m, err := openPinnedReadOnly(p)
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", p.PinPath(), err)
	}
	return m, nil
}

func openPinnedReadOnly(p Params) (*ebpf.Map, error) {
	if p.Name == "" || p.PinDir == "" || p.Version == 0 {
		return nil, errors.New("name, pin directory and version are required")
	}
	if _, err := os.Stat(p.PinDir); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no pin directory %s", ErrNotPinned, p.PinDir)
	}
	found, err := findPins(p)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(found.live, p.Version) {
		others := slices.Clone(found.live)
		for _, s := range append(found.old, found.draining...) {
			others = append(others, s.version)
		}
		slices.Sort(others)
		others = slices.Compact(others)
		if len(others) == 0 {
			return nil, ErrNotPinned
		}
		return nil, fmt.Errorf("%w: pinned at version %v, this reader knows version %d", ErrOtherVersion, others, p.Version)
	}
	m, err := ebpf.LoadPinnedMap(p.PinPath(), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("load pinned map: %w", err)
	}
	if m.Type() != p.Type || m.KeySize() != p.KeySize || m.ValueSize() != p.ValueSize {
		err := fmt.Errorf("pinned map is a %s with key/value size %d/%d, want a %s with %d/%d at version %d",
			m.Type(), m.KeySize(), m.ValueSize(), p.Type, p.KeySize, p.ValueSize, p.Version)
		m.Close()
		return nil, err
	}
	return m, nil
}
