// Package bpf holds sluice's C datapath and its compiled objects.
//
// The C headers under include/sluice are the single source of truth for
// every struct shared between the kernel and Go. bpf2go compiles the C with
// Debian's clang-19 (`make generate`) and emits Go mirrors of the shared
// structs; the objects and the Go files are committed, so importing this
// package needs neither clang nor network access.
//
// The TC datapath is one object: ProgTCIngress and ProgTCEgress are
// attached to interfaces, one per hook, and read each interface's settings
// (Iface) from MapIfaces; policy programs in MapPolicyJumps end in the
// continuations ProgTCAllow and ProgTCDeny, which Load installs in
// MapConts. See datapath.c for the packet path and Load for loading.
//
// Kernel features: BPF_PROG_TYPE_SCHED_CLS with tail calls and BPF-to-BPF
// calls mixed (Linux 5.10 on x86-64), hash, LRU hash, per-CPU array and
// hash, LPM trie and prog array maps, BPF atomics, bpf_ktime_get_coarse_ns
// (5.11) and the v3 instruction set (-mcpu=v3).
package bpf

import "encoding/binary"

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
	// MapConntrack is the LRU hash of conntrack entries (CTKey to CTValue).
	MapConntrack = datapathMapSlCt
	// MapIfaces is the hash of interface settings, ifindex (uint32) to Iface.
	MapIfaces = datapathMapSlIfaces
	// MapCounters is the per-CPU array of verdict counters (ReasonCounts):
	// an interface's hook counts at CounterIndex(Iface.CounterSlot, hook).
	MapCounters = datapathMapSlCounters
	// MapPending is the per-CPU array holding the packet that waits for a
	// policy verdict (one Pending per CPU), read by the continuations.
	MapPending = datapathMapSlPendingMap
)

// C type names of the shared structs, for layout checks against BTF.
const (
	TypeState    = "sl_state"
	TypeIPSetKey = "sl_ipset_key"
	TypeCTKey    = "sl_ct_key"
	TypeCTValue  = "sl_ct_value"
	TypeCTLeg    = "sl_ct_leg"

	TypeIface        = "sl_iface"
	TypeReasonCounts = "sl_reason_counts"
	TypePending      = "sl_pending"
)

// State mirrors struct sl_state: the per-CPU packet state the datapath
// fills and policy programs read. IPv4 addresses are stored IPv4-mapped.
type State = datapathSlState

// IPSetKey mirrors struct sl_ipset_key, the key of MapIPSets.
type IPSetKey = datapathSlIpsetKey

// IPSetID encodes a 64-bit IP set ID as IPSetKey.SetId holds it (big-endian).
func IPSetID(id uint64) [8]byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	return b
}

// PolicyRC is a policy verdict left in State.PolicyRc (enum sl_policy_rc).
type PolicyRC = datapathSlPolicyRc

// Policy verdicts.
const (
	PolicyNone  = datapathSlPolicyRcSL_POLICY_NONE
	PolicyAllow = datapathSlPolicyRcSL_POLICY_ALLOW
	PolicyDeny  = datapathSlPolicyRcSL_POLICY_DENY
	// PolicyFailed: a policy program could not finish (a failed tail
	// call, or a later part entered without a resume point).
	PolicyFailed = datapathSlPolicyRcSL_POLICY_FAILED
)

// StateFlags are the bits of State.Flags (enum sl_state_flags).
type StateFlags = datapathSlStateFlags

// State flags.
const (
	StateFlagSrcIsHost = datapathSlStateFlagsSL_STATE_F_SRC_IS_HOST
	StateFlagDstIsHost = datapathSlStateFlagsSL_STATE_F_DST_IS_HOST
	StateFlagLog       = datapathSlStateFlagsSL_STATE_F_LOG
)

// ContSlot is a slot of MapConts (enum sl_cont_slot).
type ContSlot = datapathSlContSlot

// Continuation slots.
const (
	ContAllow = datapathSlContSlotSL_CONT_ALLOW
	ContDeny  = datapathSlContSlotSL_CONT_DENY
)

// CTKey mirrors struct sl_ct_key, the canonical IPv4 flow key.
type CTKey = datapathSlCtKey

// CTValue mirrors struct sl_ct_value, a conntrack entry.
type CTValue = datapathSlCtValue

// CTLeg mirrors struct sl_ct_leg, one direction of a flow.
type CTLeg = datapathSlCtLeg

// CTType is the kind of a conntrack entry (enum sl_ct_type).
type CTType = datapathSlCtType

// Conntrack entry kinds.
const (
	CTNormal = datapathSlCtTypeSL_CT_NORMAL
	CTNATFwd = datapathSlCtTypeSL_CT_NAT_FWD
	CTNATRev = datapathSlCtTypeSL_CT_NAT_REV
)

// CTLegFlags are the bits of CTLeg.Flags (enum sl_ct_leg_flags).
type CTLegFlags = datapathSlCtLegFlags

// Conntrack leg flags: what a direction of a flow has seen.
const (
	CTLegSYN = datapathSlCtLegFlagsSL_CT_LEG_SYN
	CTLegACK = datapathSlCtLegFlagsSL_CT_LEG_ACK
	CTLegFIN = datapathSlCtLegFlagsSL_CT_LEG_FIN
	CTLegRST = datapathSlCtLegFlagsSL_CT_LEG_RST
	// CTLegIngressOK: the leg's packets pass the TC ingress hook of
	// CTLeg.Ifindex without policy (approved there, or replies).
	CTLegIngressOK = datapathSlCtLegFlagsSL_CT_LEG_INGRESS_OK
	// CTLegEgressOK: policy at the TC egress hook the leg leaves through
	// approved it.
	CTLegEgressOK = datapathSlCtLegFlagsSL_CT_LEG_EGRESS_OK
)

