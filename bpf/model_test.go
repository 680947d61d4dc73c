package bpf

import "encoding/binary"

// modelParse is the Go reference model of the datapath's parser
// (include/sluice/parse.h): for a frame arriving at an interface with
// flags, it returns the reason that decides the frame before conntrack and
// policy, or decided false when the frame parses as IPv4 and conntrack and
// policy decide it.
func modelParse(frame []byte, flags IfaceFlags) (reason Reason, decided bool) {
	const eth = 14
	if len(frame) < eth {
		return ReasonDroppedShort, true
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
	case 0x86dd:
		if flags&IfacePassIPv6 != 0 {
			return ReasonIPv6Passed, true
		}
		return ReasonDroppedIPv6, true
	default:
		if flags&IfaceDropNonIP != 0 {
			return ReasonDroppedNonIP, true
		}
		return ReasonNonIPPassed, true
	}
	ip := frame[eth:]
	if len(ip) < 20 {
		return ReasonDroppedShort, true
	}
	if ip[0]>>4 != 4 {
		return ReasonDroppedBadVersion, true
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 {
		return ReasonDroppedBadIHL, true
	}
	if ihl > len(ip) {
		return ReasonDroppedShort, true
	}
	totLen := int(binary.BigEndian.Uint16(ip[2:4]))
	if totLen < ihl || totLen > len(ip) {
		return ReasonDroppedBadLen, true
	}
	frag := binary.BigEndian.Uint16(ip[6:8])
	moreFragments, offset := frag&0x2000 != 0, frag&0x1fff
	if moreFragments || offset != 0 {
		pass := flags&IfacePassFragments != 0
		if pass && offset != 0 {
			return ReasonFragmentPassed, true
		}
		if !pass {
			return ReasonDroppedFragment, true
		}
	}
	l4 := ip[ihl:totLen]
	switch ip[9] {
	case 6: // TCP
		if len(l4) < 20 {
			return ReasonDroppedShort, true
		}
		if doff := int(l4[12]>>4) * 4; doff < 20 || doff > len(l4) {
			return ReasonDroppedBadTCPDoff, true
		}
	case 17, 1: // UDP, ICMP
		if len(l4) < 8 {
			return ReasonDroppedShort, true
		}
	}
	return 0, false
}

// verdictOf is the TC action a reason stands for.
func verdictOf(r Reason) uint32 {
	if r < ReasonDroppedByPolicy {
		return tcActOK
	}
	return tcActShot
}
