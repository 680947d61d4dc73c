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
// Connect-time load balancing is a second object (sock.c, LoadSockSpec):
// cgroup sock_addr programs for connect, sendmsg, recvmsg and getpeername,
// both families, which choose a frontend's backend with the datapath's own
// choice code (include/sluice/lb.h) over the same maps, and keep each
// socket's translation in socket storage (MapSockNAT). It needs
// BPF_PROG_TYPE_CGROUP_SOCK_ADDR with the getpeername hooks (5.8),
// BPF_MAP_TYPE_SK_STORAGE, bpf_get_netns_cookie and bpf_set_retval (5.18).
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
	// MapIPSetMembers is the LPM trie of the sets each IP set member
	// address and named port is in, IPSetMKey to IPSetMValue, in two
	// generations.
	MapIPSetMembers = datapathMapSlIpsetm
	// MapIPSetGen is the array (one u32) naming the generation of
	// MapIPSetMembers in use.
	MapIPSetGen = datapathMapSlIpsetgen
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

// SockObjects are the connect-time balancing object's programs and maps,
// as bpf2go generates them: LoadSockSpec's result assigns to it.
type SockObjects = sockObjects

// SockSpecs are the connect-time balancing object's program and map specs.
type SockSpecs = sockSpecs

// LoadSockSpec returns a fresh CollectionSpec of the connect-time
// balancing object (sock.c): cgroup sock_addr programs over the service
// maps of the datapath object (the same names and types; load it with the
// datapath's maps as MapReplacements), and its own socket storage,
// MapSockNAT.
func LoadSockSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("load sock spec: %w", err)
	}
	return spec, nil
}

// Names of the programs and the map of the connect-time balancing object.
// Each program's attach type is its section's (ebpf.AttachCGroupInet4Connect
// for ProgSockConnect4, and so on).
const (
	// ProgSockConnect4 and ProgSockConnect6 balance a connect to a
	// frontend.
	ProgSockConnect4 = sockProgSlSockConnect4
	ProgSockConnect6 = sockProgSlSockConnect6
	// ProgSockSendmsg4 and ProgSockSendmsg6 balance an unconnected UDP
	// sendmsg to a frontend.
	ProgSockSendmsg4 = sockProgSlSockSendmsg4
	ProgSockSendmsg6 = sockProgSlSockSendmsg6
	// ProgSockRecvmsg4 and ProgSockRecvmsg6 show a balanced UDP socket's
	// datagrams as from the frontend.
	ProgSockRecvmsg4 = sockProgSlSockRecvmsg4
	ProgSockRecvmsg6 = sockProgSlSockRecvmsg6
	// ProgSockGetpeername4 and ProgSockGetpeername6 show a balanced
	// socket's peer as the frontend.
	ProgSockGetpeername4 = sockProgSlSockGetpeername4
	ProgSockGetpeername6 = sockProgSlSockGetpeername6
	// MapSockNAT is the socket storage of SockNAT: each balanced socket's
	// translations.
	MapSockNAT = sockMapSlSockNat
)

// SockDestroyObjects are the socket-destroying object's program and maps.
type SockDestroyObjects = sockdestroyObjects

// LoadSockDestroySpec returns a fresh CollectionSpec of the object that
// destroys connected UDP sockets a removed backend leaves
// (sockdestroy.c): a socket iterator, ProgSockDestroyUDP, over the
// service maps and MapSockNAT of the other objects (load it with theirs
// as MapReplacements). It needs bpf_sock_destroy (Linux 6.5), which the
// balancing programs do not.
func LoadSockDestroySpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadSockdestroy()
	if err != nil {
		return nil, fmt.Errorf("load sockdestroy spec: %w", err)
	}
	return spec, nil
}

// ProgSockDestroyUDP is the iter/udp program that aborts each connected
// UDP socket of its network namespace whose balanced backend left its
// service, writing one byte to the iterator's output for each.
const ProgSockDestroyUDP = sockdestroyProgSlSockDestroyUdp

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
	return slot*uint32(HookCount) + uint32(hook)
}
