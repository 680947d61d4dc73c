package nat

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/maps"
)

// Maps are the kernel maps a Table programs, normally the datapath's
// bpf.MapServices, bpf.MapBackendSlots, bpf.MapBackends,
// bpf.MapServiceRanges, sl_members and sl_maglev, and the affinity map
// (bpf.MapAffinity) it reads to explain a flow and sweeps of deleted
// services. All are required.
type Maps struct {
	// Services maps frontends (bpf.SvcKey) to bpf.Svc.
	Services *ebpf.Map
	// Slots maps bpf.BackendSlotKey to a backend ID.
	Slots *ebpf.Map
	// Backends maps backend IDs to bpf.Backend.
	Backends *ebpf.Map
	// Ranges is the LPM trie of source ranges (bpf.SvcRangeKey).
	Ranges *ebpf.Map
	// Members maps bpf.LBMemberKey to bpf.LBMember: the standing of each
	// backend of a service's current list, which decides whether a
	// client's affinity is honoured.
	Members *ebpf.Map
	// Maglev maps bpf.MaglevKey (a service ID and the slot base of one of
	// its lists) to the list's bpf.MaglevTable.
	Maglev *ebpf.Map
	// Affinity is the LRU hash of client affinities (bpf.AffinityKey to
	// bpf.Affinity) the datapath writes; the Table reads it (Explain) and
	// deletes the entries of service IDs no frontend holds.
	Affinity *ebpf.Map
}

// Table programs services into the load-balancing maps. Every change is
// make-before-break: backends are written before the slots that name
// them, a new backend list before the frontends that switch to it (in one
// update each), and what the old list used is deleted only after. A live
// service therefore never shows an empty or partial list, and a packet
// never meets a slot without its backend.
//
// The kernel maps are the record: a Table made over maps a previous
// process programmed adopts the service and backend IDs it finds (by
// frontend, and by backend address), and Sync removes what no desired
// service accounts for. A Table is safe for concurrent use.
type Table struct {
	mu       sync.Mutex
	svcs     *maps.Map[bpf.SvcKey, bpf.Svc]
	slots    *maps.Map[bpf.BackendSlotKey, uint32]
	backends *maps.Map[uint32, bpf.Backend]
	ranges   *maps.Map[bpf.SvcRangeKey, uint8]
	members  *maps.Map[bpf.LBMemberKey, bpf.LBMember]
	maglev   *maps.Map[bpf.MaglevKey, bpf.MaglevTable]
	affinity *maps.Map[bpf.AffinityKey, bpf.Affinity]

	services map[string]*programmed
	// svcIDs and frontends say which name holds a service ID and a
	// frontend key.
	svcIDs    map[uint32]string
	frontends map[bpf.SvcKey]string
	// backendIDs hold every backend this Table programmed or adopted,
	// by its sl_backends value (backendOf), with its ID and the number of
	// slots naming it. The keys hold no pointer, which spares the
	// garbage collector 100,000s of them.
	backendIDs  map[bpf.Backend]backendRef
	backendByID map[uint32]bpf.Backend
	nextSvcID   uint32
	nextBackend uint32
	// backendsWrapped: nextBackend may be at or below an ID in use (it
	// wrapped around, or the maps hold the largest ID), so that a new ID
	// must be looked up first. Until then every ID from nextBackend on is
	// free, which spares a Sync from empty a lookup per backend.
	backendsWrapped bool
	// adopted are the kernel's frontends found by NewTable, until a
	// service takes them over or Sync removes them; adoptedByID indexes
	// them by service ID, and adoptedRanges are the source ranges of
	// their IDs.
	adopted       map[bpf.SvcKey]bpf.Svc
	adoptedByID   map[uint32][]bpf.SvcKey
	adoptedRanges map[uint32][]bpf.SvcRangeKey
	// adoptedMembers and adoptedMaglev are the members and the slot
	// bases of the Maglev tables the kernel holds, by service ID, until a
	// service adopts its ID or Sync removes them.
	adoptedMembers map[uint32]map[uint32]bpf.LBMemberFlags
	adoptedMaglev  map[uint32][]uint32

	// shadowed are backend IDs the maps hold for a backend another ID
	// stands for (readKernel), swept by the first Sync.
	shadowed []uint32
	// aliases are the other backend IDs the maps hold for a backend
	// another ID stands for, named by slots (readKernel), with the number
	// of slots naming each: one is retired when no slot names it.
	aliases map[uint32]int
	// kernelBases are the services' slot bases the kernel's slots were
	// at when readKernel read them: slots a dead process retired, or a
	// failed write left, may wait under a base no adopted frontend uses,
	// and a new list written over them would replace them in place and
	// leave their backends counted. No new list takes one until the
	// first Sync has swept the slots no list accounts for.
	kernelBases map[slotBase]bool

	// reserved are the service IDs the kernel's slots, ranges, members,
	// Maglev tables and client affinities hold without a frontend, which
	// no new service takes until the first Sync has swept them.
	reserved map[uint32]bool
	// swept: the first Sync removed what a previous process left.
	swept bool
	// clean: the maps held nothing when readKernel last read them, so
	// that everything in them is the Table's and the first Sync has
	// nothing to sweep.
	clean bool

	// retiring and retired are the slots and backends plans stopped
	// using, deleted once grace periods passed (retire.go): grace is the
	// one running for retiring. retiredSlots and retiredIDs hold their
	// keys, which no new entry takes until they are deleted.
	retiring, retired retirement
	grace             *graceRun
	retiredSlots      map[bpf.BackendSlotKey]bool
	// retiredIDs are the retired backends by ID, with the batch each
	// waits in; retiredByValue indexes them by value, for an operation
	// that takes a backend back before it is deleted (acquireBackend).
	retiredIDs     map[uint32]retiredBackend
	retiredByValue map[bpf.Backend]uint32
	// nextBatch numbers the retired batch; retiring holds its own.
	nextBatch uint64
	// heldSlots and heldBackends count the entries of the slots and
	// backends maps, retired ones too, as readKernel found them and the
	// Table's writes and deletes changed them since (makeRoom).
	heldSlots, heldBackends atomic.Int64

	// afterWrite, when set (tests), makes every kernel write a single
	// element's and runs after each; beforeWrite, with it, runs before each with the typed
	// map, whether it deletes, and the key. graceHook runs when a grace
	// period starts. hooked is set
	// while afterWrite runs.
	afterWrite  func()
	hooked      bool
	beforeWrite func(m any, del bool, key any)
	graceHook   func(g *graceRun)
}

