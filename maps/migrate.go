package maps

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Upgrade turns one entry of version N into version N+1. key and value are
// the old entry's bytes, valid only during the call; a step may return
// them as they are but must not modify them. It returns the new entry's
// bytes, or keep=false to drop the entry. Only the last step's output must
// match the new Params' sizes; intermediate versions may have any size.
//
// For a per-CPU map the steps run once per CPU, each time with the
// entry's key and that CPU's value. The entry is dropped when the steps
// drop every CPU's value; a CPU whose value alone is dropped gets a zero
// value. The CPUs whose values are kept must agree on the new key.
type Upgrade func(key, value []byte) (newKey, newValue []byte, keep bool, err error)

// startMigration repins version from as _old, then migrates from it.
func startMigration(p Params, cfg *openConfig, from uint32) (*ebpf.Map, OpenReport, error) {
	livePath := p.pinPathOf(from)
	oldPath := livePath + oldSuffix
	old, err := ebpf.LoadPinnedMap(livePath, nil)
	if err != nil {
		return nil, OpenReport{}, fmt.Errorf("load version %d: %w", from, err)
	}
	// Refuse before repinning, so that a misconfiguration leaves the
	// pinned map where the datapath finds it.
	if err := checkMigration(p, cfg, from, old); err != nil {
		old.Close()
		return nil, OpenReport{}, err
	}
	// Pin renames an already pinned map, atomically on the same bpffs.
	err = old.Pin(oldPath)
	old.Close()
	if err != nil {
		return nil, OpenReport{}, fmt.Errorf("repin version %d for migration: %w", from, err)
	}
	report, m, err := migrate(p, cfg, oldPath, from)
	return m, report, err
}

// migrate copies the map pinned at oldPath (of version from) into a new
// map, pins the new map and removes oldPath.
func migrate(p Params, cfg *openConfig, oldPath string, from uint32) (OpenReport, *ebpf.Map, error) {
	report := OpenReport{Action: Migrated, FromVersion: from}
	old, err := ebpf.LoadPinnedMap(oldPath, nil)
	if err != nil {
		return report, nil, fmt.Errorf("load map being migrated: %w", err)
	}
	defer old.Close()
	if err := checkMigration(p, cfg, from, old); err != nil {
		return report, nil, err
	}

	fresh, err := ebpf.NewMap(p.spec())
	if err != nil {
		return report, nil, err // "creating map: ..."
	}
	if err := copyEntries(old, fresh, from, p, cfg, &report); err != nil {
		fresh.Close()
		return report, nil, fmt.Errorf("migrate from version %d: %w", from, err)
	}
	if err := fresh.Pin(p.PinPath()); err != nil {
		fresh.Close()
		return report, nil, fmt.Errorf("pin migrated map: %w", err)
	}
	if err := old.Unpin(); err != nil {
		fresh.Close()
		return report, nil, fmt.Errorf("unpin %s: %w", filepath.Base(oldPath), err)
	}
	return report, fresh, nil
}

// checkMigration reports whether old, of version from, can be migrated to
// p with the registered upgrades.
func checkMigration(p Params, cfg *openConfig, from uint32, old *ebpf.Map) error {
	if from > p.Version {
		return fmt.Errorf("migration from version %d to older %d", from, p.Version)
	}
	for v := from; v < p.Version; v++ {
		if cfg.upgrades[v] == nil {
			return fmt.Errorf("no upgrade registered from version %d to %d", v, v+1)
		}
	}
	if isPerCPU(old.Type()) != isPerCPU(p.Type) {
		return fmt.Errorf("cannot migrate %s to %s: one holds a value per CPU, the other one value an entry", old.Type(), p.Type)
	}
	return nil
}

// copyEntries runs every entry of src through the upgrade steps and
// stores it in dst, reading src in chunks (rawReader). Hash-like maps get
// each entry with UpdateNoExist, so that two old entries an upgrade turns
// into one key are an error rather than a silent overwrite; arrays, where
// every index exists, get UpdateAny, and lose the indices past their
// capacity.
func copyEntries(src, dst *ebpf.Map, from uint32, p Params, cfg *openConfig, report *OpenReport) error {
	r, err := newRawReader(src)
	if err != nil {
		return err
	}
	toArray := isArray(dst.Type())
	flags := ebpf.UpdateNoExist
	if toArray {
		flags = ebpf.UpdateAny
	}
	values := make([][]byte, r.perEntry)
	var copyErr error
	err = r.read(func(c rawChunk, n int) bool {
		for i := range n {
			if cfg.failAfter > 0 && report.Copied >= cfg.failAfter {
				copyErr = errInjected
				return false
			}
			for cpu := range values {
				values[cpu] = c.value(i, cpu)
			}
			key, newValues, keep, err := upgradeEntry(cfg.upgrades, from, p.Version, c.key(i), values, int(p.ValueSize))
			if err != nil {
				copyErr = err
				return false
			}
			if keep {
				keep, err = checkUpgraded(p, key, newValues, toArray)
			}
			if err != nil {
				copyErr = err
				return false
			}
			if !keep {
				report.Dropped++
				continue
			}
			var value any = newValues[0]
			if r.perEntry > 1 {
				value = newValues
			}
			if err := dst.Update(key, value, flags); err != nil {
				copyErr = fmt.Errorf("map %s: %w", dst, err)
				return false
			}
			report.Copied++
		}
		return true
	})
	if copyErr != nil {
		return copyErr
	}
	return err
}

// checkUpgraded checks an entry's sizes against p, and reports whether it
// fits: an array index past p's capacity does not.
func checkUpgraded(p Params, key []byte, values [][]byte, toArray bool) (bool, error) {
	if len(key) != int(p.KeySize) {
		return false, fmt.Errorf("upgraded entry has key size %d, want %d", len(key), p.KeySize)
	}
	for _, v := range values {
		if len(v) != int(p.ValueSize) {
			return false, fmt.Errorf("upgraded entry has value size %d, want %d", len(v), p.ValueSize)
		}
	}
	if toArray && (len(key) != 4 || binary.NativeEndian.Uint32(key) >= p.MaxEntries) {
		return false, nil
	}
	return true, nil
}

// upgradeEntry runs one entry through the steps from version from to to.
// values holds the entry's value, or one per possible CPU; the result has
// as many (see Upgrade for how per-CPU values are kept and dropped).
func upgradeEntry(steps map[uint32]Upgrade, from, to uint32, key []byte, values [][]byte, valueSize int) ([]byte, [][]byte, bool, error) {
	if from == to {
		return key, values, true, nil
	}
	var newKey []byte
	newValues := make([][]byte, len(values))
	dropped := make([]bool, len(values))
	kept := false
	for cpu, value := range values {
		k, v, keep := key, value, true
		for ver := from; ver < to && keep; ver++ {
			var err error
			k, v, keep, err = steps[ver](k, v)
			if err != nil {
				return nil, nil, false, fmt.Errorf("upgrade entry from version %d: %w", ver, err)
			}
		}
		if !keep {
			dropped[cpu] = true
			continue
		}
		if kept && !bytes.Equal(k, newKey) {
			return nil, nil, false, fmt.Errorf("upgrade gave the CPUs' values of one entry different keys %x and %x", newKey, k)
		}
		newKey, kept = k, true
		newValues[cpu] = v
	}
	if !kept {
		return nil, nil, false, nil
	}
	for cpu := range newValues {
		if dropped[cpu] {
			newValues[cpu] = make([]byte, valueSize)
		}
	}
	return newKey, newValues, true, nil
}
