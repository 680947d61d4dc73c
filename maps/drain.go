package maps

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/cilium/ebpf"
)

// The live resize protocol is described in the package documentation
// ("Live resize"); this file holds its steps: startDrain (OpenOrCreate
// with WithLiveResize), resumeDrain (OpenOrCreate finding a _draining
// pin), Drain and FinishDrain.

// Drain moves every entry of from into to: the step of a live resize that
// empties the old map into the new one (see WithLiveResize and the
// package documentation). Each entry is written into to with
// UpdateNoExist and deleted from from only afterwards, so a crash at any
// point leaves every entry in at least one of the two maps. A key that to
// already holds is skipped (ebpf.ErrKeyExist) and deleted from from: the
// datapath promoted or re-created it, and its copy is newer. An entry
// that has left from by the time Drain deletes it, after Drain's own copy
// went into to, was deleted by someone meanwhile (the datapath deletes a
// draining entry only after its own copy into to succeeded, which then
// fails Drain's): Drain takes its copy out of to again, so that a deleted
// entry stays deleted. moved counts the entries Drain wrote and kept.
//
// Drain reads from in chunks with BPF_MAP_LOOKUP_BATCH where the kernel
// has it for the map, as Map.Range does (BPF_MAP_GET_NEXT_KEY iteration
// otherwise), and writes and deletes one element at a time: the kernel's
// batch update takes no UpdateNoExist, and its batch delete does not say
// which keys were gone.
//
// The maps must have the same key and value sizes and both hold per-CPU
// values or both one value an entry. Arrays cannot be drained (every
// index exists, so none can be added or deleted), nor can a map be
// drained into itself. Drain expects nothing to write into from while it
// runs: an entry written there behind the read stays behind, and
// FinishDrain then refuses until another Drain has moved it. On error,
// moved counts the entries written before it; a later Drain moves the
// rest.
func Drain(from, to *ebpf.Map) (moved int, err error) {
	moved, err = drain(from, to, drainOptions{})
	if err != nil {
		return moved, fmt.Errorf("drain: %w", err)
	}
	return moved, nil
}

// drainOptions are tests' knobs for drain.
type drainOptions struct {
	// failAfter, when positive, stops the drain with errInjected after
	// that many moved entries, the next one written into to but not yet
	// deleted from from, as a crash between the two would.
	failAfter int
	// chunk, when positive, replaces the read's chunk size.
	chunk int
	// noBatch makes the read iterate.
	noBatch bool
}

// drain is Drain.
func drain(from, to *ebpf.Map, opts drainOptions) (int, error) {
	if err := checkDrain(from, to); err != nil {
		return 0, err
	}
	r, err := newRawReader(from)
	if err != nil {
		return 0, err
	}
	if opts.chunk > 0 {
		r.chunk = opts.chunk
	}
	r.noBatch.Store(opts.noBatch)
	failAfter := opts.failAfter
	moved := 0
	var stop error
	err = r.read(func(c rawChunk, n int) bool {
		for i := range n {
			key, value := c.entry(i)
			if failAfter > 0 && moved >= failAfter {
				// The crash comes between a write and its delete.
				to.Update(key, value, ebpf.UpdateNoExist)
				stop = errInjected
				return false
			}
			if stop = moveEntry(from, to, key, value, &moved); stop != nil {
				return false
			}
		}
		return true
	})
	if stop != nil {
		return moved, stop
	}
	return moved, err
}

func checkDrain(from, to *ebpf.Map) error {
	if from == nil || to == nil {
		return errors.New("nil map")
	}
	if from.KeySize() != to.KeySize() || from.ValueSize() != to.ValueSize() {
		return fmt.Errorf("%s has key/value size %d/%d, %s has %d/%d",
			from, from.KeySize(), from.ValueSize(), to, to.KeySize(), to.ValueSize())
	}
	if isPerCPU(from.Type()) != isPerCPU(to.Type()) {
		return fmt.Errorf("%s and %s: one holds a value per CPU, the other one value an entry", from.Type(), to.Type())
	}
	if isArray(from.Type()) || isArray(to.Type()) {
		return fmt.Errorf("cannot drain %s into %s: array indices always exist", from.Type(), to.Type())
	}
	same, err := sameMap(from, to)
	if err != nil {
		return err
	}
	if same {
		return fmt.Errorf("cannot drain %s into itself", from)
	}
	return nil
}