// programmed is a service as the maps hold it.
type programmed struct {
	svc Service
	id  uint32
	// lists are the backend lists its frontends use: one, ordered, for a
	// service this Table programmed; those an adopted service's
	// frontends were found on (a process that died between two flips
	// leaves two).
	lists   []slotList
	ordered []Backend
	// values are its frontends as the maps hold them: a slice, as a
	// service has few, and a map of them costs ten times the memory.
	values []frontendValue
	ranges map[bpf.SvcRangeKey]bool
	// members are the service's sl_members entries: backend ID to flags.
	members map[uint32]bpf.LBMemberFlags
	// hadAffinity: the service has or had affinity, so that the
	// datapath may have recorded its clients (an adopted one's history
	// is not known: it counts as had).
	hadAffinity bool
	// maglev are the service's Maglev tables by slot base, each with the
	// print of the serving backends it was built from (maglevPrint); ""
	// for an adopted table whose content is not known yet.
	maglev map[uint32]string
}

// frontendValue is a frontend's key and its sl_svcs value.
type frontendValue struct {
	key bpf.SvcKey
	val bpf.Svc
}

// value returns the value p's frontend k has in the maps.
func (p *programmed) value(k bpf.SvcKey) (bpf.Svc, bool) {
	for _, fv := range p.values {
		if fv.key == k {
			return fv.val, true
		}
	}
	return bpf.Svc{}, false
}

// slotList is a backend list: the backend ID in each slot from base on,
// 0 where an adopted list has a hole.
type slotList struct {
	base uint32
	ids  []uint32
}

type backendRef struct {
	id   uint32
	refs int
}

