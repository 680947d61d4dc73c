package polprog

import (
	"encoding/binary"
	"fmt"

	ebpfasm "github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/ipsets"
)

// Stack slots of the classifier (offsets from R10), below those in part.go.
const (
	stackClassKey = -120 // u32 key, or the 24-byte LPM key of an address
	stackWord     = -128 // u64 index of the bitmap word being searched
	stackBits     = -136 // u64 bits of that word not yet handled
	stackSum      = -144 // u64 index of the summary word being searched
	stackCand     = -152 // u64 words of that summary not yet searched
	stackGen      = -160 // u64 generation of the part's classifier maps, -1 until read
	stackRowPtr   = -168
	// stackRowPtr - 8*d holds dimension d's row pointer.
	stackEpoch    = -248 // u64 the generation map's value as the part read it
	stackCacheKey = -296 // the cache key (cacheKeySize bytes)
	stackCacheVal = -312 // the cache value: u64 rule ID, u32 action, u32 pad
	stackNoCache  = -320 // u64 not zero once a log rule matched: the outcome is not cached
	stackSetGen   = -328 // u64 generation of sl_ipsetm the part reads, -1 until read
	stackSetEntry = -336 // the sl_ipsetm value pointer of the dimension being looked up
)

// classOmit is a set of steps of a classified run's code to leave out
// (Options.omit): a benchmark measures what each costs by timing programs
// without it. A dimension left out has row 0; without the cache lookup,
// every packet is a cache hit with no outcome.
type classOmit uint

const (
	omitArrayDims classOmit = 1 << iota
	omitAddrDims
	omitMemberDims
	omitCacheLookup
	// omitStrideTables: IPv4 addresses look the trie up, as before the
	// stride tables.
	omitStrideTables
)

// keyLowHalf is where, in a u64 stored at stackClassKey, its low u32 (an
// array key) lies. u32 keys are stored as whole u64s so that each store
// overwrites the verifier's whole stack slot: a partly written slot stays
// live, and the different keys left there would keep the verifier from
// pruning the search loop's states.
var keyLowHalf = func() int32 {
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		return 0
	}
	return 4
}()

// lpmAddrKeySize is the key of a classifier's address trie: u32
// prefixlen, the u32 generation and the 16-byte address (IPv4 as
// ::ffff:a.b.c.d). A prefix of bits address bits has prefixlen 32+bits.
const lpmAddrKeySize = 24

