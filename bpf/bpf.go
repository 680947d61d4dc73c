// Package bpf holds sluice's C datapath and its compiled objects.
//
// The C headers under include/sluice are the single source of truth for
// every struct shared between the kernel and Go. bpf2go compiles the C with
// Debian's clang-19 (`make generate`) and emits Go mirrors of the shared
// structs; the objects and the Go files are committed, so importing this
// package needs neither clang nor network access.
//
// Kernel features: BPF_PROG_TYPE_SCHED_CLS, per-CPU array, LPM trie,
// per-CPU hash and prog array maps, and the v3 instruction set (-mcpu=v3,
// Linux 5.1 or newer).
package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Names of the programs and maps in the datapath collection.
const (
	// ProgTCPass accepts every packet: a floor for benchmarks.
	ProgTCPass = datapathProgSlTcPass

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
)

// C type names of the shared structs, for layout checks against BTF.
const (
	TypeState    = "sl_state"
	TypeIPSetKey = "sl_ipset_key"
	TypeCTKey    = "sl_ct_key"
	TypeCTValue  = "sl_ct_value"
	TypeCTLeg    = "sl_ct_leg"
)

// State mirrors struct sl_state: the per-CPU packet state the datapath
// fills and policy programs read. IPv4 addresses are stored IPv4-mapped.
type State = datapathSlState

// IPSetKey mirrors struct sl_ipset_key, the key of MapIPSets.
type IPSetKey = datapathSlIpsetKey

// PolicyRC is a policy verdict left in State.PolicyRc (enum sl_policy_rc).
type PolicyRC = datapathSlPolicyRc

// Policy verdicts.
const (
	PolicyNone  = datapathSlPolicyRcSL_POLICY_NONE
	PolicyAllow = datapathSlPolicyRcSL_POLICY_ALLOW
	PolicyDeny  = datapathSlPolicyRcSL_POLICY_DENY
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
)

// LoadSpec returns a fresh CollectionSpec of the datapath. Each call parses
// the embedded object anew, so callers may modify the result (map sizes,
// pinning) without affecting others.
func LoadSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	return spec, nil
}