// NewTable wraps m and adopts what the maps already hold. The Table does
// not own the maps: closing them is the caller's.
func NewTable(m Maps) (*Table, error) {
	t := &Table{nextSvcID: 1, nextBackend: 1}
	var err error
	if t.svcs, err = typed[bpf.SvcKey, bpf.Svc](m.Services, ebpf.Hash, "services"); err != nil {
		return nil, err
	}
	if t.slots, err = typed[bpf.BackendSlotKey, uint32](m.Slots, ebpf.Hash, "backend slots"); err != nil {
		return nil, err
	}
	if t.backends, err = typed[uint32, bpf.Backend](m.Backends, ebpf.Hash, "backends"); err != nil {
		return nil, err
	}
	if t.ranges, err = typed[bpf.SvcRangeKey, uint8](m.Ranges, ebpf.LPMTrie, "source ranges"); err != nil {
		return nil, err
	}
	if t.members, err = typed[bpf.LBMemberKey, bpf.LBMember](m.Members, ebpf.Hash, "service members"); err != nil {
		return nil, err
	}
	if t.maglev, err = typed[bpf.MaglevKey, bpf.MaglevTable](m.Maglev, ebpf.Hash, "maglev"); err != nil {
		return nil, err
	}
	if t.affinity, err = typed[bpf.AffinityKey, bpf.Affinity](m.Affinity, ebpf.LRUHash, "affinity"); err != nil {
		return nil, err
	}
	if err := t.readKernel(); err != nil {
		return nil, fmt.Errorf("nat table: %w", err)
	}
	return t, nil
}

// readKernel forgets what the Table programmed and takes the maps'
// contents as a previous process's, to adopt.
func (t *Table) readKernel() error {
	// What this Table retired is in the maps, and must be gone before
	// they are read: nothing tells it from what frontends use.
	if err := t.settle(); err != nil {
		return err
	}
	t.services = map[string]*programmed{}
	t.svcIDs = map[uint32]string{}
	t.frontends = map[bpf.SvcKey]string{}
	t.backendIDs = map[bpf.Backend]backendRef{}
	t.backendByID = map[uint32]bpf.Backend{}
	t.adopted = map[bpf.SvcKey]bpf.Svc{}
	t.adoptedByID = map[uint32][]bpf.SvcKey{}
	t.adoptedRanges = map[uint32][]bpf.SvcRangeKey{}
	t.adoptedMembers = map[uint32]map[uint32]bpf.LBMemberFlags{}
	t.adoptedMaglev = map[uint32][]uint32{}
	t.reserved = map[uint32]bool{}
	t.swept = false
	t.shadowed = nil
	t.aliases = map[uint32]int{}
	t.kernelBases = map[slotBase]bool{}
	var iterErr error
	// Every slot holds its backend, whoever the slot belongs to: a
	// backend goes only when no slot names it.
	named := map[uint32]int{}
	var slots, backends int64
	for k, id := range t.slots.All(&iterErr) {
		slots++
		named[id]++
		t.kernelBases[slotBase{k.SvcID, k.Slot &^ (1<<16 - 1)}] = true
		t.reserved[k.SvcID] = true
		t.nextSvcID = max(t.nextSvcID, k.SvcID+1)
	}
	for id, b := range t.backends.All(&iterErr) {
		backends++
		b = bpf.Backend{Addr: b.Addr, Port: b.Port}
		t.nextBackend = max(t.nextBackend, id+1)
		t.backendsWrapped = t.backendsWrapped || id == math.MaxUint32
		// A process that died with a backend retired under one ID may
		// have given it another: the ID a slot names is the backend's,
		// one no slot names is stray. (Two named IDs cannot both be
		// accounted for by the backend: the second is an alias,
		// resolvable, and retired once no slot names it.)
		if prev, ok := t.backendIDs[b]; ok {
			switch {
			case named[id] == 0:
				t.shadowed = append(t.shadowed, id)
				continue
			case prev.refs == 0:
				t.shadowed = append(t.shadowed, prev.id)
				delete(t.backendByID, prev.id)
			default:
				t.backendByID[id] = b
				t.aliases[id] = named[id]
				continue
			}
		}
		t.backendIDs[b] = backendRef{id: id, refs: named[id]}
		t.backendByID[id] = b
	}
	for k, v := range t.svcs.All(&iterErr) {
		t.adopted[k] = v
		t.adoptedByID[v.ID] = append(t.adoptedByID[v.ID], k)
		t.nextSvcID = max(t.nextSvcID, v.ID+1)
	}
	for k := range t.ranges.All(&iterErr) {
		t.adoptedRanges[k.SvcID] = append(t.adoptedRanges[k.SvcID], k)
		t.reserved[k.SvcID] = true
		t.nextSvcID = max(t.nextSvcID, k.SvcID+1)
	}
	for k, v := range t.members.All(&iterErr) {
		if t.adoptedMembers[k.SvcID] == nil {
			t.adoptedMembers[k.SvcID] = map[uint32]bpf.LBMemberFlags{}
		}
		t.adoptedMembers[k.SvcID][k.BackendID] = v.Flags
		t.reserved[k.SvcID] = true
		t.nextSvcID = max(t.nextSvcID, k.SvcID+1)
	}
	// A client affinity outlives its service only when the process that
	// deleted the service died before its sweep: its ID is reserved, so
	// that no new service inherits the clients, until the first Sync.
	for k := range t.affinity.All(&iterErr) {
		if _, live := t.adoptedByID[k.SvcID]; !live {
			t.reserved[k.SvcID] = true
		}
		t.nextSvcID = max(t.nextSvcID, k.SvcID+1)
	}
	if iterErr != nil {
		return fmt.Errorf("read maps: %w", iterErr)
	}
	keys, err := t.maglevKeys()
	if err != nil {
		return fmt.Errorf("read maps: %w", err)
	}
	for _, k := range keys {
		t.adoptedMaglev[k.SvcID] = append(t.adoptedMaglev[k.SvcID], k.SlotBase)
		t.reserved[k.SvcID] = true
		t.nextSvcID = max(t.nextSvcID, k.SvcID+1)
	}
	t.heldSlots.Store(slots)
	t.heldBackends.Store(backends)
	t.clean = len(t.backendByID) == 0 && len(t.adopted) == 0 && len(t.reserved) == 0 && len(t.shadowed) == 0
	return nil
}