// classifierCode emits the search of cl: one row per dimension, then the
// words of the rows ANDed in a loop; the positions set are handled in
// order, and a run that nothing decided falls through.
func (c *compiler) classifierCode(st stage, cl *classifier, l *classLayout, tierEnd string) {
	b := c.part.b
	id := len(c.out.LookupMaps)
	mapName := func(s string) string { return fmt.Sprintf("polprog_cls%d_%s", id, s) }
	first, last := cl.rules[0], cl.rules[len(cl.rules)-1]
	b.Comment(fmt.Sprintf("rules %s to %s (%d, %d positions) classified by %d dimensions",
		first.where, last.where, len(cl.rules), len(cl.pos), len(cl.dims)))
	c.part.key.valid = false
	cc := &compiledClass{cl: cl, layout: l, part: c.part.index, names: []string{mapName("rows"), mapName("table")}}
	for _, d := range cl.dims {
		cc.names = append(cc.names, dimMapName(d.kind, mapName))
	}
	if l.strideChunks() > 0 {
		cc.strides = mapName("stride")
		cc.names = append(cc.names, cc.strides)
	}
	if !c.haveGenMap {
		c.haveGenMap = true
		c.addLookupMap(genMapName, genSpec())
		c.addLookupMap(cacheMapName, cacheSpec())
	}
	for _, lm := range cc.specs() {
		c.addLookupMap(lm.Name, lm)
	}
	c.out.classes = append(c.out.classes, cc)
	rowsName, tableName := cc.names[0], cc.names[1]

	c.loadGeneration()
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackEpoch, ebpfasm.DWord),
		ebpfasm.StoreMem(ebpfasm.R10, stackCacheKey, ebpfasm.R1, ebpfasm.Word),
		ebpfasm.StoreImm(ebpfasm.R10, stackCacheKey+4, int64(len(c.out.classes)-1), ebpfasm.Word),
	)
	for di := len(cl.dims); di < int(dimCount); di++ {
		b.Emit(ebpfasm.StoreImm(ebpfasm.R10, stackCacheKey+8+4*int16(di), 0, ebpfasm.Word))
	}
	for di, d := range cl.dims {
		if c.opts.omit&d.kind.omitBit() != 0 {
			b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, 0))
		} else {
			c.dimRow(st, d, cc.names[2+di], cc.strides, l, di)
		}
		b.Emit(ebpfasm.StoreMem(ebpfasm.R10, stackCacheKey+8+4*int16(di), ebpfasm.R1, ebpfasm.Word))
	}
	sloop, snext := c.newLabel("cls_summary"), c.newLabel("cls_summary_next")
	cloop, bits := c.newLabel("cls_word"), c.newLabel("cls_bits")
	none, record, act := c.newLabel("cls_none"), c.newLabel("cls_record"), c.newLabel("cls_act")
	miss, end := c.newLabel("cls_miss"), c.newLabel("cls_end")
	sum := int32(l.summary())

	// A cached outcome skips the rows and the search.
	if c.opts.omit&omitCacheLookup != 0 {
		b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, 0), ebpfasm.Mov.Imm(regRuleID, 0))
		b.Ja(act)
	}
	b.Emit(
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(cacheMapName),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackCacheKey),
		ebpfasm.FnMapLookupElem.Call(),
	)
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, miss)
	b.Emit(
		ebpfasm.LoadMem(regRuleID, ebpfasm.R0, 0, ebpfasm.DWord),
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 8, ebpfasm.Word),
	)
	b.Ja(act)
	b.Label(miss)
	for di := range cl.dims {
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackCacheKey+8+4*int16(di), ebpfasm.Word),
			ebpfasm.Add.Imm32(ebpfasm.R1, int32(l.base(di))),
		)
		c.arrayLookup(rowsName, l.rows())
		b.Emit(ebpfasm.StoreMem(ebpfasm.R10, stackRowPtr-8*int16(di), ebpfasm.R0, ebpfasm.DWord))
	}

	// Each row starts with summary words (bit w: word w of the row is not
	// zero). The search ANDs the summaries, and for each word set in every
	// one ANDs the rows' words; positions set in all are handled in order.
	// Indexes are stored as two u32 halves and loaded as a u64, which the
	// verifier sees as an unknown number: bounded by a check, it is the
	// same in every iteration, so the verifier checks each loop once
	// instead of once per word (each with its hits).
	b.Emit(
		ebpfasm.Mov.Imm(ebpfasm.R1, 0),
		ebpfasm.StoreMem(ebpfasm.R10, stackNoCache, ebpfasm.R1, ebpfasm.DWord),
	)
	storeHalves(b.Emit, stackSum)
	b.Label(sloop)
	b.MayGoto(labelFailed)
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackSum, ebpfasm.DWord))
	b.Jump(ebpfasm.JGE, ebpfasm.R1, sum, none)
	b.Emit(ebpfasm.LSh.Imm(ebpfasm.R1, 3))
	c.andRows(len(cl.dims))
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, snext)
	b.Emit(ebpfasm.StoreMem(ebpfasm.R10, stackCand, ebpfasm.R0, ebpfasm.DWord))

	b.Label(cloop)
	b.MayGoto(labelFailed)
	b.Emit(ebpfasm.LoadMem(ebpfasm.R0, ebpfasm.R10, stackCand, ebpfasm.DWord))
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, snext)
	lowestBit(b.Emit, stackCand)
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackSum, ebpfasm.DWord),
		ebpfasm.LSh.Imm(ebpfasm.R1, 6),
		ebpfasm.Add.Reg(ebpfasm.R1, ebpfasm.R3),
	)
	storeHalves(b.Emit, stackWord)
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackWord, ebpfasm.DWord))
	b.Jump(ebpfasm.JGE, ebpfasm.R1, int32(l.words), labelFailed)
	b.Emit(ebpfasm.Add.Imm(ebpfasm.R1, sum), ebpfasm.LSh.Imm(ebpfasm.R1, 3))
	c.andRows(len(cl.dims))
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, cloop)
	b.Emit(ebpfasm.StoreMem(ebpfasm.R10, stackBits, ebpfasm.R0, ebpfasm.DWord))
	b.Label(bits)
	b.MayGoto(labelFailed)
	b.Emit(ebpfasm.LoadMem(ebpfasm.R0, ebpfasm.R10, stackBits, ebpfasm.DWord))
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, cloop)
	lowestBit(b.Emit, stackBits)
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackWord, ebpfasm.DWord),
		ebpfasm.LSh.Imm(ebpfasm.R1, 6),
		ebpfasm.Add.Reg(ebpfasm.R1, ebpfasm.R3),
		ebpfasm.LoadMem(ebpfasm.R2, ebpfasm.R10, stackGen, ebpfasm.DWord),
		ebpfasm.Mul.Imm(ebpfasm.R2, int32(l.positions())),
		ebpfasm.Add.Reg(ebpfasm.R1, ebpfasm.R2),
		ebpfasm.StoreMem(ebpfasm.R10, stackClassKey, ebpfasm.R1, ebpfasm.DWord),
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(tableName),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackClassKey+keyLowHalf),
		ebpfasm.FnMapLookupElem.Call(),
	)
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, labelFailed)
	b.Emit(
		ebpfasm.LoadMem(regRuleID, ebpfasm.R0, 0, ebpfasm.DWord),
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 8, ebpfasm.Word),
	)
	allow, deny, pass := c.newLabel("cls_allow"), c.newLabel("cls_deny"), c.newLabel("cls_pass")
	b.Jump(ebpfasm.JEq, ebpfasm.R1, tableAllow, allow)
	b.Jump(ebpfasm.JEq, ebpfasm.R1, tableDeny, deny)
	if tierEnd != "" {
		b.Jump(ebpfasm.JEq, ebpfasm.R1, tablePass, pass)
	}
	b.Jump(ebpfasm.JNE, ebpfasm.R1, tableLog, labelFailed)
	b.Comment("log: clear the rule's other positions, flag, count and go on with the next position")
	b.Emit(
		ebpfasm.Mov.Imm(ebpfasm.R1, 1),
		ebpfasm.StoreMem(ebpfasm.R10, stackNoCache, ebpfasm.R1, ebpfasm.DWord),
		ebpfasm.LoadMem(ebpfasm.R2, ebpfasm.R0, 16, ebpfasm.DWord),
		ebpfasm.Xor.Imm(ebpfasm.R2, -1),
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackBits, ebpfasm.DWord),
		ebpfasm.And.Reg(ebpfasm.R1, ebpfasm.R2),
		ebpfasm.StoreMem(ebpfasm.R10, stackBits, ebpfasm.R1, ebpfasm.DWord),
	)
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, regState, offFlags, ebpfasm.Word),
		ebpfasm.Or.Imm32(ebpfasm.R1, int32(bpf.StateFlagLog)),
		ebpfasm.StoreMem(regState, offFlags, ebpfasm.R1, ebpfasm.Word),
	)
	b.Jump(ebpfasm.JEq, regRuleID, 0, bits)
	b.Emit(ebpfasm.StoreMem(ebpfasm.R10, stackLogID, regRuleID, ebpfasm.DWord))
	c.bumpHits(ebpfasm.R10, stackLogID)
	b.Ja(bits)
	b.Label(snext)
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackSum, ebpfasm.DWord),
		ebpfasm.Add.Imm(ebpfasm.R1, 1),
	)
	storeHalves(b.Emit, stackSum)
	b.Ja(sloop)

	// The search's outcome, R1 the table action (0: no rule decided),
	// is cached unless a log rule matched, then acted on.
	b.Label(none)
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, 0), ebpfasm.Mov.Imm(regRuleID, 0))
	b.Ja(record)
	b.Label(allow)
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, tableAllow))
	b.Ja(record)
	b.Label(deny)
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, tableDeny))
	if tierEnd != "" {
		b.Ja(record)
		b.Label(pass)
		b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, tablePass))
	}
	b.Label(record)
	b.Emit(
		ebpfasm.StoreMem(ebpfasm.R10, stackCacheVal, regRuleID, ebpfasm.DWord),
		ebpfasm.StoreMem(ebpfasm.R10, stackCacheVal+8, ebpfasm.R1, ebpfasm.DWord),
		ebpfasm.LoadMem(ebpfasm.R2, ebpfasm.R10, stackNoCache, ebpfasm.DWord),
	)
	b.Jump(ebpfasm.JNE, ebpfasm.R2, 0, act)
	b.Emit(
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(cacheMapName),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackCacheKey),
		ebpfasm.Mov.Reg(ebpfasm.R3, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R3, stackCacheVal),
		ebpfasm.Mov.Imm(ebpfasm.R4, 0), // BPF_ANY
		ebpfasm.FnMapUpdateElem.Call(),
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackCacheVal+8, ebpfasm.Word),
	)
	b.Label(act)
	doAllow, doDeny, doPass := c.newLabel("cls_do_allow"), c.newLabel("cls_do_deny"), c.newLabel("cls_do_pass")
	b.Jump(ebpfasm.JEq, ebpfasm.R1, tableAllow, doAllow)
	b.Jump(ebpfasm.JEq, ebpfasm.R1, tableDeny, doDeny)
	if tierEnd != "" {
		b.Jump(ebpfasm.JEq, ebpfasm.R1, tablePass, doPass)
	}
	b.Ja(end)
	b.Label(doAllow)
	c.groupAction(ActionAllow, true, tierEnd)
	b.Label(doDeny)
	c.groupAction(ActionDeny, true, tierEnd)
	if tierEnd != "" {
		b.Label(doPass)
		c.groupAction(ActionPass, false, tierEnd)
	}
	c.label(end)
}

