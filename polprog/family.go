package polprog

import (
	"encoding/binary"
	"net/netip"
	"slices"

	ebpfasm "github.com/cilium/ebpf/asm"

	"github.com/sluicenet/sluice/bpf"
)

// A CIDR or IP set check compares an address with its family, as Evaluate
// does with netip: an IPv4 CIDR never contains an IPv6 address and the
// reverse, whatever their low bits. The state holds IPv4 IPv4-mapped, so an
// address is IPv4 when its first 96 bits are ::ffff:0:0/96 (the datapath
// drops IPv6 packets that carry such addresses; Evaluate unmaps them).
//
// Each part's prologue classifies the addresses its rules check, once:
//
//   - Into bits of regFamily, so that an IPv6 CIDR check or an IP set key
//     learns the family from one register.
//   - Into a tagged word on the stack that IPv4 CIDR checks compare with
//     64-bit instructions: for an IPv4 address the address in host order,
//     sign-extended; for an IPv6 one 1<<32. A check masks it with the
//     sign-extended host-order netmask, whose upper half is all ones for
//     any prefix of 1 to 31 bits, and compares it with the sign-extended
//     network: an IPv4 address compares as its 32 bits do, and an IPv6 one,
//     whose upper half stays 1 where every network's is 0 or all ones,
//     never matches. An IPv4 check then costs what it did before IPv6, with
//     no jump for the family.

// regFamily holds the family bits of the checked addresses (familyBits).
const regFamily = ebpfasm.R7

// familyBits returns the regFamily bits that say the address at state
// offset off is IPv6 and IPv4, and the stack slot of its tagged word.
func familyBits(off int16) (v6, v4 int32, tagged int16) {
	switch off {
	case offDstAddr:
		return 1 << 2, 1 << 3, stackTaggedDst
	case offPreNATDstAddr:
		return 1 << 4, 1 << 5, stackTaggedPreNAT
	}
	return 1 << 0, 1 << 1, stackTaggedSrc // offSrcAddr
}

// mappedMarker is word 2 of an IPv4-mapped address (bytes 00 00 ff ff) as
// a 32-bit load reads it on this host.
var mappedMarker = int32(binary.NativeEndian.Uint32([]byte{0, 0, 0xff, 0xff}))

// familyAddrs returns the state offsets of the addresses that p's rules
// check by CIDR or IP set, which the prologues classify.
func familyAddrs(p *program) []int16 {
	set := map[int16]bool{}
	scan := func(rs []rule, dst int16) {
		for i := range rs {
			r := &rs[i]
			if len(r.srcNets)+len(r.notSrcNets)+len(r.srcSets)+len(r.notSrcSets)+len(r.srcNamed)+len(r.notSrcNamed) > 0 {
				set[offSrcAddr] = true
			}
			if len(r.dstNets)+len(r.notDstNets)+len(r.dstSets)+len(r.notDstSets)+len(r.dstNamed)+len(r.notDstNamed) > 0 {
				set[dst] = true
			}
		}
	}
	for _, ts := range []struct {
		tiers []tier
		dst   int16
	}{{p.tiers, offDstAddr}, {p.forward, offDstAddr}, {p.preDNAT, offPreNATDstAddr}} {
		for i := range ts.tiers {
			scan(ts.tiers[i].rules, ts.dst)
		}
	}
	scan(p.profiles, offDstAddr)
	var out []int16
	for off := range set {
		out = append(out, off)
	}
	slices.Sort(out)
	return out
}

