package maps

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// maxMapNameLen is the longest map name the kernel keeps (BPF_OBJ_NAME_LEN
// minus the terminating NUL).
const maxMapNameLen = 15

// oldSuffix marks the pin of a map that is being migrated away from. While
// it exists, a migration has started and not finished.
const oldSuffix = "_old"

// Params describe a pinned map: its layout, its format version and where
// it is pinned.
type Params struct {
	// Name is the map's base name. The kernel map name and the pin file
	// are Name + "_v" + Version, which must fit the kernel's 15 characters
	// and contain only letters, digits, '_' and '.'.
	Name string
	// Type is the map type, e.g. ebpf.Hash or ebpf.LPMTrie.
	Type ebpf.MapType
	// KeySize and ValueSize are in bytes.
	KeySize, ValueSize uint32
	// MaxEntries is the map's capacity.
	MaxEntries uint32
	// Flags are BPF_F_* map flags; LPM tries need unix.BPF_F_NO_PREALLOC.
	Flags uint32
	// Version is the format version of keys and values, from 1. Bump it
	// whenever the meaning or layout of an entry changes, and register an
	// Upgrade from the previous version.
	Version uint32
	// PinDir is a directory on a bpffs.
	PinDir string
}

// ParamsFromSpec takes the layout of a map from a collection's MapSpec.
func ParamsFromSpec(spec *ebpf.MapSpec, version uint32, pinDir string) Params {
	return Params{
		Name:       spec.Name,
		Type:       spec.Type,
		KeySize:    spec.KeySize,
		ValueSize:  spec.ValueSize,
		MaxEntries: spec.MaxEntries,
		Flags:      spec.Flags,
		Version:    version,
		PinDir:     pinDir,
	}
}

// versionedName is the kernel map name and pin file name of version v.
func (p Params) versionedName(v uint32) string {
	return p.Name + "_v" + strconv.FormatUint(uint64(v), 10)
}

// PinPath is where the map of p's version is pinned.
func (p Params) PinPath() string {
	return filepath.Join(p.PinDir, p.versionedName(p.Version))
}

func (p Params) validate() error {
	if p.Name == "" || p.PinDir == "" {
		return errors.New("name and pin directory are required")
	}
	if p.Version == 0 {
		return errors.New("version must be 1 or more")
	}
	name := p.versionedName(p.Version)
	if len(name) > maxMapNameLen {
		return fmt.Errorf("map name %q is longer than %d characters", name, maxMapNameLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.') {
			return fmt.Errorf("map name %q has character %q; only letters, digits, '_' and '.' are allowed", name, r)
		}
	}
	if p.KeySize == 0 || p.MaxEntries == 0 {
		return errors.New("key size and max entries must be positive")
	}
	return nil
}

func (p Params) spec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       p.versionedName(p.Version),
		Type:       p.Type,
		KeySize:    p.KeySize,
		ValueSize:  p.ValueSize,
		MaxEntries: p.MaxEntries,
		Flags:      p.Flags,
	}
}

// compatible reports whether m can serve as the map p describes.
func (p Params) compatible(m *ebpf.Map) bool {
	return m.Type() == p.Type && m.KeySize() == p.KeySize && m.ValueSize() == p.ValueSize &&
		m.MaxEntries() == p.MaxEntries && m.Flags() == p.Flags
}

// Upgrade turns one entry of version N into version N+1. key and value are
// the old entry's bytes; it returns the new entry's bytes, or keep=false to
// drop the entry. Only the last step's output must match the new Params'
// sizes; intermediate versions may have any size.
type Upgrade func(key, value []byte) (newKey, newValue []byte, keep bool, err error)

// Option configures OpenOrCreate.
type Option func(*openConfig)

type openConfig struct {
	upgrades map[uint32]Upgrade
	// failAfter, when positive, makes the copy fail after that many
	// entries: tests use it to interrupt a migration.
	failAfter int
}

// WithUpgrade registers the step from version from to from+1.
func WithUpgrade(from uint32, step Upgrade) Option {
	return func(c *openConfig) {
		if c.upgrades == nil {
			c.upgrades = make(map[uint32]Upgrade)
		}
		c.upgrades[from] = step
	}
}