// classMaps is the number of lookup maps that the classified run cl, of
// layout l, adds to the part.
func (c *compiler) classMaps(cl *classifier, l *classLayout) int {
	n := 2 // rows, table
	if !c.haveGenMap {
		n += 2 // the generation map and the outcome cache
	}
	for _, d := range cl.dims {
		if dimMapName(d.kind, func(string) string { return "x" }) != "" {
			n++
		}
	}
	if l.strideChunks() > 0 {
		n++ // the stride tables
	}
	return n
}

// omitBit is the classOmit step of dimensions of kind k.
func (k dimKind) omitBit() classOmit {
	switch k {
	case dimSrcAddr, dimDstAddr:
		return omitAddrDims
	case dimSrcSets, dimDstSets, dimSrcNamed, dimDstNamed:
		return omitMemberDims
	}
	return omitArrayDims
}

// andRows emits R0 = the AND of the u64 at byte offset R1 of every
// dimension's row.
func (c *compiler) andRows(dims int) {
	b := c.part.b
	for di := range dims {
		reg := ebpfasm.R2
		if di == 0 {
			reg = ebpfasm.R0
		}
		b.Emit(
			ebpfasm.LoadMem(reg, ebpfasm.R10, stackRowPtr-8*int16(di), ebpfasm.DWord),
			ebpfasm.Add.Reg(reg, ebpfasm.R1),
			ebpfasm.LoadMem(reg, reg, 0, ebpfasm.DWord),
		)
		if di > 0 {
			b.Emit(ebpfasm.And.Reg(ebpfasm.R0, ebpfasm.R2))
		}
	}
}