// CTDir is a packet's direction relative to its conntrack key (enum
// sl_ct_dir).
type CTDir = datapathSlCtDir

// Packet directions.
const (
	CTDirAToB = datapathSlCtDirSL_CT_DIR_A_TO_B
	CTDirBToA = datapathSlCtDirSL_CT_DIR_B_TO_A
)

// Iface mirrors struct sl_iface, the value of MapIfaces: an interface's
// flags and the MapPolicyJumps slots of the policies its hooks run.
type Iface = datapathSlIface

// IfaceFlags are the bits of Iface.Flags (enum sl_iface_flags).
type IfaceFlags = datapathSlIfaceFlags

// Interface flags. Zero is the safe default of each.
const (
	IfaceWorkload      = datapathSlIfaceFlagsSL_IFACE_WORKLOAD
	IfaceHost          = datapathSlIfaceFlagsSL_IFACE_HOST
	IfaceReady         = datapathSlIfaceFlagsSL_IFACE_READY
	IfaceDropNonIP     = datapathSlIfaceFlagsSL_IFACE_DROP_NON_IP
	IfacePassIPv6      = datapathSlIfaceFlagsSL_IFACE_PASS_IPV6
	IfaceDropMidFlow   = datapathSlIfaceFlagsSL_IFACE_DROP_MID_FLOW
	IfacePassFragments = datapathSlIfaceFlagsSL_IFACE_PASS_FRAGMENTS
)

// Hook is a TC hook (enum sl_hook).
type Hook = datapathSlHook

// TC hooks.
const (
	HookIngress = datapathSlHookSL_HOOK_INGRESS
	HookEgress  = datapathSlHookSL_HOOK_EGRESS
)

// Reason is why the datapath passed or dropped a packet (enum sl_reason):
// an index into ReasonCounts.Packets.
type Reason = datapathSlReason

// Verdict reasons. Reasons below ReasonDroppedByPolicy accept the packet;
// ReasonCTCreateFailed is an event counted beside a packet's verdict.
const (
	ReasonAcceptedByPolicy    = datapathSlReasonSL_REASON_ACCEPTED_BY_POLICY
	ReasonAcceptedEstablished = datapathSlReasonSL_REASON_ACCEPTED_ESTABLISHED
	ReasonAcceptedRelated     = datapathSlReasonSL_REASON_ACCEPTED_RELATED
	ReasonNonIPPassed         = datapathSlReasonSL_REASON_NON_IP_PASSED
	ReasonIPv6Passed          = datapathSlReasonSL_REASON_IPV6PASSED
	ReasonFragmentPassed      = datapathSlReasonSL_REASON_FRAGMENT_PASSED
	ReasonCTCreateFailed      = datapathSlReasonSL_REASON_CT_CREATE_FAILED
	ReasonDroppedByPolicy     = datapathSlReasonSL_REASON_DROPPED_BY_POLICY
	ReasonDroppedNoIface      = datapathSlReasonSL_REASON_DROPPED_NO_IFACE
	ReasonDroppedNotReady     = datapathSlReasonSL_REASON_DROPPED_NOT_READY
	ReasonDroppedNoPolicy     = datapathSlReasonSL_REASON_DROPPED_NO_POLICY
	ReasonDroppedMidFlow      = datapathSlReasonSL_REASON_DROPPED_MID_FLOW
	ReasonDroppedShort        = datapathSlReasonSL_REASON_DROPPED_SHORT
	ReasonDroppedBadVersion   = datapathSlReasonSL_REASON_DROPPED_BAD_VERSION
	ReasonDroppedBadIHL       = datapathSlReasonSL_REASON_DROPPED_BAD_IHL
	ReasonDroppedBadLen       = datapathSlReasonSL_REASON_DROPPED_BAD_LEN
	ReasonDroppedBadTCPDoff   = datapathSlReasonSL_REASON_DROPPED_BAD_TCP_DOFF
	ReasonDroppedFragment     = datapathSlReasonSL_REASON_DROPPED_FRAGMENT
	ReasonDroppedNonIP        = datapathSlReasonSL_REASON_DROPPED_NON_IP
	ReasonDroppedIPv6         = datapathSlReasonSL_REASON_DROPPED_IPV6
	ReasonDroppedBadHandoff   = datapathSlReasonSL_REASON_DROPPED_BAD_HANDOFF
	// ReasonCount is the number of reasons, the length of
	// ReasonCounts.Packets.
	ReasonCount = datapathSlReasonSL_REASON_COUNT
)

// ReasonCounts mirrors struct sl_reason_counts, one CPU's value in
// MapCounters: packets per Reason.
type ReasonCounts = datapathSlReasonCounts

// Pending mirrors struct sl_pending, the value of MapPending.
type Pending = datapathSlPending

// CounterIndex is the MapCounters index of a hook of the interface with
// counter slot slot (SL_COUNTER_INDEX). Slot 0 counts the packets of
// interfaces without state; give each interface its own slot from 1 up.
func CounterIndex(slot uint32, hook Hook) uint32 {
	return slot*2 + uint32(hook)
}
