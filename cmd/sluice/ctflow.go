package main

import (
	"errors"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/conntrack"
)

// flowEntries is what a conntrack lookup of a packet finds, as
// sl_ct_lookup in bpf/include/sluice/ct_ops.h finds it: the entry under
// the packet's tuple, and for a NAT stub the reverse entry it leads to,
// with the packet's direction there.
type flowEntries struct {
	found   bool
	entries []conntrack.Entry
	// dir is the packet's direction under the last entry's key.
	dir bpf.CTDir
	// viaStub says a stub (nat_fwd) led to the reverse entry: the packet
	// is on the client's tuple to the frontend.
	viaStub bool
}

// lookupFlow finds the packet's flow. A stub whose reverse entry is
// missing or another flow's counts as a miss, as in the kernel (which
// deletes it).
func lookupFlow(ct *conntrack.Map, proto uint8, src, dst netip.AddrPort) (flowEntries, error) {
	key, reversed, err := conntrack.NewKey(proto, src, dst)
	if err != nil {
		return flowEntries{}, err
	}
	dir := bpf.CTDirAToB
	if reversed {
		dir = bpf.CTDirBToA
	}
	v, err := ct.Lookup(key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return flowEntries{}, nil
	}
	if err != nil {
		return flowEntries{}, err
	}
	f := flowEntries{found: true, entries: []conntrack.Entry{{Key: key, Value: v}}, dir: dir}
	if v.EntryType() != conntrack.NATForward {
		return f, nil
	}
	fromClient := dir == clientDir(v)
	rev := v.Peer()
	rv, err := ct.Lookup(rev)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return flowEntries{}, nil
	}
	if err != nil {
		return flowEntries{}, err
	}
	if rv.EntryType() != conntrack.NATReverse || rv.Peer() != key {
		return flowEntries{}, nil
	}
	f.entries = append(f.entries, conntrack.Entry{Key: rev, Value: rv})
	f.dir = clientDir(rv)
	if !fromClient {
		f.dir = 1 - f.dir
	}
	f.viaStub = true
	return f, nil
}

// clientDir is sl_ct_client_dir: the direction of a NAT flow's client-side
// packets under its entry's key.
func clientDir(v conntrack.Value) bpf.CTDir {
	if bpf.CTFlags(v.Flags)&bpf.CTFClientIsB != 0 {
		return bpf.CTDirBToA
	}
	return bpf.CTDirAToB
}

// reverse is the entry that holds the flow's state.
func (f flowEntries) reverse() conntrack.Value {
	return f.entries[len(f.entries)-1].Value
}

// fromClient says the packet is from the client's side of a NAT flow.
func (f flowEntries) fromClient() bool {
	return f.reverse().EntryType() == conntrack.NATReverse && f.dir == clientDir(f.reverse())
}

// passes is sl_ct_passes: the packet's leg was approved at this hook, or
// (at egress) it is a reply of a leg approved entering this interface.
func (f flowEntries) passes(ifindex uint32, hook bpf.Hook) bool {
	v := f.reverse()
	own, peer := v.LegAToB(), v.LegBToA()
	if f.dir == bpf.CTDirBToA {
		own, peer = peer, own
	}
	if hook == bpf.HookIngress {
		return own.Seen().Has(conntrack.LegIngressOK) && own.Ifindex == ifindex
	}
	return (own.Seen().Has(conntrack.LegEgressOK) && own.EgressIfindex == ifindex) ||
		(peer.Seen().Has(conntrack.LegIngressOK) && peer.Ifindex == ifindex)
}