// lowestBit emits, for the bits in R0, the store of the bits less the
// lowest at off and R3 = the lowest bit's index (the number of bits below
// it).
func lowestBit(emit func(...ebpfasm.Instruction), off int16) {
	emit(
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R0),
		ebpfasm.Add.Imm(ebpfasm.R2, -1),
		ebpfasm.And.Reg(ebpfasm.R2, ebpfasm.R0),
		ebpfasm.StoreMem(ebpfasm.R10, off, ebpfasm.R2, ebpfasm.DWord),
		ebpfasm.Mov.Reg(ebpfasm.R3, ebpfasm.R0),
		ebpfasm.Xor.Reg(ebpfasm.R3, ebpfasm.R2),
		ebpfasm.Add.Imm(ebpfasm.R3, -1),
	)
	popcount(emit)
}

// storeHalves stores the u32 in R1 as the low half of the u64 at off and
// zero as its high half.
func storeHalves(emit func(...ebpfasm.Instruction), off int16) {
	emit(
		ebpfasm.StoreMem(ebpfasm.R10, off+int16(keyLowHalf), ebpfasm.R1, ebpfasm.Word),
		ebpfasm.StoreImm(ebpfasm.R10, off+4-int16(keyLowHalf), 0, ebpfasm.Word),
	)
}

