package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
)

// testNow is the injected clock's reading: later than every timeout, so
// last_seen values below stay positive.
const testNow = 10 * time.Hour

func fixedClock() time.Duration { return testNow }

func newTestScanner(t *testing.T, m *Map, checks ...Check) *Scanner {
	t.Helper()
	s, err := NewScanner(m, ScannerOptions{Clock: fixedClock, Checks: checks})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// seenAgo returns the last_seen of an entry idle for d at testNow.
func seenAgo(d time.Duration) uint64 { return uint64(testNow - d) }

// remainingKeys returns the table's keys, sorted.
func remainingKeys(t *testing.T, m *Map) []Key {
	t.Helper()
	entries, err := m.Entries()
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]Key, len(entries))
	for i, e := range entries {
		keys[i] = e.Key
	}
	return keys
}

func sorted(keys ...Key) []Key {
	keys = slices.Clone(keys)
	slices.SortFunc(keys, Key.Compare)
	return keys
}

func diffKeys(want, got []Key) string {
	str := func(keys []Key) []string {
		out := make([]string, len(keys))
		for i, k := range keys {
			out[i] = k.String()
		}
		return out
	}
	return cmp.Diff(str(want), str(got))
}

// TestScannerExpiry writes, for every protocol and TCP state, one entry
// idle exactly its timeout and one idle a nanosecond longer; a sweep must
// delete exactly the second kind.
func TestScannerExpiry(t *testing.T) {
	m := newTestMap(t, 256)
	timeouts := DefaultTimeouts()
	synAck := LegSYN | LegACK
	flows := []struct {
		proto uint8
		a, b  LegFlags
		state FlowState
	}{
		{ProtoTCP, LegSYN, 0, StateTCPSynSent},
		{ProtoTCP, LegSYN, synAck, StateTCPSynSent},
		{ProtoTCP, synAck, synAck, StateTCPEstablished},
		{ProtoTCP, synAck | LegFIN, synAck | LegFIN, StateTCPFinsSeen},
		{ProtoTCP, synAck | LegRST, synAck, StateTCPResetSeen},
		{ProtoUDP, 0, 0, StateUDP},
		{ProtoICMP, 0, 0, StateICMP},
		{ProtoSCTP, 0, 0, StateGeneric},
	}
	var kept, expired []Key
	for i, f := range flows {
		for _, stale := range []bool{false, true} {
			idle := timeouts.For(f.state)
			if stale {
				idle++
			}
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 1}), 1000)
			dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 2}), 2000)
			if stale {
				src = netip.AddrPortFrom(src.Addr(), 1001)
			}
			k, _, err := NewKey(f.proto, src, dst)
			if err != nil {
				t.Fatal(err)
			}
			v := Value{Created: seenAgo(2 * time.Hour), LastSeen: seenAgo(idle)}
			v.SetLegs(Leg{Flags: legFlagsField(f.a)}, Leg{Flags: legFlagsField(f.b)})
			put(t, m, k, v)
			if stale {
				expired = append(expired, k)
			} else {
				kept = append(kept, k)
			}
		}
	}

	stats, err := newTestScanner(t, m).Scan()
	if err != nil {
		t.Fatal(err)
	}
	if diff := diffKeys(sorted(kept...), remainingKeys(t, m)); diff != "" {
		t.Errorf("entries left (-want +got):\n%s", diff)
	}
	want := ScanStats{Scanned: 2 * len(flows), Deleted: len(expired), Entries: len(kept), MaxEntries: 256,
		Fullness: float64(len(kept)) / 256}
	if diff := cmp.Diff(want, stats); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

// natPair writes a forward and a reverse entry pointing at each other,
// the reverse one last seen at lastSeen, and returns their keys.
func natPair(t *testing.T, m *Map, client, service, backend string, lastSeen uint64) (fwd, rev Key) {
	t.Helper()
	fwd = mustKey(t, ProtoTCP, client, service)
	rev = mustKey(t, ProtoTCP, client, backend)
	revValue := Value{LastSeen: lastSeen, Type: bpf.CTType(NATReverse)}
	synAck := legFlagsField(LegSYN | LegACK)
	revValue.SetLegs(Leg{Flags: synAck}, Leg{Flags: synAck})
	revValue.SetPeer(fwd)
	if err := revValue.SetOrig(ap(service)); err != nil {
		t.Fatal(err)
	}
	// The forward entry's own last_seen is never refreshed: stale on
	// purpose, to show it follows its reverse entry.
	fwdValue := Value{LastSeen: 1, Type: bpf.CTType(NATForward)}
	fwdValue.SetPeer(rev)
	put(t, m, rev, revValue)
	put(t, m, fwd, fwdValue)
	return fwd, rev
}