// errInjected is the failure withFailAfter injects.
var errInjected = errors.New("injected migration failure")

// withFailAfter interrupts the copy after n entries, as a crash would.
func withFailAfter(n int) Option {
	return func(c *openConfig) { c.failAfter = n }
}

// OpenAction says what OpenOrCreate did.
type OpenAction int

// What OpenOrCreate did.
const (
	// Created: no earlier map was pinned, a new empty one was.
	Created OpenAction = iota + 1
	// Reused: the pinned map matched Params and is returned as is.
	Reused
	// Migrated: the entries of an earlier map (another version or size)
	// were copied into a new map.
	Migrated
)

// String names the action.
func (a OpenAction) String() string {
	switch a {
	case Created:
		return "created"
	case Reused:
		return "reused"
	case Migrated:
		return "migrated"
	}
	return "OpenAction(" + strconv.Itoa(int(a)) + ")"
}

// OpenReport describes what OpenOrCreate did.
type OpenReport struct {
	Action OpenAction
	// FromVersion is the version migrated from (Migrated only).
	FromVersion uint32
	// Copied is how many entries the new map received, Dropped how many
	// an upgrade step discarded (Migrated only).
	Copied, Dropped int
	// Recovered is set when OpenOrCreate found an interrupted migration
	// and completed it.
	Recovered bool
}

// OpenOrCreate returns the map p describes, pinned at p.PinPath().
//
// A compatible pinned map (same type, sizes, max entries and flags) is
// reused. A pinned map of the same version with another capacity, flags or
// type, or a map of an earlier version, is migrated: every entry is copied
// into a new map, through each registered Upgrade step from its version to
// p.Version. The old map is first repinned as <name>_v<N>_old; the new map
// is pinned only once it holds every entry, and the old pin is removed
// last. A migration interrupted at any point therefore leaves the _old pin
// behind, and the next OpenOrCreate copies from it again into a fresh map,
// so no entry is lost or duplicated.
//
// Entries the datapath writes into the old map while the copy runs may be
// missed; callers migrate before attaching programs to the new map. One
// process at a time may open a given map: OpenOrCreate takes no lock.
// PinDir is created if missing; it must be on a bpffs.
// Migration copies key and value bytes and so does not support per-CPU
// maps.
func OpenOrCreate(p Params, opts ...Option) (*ebpf.Map, OpenReport, error) {
	var cfg openConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	if err := p.validate(); err != nil {
		return nil, OpenReport{}, fmt.Errorf("open or create map %q: %w", p.Name, err)
	}
	if err := os.MkdirAll(p.PinDir, 0o700); err != nil {
		return nil, OpenReport{}, fmt.Errorf("open or create map %q: pin directory: %w", p.Name, err)
	}
	m, report, err := openOrCreate(p, &cfg)
	if err != nil {
		return nil, report, fmt.Errorf("open or create map %s: %w", p.PinPath(), err)
	}
	return m, report, nil
}

func openOrCreate(p Params, cfg *openConfig) (*ebpf.Map, OpenReport, error) {
	pinned, err := findPins(p)
	if err != nil {
		return nil, OpenReport{}, err
	}
	target := p.PinPath()

	if len(pinned.old) > 1 {
		return nil, OpenReport{}, fmt.Errorf("several interrupted migrations pinned: %v", pinned.old)
	}
	if len(pinned.old) == 1 {
		old := pinned.old[0]
		if slices.Contains(pinned.live, p.Version) {
			// The new map is pinned only after a complete copy, so the
			// copy finished and only the old pin's removal was missed.
			if err := os.Remove(old.path); err != nil {
				return nil, OpenReport{}, fmt.Errorf("remove finished migration's old pin: %w", err)
			}
		} else {
			report, m, err := migrate(p, cfg, old.path, old.version)
			report.Recovered = true
			return m, report, err
		}
	}

	if slices.Contains(pinned.live, p.Version) {
		m, err := ebpf.LoadPinnedMap(target, nil)
		if err != nil {
			return nil, OpenReport{}, fmt.Errorf("load pinned map: %w", err)
		}
		if p.compatible(m) {
			return m, OpenReport{Action: Reused}, nil
		}
		if m.KeySize() != p.KeySize || m.ValueSize() != p.ValueSize {
			m.Close()
			return nil, OpenReport{}, fmt.Errorf("pinned map has key/value size %d/%d, want %d/%d at the same version: bump Version",
				m.KeySize(), m.ValueSize(), p.KeySize, p.ValueSize)
		}
		m.Close()
		return startMigration(p, cfg, p.Version)
	}

	var older []uint32
	for _, v := range pinned.live {
		if v > p.Version {
			return nil, OpenReport{}, fmt.Errorf("a newer version %d is pinned; refusing to downgrade to %d", v, p.Version)
		}
		older = append(older, v)
	}
	switch len(older) {
	case 0:
		return create(p)
	case 1:
		return startMigration(p, cfg, older[0])
	default:
		return nil, OpenReport{}, fmt.Errorf("several older versions pinned: %v", older)
	}
}

