package datapath

import (
	"encoding/binary"

	"github.com/sluicenet/sluice/bpf"
)

// linkEtherTypes are the EtherTypes that pass unparsed: link protocols
// that cannot carry IP (parse.h, sl_ethertype_is_link).
var linkEtherTypes = map[uint16]bool{
	0x0806: true, // ARP
	0x8035: true, // RARP
	0x8809: true, // slow protocols (LACP)
	0x888e: true, // 802.1X
	0x88cc: true, // LLDP
	0x88f7: true, // PTP
}

// vlanTPIDs are the tag protocol identifiers the datapath drops.
var vlanTPIDs = map[uint16]bool{0x8100: true, 0x88a8: true, 0x9100: true}

// modelParse is the Go reference model of the datapath's parser
// (include/sluice/parse.h): for a frame arriving at an interface with
// flags, it returns the reason that decides the frame before conntrack and
// policy, or decided false when the frame parses as IP and conntrack and
// policy decide it; IPv6 at an interface with bpf.IfaceEnforceIPv6 is
// modelParse6's, as seen at lo's TC ingress hook. (A VLAN tag the
// receive path moved into the skb is not in the frame; the real-traffic
// tests cover it.)
func modelParse(frame []byte, flags bpf.IfaceFlags) (reason bpf.Reason, decided bool) {
	const eth = 14
	if len(frame) < eth {
		return bpf.ReasonDroppedShort, true
	}
	etherType := binary.BigEndian.Uint16(frame[12:14])
	switch {
	case vlanTPIDs[etherType]:
		return bpf.ReasonDroppedVLAN, true
	case etherType == 0x0800:
	case etherType == 0x86dd && flags&bpf.IfaceEnforceIPv6 != 0:
		return modelParse6(frame[eth:], flags, flags&bpf.IfaceWorkload != 0)
	case etherType == 0x86dd:
		if flags&bpf.IfacePassIPv6 != 0 {
			return bpf.ReasonIPv6Passed, true
		}
		return bpf.ReasonDroppedIPv6, true
	case linkEtherTypes[etherType]:
		if flags&bpf.IfaceDropNonIP != 0 {
			return bpf.ReasonDroppedNonIP, true
		}
		return bpf.ReasonNonIPPassed, true
	default:
		return bpf.ReasonDroppedEtherType, true
	}
	ip := frame[eth:]
	if len(ip) < 20 {
		return bpf.ReasonDroppedShort, true
	}
	if ip[0]>>4 != 4 {
		return bpf.ReasonDroppedBadVersion, true
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 {
		return bpf.ReasonDroppedBadIHL, true
	}
	if ihl > len(ip) {
		return bpf.ReasonDroppedShort, true
	}
	totLen := int(binary.BigEndian.Uint16(ip[2:4]))
	if totLen < ihl || totLen > len(ip) {
		return bpf.ReasonDroppedBadLen, true
	}
	frag := binary.BigEndian.Uint16(ip[6:8])
	moreFragments, offset := frag&0x2000 != 0, frag&0x1fff
	if moreFragments || offset != 0 {
		pass := flags&bpf.IfacePassFragments != 0
		if pass && offset != 0 {
			return bpf.ReasonFragmentPassed, true
		}
		if !pass {
			return bpf.ReasonDroppedFragment, true
		}
	}
	return modelL4(ip[9], ip[ihl:totLen])
}

// verdictOf is the TC action a reason stands for.
func verdictOf(r bpf.Reason) uint32 {
	if r < bpf.ReasonFirstDrop {
		return tcActOK
	}
	return tcActShot
}
