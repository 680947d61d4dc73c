// Package polprog compiles network policy (tiers of policies of rules, and
// profiles) into eBPF programs that decide allow or deny for the packet
// described in the datapath's per-CPU struct sl_state, and evaluates the same
// rules in pure Go.
//
// # Semantics
//
// A rule's fields are ANDed and the entries of a list field are ORed; an
// empty field matches everything, a Not field matches when none of its
// entries does. Rules are evaluated in order: allow and deny end evaluation,
// pass skips to the next tier (past the tier's end action), log sets
// StateFlagLog, counts the rule and continues. A tier that nothing decided
// ends with its EndAction: deny (with EndRuleID) or pass to the next tier.
// Profiles follow the tiers; pass there denies. A packet nothing decided is
// denied with Rules.NoMatchRuleID.
//
// Host endpoints (Rules.ForHost) follow Calico's BPF policy programs. The
// pre-DNAT tiers come first and match the destination before DNAT
// (pre_nat_dst_addr, pre_nat_dst_port); an allow or a deny there ends
// policy, and only when every pre-DNAT tier passed does the second stage
// follow. When the state flags say the source or the destination is the
// host, that is the normal tiers then the profiles, and nothing deciding
// denies with NoMatchRuleID. Forwarded traffic gets the apply-on-forward
// tiers instead, and is allowed (rule ID 0, nothing counted) when there
// are none or every one passed.
//
// Evaluator (and Evaluate) implement these semantics in Go; the package's
// differential tests hold the compiled programs to it. Use it to explain a
// verdict or to test policy without root.
//
// # Programs
//
// Compile emits one or more parts. Each part finds sl_state, evaluates a
// slice of the rules and either ends by setting policy_rc and rule_id,
// counting the deciding rule in sl_rule_hits and tail calling the allow or
// deny continuation in sl_conts, or tail calls the next part in
// sl_policy_jumps with state.resume naming where it continues. A policy
// that cannot finish (a tail call to the next part or to the allow
// continuation failed, or a later part was entered with no resume point)
// sets policy_rc to bpf.PolicyFailed and tail calls the deny continuation,
// which counts it; only when there is no state, or the deny continuation
// cannot be reached, does a part return TC_ACT_SHOT. Parts are cut between
// rules, before the verifier's limit on pending branch states
// (asm.MaxJumpSequences) or a configured instruction count; 20,000 rules
// fit in a few parts, and at most MaxParts are allowed (the tail-call
// budget).
//
// Compiled holds no slots: Compiled.Load takes one sl_policy_jumps slot per
// part, sets each part's tail call to the next part's slot and installs
// the entry last. Program.Close removes only the slots that still hold its
// parts, so a runtime can load a policy into fresh slots, switch an
// interface to it and then close the old one (make-before-break).
//
// Runs of consecutive rules that differ only in their IDs, actions and the
// entries of one CIDR or port list (and a single rule with many such
// entries) become one lookup in an LPM trie that the program owns, whose
// value is the ID and action of the first rule in order that matches. Their
// cost per packet then no longer grows with the number of rules, while order,
// actions and rule IDs stay exact.
//
// IP sets live in the shared sl_ipsets LPM trie, which package ipsets
// writes (ipsets.Map.Sync); its keys carry the member's family, and the
// programs look an address up with the whole key (see package ipsets).
//
// # Address families
//
// CIDRs and IP sets of both families compile, and a check compares the
// address with its family, as Evaluate does: an IPv4 CIDR never contains an
// IPv6 address and the reverse, whatever their low bits (the state holds
// IPv4 IPv4-mapped, and an address is IPv4 when it is). A negated list
// holds for an address of the other family. ICMP type and code matches
// work with protocol icmp and icmpv6. Merged lookups take IPv4 CIDR runs;
// a run with IPv6 CIDRs stays inline.
//
// # Kernel features
//
// BPF_PROG_TYPE_SCHED_CLS programs, bpf_tail_call with BPF_MAP_TYPE_PROG_ARRAY,
// BPF_MAP_TYPE_PERCPU_ARRAY (state), BPF_MAP_TYPE_LPM_TRIE (IP sets and
// merged rules), BPF_MAP_TYPE_PERCPU_HASH (hit counters) and JMP32
// instructions (Linux 5.1).
package polprog
