package polprog

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"slices"

	"github.com/cilium/ebpf"
	ebpfasm "github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
)

// Stack slots of the classifier (offsets from R10), below those in part.go.
const (
	stackClassKey = -80  // u32 key, or the 20-byte LPM key of an address
	stackWord     = -88  // u64 index of the bitmap word being searched
	stackBits     = -96  // u64 bits of that word not yet handled
	stackSum      = -104 // u64 index of the summary word being searched
	stackCand     = -112 // u64 words of that summary not yet searched
	stackRowPtr   = -120
	// stackRowPtr - 8*d holds dimension d's row pointer.
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
// prefixlen and the 16-byte address (IPv4 as ::ffff:a.b.c.d).
const lpmAddrKeySize = 20

// batchContents are a lookup map's entries, written with one batch update
// after the map is created.
type batchContents struct {
	keys, values any
}

// classifierCode emits the search of cl: one row per dimension, then the
// words of the rows ANDed in a loop; the positions set are handled in
// order, and a run that nothing decided falls through.
func (c *compiler) classifierCode(st stage, cl *classifier, tierEnd string) {
	b := c.part.b
	id := len(c.out.LookupMaps)
	mapName := func(s string) string { return fmt.Sprintf("polprog_cls%d_%s", id, s) }
	first, last := cl.rules[0], cl.rules[len(cl.rules)-1]
	b.Comment(fmt.Sprintf("rules %s to %s (%d, %d positions) classified by %d dimensions",
		first.where, last.where, len(cl.rules), len(cl.pos), len(cl.dims)))
	c.part.key.valid = false
	rowsName, tableName := mapName("rows"), mapName("table")
	c.addLookupMap(rowsName, cl.rowsSpec(id))
	c.addLookupMap(tableName, cl.tableSpec(id))

	for di, d := range cl.dims {
		c.dimRow(st, d, mapName)
		b.Emit(
			ebpfasm.Add.Imm32(ebpfasm.R1, int32(d.base)),
			ebpfasm.StoreMem(ebpfasm.R10, stackClassKey, ebpfasm.R1, ebpfasm.DWord),
			ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(rowsName),
			ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
			ebpfasm.Add.Imm(ebpfasm.R2, stackClassKey+keyLowHalf),
			ebpfasm.FnMapLookupElem.Call(),
		)
		b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, labelFailed)
		b.Emit(ebpfasm.StoreMem(ebpfasm.R10, stackRowPtr-8*int16(di), ebpfasm.R0, ebpfasm.DWord))
	}

	// Each row starts with summary words (bit w: word w of the row is not
	// zero). The search ANDs the summaries, and for each word set in every
	// one ANDs the rows' words; positions set in all are handled in order.
	// Indexes are stored as two u32 halves and loaded as a u64, which the
	// verifier sees as an unknown number: bounded by a check, it is the
	// same in every iteration, so the verifier checks each loop once
	// instead of once per word (each with its hits).
	sloop, snext := c.newLabel("cls_summary"), c.newLabel("cls_summary_next")
	cloop, bits := c.newLabel("cls_word"), c.newLabel("cls_bits")
	end := c.newLabel("cls_end")
	sum := int32(cl.summaryWords())
	b.Emit(ebpfasm.Mov.Imm(ebpfasm.R1, 0))
	storeHalves(b.Emit, stackSum)
	b.Label(sloop)
	b.MayGoto(labelFailed)
	b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackSum, ebpfasm.DWord))
	b.Jump(ebpfasm.JGE, ebpfasm.R1, sum, end)
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
	b.Jump(ebpfasm.JGE, ebpfasm.R1, int32(cl.words), labelFailed)
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
	b.Label(allow)
	c.groupAction(ActionAllow, true, tierEnd)
	b.Label(deny)
	c.groupAction(ActionDeny, true, tierEnd)
	if tierEnd != "" {
		b.Label(pass)
		c.groupAction(ActionPass, false, tierEnd)
	}
	b.Label(snext)
	b.Emit(
		ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, stackSum, ebpfasm.DWord),
		ebpfasm.Add.Imm(ebpfasm.R1, 1),
	)
	storeHalves(b.Emit, stackSum)
	b.Ja(sloop)
	c.label(end)
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