// popcount emits R3 = the number of bits set in R3, with R4 and R5 as
// scratch (SWAR: no branch, so one verifier path).
func popcount(emit func(...ebpfasm.Instruction)) {
	r3, r4, r5 := ebpfasm.R3, ebpfasm.R4, ebpfasm.R5
	emit(
		ebpfasm.Mov.Reg(r4, r3), ebpfasm.RSh.Imm(r4, 1),
		ebpfasm.LoadImm(r5, 0x5555555555555555, ebpfasm.DWord), ebpfasm.And.Reg(r4, r5),
		ebpfasm.Sub.Reg(r3, r4),
		ebpfasm.LoadImm(r5, 0x3333333333333333, ebpfasm.DWord),
		ebpfasm.Mov.Reg(r4, r3), ebpfasm.RSh.Imm(r4, 2), ebpfasm.And.Reg(r4, r5),
		ebpfasm.And.Reg(r3, r5), ebpfasm.Add.Reg(r3, r4),
		ebpfasm.Mov.Reg(r4, r3), ebpfasm.RSh.Imm(r4, 4), ebpfasm.Add.Reg(r3, r4),
		ebpfasm.LoadImm(r5, 0x0f0f0f0f0f0f0f0f, ebpfasm.DWord), ebpfasm.And.Reg(r3, r5),
		ebpfasm.LoadImm(r5, 0x0101010101010101, ebpfasm.DWord), ebpfasm.Mul.Reg(r3, r5),
		ebpfasm.RSh.Imm(r3, 56),
	)
}

// dimMapName is the map of a dimension of kind k, "" for membership
// dimensions (they look up sl_ipsets).
func dimMapName(k dimKind, mapName func(string) string) string {
	switch k {
	case dimProto:
		return mapName("proto")
	case dimICMP:
		return mapName("icmp")
	case dimSrcPort:
		return mapName("sport")
	case dimDstPort:
		return mapName("dport")
	case dimSrcAddr:
		return mapName("saddr")
	case dimDstAddr:
		return mapName("daddr")
	}
	return ""
}

// loadGeneration emits, unless this part has read it already, the read
// of the generation map into stackGen (see startPart). Every classified
// run of a part uses the generation its part read first, so a packet
// sees one generation of all of them.
func (c *compiler) loadGeneration() {
	b := c.part.b
	have := c.newLabel("cls_have_gen")
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackGen, ebpfasm.DWord))
	b.Jump(ebpfasm.JNE, ebpfasm.R1, -1, have)
	b.Emit(
		ebpfasm.Mov.Imm(ebpfasm.R1, 0),
		ebpfasm.StoreMem(ebpfasm.R10, stackClassKey, ebpfasm.R1, ebpfasm.DWord),
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(genMapName),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackClassKey+keyLowHalf),
		ebpfasm.FnMapLookupElem.Call(),
	)
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, labelFailed)
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 0, ebpfasm.Word),
		ebpfasm.StoreMem(ebpfasm.R10, stackEpoch, ebpfasm.R1, ebpfasm.DWord),
		ebpfasm.And.Imm(ebpfasm.R1, genMask),
		ebpfasm.StoreMem(ebpfasm.R10, stackGen, ebpfasm.R1, ebpfasm.DWord),
	)
	c.label(have)
}