// sameMap reports whether a and b are one kernel map, perhaps opened
// twice: draining a map into itself would delete every entry.
func sameMap(a, b *ebpf.Map) (bool, error) {
	infoA, err := a.Info()
	if err != nil {
		return false, fmt.Errorf("map %s: info: %w", a, err)
	}
	infoB, err := b.Info()
	if err != nil {
		return false, fmt.Errorf("map %s: info: %w", b, err)
	}
	idA, okA := infoA.ID()
	idB, okB := infoB.ID()
	return okA && okB && idA == idB, nil
}

// moveEntry writes one entry read from from into to and deletes it from
// from, as Drain describes, adding it to *moved when it stays in to.
func moveEntry(from, to *ebpf.Map, key, value any, moved *int) error {
	wrote := false
	switch err := to.Update(key, value, ebpf.UpdateNoExist); {
	case err == nil:
		wrote = true
	case errors.Is(err, ebpf.ErrKeyExist):
		// The datapath's copy is newer: keep it.
	default:
		return fmt.Errorf("map %s: %w", to, err)
	}
	err := from.Delete(key)
	switch {
	case err == nil:
		if wrote {
			*moved++
		}
		return nil
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("map %s: %w", from, err)
	case !wrote:
		return nil
	}
	// Deleted from from since the read: the copy must not outlive it.
	if err := to.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("map %s: %w", to, err)
	}
	return nil
}

// FinishDrain ends the live resize of p's map: it removes the
// <name>_v<N>_draining pin once Drain has emptied that map. It refuses
// while the draining map still holds entries, and when no map is pinned
// under the live name (a crash left only the draining map, which
// OpenOrCreate recovers). Without a draining pin it does nothing, so a
// repeated call is harmless. The caller closes its OpenReport.Draining
// map itself.
func FinishDrain(p Params) error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("finish drain of map %q: %w", p.Name, err)
	}
	if err := finishDrain(p.PinPath()); err != nil {
		return fmt.Errorf("finish drain of map %s: %w", p.PinPath(), err)
	}
	return nil
}