// dimRow emits R1 = the packet's row in d, relative to d.base.
func (c *compiler) dimRow(st stage, d *classDim, mapName func(string) string) {
	b := c.part.b
	lookup := func(name string, lm LookupMap) {
		c.addLookupMap(name, lm)
		b.Emit(
			ebpfasm.StoreMem(ebpfasm.R10, stackClassKey, ebpfasm.R1, ebpfasm.DWord),
			ebpfasm.LoadMapPtr(ebpfasm.R1, 0).WithReference(name),
			ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R10),
			ebpfasm.Add.Imm(ebpfasm.R2, stackClassKey+keyLowHalf),
			ebpfasm.FnMapLookupElem.Call(),
		)
		b.Jump(ebpfasm.JEq, ebpfasm.R0, 0, labelFailed)
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R0, 0, ebpfasm.Word))
	}
	switch d.kind {
	case dimProto:
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, offProto, ebpfasm.Byte))
		lookup(mapName("proto"), d.arraySpec(mapName("proto"), 256))
	case dimICMP:
		b.Emit(
			ebpfasm.LoadMem(ebpfasm.R1, regState, offICMPType, ebpfasm.Byte),
			ebpfasm.LSh.Imm(ebpfasm.R1, 8),
			ebpfasm.LoadMem(ebpfasm.R2, regState, offICMPCode, ebpfasm.Byte),
			ebpfasm.Or.Reg(ebpfasm.R1, ebpfasm.R2),
		)
		lookup(mapName("icmp"), d.arraySpec(mapName("icmp"), 1<<16))
	case dimSrcPort, dimDstPort:
		off, name := offSrcPort, mapName("sport")
		if d.kind == dimDstPort {
			off, name = st.dstPort, mapName("dport")
		}
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, off, ebpfasm.Half))
		lookup(name, d.arraySpec(name, 1<<16))
	case dimSrcAddr, dimDstAddr:
		off, name := offSrcAddr, mapName("saddr")
		if d.kind == dimDstAddr {
			off, name = st.dstAddr, mapName("daddr")
		}
		c.addLookupMap(name, d.lpmSpec(name))
		miss, done := c.newLabel("cls_addr_miss"), c.newLabel("cls_addr_done")
		b.Emit(ebpfasm.StoreImm(ebpfasm.R10, stackClassKey, 128, ebpfasm.Word))
		for i := int16(0); i < 16; i += 4 {
			b.Emit(
				ebpfasm.LoadMem(ebpfasm.R1, regState, off+i, ebpfasm.Word),
				ebpfasm.StoreMem(ebpfasm.R10, stackClassKey+4+i, ebpfasm.R1, ebpfasm.Word),
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
		b.Label(done)
	default:
		// Membership vector of the sets in R7 (kept across the lookups).
		addr, port := offSrcAddr, int16(-1)
		switch d.kind {
		case dimDstSets:
			addr = st.dstAddr
		case dimSrcNamed:
			port = offSrcPort
		case dimDstNamed:
			addr, port = st.dstAddr, st.dstPort
		}
		b.Emit(ebpfasm.Mov.Imm(ebpfasm.R7, 0))
		for i, id := range d.sets {
			skip := c.newLabel("cls_not_member")
			c.ipsetLookup(id, addr, port, ebpfasm.JEq, skip)
			b.Emit(ebpfasm.Or.Imm(ebpfasm.R7, 1<<i))
			c.label(skip)
		}
		b.Emit(ebpfasm.Mov.Reg(ebpfasm.R1, ebpfasm.R7))
	}
}

func (c *compiler) addLookupMap(name string, lm LookupMap) {
	lm.Name = name
	c.out.LookupMaps = append(c.out.LookupMaps, lm)
	c.part.lookupMaps++
}

