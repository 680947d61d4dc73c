package conntrack

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultScanInterval is how often Run sweeps when ScannerOptions.Interval
// is zero.
const DefaultScanInterval = 10 * time.Second

// Verdict is a Check's decision about one entry.
type Verdict int

// Verdicts.
const (
	// Keep leaves the entry to later checks and sweeps.
	Keep Verdict = iota
	// Delete removes the entry (and its NAT partner), unless traffic
	// refreshes it before the delete.
	Delete
)

// String returns "keep" or "delete".
func (v Verdict) String() string {
	switch v {
	case Keep:
		return "keep"
	case Delete:
		return "delete"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Check decides whether an entry should go. now is CLOCK_MONOTONIC_COARSE, as in
// Value.LastSeen. A Scanner calls checks from one goroutine, one sweep at
// a time, and only for entries that hold a flow's state (Normal and
// NATReverse; a NATReverse entry's key is the post-DNAT tuple and
// Value.Orig the pre-DNAT destination).
type Check interface {
	// Check returns what to do with the entry k, v at time now.
	Check(k Key, v Value, now time.Duration) Verdict
}

// CheckFunc adapts a function to Check.
type CheckFunc func(k Key, v Value, now time.Duration) Verdict

// Check calls f.
func (f CheckFunc) Check(k Key, v Value, now time.Duration) Verdict { return f(k, v, now) }

// ScannerOptions configures a Scanner. The zero value gives the defaults.
type ScannerOptions struct {
	// Interval between Run's sweeps; DefaultScanInterval when zero.
	Interval time.Duration
	// Timeouts for the liveness check; DefaultTimeouts when zero.
	Timeouts Timeouts
	// Clock returns CLOCK_MONOTONIC_COARSE, the clock of bpf_ktime_get_coarse_ns; tests
	// inject their own. Nil reads the kernel's.
	Clock func() time.Duration
	// Checks run, in order, after liveness on each entry liveness keeps;
	// the first Delete wins.
	Checks []Check
	// OnScan, if set, receives every sweep's result from Run.
	OnScan func(ScanStats, error)
}

// ScanStats is the result of one sweep.
type ScanStats struct {
	// Scanned counts the entries read.
	Scanned int
	// Deleted counts the entries removed, NAT partners included.
	Deleted int
	// Refreshed counts the entries a check condemned but kept, because
	// traffic moved their last_seen before the delete (or, for an orphan
	// forward entry, the datapath wrote its reverse entry meanwhile).
	Refreshed int
	// Entries is the table's size after the sweep (Scanned - Deleted).
	Entries int
	// MaxEntries is the table's capacity.
	MaxEntries int
	// Fullness is Entries / MaxEntries. An embedder grows the table
	// through the maps migration when it stays high; an LRU table that is
	// full evicts live flows.
	Fullness float64
}

// Scanner garbage-collects a conntrack table. See the package
// documentation for what it deletes and why it is safe to run beside the
// datapath.
type Scanner struct {
	m        *Map
	interval time.Duration
	liveness Timeouts
	checks   []Check
	clock    func() time.Duration
	onScan   func(ScanStats, error)

	// mu serialises sweeps; the fields below belong to the sweep.
	mu sync.Mutex
	// atomicDelete says whether BPF_MAP_LOOKUP_AND_DELETE_ELEM works on
	// this map: unknown until the first delete tries it.
	atomicDelete probe
	// beforeDelete, set by tests, runs between the checks and the delete
	// of each condemned entry, to play traffic arriving in that window.
	beforeDelete func(Key)
}

type probe int

const (
	probeUnknown probe = iota
	probeSupported
	probeUnsupported
)

// NewScanner returns a Scanner of m.
func NewScanner(m *Map, opts ScannerOptions) (*Scanner, error) {
	if m == nil {
		return nil, errors.New("conntrack scanner: nil map")
	}
	s := &Scanner{
		m:        m,
		interval: opts.Interval,
		liveness: opts.Timeouts,
		clock:    opts.Clock,
		onScan:   opts.OnScan,
	}
	if s.interval == 0 {
		s.interval = DefaultScanInterval
	}
	if s.interval < 0 {
		return nil, fmt.Errorf("conntrack scanner: interval %v is negative", s.interval)
	}
	if s.liveness == (Timeouts{}) {
		s.liveness = DefaultTimeouts()
	}
	if err := s.liveness.Validate(); err != nil {
		return nil, fmt.Errorf("conntrack scanner: %w", err)
	}
	for i, c := range opts.Checks {
		if f, isFunc := c.(CheckFunc); c == nil || isFunc && f == nil {
			return nil, fmt.Errorf("conntrack scanner: check %d is nil", i)
		}
	}
	s.checks = append([]Check{s.liveness}, opts.Checks...)
	if s.clock == nil {
		if _, err := kernelMonotonic(); err != nil {
			return nil, fmt.Errorf("conntrack scanner: %w", err)
		}
		s.clock = monotonicClock
	}
	return s, nil
}

func kernelMonotonic() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, fmt.Errorf("read CLOCK_MONOTONIC_COARSE: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

// monotonicClock reads CLOCK_MONOTONIC_COARSE. NewScanner has checked that it
// works; should it fail later, zero makes every entry look fresh, so the
// sweep deletes nothing rather than everything.
func monotonicClock() time.Duration {
	now, err := kernelMonotonic()
	if err != nil {
		return 0
	}
	return now
}

// condemned is an entry a check decided to delete, with the last_seen the
// check saw.
type condemned struct {
	key      Key
	lastSeen uint64
	// orphan marks a forward entry condemned for lacking a reverse entry.
	orphan bool
}

// Scan sweeps the table once. It reads every entry and runs the checks,
// then deletes what they condemned; deleting only after the read keeps
// the read valid on kernels that iterate by BPF_MAP_GET_NEXT_KEY. When
// the read fails part-way, Scan still applies what it decided and returns
// the error with the stats.
func (s *Scanner) Scan() (ScanStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	now := s.clock()
	var stats ScanStats
	var doomed []condemned
	var checkErr error
	readErr := s.m.Range(func(k Key, v Value) bool {
		stats.Scanned++
		if v.EntryType() == NATForward {
			// A forward entry lives and dies with its reverse entry;
			// only an orphan is judged on its own.
			orphan, err := s.orphanForward(k, v)
			if err != nil {
				checkErr = err
				return true
			}
			if orphan && s.liveness.Check(k, v, now) == Delete {
				doomed = append(doomed, condemned{k, v.LastSeen, true})
			}
			return true
		}
		for _, c := range s.checks {
			if c.Check(k, v, now) == Delete {
				doomed = append(doomed, condemned{k, v.LastSeen, false})
				break
			}
		}
		return true
	})

	deleteErr := s.deleteCondemned(doomed, &stats)

	stats.MaxEntries = s.m.MaxEntries()
	stats.Entries = min(max(stats.Scanned-stats.Deleted, 0), stats.MaxEntries)
	if stats.MaxEntries > 0 {
		stats.Fullness = float64(stats.Entries) / float64(stats.MaxEntries)
	}
	if err := errors.Join(readErr, checkErr, deleteErr); err != nil {
		return stats, fmt.Errorf("conntrack scan: %w", err)
	}
	return stats, nil
}

// orphanForward reports whether the forward entry k has no reverse entry
// pointing back at it.
func (s *Scanner) orphanForward(k Key, v Value) (bool, error) {
	rev, err := s.m.Lookup(v.Peer())
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return rev.EntryType() != NATReverse || rev.Peer() != k, nil
}

func (s *Scanner) deleteCondemned(doomed []condemned, stats *ScanStats) error {
	var errs []error
	// The fallback read can yield a key twice.
	done := make(map[Key]bool, len(doomed))
	for _, c := range doomed {
		if done[c.key] {
			continue
		}
		done[c.key] = true
		if s.beforeDelete != nil {
			s.beforeDelete(c.key)
		}
		var lookupErr error
		result, v, err := s.removeUnless(c.key, func(v Value) bool {
			if v.LastSeen != c.lastSeen {
				return true
			}
			if !c.orphan {
				return false
			}
			// The datapath may have written the reverse entry since.
			orphan, err := s.orphanForward(c.key, v)
			lookupErr = err
			return err != nil || !orphan
		})
		err = errors.Join(err, lookupErr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		switch result {
		case refused:
			stats.Refreshed++
			continue
		case gone:
			continue
		}
		stats.Deleted++
		if v.EntryType() != NATReverse || v.Peer() == (Key{}) {
			continue
		}
		// The reverse entry, which holds the state, is gone: its forward
		// entry would only lead packets to a missing entry. Remove it
		// unless it now points elsewhere, because the datapath rebuilt the
		// flow through it since.
		fwd := v.Peer()
		result, _, err = s.removeUnless(fwd, func(f Value) bool {
			return f.EntryType() != NATForward || f.Peer() != c.key
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if result == removed {
			stats.Deleted++
			done[fwd] = true
		}
	}
	return errors.Join(errs...)
}

// removal is the outcome of removeUnless.
type removal int

const (
	removed removal = iota // the entry was deleted
	refused                // keep said no; the entry stays
	gone                   // the entry was not there
)

// removeUnless deletes k unless keep, applied to the value k holds at the
// moment of the delete, says to keep it. It returns the value it judged.
//
// The kernel offers no compare-and-delete for hash maps, so a small race
// remains. Where the kernel has BPF_MAP_LOOKUP_AND_DELETE_ELEM for hash
// maps, the read and the delete are one atomic step and a kept entry is
// written back with BPF_NOEXIST. Two windows are left: a packet that
// looked the entry up just before the delete writes its last_seen into the
// freed element, so its refresh is lost (the flow's next packet misses and
// starts a new entry); and a packet that arrives between the delete and
// the write-back misses the entry, the datapath creates a fresh one, and
// the write-back yields to it (the flow keeps going with reset counters).
// Without the atomic command, the window between the lookup and the
// delete is two syscalls wide, and a refresh inside it is lost with the
// entry. Closing the gap fully would need the datapath itself to take the
// delete under its bucket lock.
func (s *Scanner) removeUnless(k Key, keep func(Value) bool) (removal, Value, error) {
	if s.atomicDelete != probeUnsupported {
		v, err := s.m.lookupAndDelete(k)
		switch {
		case err == nil:
			s.atomicDelete = probeSupported
			if !keep(v) {
				return removed, v, nil
			}
			err := s.m.Update(k, v, ebpf.UpdateNoExist)
			if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
				return refused, v, fmt.Errorf("write back refreshed entry: %w", err)
			}
			return refused, v, nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return gone, Value{}, nil
		case s.atomicDelete == probeUnknown && (errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL)):
			// Before Linux 5.14 the command only served queues and
			// stacks.
			s.atomicDelete = probeUnsupported
		default:
			return gone, Value{}, err
		}
	}
	v, err := s.m.Lookup(k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return gone, Value{}, nil
	}
	if err != nil {
		return gone, Value{}, err
	}
	if keep(v) {
		return refused, v, nil
	}
	err = s.m.Delete(k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return gone, Value{}, nil
	}
	if err != nil {
		return gone, Value{}, err
	}
	return removed, v, nil
}

// Run sweeps at once and then every interval until ctx is done, passing
// each sweep's result to ScannerOptions.OnScan. A failed sweep does not
// stop it. It returns ctx's error.
func (s *Scanner) Run(ctx context.Context) error {
	ticker := time.NewTicker(s.interval)
	defer ticker.Stop()
	for {
		stats, err := s.Scan()
		if s.onScan != nil {
			s.onScan(stats, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			// A tick and the cancellation can be ready together, and
			// select picks either: no sweep after the cancellation.
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
}
