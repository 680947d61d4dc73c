package polprog

import (
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	ebpfasm "github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/asm"
	"github.com/sluicenet/sluice/bpf"
)

// MaxParts is the most parts Options.MaxParts may allow. The kernel
// allows 33 tail calls per packet (MAX_TAIL_CALL_CNT). The datapath spends
// one to enter policy and one for the continuation, and a policy of
// MaxParts parts spends MaxParts-1 between its parts: 31 in all, which
// leaves two for later stages of the datapath.
const MaxParts = 30

// ErrTooLarge is wrapped by Compile's error when the policy needs more than
// Options.MaxParts parts, or one rule more jumps than a part holds, and by
// Load's when the kernel finds a part too large or too complex to verify
// (E2BIG: its limits on processed instructions and pending branch states).
// Such a policy loads only smaller, or with merging or classification on.
var ErrTooLarge = errors.New("policy too large for its programs")

// Defaults for Options fields left zero.
const (
	// DefaultMaxParts bounds the chain of tail calls a policy uses when
	// Options.MaxParts is 0; see MaxParts for the budget.
	DefaultMaxParts = 24
	// DefaultSplitJumps is the conditional-jump count after which a part
	// ends. The verifier's limit is asm.MaxJumpSequences (8192); one rule
	// may add at most the difference minus splitHeadroom.
	DefaultSplitJumps = 7000
	// DefaultSplitInstructions is the instruction count after which a part
	// ends, far below asm.MaxInstructions so verification stays quick. It
	// also bounds the verifier's work: it processes about 1.6 instructions
	// per instruction of a linear part of random rules (3 for tiny ones,
	// TestLoadRandomLayouts), well under its limit of 1,000,000.
	DefaultSplitInstructions = 200000
	// DefaultMergeThreshold is the number of CIDR or port alternatives
	// from which a run of rules becomes one LPM trie lookup.
	DefaultMergeThreshold = 24
	// DefaultFallThroughRules: below about this many rules the branch
	// predictor holds every rule's branch, and the extra jump of the
	// fall-through layout costs more than it saves (0.8 against 0.62
	// ns per CIDR rule at 1,000 rules; 2.1 against 6.0 at 10,000).
	DefaultFallThroughRules = 2000
	// DefaultTrampolineStride is the longest jump a part encodes
	// directly, half the int16 offset limit: after verification the
	// kernel rewrites some instructions into several (inlined map
	// lookups, tail calls), and a jump whose span grows past the limit
	// fails the load ("cannot be patched due to 16-bit range"). Random
	// policies grew by 1.2% (23,032 instructions to 23,311), past
	// asm.DefaultTrampolineStride's margin of 100 at 50,000; half leaves
	// room for code twice as long after the rewrite.
	DefaultTrampolineStride = (math.MaxInt16 + 1) / 2
	// splitHeadroom is kept below asm.MaxJumpSequences for the header,
	// the resume table and the footer.
	splitHeadroom = 200
	// maxLookupMapsPerPart keeps a part's maps within the kernel's 64
	// per program: the seven shared maps (Maps), the generation map and
	// the outcome cache that an earlier part added, and these.
	maxLookupMapsPerPart = 64 - 7 - 2
)

// Options configure Compile.
type Options struct {
	// MaxRules is the most rules Compile accepts; 0 means
	// DefaultMaxRules.
	MaxRules int
	// MaxParts is the most parts a policy may be split into; 0 means
	// DefaultMaxParts. Above MaxParts (the constant) is an error.
	MaxParts int
	// AllowSlot and DenySlot are the sl_conts slots the program ends in.
	// When both are 0, bpf.ContAllow and bpf.ContDeny apply. A policy
	// that cannot finish also ends in DenySlot, with policy_rc
	// bpf.PolicyFailed.
	AllowSlot, DenySlot uint32
	// SplitJumps and SplitInstructions set when a part ends; 0 means
	// DefaultSplitJumps and DefaultSplitInstructions.
	SplitJumps, SplitInstructions int
	// MergeThreshold is the number of CIDR or port alternatives from
	// which consecutive rules that differ only in that field become one
	// LPM lookup; 0 means DefaultMergeThreshold, negative disables
	// merging.
	MergeThreshold int
	// TrampolineStride is passed to asm.WithTrampolineStride; 0 means
	// DefaultTrampolineStride.
	TrampolineStride int
	// FallThroughRules is the rule count from which each rule's first
	// check falls through when it fails (see compiler.mismatch); 0 means
	// DefaultFallThroughRules, negative never.
	FallThroughRules int
	// ClassifierRules is the length from which a run of consecutive
	// rules of one tier (or of the profiles) is classified by bit
	// vectors (see the package doc) instead of checked rule by rule; 0
	// means DefaultClassifierRules, negative never. Without may_goto in
	// the kernel (probed once) every run stays linear.
	ClassifierRules int
	// ClassifierBytes bounds the rows of one classified run (all
	// generations); a run that needs more is halved until it fits, and
	// one shorter than ClassifierRules stays linear. 0 means
	// DefaultClassifierBytes.
	ClassifierBytes int
	// Hook is the kind of program to compile, HookTC by default. An
	// HookXDP policy is loaded into an XDP program's jump map and ends in
	// its continuations (Maps).
	Hook Hook

	// omit drops steps of classified runs' code, for measuring what
	// each costs (tests only; the programs it makes decide wrongly).
	omit classOmit
}

