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
	"github.com/cilium/ebpf/btf"
)

// maxMapNameLen is the longest map name the kernel keeps (BPF_OBJ_NAME_LEN
// minus the terminating NUL).
const maxMapNameLen = 15

// oldSuffix marks the pin of a map that is being migrated away from. While
// it exists, a migration has started and not finished.
const oldSuffix = "_old"

// drainingSuffix marks the pin of a map that a live resize is draining
// into the map pinned under the live name (see WithLiveResize).
const drainingSuffix = "_draining"

// Params describe a pinned map: its layout, its format version and where
// it is pinned.
type Params struct {
	// Name is the map's base name. The kernel map name and the pin file
	// are Name + "_v" + Version, which must fit the kernel's 15 characters
	// and contain only letters, digits, '_' and '.'.
	Name string
	// Type is the map type, e.g. ebpf.Hash or ebpf.LPMTrie.
	Type ebpf.MapType
	// KeySize and ValueSize are in bytes; for per-CPU maps ValueSize is
	// one CPU's value.
	KeySize, ValueSize uint32
	// MaxEntries is the map's capacity.
	MaxEntries uint32
	// Flags are BPF_F_* map flags; LPM tries need unix.BPF_F_NO_PREALLOC.
	Flags uint32
	// Key and Value, when set, are the BTF types of the key and value.
	// Maps OpenOrCreate creates carry them, so that bpftool and other
	// debugging tools can print entries; a kernel that refuses BTF for
	// the map type gets the map without it. They are not compared with a
	// pinned map: a map pinned without BTF is reused as it is.
	Key, Value btf.Type
	// Version is the format version of keys and values, from 1. Bump it
	// whenever the meaning or layout of an entry changes, and register an
	// Upgrade from the previous version.
	Version uint32
	// PinDir is a directory on a bpffs.
	PinDir string
}

