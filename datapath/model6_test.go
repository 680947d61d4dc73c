package datapath

import (
	"encoding/binary"

	"github.com/sluicenet/sluice/bpf"
)

// IPv6 chain bounds of the datapath (parse.h, SL_IP6_EXT_MAX and
// SL_IP6_CHAIN_MAX).
const (
	ip6ExtMax   = 8
	ip6ChainMax = 256
)

// modelIsExt6 says whether the datapath steps over a next-header value as
// an extension header (parse6.h, sl_ip6_is_ext).
func modelIsExt6(next uint8) bool {
	switch next {
	case 0, 43, 44, 51, 60:
		return true
	}
	return false
}

// isMapped says whether a 16-byte address is IPv4-mapped.
func isMapped(a []byte) bool {
	for _, b := range a[:10] {
		if b != 0 {
			return false
		}
	}
	return a[10] == 0xff && a[11] == 0xff
}

// modelParse6 is the reference model of the datapath's IPv6 parser
// (include/sluice/parse6.h) at an interface with bpf.IfaceEnforceIPv6,
// given the IPv6 packet after the Ethernet header, at a workload's TC
// ingress hook when fromWorkload (lo in the tests). It returns the reason
// that decides the packet before conntrack and policy, or decided false.
// A later fragment returns bpf.ReasonFragmentPassed: the tests route every
// source to lo, so its reverse-path check passes.
func modelParse6(ip []byte, flags bpf.IfaceFlags, fromWorkload bool) (reason bpf.Reason, decided bool) {
	if len(ip) < 40 {
		return bpf.ReasonDroppedShort, true
	}
	if ip[0]>>4 != 6 {
		return bpf.ReasonDroppedBadVersion, true
	}
	payloadEnd := 40 + int(binary.BigEndian.Uint16(ip[4:6]))
	if payloadEnd == 40 || payloadEnd > len(ip) {
		return bpf.ReasonDroppedBadLen, true
	}
	if isMapped(ip[8:24]) || isMapped(ip[24:40]) {
		return bpf.ReasonDroppedIPv4Mapped, true
	}
	hopLimit, next, off := ip[7], ip[6], 40
	fragment := false
	for i := 0; i < ip6ExtMax && modelIsExt6(next); i++ {
		if off+8 > payloadEnd {
			return bpf.ReasonDroppedIPv6Ext, true
		}
		h := ip[off : off+8]
		var n int
		switch next {
		case 44:
			if fragment {
				return bpf.ReasonDroppedIPv6Ext, true
			}
			fragment, n = true, 8
			frag := binary.BigEndian.Uint16(h[2:4])
			if frag&0xfff9 != 0 {
				if flags&bpf.IfacePassFragments == 0 {
					return bpf.ReasonDroppedFragment, true
				}
				if frag&0xfff8 != 0 {
					return bpf.ReasonFragmentPassed, true
				}
			}
		case 51:
			n = (int(h[1]) + 2) * 4
		default:
			if next == 0 && i != 0 {
				return bpf.ReasonDroppedIPv6Ext, true
			}
			if next == 43 && h[2] == 0 && h[3] != 0 {
				return bpf.ReasonDroppedIPv6Ext, true
			}
			n = (int(h[1]) + 1) * 8
		}
		if off+n-40 > ip6ChainMax {
			return bpf.ReasonDroppedIPv6ChainLong, true
		}
		if off+n > payloadEnd {
			return bpf.ReasonDroppedIPv6Ext, true
		}
		next, off = h[0], off+n
	}
	if modelIsExt6(next) {
		return bpf.ReasonDroppedIPv6ChainLong, true
	}
	if r, decided := modelL4(next, ip[off:payloadEnd]); decided {
		return r, true
	}
	if next == 58 {
		if fragment {
			// A fragment is never neighbour discovery (RFC 6980): the
			// datapath keeps no hop limit of fragments.
			hopLimit = 0
		}
		return modelND(ip[off], hopLimit, flags, fromWorkload, ip[24:40])
	}
	return 0, false
}

// modelL4 is the model of sl_parse_l4 for both families: the reason a
// too-short or malformed L4 header of protocol proto is dropped for.
func modelL4(proto uint8, l4 []byte) (bpf.Reason, bool) {
	switch proto {
	case 6: // TCP
		if len(l4) < 20 {
			return bpf.ReasonDroppedShort, true
		}
		if doff := int(l4[12]>>4) * 4; doff < 20 || doff > len(l4) {
			return bpf.ReasonDroppedBadTCPDoff, true
		}
	case 17, 136, 1, 58: // UDP, UDP-Lite, ICMP, ICMPv6
		if len(l4) < 8 {
			return bpf.ReasonDroppedShort, true
		}
	case 132, 33: // SCTP, DCCP
		if len(l4) < 12 {
			return bpf.ReasonDroppedShort, true
		}
	}
	return 0, false
}

// modelND is the model of sl_icmp6_link and sl_nd_reason: neighbour
// discovery (hop limit 255) and multicast listener messages (hop limit 1)
// pass or drop by the interface's flags before conntrack; a workload's
// router messages drop. At the ingress hook the model sees, only those to
// a link-local or link-scope multicast destination are the link's (its
// tests route no address to the host): one the node would forward goes
// to conntrack and policy like any ICMPv6 message (sl_nd_on_link).
func modelND(typ, hopLimit uint8, flags bpf.IfaceFlags, fromWorkload bool, dst []byte) (bpf.Reason, bool) {
	nd := typ >= 133 && typ <= 137 && hopLimit == 255
	mld := (typ >= 130 && typ <= 132 || typ == 143) && hopLimit == 1
	onLink := (dst[0] == 0xfe && dst[1]&0xc0 == 0x80) || (dst[0] == 0xff && dst[1] == 0x02)
	switch {
	case !nd && !mld, !onLink:
		return 0, false
	case flags&bpf.IfaceDropND != 0:
		return bpf.ReasonDroppedND, true
	case fromWorkload && (typ == 134 || typ == 137):
		return bpf.ReasonDroppedND, true
	}
	return bpf.ReasonNDPassed, true
}
