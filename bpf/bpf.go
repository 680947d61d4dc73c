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
)

// C type names of the shared structs, for layout checks against BTF.
const (
	TypeState    = "sl_state"
	TypeIPSetKey = "sl_ipset_key"
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