// ParamsFromSpec takes the layout of a map, BTF included, from a
// collection's MapSpec.
func ParamsFromSpec(spec *ebpf.MapSpec, version uint32, pinDir string) Params {
	return Params{
		Name:       spec.Name,
		Type:       spec.Type,
		KeySize:    spec.KeySize,
		ValueSize:  spec.ValueSize,
		MaxEntries: spec.MaxEntries,
		Flags:      spec.Flags,
		Key:        spec.Key,
		Value:      spec.Value,
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

// pinPathOf is where the map of version v is pinned.
func (p Params) pinPathOf(v uint32) string {
	return filepath.Join(p.PinDir, p.versionedName(v))
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
	// Socket storage has no size: it lives in the sockets.
	if p.KeySize == 0 || (p.MaxEntries == 0) != (p.Type == ebpf.SkStorage) {
		return errors.New("key size and max entries (0 for socket storage) must be positive")
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
		Key:        p.Key,
		Value:      p.Value,
	}
}

// compatible reports whether m can serve as the map p describes. BTF is
// not compared.
func (p Params) compatible(m *ebpf.Map) bool {
	return m.Type() == p.Type && m.KeySize() == p.KeySize && m.ValueSize() == p.ValueSize &&
		m.MaxEntries() == p.MaxEntries && m.Flags() == p.Flags
}

// Option configures OpenOrCreate.
type Option func(*openConfig)

type openConfig struct {
	upgrades   map[uint32]Upgrade
	liveResize bool

	// Failure injection for tests, standing in for a crash: failAfter,
	// when positive, makes a migration's copy fail after that many
	// entries; crashAt stops a live resize at that step.
	failAfter int
	crashAt   crashPoint
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

// WithLiveResize makes OpenOrCreate resize a map the datapath writes
// while traffic flows, instead of copying it before pinning: when the
// pinned map has p's version but another capacity, type or flags, the
// pinned map is repinned as <name>_v<N>_draining, a new empty map is
// pinned under the live name, and OpenOrCreate returns the new map with
// the old one in OpenReport.Draining (Action Resized). The caller attaches
// programs that write into the new map and look the old one up on a miss,
// moves the entries with Drain, and ends the resize with FinishDrain. A
// drain left pinned by a crash is returned again (Recovered), so the
// caller resumes it. The package documentation ("Live resize") gives the
// whole protocol.
//
// A version change still migrates by copying: programs of the new
// version cannot read the old layout. So do arrays, where no lookup
// misses, and maps whose drain Drain refuses (see Drain).
func WithLiveResize() Option {
	return func(c *openConfig) { c.liveResize = true }
}

// errInjected is the failure withFailAfter and withCrashAt inject.
var errInjected = errors.New("injected failure")

// withFailAfter interrupts a migration's copy after n entries, as a crash
// would.
func withFailAfter(n int) Option {
	return func(c *openConfig) { c.failAfter = n }
}

// crashPoint is a step of a live resize after which withCrashAt stops
// OpenOrCreate, leaving the pins as a crash there would.
type crashPoint int

const (
	noCrash crashPoint = iota
	// crashAfterDrainRepin: the old map is pinned as _draining, nothing
	// under the live name.
	crashAfterDrainRepin
	// crashAfterDrainPin: the new map is pinned under the live name too.
	crashAfterDrainPin
)

// withCrashAt stops a live resize after step at, as a crash would.
func withCrashAt(at crashPoint) Option {
	return func(c *openConfig) { c.crashAt = at }
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
	// Resized: a live resize is under way (WithLiveResize). The returned
	// map has the new capacity; OpenReport.Draining holds the entries
	// still to move.
	Resized
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
	case Resized:
		return "resized"
	}
	return "OpenAction(" + strconv.Itoa(int(a)) + ")"
}

// OpenReport describes what OpenOrCreate did.
type OpenReport struct {
	// Action says whether the map was created, reused or migrated.
	Action OpenAction
	// FromVersion is the version migrated from (Migrated only).
	FromVersion uint32
	// Copied is how many entries OpenOrCreate wrote into the returned
	// map (Migrated, or Reused after finishing a drain a crash left).
	// Dropped is how many a migration left out: entries an upgrade step
	// discarded and, when an array shrinks, every index past its new
	// capacity.
	Copied, Dropped int
	// Draining is the map a live resize moves entries out of (Resized
	// only): the caller drains it into the returned map, calls
	// FinishDrain and closes it.
	Draining *ebpf.Map
	// Recovered is set when OpenOrCreate found an interrupted migration
	// or live resize and completed or resumed it.
	Recovered bool
}

// OpenOrCreate returns the map p describes, pinned at p.PinPath().
//
// A compatible pinned map (same type, sizes, max entries and flags; BTF
// is not compared) is reused. A pinned map of the same version with
// another capacity, flags or type, or a map of an earlier version, is
// migrated: every entry is copied into a new map, through each registered
// Upgrade step from its version to p.Version. The old map is first
// repinned as <name>_v<N>_old; the new map is pinned only once it holds
// every entry, and the old pin is removed last. A migration interrupted
// at any point therefore leaves the _old pin behind, and the next
// OpenOrCreate copies from it again into a fresh map, so no entry is lost
// or duplicated.
//
// Per-CPU maps migrate too, each entry with the values of every CPU (see
// Upgrade for how steps apply to them); a map cannot migrate between
// per-CPU and shared values. Arrays (Array, PerCPUArray) hold every index
// below their capacity, and all of them are copied: a larger array has
// zero values past the old indices, and a smaller one drops the indices
// past its capacity and counts them in OpenReport.Dropped.
//
// Entries the datapath writes into the old map while the copy runs may be
// missed; callers migrate before attaching programs to the new map, or
// resize maps the datapath writes with WithLiveResize. A live resize a
// crash left pinned is resumed (with the option) or finished here
// (without it); see WithLiveResize. One process at a time may open a
// given map: OpenOrCreate takes no lock. PinDir is created if missing; it
// must be on a bpffs.
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
	// A drain a crash left behind is settled first: it is returned to be
	// resumed, or finished here before anything else moves.
	var settled *settledDrain
	if len(pinned.draining) > 0 {
		var m *ebpf.Map
		var report OpenReport
		m, report, settled, err = resumeDrain(p, cfg, &pinned)
		if m != nil || err != nil {
			return m, report, err
		}
	}
	m, report, err := openPinned(p, cfg, pinned, settled)
	if settled != nil {
		report.Recovered = true
	}
	return m, report, err
}

// openPinned opens, creates or migrates the map once no drain is pending.
// settled, when set, is the drain openOrCreate just finished.
func openPinned(p Params, cfg *openConfig, pinned pins, settled *settledDrain) (*ebpf.Map, OpenReport, error) {
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
			report := OpenReport{Action: Reused}
			if settled != nil && settled.version == p.Version {
				report.Copied = settled.moved
			}
			return m, report, nil
		}
		if m.KeySize() != p.KeySize || m.ValueSize() != p.ValueSize {
			m.Close()
			return nil, OpenReport{}, fmt.Errorf("pinned map has key/value size %d/%d, want %d/%d at the same version: bump Version",
				m.KeySize(), m.ValueSize(), p.KeySize, p.ValueSize)
		}
		if cfg.liveResize && drainable(m.Type(), p.Type) {
			return startDrain(p, cfg, m)
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

// suffixPin is a pin with a suffix: <name>_v<N>_old or _draining.
type suffixPin struct {
	path    string
	version uint32
}

type pins struct {
	live     []uint32    // versions pinned as <name>_v<N>
	old      []suffixPin // <name>_v<N>_old: migrations in progress
	draining []suffixPin // <name>_v<N>_draining: live resizes in progress
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
		isDraining := false
		if !isOld {
			digits, isDraining = strings.CutSuffix(rest, drainingSuffix)
		}
		version, err := strconv.ParseUint(digits, 10, 32)
		if err != nil || version == 0 || strconv.FormatUint(version, 10) != digits {
			continue // another map whose name merely starts alike
		}
		pin := suffixPin{filepath.Join(p.PinDir, entry.Name()), uint32(version)}
		switch {
		case isOld:
			found.old = append(found.old, pin)
		case isDraining:
			found.draining = append(found.draining, pin)
		default:
			found.live = append(found.live, uint32(version))
		}
	}
	return found, nil
}

func create(p Params) (*ebpf.Map, OpenReport, error) {
	m, err := ebpf.NewMap(p.spec())
	if err != nil {
		return nil, OpenReport{}, err // "creating map: ..."
	}
	if err := m.Pin(p.PinPath()); err != nil {
		m.Close()
		return nil, OpenReport{}, fmt.Errorf("pin map: %w", err)
	}
	return m, OpenReport{Action: Created}, nil
}