func TestScannerNATPairs(t *testing.T) {
	m := newTestMap(t, 256)
	established := DefaultTimeouts().TCPEstablished
	fresh, stale := seenAgo(time.Minute), seenAgo(established+time.Second)

	liveFwd, liveRev := natPair(t, m, "10.0.0.1:40001", "10.96.0.1:80", "10.0.7.7:8080", fresh)
	natPair(t, m, "10.0.0.1:40002", "10.96.0.1:80", "10.0.7.7:8080", stale)

	// A forward entry whose reverse entry is missing, and one whose
	// "reverse" entry points elsewhere, are orphans: judged on their own
	// last_seen (TCP with no legs: the SYN-sent timeout).
	orphanTimeout := DefaultTimeouts().TCPSynSent
	orphan := func(client string, lastSeen uint64, peer Key) Key {
		k := mustKey(t, ProtoTCP, client, "10.96.0.1:80")
		v := Value{LastSeen: lastSeen, Type: bpf.CTType(NATForward)}
		v.SetPeer(peer)
		put(t, m, k, v)
		return k
	}
	freshOrphan := orphan("10.0.0.2:1", seenAgo(orphanTimeout), mustKey(t, ProtoTCP, "10.0.0.2:1", "10.0.7.7:8080"))
	orphan("10.0.0.2:2", seenAgo(orphanTimeout+1), mustKey(t, ProtoTCP, "10.0.0.2:2", "10.0.7.7:8080"))
	orphan("10.0.0.2:3", seenAgo(orphanTimeout+1), liveRev)

	// An expired reverse entry whose peer is not a forward entry pointing
	// back: the peer must survive.
	bystander := mustKey(t, ProtoTCP, "10.0.0.3:1", "10.0.0.4:2")
	put(t, m, bystander, Value{LastSeen: seenAgo(time.Second)})
	lonelyRev := mustKey(t, ProtoTCP, "10.0.0.3:5", "10.0.7.7:8080")
	lonelyValue := Value{LastSeen: stale, Type: bpf.CTType(NATReverse)}
	lonelyValue.SetPeer(bystander)
	put(t, m, lonelyRev, lonelyValue)

	stats, err := newTestScanner(t, m).Scan()
	if err != nil {
		t.Fatal(err)
	}
	want := sorted(liveFwd, liveRev, freshOrphan, bystander)
	if diff := diffKeys(want, remainingKeys(t, m)); diff != "" {
		t.Errorf("entries left (-want +got):\n%s", diff)
	}
	// Deleted: the stale pair (2), two orphans, the lonely reverse entry.
	if stats.Deleted != 5 || stats.Scanned != 9 || stats.Refreshed != 0 {
		t.Errorf("stats %+v, want 9 scanned, 5 deleted", stats)
	}
}

// TestScannerKeepsRefreshed plays traffic that refreshes condemned entries
// between the checks and the delete, with and without
// BPF_MAP_LOOKUP_AND_DELETE_ELEM.
func TestScannerKeepsRefreshed(t *testing.T) {
	for _, atomic := range []bool{true, false} {
		t.Run(fmt.Sprintf("atomic=%v", atomic), func(t *testing.T) {
			m := newTestMap(t, 64)
			stale := seenAgo(DefaultTimeouts().UDP + time.Second)
			refreshedKey := mustKey(t, ProtoUDP, "10.0.0.1:1", "10.0.0.2:53")
			doomedKey := mustKey(t, ProtoUDP, "10.0.0.1:2", "10.0.0.2:53")
			put(t, m, refreshedKey, Value{LastSeen: stale})
			put(t, m, doomedKey, Value{LastSeen: stale})
			// A NAT pair whose reverse entry is refreshed: both stay.
			natFwd, natRev := natPair(t, m, "10.0.0.1:3", "10.96.0.1:80", "10.0.7.7:8080",
				seenAgo(DefaultTimeouts().TCPEstablished+time.Second))

			s := newTestScanner(t, m)
			if !atomic {
				s.atomicDelete = probeUnsupported
			}
			refresh := map[Key]bool{refreshedKey: true, natRev: true}
			var hooked []Key
			s.beforeDelete = func(k Key) {
				hooked = append(hooked, k)
				if !refresh[k] {
					return
				}
				v, err := m.Lookup(k)
				if err != nil {
					t.Error(err)
					return
				}
				v.LastSeen = uint64(testNow)
				v.AToB.Packets++
				if err := m.Update(k, v, ebpf.UpdateExist); err != nil {
					t.Error(err)
				}
			}

			stats, err := s.Scan()
			if err != nil {
				t.Fatal(err)
			}
			if diff := diffKeys(sorted(doomedKey, natRev, refreshedKey), sorted(hooked...)); diff != "" {
				t.Errorf("condemned entries (-want +got):\n%s", diff)
			}
			if diff := diffKeys(sorted(refreshedKey, natFwd, natRev), remainingKeys(t, m)); diff != "" {
				t.Errorf("entries left (-want +got):\n%s", diff)
			}
			for _, k := range []Key{refreshedKey, natRev} {
				v, err := m.Lookup(k)
				if err != nil {
					t.Fatal(err)
				}
				if v.LastSeen != uint64(testNow) || v.AToB.Packets != 1 {
					t.Errorf("%v lost its refresh: %v", k, v)
				}
			}
			if stats.Deleted != 1 || stats.Refreshed != 2 || stats.Entries != 3 {
				t.Errorf("stats %+v, want 1 deleted, 2 refreshed, 3 entries", stats)
			}
			wantProbe := probeUnsupported
			if atomic {
				// The probe's answer depends on the kernel (5.14 added
				// the command for hash maps); either way it is settled.
				wantProbe = s.atomicDelete
				t.Logf("BPF_MAP_LOOKUP_AND_DELETE_ELEM on LRU hash: supported=%v", wantProbe == probeSupported)
			}
			if s.atomicDelete == probeUnknown || s.atomicDelete != wantProbe {
				t.Errorf("probe state %d", s.atomicDelete)
			}
		})
	}
}