func finishDrain(livePath string) error {
	drainingPath := livePath + drainingSuffix
	if _, err := os.Lstat(drainingPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if _, err := os.Lstat(livePath); err != nil {
		return fmt.Errorf("no live map beside the draining one, run OpenOrCreate: %w", err)
	}
	draining, err := ebpf.LoadPinnedMap(drainingPath, nil)
	if err != nil {
		return fmt.Errorf("load draining map: %w", err)
	}
	defer draining.Close()
	key := make([]byte, draining.KeySize())
	switch err := draining.NextKey(nil, key); {
	case err == nil:
		return fmt.Errorf("map %s still holds entries: drain it first", draining)
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("map %s: %w", draining, err)
	}
	if err := draining.Unpin(); err != nil {
		return fmt.Errorf("unpin draining map: %w", err)
	}
	return nil
}

// drainable reports whether a map of type old can be drained live into
// one of type new.
func drainable(old, new ebpf.MapType) bool {
	return !isArray(old) && !isArray(new) && isPerCPU(old) == isPerCPU(new)
}

// startDrain begins a live resize of live, the map pinned at p.PinPath():
// it repins live as _draining, then creates the new map and pins it under
// the live name.
func startDrain(p Params, cfg *openConfig, live *ebpf.Map) (*ebpf.Map, OpenReport, error) {
	livePath := p.PinPath()
	// Pin renames an already pinned map, atomically on the same bpffs.
	if err := live.Pin(livePath + drainingSuffix); err != nil {
		live.Close()
		return nil, OpenReport{}, fmt.Errorf("repin for draining: %w", err)
	}
	if cfg.crashAt == crashAfterDrainRepin {
		live.Close()
		return nil, OpenReport{}, errInjected
	}
	fresh, err := ebpf.NewMap(p.spec())
	if err == nil {
		if err = fresh.Pin(livePath); err != nil {
			fresh.Close()
			err = fmt.Errorf("pin map: %w", err)
		}
	}
	if err != nil {
		// Put the old map back under the live name, where the datapath
		// and the next OpenOrCreate look for it.
		if restoreErr := live.Pin(livePath); restoreErr != nil {
			err = errors.Join(err, fmt.Errorf("repin draining map back: %w", restoreErr))
		}
		live.Close()
		return nil, OpenReport{}, err
	}
	if cfg.crashAt == crashAfterDrainPin {
		fresh.Close()
		live.Close()
		return nil, OpenReport{}, errInjected
	}
	return fresh, OpenReport{Action: Resized, Draining: live}, nil
}

// settledDrain is a drain OpenOrCreate found pinned and put behind it,
// of the map of version: either undone (the new map was never pinned) or
// finished, moved entries going into the live map.
type settledDrain struct {
	version uint32
	moved   int
}

// resumeDrain deals with a _draining pin. It returns the live map and the
// draining one, to resume the drain, when the caller asked for a live
// resize and the live map is the one p describes. Otherwise it puts the
// drain behind it and updates pinned for openPinned: a draining map
// without a live one gets its live pin back (a crash came between the two
// pins, and the resize starts over), and one beside a live map is drained
// into it here and unpinned.
func resumeDrain(p Params, cfg *openConfig, pinned *pins) (*ebpf.Map, OpenReport, *settledDrain, error) {
	if len(pinned.draining) > 1 {
		return nil, OpenReport{}, nil, fmt.Errorf("several drains pinned: %v", pinned.draining)
	}
	d := pinned.draining[0]
	if len(pinned.old) > 0 {
		return nil, OpenReport{}, nil, fmt.Errorf("both an interrupted migration %v and a drain %v are pinned", pinned.old, d)
	}
	if d.version > p.Version {
		return nil, OpenReport{}, nil, fmt.Errorf("a newer version %d is being drained; refusing to downgrade to %d", d.version, p.Version)
	}
	draining, err := ebpf.LoadPinnedMap(d.path, nil)
	if err != nil {
		return nil, OpenReport{}, nil, fmt.Errorf("load draining map: %w", err)
	}
	livePath := p.pinPathOf(d.version)
	if !slices.Contains(pinned.live, d.version) {
		err := draining.Pin(livePath)
		draining.Close()
		if err != nil {
			return nil, OpenReport{}, nil, fmt.Errorf("repin draining map back: %w", err)
		}
		pinned.live = append(pinned.live, d.version)
		pinned.draining = nil
		return nil, OpenReport{}, &settledDrain{version: d.version}, nil
	}
	live, err := ebpf.LoadPinnedMap(livePath, nil)
	if err != nil {
		draining.Close()
		return nil, OpenReport{}, nil, fmt.Errorf("load pinned map: %w", err)
	}
	if d.version == p.Version && cfg.liveResize && p.compatible(live) {
		return live, OpenReport{Action: Resized, Draining: draining, Recovered: true}, nil, nil
	}
	defer live.Close()
	defer draining.Close()
	moved, err := drain(draining, live, drainOptions{})
	if err != nil {
		return nil, OpenReport{}, nil, fmt.Errorf("finish pending drain: %w", err)
	}
	if err := draining.Unpin(); err != nil {
		return nil, OpenReport{}, nil, fmt.Errorf("unpin drained map: %w", err)
	}
	pinned.draining = nil
	return nil, OpenReport{}, &settledDrain{version: d.version, moved: moved}, nil
}
