package conntrack

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sluicenet/sluice/bpf"
)

// EntryType is the kind of a conntrack entry (enum sl_ct_type).
type EntryType uint32

// Entry types; see the package documentation.
const (
	// Normal is the one entry of a flow without NAT.
	Normal = EntryType(bpf.CTNormal)
	// NATForward is keyed by the pre-DNAT tuple and points at the reverse
	// entry.
	NATForward = EntryType(bpf.CTNATFwd)
	// NATReverse is keyed by the post-DNAT tuple and holds the flow's
	// state.
	NATReverse = EntryType(bpf.CTNATRev)
)

// String returns "normal", "nat_fwd", "nat_rev" or "CTType(N)", as the
// generated bpf.CTType names them.
func (t EntryType) String() string { return bpf.CTType(t).String() }

// LegFlags says what one direction of a flow has seen (enum
// sl_ct_leg_flags).
type LegFlags uint32

// Leg flags: the TCP flags a direction has carried at least once, and
// where policy approved it.
const (
	LegSYN = LegFlags(bpf.CTLegSYN)
	LegACK = LegFlags(bpf.CTLegACK)
	LegFIN = LegFlags(bpf.CTLegFIN)
	LegRST = LegFlags(bpf.CTLegRST)
	// LegIngressOK: the leg's packets pass the TC ingress hook of
	// Leg.Ifindex without policy.
	LegIngressOK = LegFlags(bpf.CTLegIngressOK)
	// LegEgressOK: policy at the TC egress hook the leg leaves through
	// approved it.
	LegEgressOK = LegFlags(bpf.CTLegEgressOK)
)

// String joins the set flags with "|" ("syn|ack"), as the generated
// bpf.CTLegFlags names them, with unknown bits in hex.
func (f LegFlags) String() string { return bpf.CTLegFlags(f).String() }

// Has reports whether every flag in want is set.
func (f LegFlags) Has(want LegFlags) bool {
	return f&want == want
}

// Leg is one direction of a flow, struct sl_ct_leg.
type Leg bpf.CTLeg

// Seen returns the leg's flags.
func (l Leg) Seen() LegFlags {
	return LegFlags(l.Flags)
}

// String formats the leg as "pkts=3 bytes=180 seen=syn|ack if=2"; the
// interface is left out when zero.
func (l Leg) String() string {
	s := fmt.Sprintf("pkts=%d bytes=%d seen=%s", l.Packets, l.Bytes, l.Seen())
	if l.Ifindex != 0 {
		s += fmt.Sprintf(" if=%d", l.Ifindex)
	}
	return s
}

// Value is a conntrack entry, struct sl_ct_value. Created and LastSeen are
// CLOCK_MONOTONIC_COARSE nanoseconds (bpf_ktime_get_coarse_ns).
type Value bpf.CTValue

// EntryType returns the kind of entry.
func (v Value) EntryType() EntryType {
	return EntryType(v.Type)
}

// AToB returns the leg of packets from A to B.
func (v Value) LegAToB() Leg {
	return Leg(v.AToB)
}

// BToA returns the leg of packets from B to A.
func (v Value) LegBToA() Leg {
	return Leg(v.BToA)
}

// SetLegs stores both legs.
func (v *Value) SetLegs(aToB, bToA Leg) {
	v.AToB = bpf.CTLeg(aToB)
	v.BToA = bpf.CTLeg(bToA)
}

// Peer returns the NAT partner's key: for a forward entry the reverse
// entry's, for a reverse entry the forward entry's.
func (v Value) Peer() Key {
	return Key(v.NATPeer)
}

// SetPeer stores the NAT partner's key.
func (v *Value) SetPeer(k Key) {
	v.NATPeer = bpf.CTKey(k)
}

// Orig returns a reverse entry's destination before DNAT.
func (v Value) Orig() netip.AddrPort {
	return netip.AddrPortFrom(addrFrom16(v.OrigAddr), v.OrigPort)
}

// SetOrig stores a reverse entry's destination before DNAT; it fails for
// an invalid address.
func (v *Value) SetOrig(orig netip.AddrPort) error {
	if !orig.Addr().IsValid() {
		return fmt.Errorf("conntrack original destination %v: missing address", orig)
	}
	v.OrigAddr = orig.Addr().Unmap().As16()
	v.OrigPort = orig.Port()
	return nil
}

// Age returns how long the flow has carried traffic: LastSeen minus
// Created, or zero if LastSeen is earlier.
func (v Value) Age() time.Duration {
	return monotonicSince(v.Created, v.LastSeen)
}

// Idle returns how long before now (CLOCK_MONOTONIC_COARSE) the flow's last
// packet was seen, or zero if LastSeen is not earlier than now.
func (v Value) Idle(now time.Duration) time.Duration {
	return monotonicSince(v.LastSeen, uint64(max(now, 0)))
}

func monotonicSince(from, to uint64) time.Duration {
	if to <= from {
		return 0
	}
	return time.Duration(to - from)
}

// String formats the entry on one line, for example
//
//	nat_rev age=1m0s a->b[pkts=3 bytes=180 seen=syn|ack] b->a[pkts=2 bytes=120 seen=syn|ack] orig=10.96.0.1:80 peer=(tcp 10.0.0.1:1234 <-> 10.96.0.1:80)
//
// Flags appear when non-zero, orig on reverse entries, peer on NAT
// entries.
func (v Value) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s age=%s", v.EntryType(), v.Age())
	if v.Flags != 0 {
		fmt.Fprintf(&b, " flags=%s", v.Flags)
	}
	fmt.Fprintf(&b, " a->b[%s] b->a[%s]", v.LegAToB(), v.LegBToA())
	switch v.EntryType() {
	case NATReverse:
		fmt.Fprintf(&b, " orig=%s peer=(%s)", v.Orig(), v.Peer())
	case NATForward:
		fmt.Fprintf(&b, " peer=(%s)", v.Peer())
	}
	return b.String()
}