// Compiled is a policy compiled into one or more programs. It holds no
// sl_policy_jumps slots: Load takes them, so one Compiled may be loaded
// several times into different slots.
type Compiled struct {
	// Parts are the programs: Parts[0] is the entry, each later part is
	// reached by tail call from the one before, through the slot that
	// Load gives it.
	Parts []Part
	// LookupMaps are the maps of merged rules and classified runs that
	// the parts reference; Load creates them with their contents.
	LookupMaps []LookupMap

	// classes are the classified runs, in order; opts are the options
	// given to Compile (Program.Update compiles with them again).
	classes []*compiledClass
	opts    Options
	prog    *program
}

// Part is one program of a compiled policy.
type Part struct {
	// Instructions reference the shared maps by their bpf.Map* names and
	// lookup maps by LookupMap.Name. The tail call to the next part loads
	// its slot with a placeholder (-1, tagged in the instruction's
	// metadata) that Load replaces.
	Instructions ebpfasm.Instructions
	// Stats are the asm counts, before unreachable code was dropped.
	Stats asm.Stats
	// Rules counts the rules whose code is in this part, in evaluation
	// order (pre-DNAT tiers, tiers, profiles, apply-on-forward tiers).
	Rules int

	block *asm.Block
}

// Listing returns the part's annotated assembly listing.
func (p Part) Listing() (string, error) {
	if p.block == nil {
		return "", errors.New("part has no listing")
	}
	s, err := p.block.Listing()
	if err != nil {
		return "", fmt.Errorf("listing of part: %w", err)
	}
	return s, nil
}

// LookupMap describes a map that the parts reference beside the shared
// ones: an LPM trie of merged rules (from an address or port prefix to the
// ID and action of the first rule that matches it), or one of a classified
// run's maps (see the package doc).
type LookupMap struct {
	// Name is the instructions' reference to the map.
	Name string
	// Spec creates the map, with its contents (a classified run's maps
	// have none in their specs: Load writes them).
	Spec *ebpf.MapSpec
}

// Compile validates rules and builds the policy program.
func Compile(rules Rules, opts Options) (*Compiled, error) {
	return compile(rules, opts, nil)
}

// compile is Compile with the layouts of classified runs to reuse where
// they fit (see Program.Update).
func compile(rules Rules, opts Options, hints []*classLayout) (*Compiled, error) {
	if opts.MaxParts > MaxParts {
		return nil, fmt.Errorf("compile: Options.MaxParts %d is above MaxParts (%d), the tail-call budget", opts.MaxParts, MaxParts)
	}
	if err := opts.Hook.check(); err != nil {
		return nil, fmt.Errorf("compile: %w", err)
	}
	p, err := validate(rules, opts.MaxRules)
	if err != nil {
		return nil, fmt.Errorf("validate rules: %w", err)
	}
	c := newCompiler(opts)
	c.familyAddrs = familyAddrs(p)
	c.out.opts, c.out.prog = opts, p
	c.hints = hints
	c.fallThrough = c.opts.FallThroughRules > 0 && p.ruleCount >= c.opts.FallThroughRules
	c.classifying = c.opts.ClassifierRules > 0 && p.ruleCount >= c.opts.ClassifierRules
	if err := c.program(p); err != nil {
		return nil, fmt.Errorf("compile: %w", err)
	}
	return c.out, nil
}

