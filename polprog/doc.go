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
// cannot be reached, does a part return TC_ACT_SHOT (XDP_DROP for
// Options.Hook HookXDP). Parts are cut between
// rules, before the verifier's limit on pending branch states
// (asm.MaxJumpSequences) or a configured instruction count; 20,000 rules
// fit in a few parts, and at most MaxParts are allowed (the tail-call
// budget); a policy that needs more gets an error wrapping ErrTooLarge.
// The code gives the verifier identical states where a rule's paths join
// (no fact learned in one rule's checks outlives the rule), so the
// instructions it processes grow with a part's length, about 1.6 per
// instruction, not with the paths through its rules.
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
// # Classified runs
//
// A run of at least Options.ClassifierRules consecutive rules of one tier
// (or of the profiles), DefaultClassifierRules by default, is classified
// by bit vectors instead of checked rule by rule. Each rule is a position
// (a rule whose ports OR ranges with named-port sets is two, one per way
// of matching, with the same ID and action). Each field the run uses is a
// dimension whose packet values fall into classes that every rule treats
// alike: protocols (an array), ICMP type and code (an array), source and
// destination port intervals (arrays of 65,536), the addresses with the
// same longest match among the run's prefixes (an LPM trie keyed on the
// 16-byte address, IPv4 as ::ffff:a.b.c.d; an address is looked up in its
// family's stride table of the same classes instead, one array lookup
// per byte, which the verifier inlines, unless that table would pass
// 2,048 chunks of 256 entries), and the membership vectors of
// the IP sets and named-port sets the run names (up to eight per
// dimension: one lookup of the address in the membership map sl_ipsetm,
// which package ipsets writes with sl_ipsets and whose entry lists every
// set the address is in, so changes of set contents apply at once; see
// package ipsets). A class names a row: the bitmap of positions whose rule
// the class satisfies, negations included. The program looks up one row
// per dimension, ANDs the rows' summary words (bit w: word w is not zero)
// and then the words those allow, and handles the positions set in every
// row in order, reading each one's rule ID and action from a table:
// allow, deny and pass end the run as a rule's would, log flags, counts
// and goes on (clearing the rule's other position). A packet that no
// position matches falls through to the code after the run. Order, tiers,
// pass, log, profiles and rule IDs are exact; the cost per packet is a
// lookup per dimension plus a word per 64 positions that every summary
// allows, instead of a check per rule. The loops are
// bounded by may_goto (Linux 6.9), probed once; without it the run stays
// linear. A run whose rows would pass Options.ClassifierBytes is halved
// until they fit, and the rest starts the next run. A
// run ends where a rule would take a dimension past eight sets; the next
// starts there (a rule naming more than eight in one dimension is checked
// inline).
//
// The search's outcome (the deciding rule's ID and action, or none) is a
// function of the packet's row in each dimension and of the generation,
// so it is cached: an LRU hash, shared by the program's runs, keyed by
// the generation map's value, the run and the rows. A packet whose rows
// were seen skips the rows and the search; one that matched a log rule is
// never cached, so that its hits count each time. This is what bounds
// random policies, whose rules each constrain a few fields: every field
// accepts most rules (wildcards, negations), so the AND of the summaries
// allows every word, and an uncached search is linear in words.
//
// Every classifier map holds three generations. A part reads the one in
// use from its generation map once, before its first classified run, so a
// packet sees one generation of every run of the part. Program.Update
// compiles the new rules with the loaded runs' layouts (their capacities
// leave room); when the code is unchanged it writes the changed entries
// of the generation packets left two switches ago, once an RCU grace
// period since has passed (begun in the background then, so an update
// rarely waits), and switches with one map write (a new generation map
// value, so no cached outcome outlives it). Changes of classified rules
// that keep their positions and use only fields and sets their run tells
// apart (any protocol, ICMP, CIDR, port, set reference or negation, ID or
// action) are found without compiling: only the changed positions' bits
// are made again, for every key of the dimensions whose field changed;
// the keys of a row that now differ move to rows of their own, and only
// the rows, keys, trie entries and table entries that change are written.
// Anything else returns an error wrapping ErrNeedsReload, for the caller
// to compile, load and switch.
//
// IP sets live in the shared sl_ipsets LPM trie, which package ipsets
// writes (ipsets.Map.Sync); its keys carry the member's family, and the
// programs look an address up with the whole key (see package ipsets).
// Classified runs look an address up once per membership dimension in
// sl_ipsetm instead, in the generation sl_ipsetgen names, read once per
// part: a change of set contents (one Sync) reaches every classified run
// of a part whole. A set whose slot in the entry another of the address's
// sets shares is looked up in sl_ipsets, as inline rules are; those
// lookups see a Sync member by member.
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
// # Hooks
//
// Options.Hook selects the program type: HookTC (the default) compiles
// BPF_PROG_TYPE_SCHED_CLS parts, HookXDP compiles BPF_PROG_TYPE_XDP parts
// with the same code and state, which drop with XDP_DROP where TC parts
// return TC_ACT_SHOT. A prog array takes programs of one type only, so an
// XDP policy is loaded with an XDP program's own jump map and continuations
// in Maps (the datapath's sl_xdp_policy_jumps and sl_xdp_conts); the kernel
// refuses it in the TC ones.
//
// # Kernel features
//
// BPF_PROG_TYPE_SCHED_CLS programs (BPF_PROG_TYPE_XDP with HookXDP), bpf_tail_call with BPF_MAP_TYPE_PROG_ARRAY,
// BPF_MAP_TYPE_PERCPU_ARRAY (state), BPF_MAP_TYPE_LPM_TRIE (IP sets and
// merged rules), BPF_MAP_TYPE_PERCPU_HASH (hit counters) and JMP32
// instructions (Linux 5.1). Classified runs add BPF_MAP_TYPE_ARRAY,
// BPF_MAP_TYPE_LRU_HASH (the outcome cache), batch map updates (Linux
// 5.6) and may_goto (Linux 6.9), which Compile probes
// for by loading a small program; without it every run stays linear.
package polprog