// dimRow emits R1 = the packet's row in d, relative to the dimension's
// first row, looking it up in the map name (of the generation in
// stackGen); for an IPv4 address, in its stride table in the map v4
// when l gives it one (d is dimension di of l).
func (c *compiler) dimRow(st stage, d *classDim, name, strides string, l *classLayout, di int) {
	b := c.part.b
	lookup := func() {
		c.arrayLookup(name, dimArraySize(d.kind))
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 0, ebpfasm.Word))
	}
	switch d.kind {
	case dimProto:
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, offProto, ebpfasm.Byte))
		lookup()
	case dimICMP:
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, regState, offICMPType, ebpfasm.Byte),
			ebpfasm.LSh.Imm(ebpfasm.R1, 8),
			ebpfasm.LoadMem(ebpfasm.R2, regState, offICMPCode, ebpfasm.Byte),
			ebpfasm.Or.Reg(ebpfasm.R1, ebpfasm.R2),
		)
		lookup()
	case dimSrcPort, dimDstPort:
		off := offSrcPort
		if d.kind == dimDstPort {
			off = st.dstPort
		}
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, off, ebpfasm.Half))
		lookup()
	case dimSrcAddr, dimDstAddr:
		off := offSrcAddr
		if d.kind == dimDstAddr {
			off = st.dstAddr
		}
		done := c.newLabel("cls_addr_done")
		if c.opts.omit&omitStrideTables != 0 || !c.strideRows(off, strides, l, di, done) {
			c.trieRow(off, name, done)
		}
		b.Label(done)
	default:
		addr, port := offSrcAddr, int16(-1)
		switch d.kind {
		case dimDstSets:
			addr = st.dstAddr
		case dimSrcNamed:
			port = offSrcPort
		case dimDstNamed:
			addr, port = st.dstAddr, st.dstPort
		}
		c.memberRow(d, addr, port)
		b.Emit(ebpfasm.Mov.Reg(ebpfasm.R1, regRuleID))
	}
}

// trieRow emits R1 = the row of the address at state offset off from the
// trie name (row 0 when no prefix holds it) and a jump to done.
func (c *compiler) trieRow(off int16, name, done string) {
	b := c.part.b
	miss := c.newLabel("cls_addr_miss")
	b.Emit(
		ebpfasm.StoreImm(ebpfasm.R10, stackClassKey, 32+128, ebpfasm.Word),
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackGen, ebpfasm.DWord),
		ebpfasm.StoreMem(ebpfasm.R10, stackClassKey+4, ebpfasm.R1, ebpfasm.Word),
	)
	for i := int16(0); i < 16; i += 4 {
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, regState, off+i, ebpfasm.Word),
			ebpfasm.StoreMem(ebpfasm.R10, stackClassKey+8+i, ebpfasm.R1, ebpfasm.Word),
		)
	}
	b.Emit(
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(name),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackClassKey),
		ebpfasm.FnMapLookupElem.Call(),
	)
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, miss)
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 0, ebpfasm.Word))
	b.Ja(done)
	b.Label(miss)
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, 0))
}

// arrayLookup emits R0 = the element of array map name at key R1 in the
// generation in use, perGen keys a generation. The key is within the map
// by construction; a null still fails the policy, which the verifier
// needs.
func (c *compiler) arrayLookup(name string, perGen uint32) {
	b := c.part.b
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R2, ebpfasm.R10, stackGen, ebpfasm.DWord),
		ebpfasm.Mul.Imm(ebpfasm.R2, int32(perGen)),
		ebpfasm.Add.Reg(ebpfasm.R1, ebpfasm.R2),
		ebpfasm.StoreMem(ebpfasm.R10, stackClassKey, ebpfasm.R1, ebpfasm.DWord),
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(name),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackClassKey+keyLowHalf),
		ebpfasm.FnMapLookupElem.Call(),
	)
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, labelFailed)
}

