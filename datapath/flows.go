package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/conntrack"
	"github.com/sluicenet/sluice/maps"
)

// forgetFlows deletes the conntrack entries with a leg bound to one of
// ifindexes (by either the ingress or the egress interface), from the live
// table and from a table being drained. Conntrack passes a flow's packets
// on the premise that they arrive where its legs were approved; once an
// interface is gone, the kernel gives its index to the next interface
// made, which must not inherit those flows. The caller holds d.mu and the
// state lock, and no interface entry names the interfaces, so no packet
// binds a flow to them meanwhile.
//
// It reads the whole table: tens of milliseconds for a quarter of a
// million entries, once per SetInterfaces batch with new interfaces and
// per RemoveInterface.
func (d *Datapath) forgetFlows(ifindexes map[uint32]bool) error {
	if len(ifindexes) == 0 {
		return nil
	}
	bound := func(v conntrack.Value) bool {
		for _, leg := range [2]uint32{v.AToB.Ifindex, v.BToA.Ifindex} {
			if ifindexes[leg] {
				return true
			}
		}
		return ifindexes[v.AToB.EgressIfindex] || ifindexes[v.BToA.EgressIfindex]
	}
	for _, table := range []*ebpf.Map{d.state.ct, d.state.draining} {
		if table == nil {
			continue
		}
		typed, err := maps.New[conntrack.Key, conntrack.Value](table)
		if err != nil {
			return fmt.Errorf("forget flows: %w", err)
		}
		var stale []conntrack.Key
		for k, v := range typed.All(&err) {
			if bound(v) {
				stale = append(stale, k)
			}
		}
		if err != nil {
			return fmt.Errorf("forget flows: %w", err)
		}
		for _, k := range stale {
			if err := typed.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("forget flow %s: %w", k, err)
			}
		}
	}
	return nil
}
