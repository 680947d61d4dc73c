// Package bpf holds sluice's C datapath and its compiled objects.
//
// The C headers under include/sluice are the single source of truth for
// every struct and enum shared between the kernel and Go. bpf2go compiles
// the C with Debian's clang-19 (`make generate`), and abigen
// (internal/abigen) writes abi.go: Go mirrors of the shared structs and
// enums with the object's layouts and the headers' comments, and String
// methods for the enums. The objects and the Go files are committed, so
// importing this package needs neither clang nor network access.
//
// The TC datapath is one object: ProgTCIngress and ProgTCEgress are
// attached to interfaces, one per hook, and read each interface's settings
// (Iface) from MapIfaces; policy programs in MapPolicyJumps end in the
// continuations ProgTCAllow and ProgTCDeny in MapConts. See datapath.c for
// the packet path. This package only describes the object (LoadSpec, the
// names, the ABI); package datapath loads and runs it.
//
// Kernel features the object needs: BPF_PROG_TYPE_SCHED_CLS with tail
// calls and BPF-to-BPF calls mixed (Linux 5.10 on x86-64), hash, LRU hash,
// per-CPU array and hash, LPM trie, array-of-maps and prog array maps, BPF
// atomics with compare-and-exchange (5.12), bpf_ktime_get_coarse_ns (5.11)
// and the v3 instruction set (-mcpu=v3). Package datapath probes them.
package bpf

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
)

// Objects are the datapath object's programs, maps and variables, as
// bpf2go generates them: LoadSpec's result assigns to it
// (ebpf.CollectionSpec.LoadAndAssign), so the runtime never looks a
// program or map up by name.
type Objects = datapathObjects

// Specs are the datapath object's program, map and variable specs, for
// ebpf.CollectionSpec.Assign.
type Specs = datapathSpecs

// LoadSpec returns a fresh CollectionSpec of the datapath object. Each
// call parses the embedded object anew, so callers may change the result
// (map sizes, variables) without affecting others.
func LoadSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	return spec, nil
}

// Names of the programs and maps in the datapath collection.
const (
	// ProgTCPass accepts every packet: a floor for benchmarks.
	ProgTCPass = datapathProgSlTcPass
	// ProgTCIngress is the datapath program for TC ingress hooks.
	ProgTCIngress = datapathProgSlTcIngress
	// ProgTCEgress is the datapath program for TC egress hooks.
	ProgTCEgress = datapathProgSlTcEgress
	// ProgTCAllow is the continuation policy tail-calls to allow a packet
	// (MapConts slot ContAllow).
	ProgTCAllow = datapathProgSlTcAllow
	// ProgTCDeny is the continuation policy tail-calls to deny a packet
	// (MapConts slot ContDeny).
	ProgTCDeny = datapathProgSlTcDeny

	// MapState is the per-CPU array holding one State per CPU.
	MapState = datapathMapSlStateMap
	// MapIPSets is the LPM trie of IP set members, keyed by IPSetKey.
	MapIPSets = datapathMapSlIpsets
	// MapRuleHits is the per-CPU hash of policy rule hit counters.
	MapRuleHits = datapathMapSlRuleHits
	// MapPolicyJumps is the prog array holding policy programs.
	MapPolicyJumps = datapathMapSlPolicyJumps
	// MapConts is the prog array of the programs policy continues into.
	MapConts = datapathMapSlConts
	// MapConntrackTables is the array of conntrack tables (CTTableSlot
	// to an LRU hash of CTKey to CTValue).
	MapConntrackTables = datapathMapSlCtTables
	// MapRoutes is the LPM trie of routes, RouteKey to Route.
	MapRoutes = datapathMapSlRoutes
	// MapServices is the hash of service frontends, SvcKey to Svc.
	MapServices = datapathMapSlSvcs
	// MapBackendSlots is the hash of services' backend lists,
	// BackendSlotKey to a backend ID (uint32).
	MapBackendSlots = datapathMapSlLbSlots
	// MapBackends is the hash of backends, backend ID (uint32) to Backend.
	MapBackends = datapathMapSlBackends
	// MapAffinity is the LRU hash of client affinities, AffinityKey to
	// Affinity.
	MapAffinity = datapathMapSlAffinity
	// MapServiceRanges is the LPM trie of services' source ranges,
	// SvcRangeKey to a uint8.
	MapServiceRanges = datapathMapSlLbRanges
	// MapIfaces is the hash of interface settings, ifindex (uint32) to Iface.
	MapIfaces = datapathMapSlIfaces
	// MapCounters is the per-CPU array of verdict counters (ReasonCounts):
	// an interface's hook counts at CounterIndex(Iface.CounterSlot, hook).
	MapCounters = datapathMapSlCounters
	// MapPending is the per-CPU array holding the packet that waits for a
	// policy verdict (one Pending per CPU), read by the continuations.
	MapPending = datapathMapSlPendingMap
)

// IPSetID encodes a 64-bit IP set ID as IPSetKey.SetID holds it (big-endian).
func IPSetID(id uint64) [8]byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	return b
}

// CounterIndex is the MapCounters index of a hook of the interface with
// counter slot slot (SL_COUNTER_INDEX). Slot 0 counts the packets of
// interfaces without state; the runtime gives each interface its own slot
// from 1 up.
func CounterIndex(slot uint32, hook Hook) uint32 {
	return slot*2 + uint32(hook)
}