type oldPin struct {
	path    string
	version uint32
}

type pins struct {
	live []uint32 // versions pinned as <name>_v<N>
	old  []oldPin // <name>_v<N>_old: migrations in progress
}

// findPins lists the pins in p.PinDir that belong to p.Name.
func findPins(p Params) (pins, error) {
	entries, err := os.ReadDir(p.PinDir)
	if err != nil {
		return pins{}, fmt.Errorf("read pin directory: %w", err)
	}
	prefix := p.Name + "_v"
	var found pins
	for _, entry := range entries {
		rest, ok := strings.CutPrefix(entry.Name(), prefix)
		if !ok {
			continue
		}
		digits, isOld := strings.CutSuffix(rest, oldSuffix)
		version, err := strconv.ParseUint(digits, 10, 32)
		if err != nil || version == 0 || strconv.FormatUint(version, 10) != digits {
			continue // another map whose name merely starts alike
		}
		if isOld {
			found.old = append(found.old, oldPin{filepath.Join(p.PinDir, entry.Name()), uint32(version)})
		} else {
			found.live = append(found.live, uint32(version))
		}
	}
	return found, nil
}

func create(p Params) (*ebpf.Map, OpenReport, error) {
	m, err := ebpf.NewMap(p.spec())
	if err != nil {
		return nil, OpenReport{}, fmt.Errorf("create map: %w", err)
	}
	if err := m.Pin(p.PinPath()); err != nil {
		m.Close()
		return nil, OpenReport{}, fmt.Errorf("pin map: %w", err)
	}
	return m, OpenReport{Action: Created}, nil
}

// startMigration repins version from as _old, then migrates from it.
func startMigration(p Params, cfg *openConfig, from uint32) (*ebpf.Map, OpenReport, error) {
	livePath := filepath.Join(p.PinDir, p.versionedName(from))
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
		return report, nil, fmt.Errorf("create map: %w", err)
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
		return report, nil, fmt.Errorf("unpin migrated map: %w", err)
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
	if isPerCPU(old.Type()) || isPerCPU(p.Type) {
		return fmt.Errorf("migrating per-CPU map %s is not supported", old)
	}
	return nil
}

// copyEntries runs every entry of src through the upgrade steps and
// stores it in dst.
func copyEntries(src, dst *ebpf.Map, from uint32, p Params, cfg *openConfig, report *OpenReport) error {
	var key, value []byte
	entries := src.Iterate()
	for entries.Next(&key, &value) {
		if cfg.failAfter > 0 && report.Copied >= cfg.failAfter {
			return errInjected
		}
		newKey, newValue, keep := key, value, true
		for v := from; v < p.Version && keep; v++ {
			var err error
			newKey, newValue, keep, err = cfg.upgrades[v](newKey, newValue)
			if err != nil {
				return fmt.Errorf("upgrade entry from version %d: %w", v, err)
			}
		}
		if !keep {
			report.Dropped++
			continue
		}
		if len(newKey) != int(p.KeySize) || len(newValue) != int(p.ValueSize) {
			return fmt.Errorf("upgraded entry has key/value size %d/%d, want %d/%d",
				len(newKey), len(newValue), p.KeySize, p.ValueSize)
		}
		if err := dst.Update(newKey, newValue, ebpf.UpdateNoExist); err != nil {
			return fmt.Errorf("copy entry: %w", err)
		}
		report.Copied++
	}
	if err := entries.Err(); err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	return nil
}