func typed[K, V any](m *ebpf.Map, want ebpf.MapType, what string) (*maps.Map[K, V], error) {
	if m == nil {
		return nil, fmt.Errorf("nat table: no %s map", what)
	}
	if m.Type() != want {
		return nil, fmt.Errorf("nat table: %s map %s is a %s, want %s", what, m, m.Type(), want)
	}
	tm, err := maps.New[K, V](m)
	if err != nil {
		return nil, fmt.Errorf("nat table: %s map: %w", what, err)
	}
	return tm, nil
}

// errNotMade is the error of every operation on a nil or zero Table.
var errNotMade = errors.New("nat table not made by NewTable")

func (t *Table) made() error {
	if t == nil || t.svcs == nil {
		return errNotMade
	}
	return nil
}

// Upsert programs service name as s, replacing what name held.
func (t *Table) Upsert(name string, s Service) error {
	if err := t.made(); err != nil {
		return err
	}
	if _, err := s.validate(); err != nil {
		return fmt.Errorf("upsert service %q: %w", name, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.services[name]; ok && equalServices(&p.svc, &s) {
		// Nothing to write; what earlier operations retired goes once
		// its grace period passed, as after any operation.
		_ = t.reap(false)
		return nil
	}
	if err := t.makeRoom(len(s.Backends)); err != nil {
		return fmt.Errorf("upsert service %q: %w", name, err)
	}
	var pl plan
	if err := t.upsert(name, s, &pl, nil); err != nil {
		if !errors.Is(err, ErrInvalidService) {
			// Refused before it changed anything unless the kernel
			// failed: then start again from what the maps hold.
			err = errors.Join(err, t.readKernel())
		}
		return fmt.Errorf("upsert service %q: %w", name, err)
	}
	if err := t.apply(&pl); err != nil {
		return fmt.Errorf("upsert service %q: %w", name, err)
	}
	return nil
}

// Delete removes service name: its frontends first, then its list, and
// the backends no other service holds.
func (t *Table) Delete(name string) error {
	if err := t.made(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var pl plan
	t.delete(name, &pl)
	if err := t.apply(&pl); err != nil {
		return fmt.Errorf("delete service %q: %w", name, err)
	}
	return nil
}

// Sync makes the maps hold exactly the services in all: services not in
// it are deleted, changed ones upserted, unchanged ones not touched. The
// first Sync also removes the entries a previous process left that no
// service in all accounts for: first those no frontend uses, which frees
// room, and last the rest. All the changes go in one plan, with batched map
// commands: every backend any service gains is written before any frontend
// moves, and nothing a frontend uses is deleted before every frontend has
// moved. A frontend may move between services.
//
// Sync compares every service of all with the one it programmed, which
// at 10,000 services costs a few milliseconds even when none changed
// (docs/benchmarks.md); an agent that knows which services changed, from
// a watch's events, passes just those to Apply, and keeps Sync for a
// start or a resynchronisation.
func (t *Table) Sync(all map[string]Service) error {
	if err := t.made(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	// Most Syncs change few services: an unchanged one costs a lookup
	// and a comparison.
	var changed []string
	kept := 0 // programmed services that all holds
	for name, s := range all {
		if p, ok := t.services[name]; ok {
			kept++
			if equalServices(&p.svc, &s) {
				continue
			}
		}
		if _, err := s.validate(); err != nil {
			return fmt.Errorf("sync services: %q: %w", name, err)
		}
		changed = append(changed, name)
	}
	var deleted []string
	if kept < len(t.services) {
		for name := range t.services {
			if _, ok := all[name]; !ok {
				deleted = append(deleted, name)
			}
		}
	}
	keeps := func(name string) bool {
		s, ok := all[name]
		return ok && equalServices(&t.services[name].svc, &s)
	}
	if err := t.change(all, changed, deleted, keeps, true); err != nil {
		return fmt.Errorf("sync services: %w", err)
	}
	return nil
}

// Apply upserts the services of upserts and deletes those named in
// deletes (a name the Table does not hold is passed over), in one plan
// as Sync makes it, make-before-break over all of them: a frontend may
// move from a deleted service, or one upserted, to another upserted one.
// The services it is not given stay as they are, so that it costs what
// the named services' changes cost, whatever the number of services the
// Table holds. A name both upserted and deleted is an error.
func (t *Table) Apply(upserts map[string]Service, deletes []string) error {
	if err := t.made(); err != nil {
		return err
	}
	gone := make(map[string]bool, len(deletes))
	for _, name := range deletes {
		if _, ok := upserts[name]; ok {
			return fmt.Errorf("apply services: %q both upserted and deleted", name)
		}
		gone[name] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var changed []string
	for name, s := range upserts {
		if p, ok := t.services[name]; ok && equalServices(&p.svc, &s) {
			continue
		}
		if _, err := s.validate(); err != nil {
			return fmt.Errorf("apply services: %q: %w", name, err)
		}
		changed = append(changed, name)
	}
	var deleted []string
	for name := range gone {
		if _, ok := t.services[name]; ok {
			deleted = append(deleted, name)
		}
	}
	keeps := func(name string) bool {
		if gone[name] {
			return false
		}
		s, ok := upserts[name]
		return !ok || equalServices(&t.services[name].svc, &s)
	}
	if err := t.change(upserts, changed, deleted, keeps, false); err != nil {
		return fmt.Errorf("apply services: %w", err)
	}
	return nil
}

// change plans and applies one plan: the services named in changed (all
// validated) as desired has them, and the deletion of those named in
// deleted. keeps says whether a service the Table holds keeps its
// frontends: one neither changed nor deleted. sweep (Sync) also removes,
// on the first Sync, what no service accounts for.
func (t *Table) change(desired map[string]Service, changed, deleted []string, keeps func(string) bool, sweep bool) error {
	owners, err := t.frontendOwners(desired, changed, keeps)
	if err != nil {
		return err
	}
	backends := 0
	for _, name := range changed {
		backends += len(desired[name].Backends)
	}
	if err := t.makeRoom(backends); err != nil {
		return err
	}
	sweep = sweep && !t.swept
	var live map[bpf.BackendSlotKey]bool
	if sweep && !t.clean {
		live = t.liveSlots()
	}
	var pl plan
	chunk := t.grow(desired, changed, &pl)
	for _, name := range deleted {
		t.delete(name, &pl)
	}
	// Without leftovers to sweep first, the new lists are written while
	// the rest is planned, in chunks: the kernel's updates take longer
	// than their planning, and no frontend reaches them before the plan's
	// frontends are written, last.
	var ahead *writeAhead
	if !sweep || t.clean {
		ahead = t.writeAhead()
	}
	// In name order, so that new IDs do not depend on map order.
	slices.Sort(changed)
	for _, name := range changed {
		if err := t.upsert(name, desired[name], &pl, owners); err != nil {
			// Forget the planned state: what was written of it (new
			// lists no frontend uses) is stray for the next Sync.
			werr := ahead.wait()
			rerr := t.readKernel()
			return errors.Join(fmt.Errorf("upsert %q: %w", name, err), werr, rerr)
		}
		if ahead != nil && pl.entries.len() >= writeAheadEntries {
			ahead.write(pl.entries)
			pl.entries = entries{}
			pl.entries.grow(chunk)
		}
	}
	if err := ahead.wait(); err != nil {
		return errors.Join(err, t.readKernel())
	}
	if sweep {
		if err := t.planStray(&pl, live); err != nil {
			return err
		}
	}
	return t.apply(&pl)
}

// writeAheadEntries is the size of the chunks of new entries a Sync
// writes ahead (Table.writeAhead): large enough that a chunk's syscalls
// cost little beside its entries, small enough that writing starts early.
const writeAheadEntries = 8192

// A writeAhead writes chunks of new entries while a Sync plans on.
type writeAhead struct {
	t      *Table
	chunks chan entries
	done   chan struct{}
	err    error
}

// writeAhead returns a writeAhead for t, which starts writing with the
// first chunk.
func (t *Table) writeAhead() *writeAhead {
	return &writeAhead{t: t}
}

// write writes e, which the caller no longer touches, in the background;
// with the test hook, now, so that every write is observed alone and in
// order. After a failed chunk the rest are dropped.
func (w *writeAhead) write(e entries) {
	if w.t.afterWrite != nil {
		if w.err == nil {
			w.err = w.t.writeEntries(&e)
		}
		return
	}
	if w.chunks == nil {
		w.chunks = make(chan entries, 64)
		w.done = make(chan struct{})
		go func() {
			defer close(w.done)
			for e := range w.chunks {
				if w.err == nil {
					w.err = w.t.writeEntries(&e)
				}
			}
		}()
	}
	w.chunks <- e
}

// wait returns when every chunk is written, with the first error. w may be
// nil.
func (w *writeAhead) wait() error {
	if w == nil {
		return nil
	}
	if w.chunks != nil {
		close(w.chunks)
		<-w.done
		w.chunks = nil
	}
	return w.err
}

// grow sizes pl, and the Table's indexes while they are empty (the first
// Sync), for the changed services of all, so that they do not grow entry
// by entry. It returns the backends to size a chunk of entries for
// (writeAheadEntries).
func (t *Table) grow(all map[string]Service, changed []string, pl *plan) int {
	var frontends, backends int
	for _, name := range changed {
		frontends += len(all[name].Frontends)
		backends += len(all[name].Backends)
	}
	chunk := min(backends, writeAheadEntries/3+64)
	pl.entries.grow(chunk)
	pl.frontendKeys = slices.Grow(pl.frontendKeys, frontends)
	pl.frontendVals = slices.Grow(pl.frontendVals, frontends)
	if len(t.services) == 0 {
		t.services = make(map[string]*programmed, len(changed))
	}
	if len(t.svcIDs) == 0 {
		t.svcIDs = make(map[uint32]string, len(changed))
	}
	if len(t.frontends) == 0 {
		t.frontends = make(map[bpf.SvcKey]string, frontends)
	}
	if len(t.backendIDs) == 0 {
		t.backendIDs = make(map[bpf.Backend]backendRef, backends)
		t.backendByID = make(map[uint32]bpf.Backend, backends)
	}
	return chunk
}

// frontendOwners returns the owner each frontend of the changed services
// of all is to have, or an error when two services claim one frontend.
// Only a changed service can claim a frontend another holds: the ones
// that keep theirs (keeps) hold frontends that are the Table's and
// distinct.
func (t *Table) frontendOwners(all map[string]Service, changed []string, keeps func(string) bool) (map[bpf.SvcKey]string, error) {
	owners := make(map[bpf.SvcKey]string, len(changed))
	for _, name := range changed {
		for _, f := range all[name].Frontends {
			k := f.key()
			if other, ok := owners[k]; ok {
				return nil, fmt.Errorf("%w: frontend %v port %d in %q and %q", ErrInvalidService, f.Addr, f.Port, other, name)
			}
			owners[k] = name
		}
	}
	for _, name := range changed {
		for _, f := range all[name].Frontends {
			other, ok := t.frontends[f.key()]
			if !ok || other == name {
				continue
			}
			// A changed other gave f up (owners says so), a deleted
			// one frees it; one that keeps its frontends keeps it.
			if keeps(other) {
				return nil, fmt.Errorf("%w: frontend %v port %d in %q and %q", ErrInvalidService, f.Addr, f.Port, other, name)
			}
		}
	}
	return owners, nil
}

// Services returns the services the Table programmed, by name.
func (t *Table) Services() map[string]Service {
	if t.made() != nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]Service, len(t.services))
	for name, p := range t.services {
		out[name] = p.svc
	}
	return out
}

// BackendID returns the ID the maps give backend ap, if any.
func (t *Table) BackendID(ap netip.AddrPort) (uint32, bool) {
	if t.made() != nil {
		return 0, false
	}
	if a := ap.Addr(); !a.IsValid() || a.Is4In6() || a.Zone() != "" {
		return 0, false // no backend has such an address (validate)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ref, ok := t.backendIDs[backendOf(ap.Addr(), ap.Port())]
	if !ok {
		return 0, false
	}
	return ref.id, true
}