// arraySpec is an array dimension's index: key to relative row, entries
// absent from d.index being 0.
func (d *classDim) arraySpec(name string, entries uint32) LookupMap {
	keys := make([]uint32, 0, len(d.index))
	for k := range d.index {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	values := make([]uint32, len(keys))
	for i, k := range keys {
		values[i] = d.index[k]
	}
	return withBatch(&ebpf.MapSpec{Name: shortName(name), Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: entries},
		keys, values)
}

// lpmSpec is an address dimension's trie: each prefix (IPv4 under
// ::ffff:0:0/96) to its relative row.
func (d *classDim) lpmSpec(name string) LookupMap {
	keys := make([][lpmAddrKeySize]byte, len(d.prefix))
	values := make([]uint32, len(d.prefix))
	for i, pr := range d.prefix {
		bits := pr.p.Bits()
		if pr.p.Addr().Is4() {
			bits += 96
		}
		binary.NativeEndian.PutUint32(keys[i][:4], uint32(bits))
		a := pr.p.Addr().As16()
		copy(keys[i][4:], a[:])
		values[i] = pr.row
	}
	return withBatch(&ebpf.MapSpec{Name: shortName(name), Type: ebpf.LPMTrie, KeySize: lpmAddrKeySize, ValueSize: 4,
		MaxEntries: uint32(max(1, len(keys))), Flags: unix.BPF_F_NO_PREALLOC}, keys, values)
}

// summaryWords is the number of summary words that start each row.
func (cl *classifier) summaryWords() int { return (cl.words + 63) / 64 }

// rowsSpec is the array of every dimension's rows: each row's summary
// words (bit w set when word w is not zero), then its words.
func (cl *classifier) rowsSpec(id int) LookupMap {
	n := 0
	for _, d := range cl.dims {
		n += len(d.rows)
	}
	sum := cl.summaryWords()
	size := (sum + cl.words) * 8
	values := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), n, n)
	keys := make([]uint32, n)
	i := 0
	buf := make([]byte, size)
	for _, d := range cl.dims {
		for _, row := range d.rows {
			clear(buf)
			for w, v := range row {
				binary.NativeEndian.PutUint64(buf[8*(sum+w):], v)
				if v != 0 {
					s := buf[8*(w/64):]
					binary.NativeEndian.PutUint64(s, binary.NativeEndian.Uint64(s)|1<<(w%64))
				}
			}
			reflect.Copy(values.Index(i), reflect.ValueOf(buf))
			keys[i] = uint32(i)
			i++
		}
	}
	return withBatch(&ebpf.MapSpec{Name: fmt.Sprintf("slp_cls%d_rows", id), Type: ebpf.Array, KeySize: 4,
		ValueSize: uint32(size), MaxEntries: uint32(n)}, keys, values.Interface())
}

// tableSpec is the array from position to rule ID and action.
func (cl *classifier) tableSpec(id int) LookupMap {
	var keys []uint32
	var values [][tableValueSize]byte
	for i, p := range cl.pos {
		if p.r == &padRule {
			continue
		}
		var v [tableValueSize]byte
		binary.NativeEndian.PutUint64(v[:8], p.r.id)
		binary.NativeEndian.PutUint32(v[8:], tableAction(p.r.action))
		if p.r.action == ActionLog {
			// The rule's other positions, in this word (see padRule).
			var others uint64
			for j := i - i%64; j < i-i%64+64 && j < len(cl.pos); j++ {
				if j != i && cl.pos[j].r == p.r {
					others |= 1 << (j % 64)
				}
			}
			binary.NativeEndian.PutUint64(v[16:], others)
		}
		keys = append(keys, uint32(i))
		values = append(values, v)
	}
	return withBatch(&ebpf.MapSpec{Name: fmt.Sprintf("slp_cls%d_tbl", id), Type: ebpf.Array, KeySize: 4,
		ValueSize: tableValueSize, MaxEntries: uint32(cl.words * 64)}, keys, values)
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

func withBatch(spec *ebpf.MapSpec, keys, values any) LookupMap {
	if reflect.ValueOf(keys).Len() == 0 {
		return LookupMap{Spec: spec}
	}
	return LookupMap{Spec: spec, batch: &batchContents{keys: keys, values: values}}
}