// familyPrologue sets regFamily and the tagged words of the addresses in
// c.familyAddrs. It takes no jump, so that it costs a part none of its
// verifier budget of branches and mixed traffic no mispredictions.
func (c *compiler) familyPrologue() {
	if len(c.familyAddrs) == 0 {
		return
	}
	b := c.part.b
	b.Comment("classify the checked addresses: IPv4-mapped or IPv6, without a branch")
	b.Emit(ebpfasm.Mov.Imm(regFamily, 0))
	for _, off := range c.familyAddrs {
		v6, v4, tagged := familyBits(off)
		b.Emit(
			// R1 = 1 if the first 96 bits are not ::ffff:0:0/96, else 0:
			// (x | -x) >> 63 of x = words 0-1 | (word 2 ^ marker).
			ebpfasm.LoadMem(ebpfasm.R1, regState, off, ebpfasm.DWord),
			ebpfasm.LoadMem(ebpfasm.R2, regState, off+8, ebpfasm.Word),
			ebpfasm.Xor.Imm32(ebpfasm.R2, mappedMarker),
			ebpfasm.Or.Reg(ebpfasm.R1, ebpfasm.R2),
			ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R1),
			ebpfasm.Neg.Imm(ebpfasm.R2, 0),
			ebpfasm.Or.Reg(ebpfasm.R1, ebpfasm.R2),
			ebpfasm.RSh.Imm(ebpfasm.R1, 63),
			// R2 = the IPv4 word in host order, sign-extended.
			ebpfasm.LoadMem(ebpfasm.R2, regState, off+12, ebpfasm.Word),
			ebpfasm.HostTo(ebpfasm.BE, ebpfasm.R2, ebpfasm.Word),
			ebpfasm.LSh.Imm(ebpfasm.R2, 32),
			ebpfasm.ArSh.Imm(ebpfasm.R2, 32),
			// tagged = R2, or 1<<32 where R1 is 1: R2 ^ ((R2 ^ 1<<32) & -R1).
			ebpfasm.Mov.Reg(ebpfasm.R3, ebpfasm.R1),
			ebpfasm.Neg.Imm(ebpfasm.R3, 0),
			ebpfasm.Mov.Imm(ebpfasm.R4, 1),
			ebpfasm.LSh.Imm(ebpfasm.R4, 32),
			ebpfasm.Xor.Reg(ebpfasm.R4, ebpfasm.R2),
			ebpfasm.And.Reg(ebpfasm.R4, ebpfasm.R3),
			ebpfasm.Xor.Reg(ebpfasm.R2, ebpfasm.R4),
			ebpfasm.StoreMem(ebpfasm.R10, tagged, ebpfasm.R2, ebpfasm.DWord),
			// regFamily |= R1 ? v6 : v4, as v4 + R1*(v6-v4).
			ebpfasm.Mul.Imm(ebpfasm.R1, v6-v4),
			ebpfasm.Add.Imm(ebpfasm.R1, v4),
			ebpfasm.Or.Reg(regFamily, ebpfasm.R1),
		)
	}
}

// nets checks the address at addrOff against CIDRs of either family
// (ORed). Without negate the address must be in one of them, with negate
// in none.
func (c *compiler) nets(addrOff int16, nets []netip.Prefix, fail string, negate bool) {
	if len(nets) == 0 {
		return
	}
	b := c.part.b
	_, v4bit, tagged := familyBits(addrOff)
	var v4, v6 []netip.Prefix
	for _, n := range nets {
		if n.Addr().Is4() {
			v4 = append(v4, n)
		} else {
			v6 = append(v6, n)
		}
	}
	if len(nets) == 1 && !negate {
		if len(v4) == 1 {
			b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, tagged, ebpfasm.DWord))
			c.netCompare(addrOff, v4[0], ebpfasm.JNE, fail)
			return
		}
		c.familyJump(v4bit, fail)
		c.net6Compare(addrOff, v6[0], fail, "")
		return
	}
	// in is where an address in the list goes, out where one in none.
	in, out := fail, c.newLabel("net_out")
	if !negate {
		in, out = c.newLabel("net_ok"), fail
	}
	if len(v4) > 0 {
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, ebpfasm.R10, tagged, ebpfasm.DWord))
		for _, n := range v4 {
			c.netCompare(addrOff, n, ebpfasm.JEq, in)
		}
	}
	if len(v6) > 0 {
		c.familyJump(v4bit, out)
		for _, n := range v6 {
			next := c.newLabel("net6_next")
			c.net6Compare(addrOff, n, next, in)
			c.label(next)
		}
	}
	if negate {
		c.label(out)
		return
	}
	b.Ja(fail)
	c.label(in)
}

// familyJump jumps to label when regFamily has bit set. It tests a copy
// (R3, masked): a JSET of regFamily itself would leave the bit known in
// regFamily on both branches, and a later test of it decided, which the
// verifier must then keep precise, so that paths through different
// families' checks could never be pruned at the rules' join points.
func (c *compiler) familyJump(bit int32, label string) {
	b := c.part.b
	b.Emit(ebpfasm.Mov.Reg(ebpfasm.R3, regFamily), ebpfasm.And.Imm(ebpfasm.R3, bit))
	b.Jump(ebpfasm.JNE, ebpfasm.R3, 0, label)
}