// compiler holds the state of one Compile.
type compiler struct {
	opts Options
	out  *Compiled

	part *partBuilder
	// nextLabelID numbers cross-part labels (their resume values) and
	// rule-local labels.
	nextLabelID uint32
	crossIDs    map[string]uint32
	// lastPending are the labels the finished part left for the next.
	lastPending []string
	// fallThrough: use the fall-through layout for rules' first checks.
	fallThrough bool
	// familyAddrs are the state offsets of the addresses that rules
	// check, whose families each part's prologue classifies.
	familyAddrs []int16
	// classifying: runs may be classified, so parts start with the
	// generation unread (stackGen); haveGenMap: the generation map is in
	// LookupMaps. hints are layouts to reuse, one per classified run in
	// order.
	classifying, haveGenMap bool
	hints                   []*classLayout
}

func newCompiler(opts Options) *compiler {
	if opts.MaxParts <= 0 {
		opts.MaxParts = DefaultMaxParts
	}
	if opts.AllowSlot == 0 && opts.DenySlot == 0 {
		opts.AllowSlot, opts.DenySlot = uint32(bpf.ContAllow), uint32(bpf.ContDeny)
	}
	if opts.SplitJumps <= 0 {
		opts.SplitJumps = DefaultSplitJumps
	}
	if opts.TrampolineStride == 0 {
		opts.TrampolineStride = DefaultTrampolineStride
	}
	if opts.SplitInstructions <= 0 {
		opts.SplitInstructions = DefaultSplitInstructions
	}
	if opts.FallThroughRules == 0 {
		opts.FallThroughRules = DefaultFallThroughRules
	}
	if opts.MergeThreshold == 0 {
		opts.MergeThreshold = DefaultMergeThreshold
	}
	if opts.ClassifierRules == 0 {
		opts.ClassifierRules = DefaultClassifierRules
	}
	if opts.ClassifierRules > 0 && !(haveMayGoto() && haveMmapArrays()) {
		opts.ClassifierRules = -1
	}
	if opts.ClassifierBytes <= 0 {
		opts.ClassifierBytes = DefaultClassifierBytes
	}
	return &compiler{opts: opts, out: &Compiled{}, crossIDs: map[string]uint32{}}
}

// stage is the view of the packet that rules match.
type stage struct {
	// dstAddr and dstPort are the state offsets of the destination the
	// stage matches: before DNAT in a host endpoint's pre-DNAT tiers,
	// after it elsewhere.
	dstAddr, dstPort int16
}

// program emits the whole policy. A host endpoint's (see Rules): the
// pre-DNAT tiers, whose allow and deny end host policy and whose passing
// continues; then, when the host is the source or the destination, the
// normal tiers and profiles; otherwise the apply-on-forward tiers, and an
// allow (RuleID 0) when every one of them passed, as Calico's
// "allowed_by_host_policy".
func (c *compiler) program(p *program) error {
	if err := c.startPart(nil); err != nil {
		return err
	}
	post := stage{dstAddr: offDstAddr, dstPort: offDstPort}
	if !p.forHost {
		if err := c.stageCode(post, p.tiers, p.profiles, p.noMatchID); err != nil {
			return err
		}
		return c.finishPart(true)
	}
	pre := stage{dstAddr: offPreNATDstAddr, dstPort: offPreNATDstPort}
	if err := c.tiers(pre, p.preDNAT); err != nil {
		return err
	}
	b := c.part.b
	b.Comment("pre-DNAT tiers passed: normal tiers when the host is an end, else apply-on-forward")
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, offFlags, ebpfasm.Word),
		ebpfasm.And.Imm32(ebpfasm.R1, int32(bpf.StateFlagSrcIsHost|bpf.StateFlagDstIsHost)))
	c.crossJump32(ebpfasm.JEq, ebpfasm.R1, 0, labelForward)
	if err := c.stageCode(post, p.tiers, p.profiles, p.noMatchID); err != nil {
		return err
	}
	c.crossLabel(labelForward)
	if err := c.tiers(post, p.forward); err != nil {
		return err
	}
	c.part.b.Comment("every apply-on-forward tier passed: allowed by host policy")
	c.decide(ActionAllow, 0)
	return c.finishPart(true)
}

// stageCode emits tiers, then profiles, then the default deny.
func (c *compiler) stageCode(st stage, tiers []tier, profiles []rule, noMatchID uint64) error {
	if err := c.tiers(st, tiers); err != nil {
		return err
	}
	if len(profiles) > 0 {
		c.part.b.Comment("profiles")
		if err := c.rules(st, profiles, ""); err != nil {
			return err
		}
	}
	c.part.b.Comment("no rule decided: default deny")
	c.decide(ActionDeny, noMatchID)
	return nil
}

