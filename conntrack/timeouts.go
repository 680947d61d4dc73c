package conntrack

import (
	"errors"
	"fmt"
	"time"
)

// Timeouts says how long an entry may stay idle (time since its last
// packet) before it expires, per protocol and, for TCP, per state.
// Timeouts is also the liveness Check a Scanner runs first.
type Timeouts struct {
	// TCPSynSent applies to a TCP flow not yet established.
	TCPSynSent time.Duration
	// TCPEstablished applies once both legs have seen SYN and ACK.
	TCPEstablished time.Duration
	// TCPFinsSeen applies once both legs have seen FIN.
	TCPFinsSeen time.Duration
	// TCPResetSeen applies once either leg has seen RST.
	TCPResetSeen time.Duration
	// UDP applies to every UDP flow.
	UDP time.Duration
	// ICMP applies to every ICMP and ICMPv6 flow (echoes: nothing else
	// is tracked).
	ICMP time.Duration
	// Generic applies to every other protocol.
	Generic time.Duration
}

// DefaultTimeouts returns the defaults: TCP SYN-sent 20 s, established
// 1 h, FINs seen 30 s, RST seen 40 s; UDP 60 s; ICMP 5 s; other 10 min.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		TCPSynSent:     20 * time.Second,
		TCPEstablished: time.Hour,
		TCPFinsSeen:    30 * time.Second,
		TCPResetSeen:   40 * time.Second,
		UDP:            60 * time.Second,
		ICMP:           5 * time.Second,
		Generic:        10 * time.Minute,
	}
}

// Validate returns an error naming every timeout that is not positive.
func (t Timeouts) Validate() error {
	fields := []struct {
		name  string
		value time.Duration
	}{
		{"TCPSynSent", t.TCPSynSent},
		{"TCPEstablished", t.TCPEstablished},
		{"TCPFinsSeen", t.TCPFinsSeen},
		{"TCPResetSeen", t.TCPResetSeen},
		{"UDP", t.UDP},
		{"ICMP", t.ICMP},
		{"Generic", t.Generic},
	}
	var errs []error
	for _, f := range fields {
		if f.value <= 0 {
			errs = append(errs, fmt.Errorf("conntrack timeout %s is %v, want a positive duration", f.name, f.value))
		}
	}
	return errors.Join(errs...)
}

// FlowState names the state a timeout is chosen by.
type FlowState int

// Flow states. Only TCP distinguishes more than one.
const (
	StateTCPSynSent FlowState = iota
	StateTCPEstablished
	StateTCPFinsSeen
	StateTCPResetSeen
	StateUDP
	StateICMP
	StateGeneric
)

// String returns a short lower-case name ("tcp-established").
func (s FlowState) String() string {
	switch s {
	case StateTCPSynSent:
		return "tcp-syn-sent"
	case StateTCPEstablished:
		return "tcp-established"
	case StateTCPFinsSeen:
		return "tcp-fins-seen"
	case StateTCPResetSeen:
		return "tcp-reset-seen"
	case StateUDP:
		return "udp"
	case StateICMP:
		return "icmp"
	case StateGeneric:
		return "generic"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// StateOf returns the state of the flow with key k and entry v. For TCP, in
// order of precedence: RST on either leg; FIN on both legs; SYN and ACK on
// both legs (established); otherwise SYN-sent.
func StateOf(k Key, v Value) FlowState {
	switch k.Proto {
	case ProtoTCP:
		a, b := v.LegAToB().Seen(), v.LegBToA().Seen()
		switch {
		case a.Has(LegRST) || b.Has(LegRST):
			return StateTCPResetSeen
		case a.Has(LegFIN) && b.Has(LegFIN):
			return StateTCPFinsSeen
		case a.Has(LegSYN|LegACK) && b.Has(LegSYN|LegACK):
			return StateTCPEstablished
		}
		return StateTCPSynSent
	case ProtoUDP:
		return StateUDP
	case ProtoICMP, ProtoICMPv6:
		return StateICMP
	}
	return StateGeneric
}

// For returns the idle timeout of a flow in state s.
func (t Timeouts) For(s FlowState) time.Duration {
	switch s {
	case StateTCPSynSent:
		return t.TCPSynSent
	case StateTCPEstablished:
		return t.TCPEstablished
	case StateTCPFinsSeen:
		return t.TCPFinsSeen
	case StateTCPResetSeen:
		return t.TCPResetSeen
	case StateUDP:
		return t.UDP
	case StateICMP:
		return t.ICMP
	}
	return t.Generic
}

// Expired reports whether the entry has been idle longer than its
// timeout at now (CLOCK_MONOTONIC_COARSE). An entry seen at or after now is never
// expired, so a clock behind the datapath's keeps entries rather than
// deleting them.
func (t Timeouts) Expired(k Key, v Value, now time.Duration) bool {
	return v.Idle(now) > t.For(StateOf(k, v))
}

// Check implements the Check interface: Delete when Expired.
func (t Timeouts) Check(k Key, v Value, now time.Duration) Verdict {
	if t.Expired(k, v, now) {
		return Delete
	}
	return Keep
}