// strideRows emits, for the address at state offset off, R1 = its row
// from its family's stride table in map name and a jump to done, for the
// families of dimension di that have one; an address of a family without
// falls through, to the trie lookup. It reports whether both families have
// a table (nothing falls through).
func (c *compiler) strideRows(off int16, name string, l *classLayout, di int, done string) bool {
	v4, v6 := l.v4Cap[di] > 0, l.v6Cap[di] > 0
	if !v4 && !v6 {
		return false
	}
	b := c.part.b
	other := c.newLabel("cls_addr_family")
	// R1 = words 0-1 | (word 2 ^ the IPv4-mapped marker): 0 for IPv4.
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, regState, off, ebpfasm.DWord),
		ebpfasm.LoadMem(ebpfasm.R2, regState, off+8, ebpfasm.Word),
		ebpfasm.Xor.Imm32(ebpfasm.R2, mappedMarker),
		ebpfasm.Or.Reg(ebpfasm.R1, ebpfasm.R2),
	)
	if v4 {
		b.Jump(ebpfasm.JNE, ebpfasm.R1, 0, other)
		c.strideWalk(off+12, 4, name, l.v4Base(di), l.strideChunks(), done)
	} else {
		b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, other)
	}
	if v6 {
		if v4 {
			b.Label(other)
		}
		c.strideWalk(off, 16, name, l.v6Base(di), l.strideChunks(), done)
	}
	if !v4 || !v6 {
		b.Label(other)
	}
	return v4 && v6
}

// strideWalk emits R1 = the row that the table at chunk base of map name
// (chunks a generation) gives the n address bytes at state offset off,
// and a jump to done. Each byte is one array lookup, which the verifier
// inlines: chunk*256 + byte, in the generation's chunks.
func (c *compiler) strideWalk(off int16, n int16, name string, base, chunks uint32, done string) {
	b := c.part.b
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, int32(base)))
	for level := int16(0); level < n; level++ {
		b.Emit(
			ebpfasm.LSh.Imm(ebpfasm.R1, 8),
			ebpfasm.LoadMem(ebpfasm.R2, regState, off+level, ebpfasm.Byte),
			ebpfasm.Add.Reg(ebpfasm.R1, ebpfasm.R2),
		)
		c.arrayLookup(name, chunks*256)
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 0, ebpfasm.Word))
		if level < n-1 {
			b.Jump(ebpfasm.JLT, ebpfasm.R1, strideFlag, done)
			b.Emit(ebpfasm.And.Imm32(ebpfasm.R1, strideFlag-1))
		}
	}
	b.Ja(done)
}

