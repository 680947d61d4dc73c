package main

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// initialisms spells the words of C names that Go writes as initialisms
// or with inner capitals (ethertype → EtherType), keyed by the lower-case
// word. It is the one table of naming exceptions:
// add a word here rather than special-casing a name anywhere else.
var initialisms = map[string]string{
	"ack":       "ACK",
	"cidr":      "CIDR",
	"ct":        "CT",
	"dnat":      "DNAT",
	"ethertype": "EtherType",
	"fin":       "FIN",
	"fib":       "FIB",
	"icmp":      "ICMP",
	"icmpv6":    "ICMPv6",
	"id":        "ID",
	"ihl":       "IHL",
	"ip":        "IP",
	"ipv4":      "IPv4",
	"ipv6":      "IPv6",
	"l3":        "L3",
	"l4":        "L4",
	"lpm":       "LPM",
	"mtu":       "MTU",
	"nat":       "NAT",
	"nd":        "ND",
	"ok":        "OK",
	"rc":        "RC",
	"rpf":       "RPF",
	"rst":       "RST",
	"snat":      "SNAT",
	"syn":       "SYN",
	"tcp":       "TCP",
	"ttl":       "TTL",
	"udp":       "UDP",
	"vlan":      "VLAN",
}

// goName converts a snake_case C name to an exported Go name: each
// underscore-separated word is looked up in initialisms, a single letter is
// upper-cased, and any other word is capitalised (a_to_b → AToB, rule_id →
// RuleID, ifindex → Ifindex). Upper-case C names (enumerators) should be
// lower-cased first.
func goName(cName string) string {
	var b strings.Builder
	for word := range strings.SplitSeq(cName, "_") {
		if word == "" {
			continue
		}
		if special, ok := initialisms[strings.ToLower(word)]; ok {
			b.WriteString(special)
			continue
		}
		r, size := utf8.DecodeRuneInString(word)
		b.WriteRune(unicode.ToUpper(r))
		b.WriteString(word[size:])
	}
	return b.String()
}

// unexport turns an exported Go name into an unexported one by lower-casing
// its leading upper-case run, keeping the last letter of the run upper-case
// when a lower-case letter follows (CTLegFlags → ctLegFlags, Reason →
// reason, IPSetKey → ipSetKey).
func unexport(name string) string {
	runes := []rune(name)
	for i := range runes {
		if !unicode.IsUpper(runes[i]) {
			break
		}
		if i > 0 && i+1 < len(runes) && unicode.IsLower(runes[i+1]) {
			break
		}
		runes[i] = unicode.ToLower(runes[i])
	}
	return string(runes)
}

// isPadding reports whether a C member is padding by name: pad, pad0,
// pad1, ... Padding becomes a blank Go field and needs no comment.
func isPadding(cName string) bool {
	digits, ok := strings.CutPrefix(cName, "pad")
	if !ok {
		return false
	}
	for _, r := range digits {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