func (c *compiler) tiers(st stage, tiers []tier) error {
	for i := range tiers {
		t := &tiers[i]
		end := c.newCrossLabel("tier_next")
		c.part.b.Comment(fmt.Sprintf("tier %q", t.name))
		if err := c.rules(st, t.rules, end); err != nil {
			return err
		}
		if t.end == EndDeny {
			c.part.b.Comment(fmt.Sprintf("end of tier %q: deny", t.name))
			c.decide(ActionDeny, t.endID)
		}
		// Pass skips the tier's end action.
		c.crossLabel(end)
	}
	return nil
}

// rules emits a tier's (or the profiles') rules, merging runs where that
// pays, and splitting the program between rules.
func (c *compiler) rules(st stage, rs []rule, tierEnd string) error {
	sc := &shapeCache{rules: rs, keys: map[[2]int]string{}}
	for i := 0; i < len(rs); {
		// A merged run (one lookup) costs less than a classified one.
		g := c.findGroup(sc, i)
		if g == nil {
			n, err := c.classified(st, rs, i, tierEnd)
			if err != nil {
				return err
			}
			if n > 0 {
				i += n
				continue
			}
		}
		maps := 0
		if g != nil {
			maps = 1
		}
		if err := c.maybeSplit(maps); err != nil {
			return err
		}
		before := c.part.b.Stats()
		n := 1
		if g != nil {
			if err := c.groupCode(st, g, tierEnd); err != nil {
				return err
			}
			n = len(g.rules)
		} else {
			c.ruleCode(st, &rs[i], tierEnd)
		}
		if err := c.part.b.Err(); err != nil {
			return fmt.Errorf("rule %s: %w", rs[i].where, err)
		}
		if added := c.part.b.Stats().Jumps - before.Jumps; added > c.maxRuleJumps() {
			return fmt.Errorf("rule %s needs %d jumps, more than one program can hold after %d: %w", rs[i].where, added, c.opts.SplitJumps, ErrTooLarge)
		}
		c.part.rules += n
		i += n
	}
	return nil
}

// classified emits, when a run from rs[i] is long enough, its classifier,
// and returns how many rules it took (0 for none).
func (c *compiler) classified(st stage, rs []rule, i int, tierEnd string) (int, error) {
	if c.opts.ClassifierRules <= 0 {
		return 0, nil
	}
	// A run whose rows would pass ClassifierBytes is halved until they
	// fit (its rows shrink with the square of its length) or it is too
	// short to classify: trying again from each next rule instead would
	// build a classifier per rule of a long run.
	var cl *classifier
	var l *classLayout
	for n := classifierRun(rs, i); n >= c.opts.ClassifierRules; n /= 2 {
		if cl = buildClassifier(rs[i:i+n], c.opts.ClassifierBytes); cl == nil {
			continue
		}
		if k := len(c.out.classes); k < len(c.hints) && c.hints[k].fits(cl) {
			l = c.hints[k]
		} else {
			l = newLayout(cl)
		}
		if l.bytes() <= c.opts.ClassifierBytes {
			break
		}
		cl = nil
	}
	if cl == nil {
		return 0, nil
	}
	n := len(cl.rules)
	if err := c.maybeSplit(c.classMaps(cl, l)); err != nil {
		return 0, err
	}
	c.classifierCode(st, cl, l, tierEnd)
	if err := c.part.b.Err(); err != nil {
		return 0, fmt.Errorf("rules %s to %s: %w", rs[i].where, rs[i+n-1].where, err)
	}
	c.part.rules += n
	return n, nil
}

func (c *compiler) maxRuleJumps() int {
	return asm.MaxJumpSequences - splitHeadroom - c.opts.SplitJumps
}

// maybeSplit ends the current part when it has reached a split threshold
// or when the code that follows, which adds maps lookup maps, would take
// the part past maxLookupMapsPerPart.
func (c *compiler) maybeSplit(maps int) error {
	s := c.part.b.Stats()
	full := s.Jumps >= c.opts.SplitJumps || s.Instructions >= c.opts.SplitInstructions ||
		(maps > 0 && c.part.lookupMaps+maps > maxLookupMapsPerPart)
	if !full {
		return nil
	}
	cont := c.newCrossLabel("cont")
	c.part.b.Comment("split: continue in the next part")
	c.crossJa(cont)
	if err := c.finishPart(false); err != nil {
		return err
	}
	if err := c.startPart(c.lastPending); err != nil {
		return err
	}
	c.crossLabel(cont)
	return nil
}