// memberRow emits regRuleID = the membership vector of d's sets (bit i:
// the address at addrOff, with the port at portOff and the protocol when
// portOff >= 0, is in d.sets[i]). regRuleID is free until the search and
// kept across the helper calls (R7 is regFamily, which the lookups read).
// One sl_ipsetm lookup finds every set the address is in (package
// ipsets' memberships); each set is then its slot's ID, or, in a slot the
// entry's sets share, its own sl_ipsets lookup. The generation of
// sl_ipsetm is read once per part, so every membership dimension of the
// part sees one whole change of set contents.
func (c *compiler) memberRow(d *classDim, addrOff, portOff int16) {
	b := c.part.b
	have := c.newLabel("cls_have_setgen")
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackSetGen, ebpfasm.DWord))
	b.Jump(ebpfasm.JNE, ebpfasm.R1, -1, have)
	b.Emit(
		ebpfasm.Mov.Imm(ebpfasm.R1, 0),
		ebpfasm.StoreMem(ebpfasm.R10, stackClassKey, ebpfasm.R1, ebpfasm.DWord),
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(bpf.MapIPSetGen),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, stackClassKey+keyLowHalf),
		ebpfasm.FnMapLookupElem.Call(),
	)
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, labelFailed)
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 0, ebpfasm.Word),
		ebpfasm.StoreMem(ebpfasm.R10, stackSetGen, ebpfasm.R1, ebpfasm.DWord),
	)
	c.label(have)

	// The key, in the IP set key's place: whole 8-byte slots first, so
	// that the verifier sees each slot's liveness end (see ipsetLookup).
	const base = stackIPSetKey
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, 0))
	for off := int16(0); off < memberKeySize; off += 8 {
		b.Emit(ebpfasm.StoreMem(ebpfasm.R10, base+off, ebpfasm.R1, ebpfasm.DWord))
	}
	b.Emit(
		ebpfasm.StoreImm(ebpfasm.R10, base, int64(ipsets.MemberLookupBits), ebpfasm.Word),
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackSetGen, ebpfasm.DWord),
		ebpfasm.StoreMem(ebpfasm.R10, base+memberKeyGen, ebpfasm.R1, ebpfasm.Word),
	)
	c.storeFamilyAt(addrOff, base+memberKeyFamily)
	for i := int16(0); i < 16; i += 4 {
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, regState, addrOff+i, ebpfasm.Word),
			ebpfasm.StoreMem(ebpfasm.R10, base+memberKeyAddr+i, ebpfasm.R1, ebpfasm.Word),
		)
	}
	if portOff >= 0 {
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, regState, portOff, ebpfasm.Half),
			ebpfasm.StoreMem(ebpfasm.R10, base+memberKeyPort, ebpfasm.R1, ebpfasm.Half),
			ebpfasm.LoadMem(ebpfasm.R1, regState, offProto, ebpfasm.Byte),
			ebpfasm.StoreMem(ebpfasm.R10, base+memberKeyProto, ebpfasm.R1, ebpfasm.Byte),
		)
	}
	// The IP set key's place now holds another key.
	c.part.key.valid = false
	done := c.newLabel("cls_members_done")
	b.Emit(
		ebpfasm.Mov.Imm(regRuleID, 0),
		ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(bpf.MapIPSetMembers),
		ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
		ebpfasm.Add.Imm(ebpfasm.R2, base),
		ebpfasm.FnMapLookupElem.Call(),
	)
	// No entry: the address is in none of the sets.
	b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, done)
	b.Emit(ebpfasm.StoreMem(ebpfasm.R10, stackSetEntry, ebpfasm.R0, ebpfasm.DWord))
	for i, id := range d.sets {
		slot := id % uint64(ipsets.MemberSlots)
		bit := int32(uint32(1) << slot)
		member, notMember, shared := c.newLabel("cls_member"), c.newLabel("cls_not_member"), c.newLabel("cls_shared_slot")
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R0, ebpfasm.R10, stackSetEntry, ebpfasm.DWord),
			ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, memberValueMember, ebpfasm.Word),
			ebpfasm.And.Imm32(ebpfasm.R1, bit),
		)
		b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, shared)
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, memberValueIDs+8*int16(slot), ebpfasm.DWord),
			ebpfasm.LoadImm(ebpfasm.R2, int64(id), ebpfasm.DWord),
		)
		b.JumpReg(ebpfasm.JNE, ebpfasm.R1, ebpfasm.R2, notMember)
		b.Ja(member)
		c.label(shared)
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, memberValueShared, ebpfasm.Word),
			ebpfasm.And.Imm32(ebpfasm.R1, bit),
		)
		b.Jump(ebpfasm.JEq, ebpfasm.R1, 0, notMember)
		// Whatever the other paths left in the IP set key's place, this
		// lookup writes its whole key, and leaves it to no later one.
		c.part.key.valid = false
		c.ipsetLookup(id, addrOff, portOff, ebpfasm.JEq, notMember)
		c.part.key.valid = false
		c.label(member)
		b.Emit(ebpfasm.Or.Imm(regRuleID, 1<<i))
		c.label(notMember)
	}
	c.label(done)
}

func (c *compiler) addLookupMap(name string, lm LookupMap) {
	lm.Name = name
	c.out.LookupMaps = append(c.out.LookupMaps, lm)
	c.part.lookupMaps++
}

func tableAction(a Action) uint32 {
	switch a {
	case ActionAllow:
		return tableAllow
	case ActionDeny:
		return tableDeny
	case ActionPass:
		return tablePass
	}
	return tableLog
}

// shortName fits a map name in the kernel's 15 characters.
func shortName(name string) string {
	const prefix = "polprog_"
	if len(name) > len(prefix) && name[:len(prefix)] == prefix {
		name = "slp_" + name[len(prefix):]
	}
	if len(name) > 15 {
		name = name[:15]
	}
	return name
}