// netCompare jumps to label when (the address in R1, a tagged word, is in
// IPv4 network n) is (op == JEq). A /0 network needs the family alone.
func (c *compiler) netCompare(addrOff int16, n netip.Prefix, op ebpfasm.JumpOp, label string) {
	b := c.part.b
	if n.Bits() == 0 {
		v6bit, v4bit, _ := familyBits(addrOff)
		if op == ebpfasm.JNE {
			c.familyJump(v6bit, label)
		} else {
			c.familyJump(v4bit, label)
		}
		return
	}
	a := n.Addr().As4()
	network := int32(binary.BigEndian.Uint32(a[:]))
	// A /32 is masked too (with all ones): R1 is a fill of the tagged
	// word, which the verifier links to the stack slot, so a compare of R1
	// itself would teach the slot the network on one branch, and paths
	// that learned different networks would never be pruned. The AND
	// gives R2 a value of its own.
	reg := ebpfasm.R2
	mask := int32(uint32(0xffffffff) << (32 - n.Bits()))
	b.Emit(ebpfasm.Mov.Reg(ebpfasm.R2, ebpfasm.R1), ebpfasm.And.Imm(ebpfasm.R2, mask))
	if op == ebpfasm.JNE {
		c.mismatch(false, op, reg, network, label)
		return
	}
	b.Jump(op, reg, network, label)
}

// net6Compare compares the IPv6 address at addrOff with n word by word,
// jumping to differs at the first word that differs; when every word
// matched it jumps to match, or falls through when match is "".
func (c *compiler) net6Compare(addrOff int16, n netip.Prefix, differs, match string) {
	b := c.part.b
	a := n.Addr().As16()
	for w := 0; w < 4; w++ {
		bits := min(max(n.Bits()-32*w, 0), 32)
		if bits == 0 {
			break
		}
		word := int32(binary.NativeEndian.Uint32(a[4*w:]))
		b.Emit(ebpfasm.LoadMem(ebpfasm.R1, regState, addrOff+int16(4*w), ebpfasm.Word))
		if bits < 32 {
			var mb [4]byte
			binary.BigEndian.PutUint32(mb[:], uint32(0xffffffff)<<(32-bits))
			b.Emit(ebpfasm.And.Imm32(ebpfasm.R1, int32(binary.NativeEndian.Uint32(mb[:]))))
		}
		b.Jump32(ebpfasm.JNE, ebpfasm.R1, word, differs)
	}
	if match != "" {
		b.Ja(match)
	}
}

// storeKeyFamily writes the family of the address at addrOff into the IP
// set key on the stack: SL_FAMILY_IPV4 when its IPv4 bit is set, else
// SL_FAMILY_IPV6, without a branch (6 - 2*bit).
func (c *compiler) storeKeyFamily(addrOff int16) {
	c.storeFamilyAt(addrOff, stackIPSetKey+ipsetKeyFamily)
}

// storeFamilyAt stores at stack offset off the family of the address at
// addrOff, as an enum sl_family.
func (c *compiler) storeFamilyAt(addrOff, off int16) {
	_, v4bit, _ := familyBits(addrOff)
	shift := int32(0)
	for v4bit>>shift != 1 {
		shift++
	}
	c.part.b.Emit(
		ebpfasm.Mov.Reg(ebpfasm.R1, regFamily),
		ebpfasm.RSh.Imm(ebpfasm.R1, shift),
		ebpfasm.And.Imm(ebpfasm.R1, 1),
		ebpfasm.Mul.Imm(ebpfasm.R1, int32(bpf.FamilyIPv6)-int32(bpf.FamilyIPv4)),
		ebpfasm.Mov.Imm(ebpfasm.R2, int32(bpf.FamilyIPv6)),
		ebpfasm.Sub.Reg(ebpfasm.R2, ebpfasm.R1),
		ebpfasm.StoreMem(ebpfasm.R10, off, ebpfasm.R2, ebpfasm.Word),
	)
}