// TestScannerEmbedderCheck adds a "backend gone" check after liveness.
func TestScannerEmbedderCheck(t *testing.T) {
	m := newTestMap(t, 64)
	fresh := seenAgo(time.Second)
	goneBackend := netip.MustParseAddr("10.0.7.7")
	liveBackend := netip.MustParseAddr("10.0.8.8")

	goneFwd, goneRev := natPair(t, m, "10.0.0.1:1", "10.96.0.1:80", goneBackend.String()+":8080", fresh)
	liveFwd, liveRev := natPair(t, m, "10.0.0.1:2", "10.96.0.1:80", liveBackend.String()+":8080", fresh)
	direct := mustKey(t, ProtoTCP, "10.0.0.1:3", goneBackend.String()+":8080")
	put(t, m, direct, Value{LastSeen: fresh})
	expired := mustKey(t, ProtoUDP, "10.0.0.1:4", "10.0.0.9:53")
	put(t, m, expired, Value{LastSeen: seenAgo(time.Hour)})

	var checked []Key
	backendGone := CheckFunc(func(k Key, v Value, now time.Duration) Verdict {
		checked = append(checked, k)
		if now != testNow {
			t.Errorf("check got now %v, want %v", now, testNow)
		}
		if v.EntryType() == NATReverse && (k.A().Addr() == goneBackend || k.B().Addr() == goneBackend) {
			return Delete
		}
		return Keep
	})
	neverCalled := CheckFunc(func(k Key, _ Value, _ time.Duration) Verdict {
		if k == goneRev {
			t.Errorf("check after a Delete verdict ran for %v", k)
		}
		return Keep
	})

	stats, err := newTestScanner(t, m, backendGone, neverCalled).Scan()
	if err != nil {
		t.Fatal(err)
	}
	if diff := diffKeys(sorted(liveFwd, liveRev, direct), remainingKeys(t, m)); diff != "" {
		t.Errorf("entries left (-want +got):\n%s", diff)
	}
	// Liveness deleted the expired flow before the embedder saw it, and
	// forward entries are never checked.
	if diff := diffKeys(sorted(goneRev, liveRev, direct), sorted(checked...)); diff != "" {
		t.Errorf("entries the embedder check saw (-want +got):\n%s", diff)
	}
	if stats.Deleted != 3 {
		t.Errorf("deleted %d, want 3 (%v, %v, %v)", stats.Deleted, goneFwd, goneRev, expired)
	}
}

func TestScannerFullness(t *testing.T) {
	const maxEntries = 1000
	m := newTestMap(t, maxEntries)
	fillMap(t, m, 250, seenAgo(time.Second))
	stale := seenAgo(time.Hour)
	for i := range 50 {
		put(t, m, mustKey(t, ProtoUDP, fmt.Sprintf("10.9.0.%d:1", i), "10.2.0.1:53"), Value{LastSeen: stale})
	}
	stats, err := newTestScanner(t, m).Scan()
	if err != nil {
		t.Fatal(err)
	}
	want := ScanStats{Scanned: 300, Deleted: 50, Entries: 250, MaxEntries: maxEntries, Fullness: 0.25}
	if diff := cmp.Diff(want, stats); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if n, err := m.Count(); err != nil || n != 250 {
		t.Errorf("Count() = %d, %v; want 250", n, err)
	}
}

// TestScannerDefaultClock checks that the default clock reads
// CLOCK_MONOTONIC_COARSE, the datapath's: an entry stamped now is fresh, one
// stamped at boot is long expired.
func TestScannerDefaultClock(t *testing.T) {
	m := newTestMap(t, 64)
	now, err := kernelMonotonic()
	if err != nil {
		t.Fatal(err)
	}
	fresh := mustKey(t, ProtoICMP, "10.0.0.1:7", "10.0.0.2:7")
	boot := mustKey(t, ProtoICMP, "10.0.0.1:8", "10.0.0.2:8")
	put(t, m, fresh, Value{LastSeen: uint64(now)})
	put(t, m, boot, Value{LastSeen: 0})
	if now <= DefaultTimeouts().ICMP {
		t.Skipf("booted %v ago: too recent to tell", now)
	}
	s, err := NewScanner(m, ScannerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Scan(); err != nil {
		t.Fatal(err)
	}
	if diff := diffKeys([]Key{fresh}, remainingKeys(t, m)); diff != "" {
		t.Errorf("entries left (-want +got):\n%s", diff)
	}
}

func TestScannerRun(t *testing.T) {
	m := newTestMap(t, 64)
	stale := mustKey(t, ProtoUDP, "10.0.0.1:1", "10.0.0.2:2")
	put(t, m, stale, Value{LastSeen: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sweeps []ScanStats
	s, err := NewScanner(m, ScannerOptions{
		Interval: time.Millisecond,
		Clock:    fixedClock,
		OnScan: func(stats ScanStats, err error) {
			if err != nil {
				t.Error(err)
			}
			sweeps = append(sweeps, stats)
			if len(sweeps) == 3 {
				cancel()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	want := []ScanStats{
		{Scanned: 1, Deleted: 1, MaxEntries: 64},
		{MaxEntries: 64},
		{MaxEntries: 64},
	}
	if diff := cmp.Diff(want, sweeps); diff != "" {
		t.Errorf("sweeps (-want +got):\n%s", diff)
	}
}

func TestNewScannerOptions(t *testing.T) {
	m := newTestMap(t, 64)
	s, err := NewScanner(m, ScannerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.interval != DefaultScanInterval || s.liveness != DefaultTimeouts() {
		t.Errorf("defaults: interval %v, timeouts %+v", s.interval, s.liveness)
	}
	badTimeouts := DefaultTimeouts()
	badTimeouts.ICMP = 0
	tests := []struct {
		name string
		m    *Map
		opts ScannerOptions
	}{
		{"nil map", nil, ScannerOptions{}},
		{"negative interval", m, ScannerOptions{Interval: -time.Second}},
		{"bad timeouts", m, ScannerOptions{Timeouts: badTimeouts}},
		{"nil check", m, ScannerOptions{Checks: []Check{CheckFunc(func(Key, Value, time.Duration) Verdict { return Keep }), nil}}},
		{"nil CheckFunc", m, ScannerOptions{Checks: []Check{CheckFunc(nil)}}},
	}
	for _, tt := range tests {
		if _, err := NewScanner(tt.m, tt.opts); err == nil {
			t.Errorf("%s: NewScanner succeeded", tt.name)
		}
	}
}

// TestScannerKeepsAdoptedForward condemns an orphan forward entry, then
// has the datapath write its reverse entry before the delete: the pair
// must survive.
func TestScannerKeepsAdoptedForward(t *testing.T) {
	for _, atomic := range []bool{true, false} {
		t.Run(fmt.Sprintf("atomic=%v", atomic), func(t *testing.T) {
			m := newTestMap(t, 64)
			fwd := mustKey(t, ProtoTCP, "10.0.0.1:1", "10.96.0.1:80")
			rev := mustKey(t, ProtoTCP, "10.0.0.1:1", "10.0.7.7:8080")
			fwdValue := Value{LastSeen: seenAgo(time.Hour), Type: bpf.CTType(NATForward)}
			fwdValue.SetPeer(rev)
			put(t, m, fwd, fwdValue)

			s := newTestScanner(t, m)
			if !atomic {
				s.atomicDelete = probeUnsupported
			}
			s.beforeDelete = func(k Key) {
				revValue := Value{LastSeen: uint64(testNow), Type: bpf.CTType(NATReverse)}
				revValue.SetPeer(k)
				put(t, m, rev, revValue)
			}
			stats, err := s.Scan()
			if err != nil {
				t.Fatal(err)
			}
			if diff := diffKeys(sorted(fwd, rev), remainingKeys(t, m)); diff != "" {
				t.Errorf("entries left (-want +got):\n%s", diff)
			}
			if stats.Deleted != 0 || stats.Refreshed != 1 {
				t.Errorf("stats %+v, want nothing deleted, 1 refreshed", stats)
			}
		})
	}
}
