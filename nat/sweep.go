package nat

import "github.com/sluicenet/sluice/bpf"

// sweepAffinity deletes the client affinities (sl_affinity, which only the
// datapath writes) of the service IDs no frontend holds: a deleted
// service's, once its frontends are gone, and, after a restart, the IDs a
// previous process used last. The LRU map would evict them only when it
// is full, and a service given the ID later would inherit their clients:
// the datapath keeps a client on its remembered backend while that is a
// member of the service, and IDs are only unique among live services.
// It reads the whole map (about 10 ms for 65,536 entries), so a plan
// runs it once, after its deletions, and only when it deleted a service
// that has or had affinity (no other has clients recorded), or swept what
// a previous process left.
//
// A packet that met a frontend just before its deletion may still record
// an affinity after the sweep: the next sweep removes it, and no new
// service takes its ID before (IDs are handed out in order, and NewTable
// reserves those it finds in the map until the first Sync sweeps them).
func (t *Table) sweepAffinity() error {
	var stale []bpf.AffinityKey
	var err error
	for k := range t.affinity.All(&err) {
		if _, ok := t.svcIDs[k.SvcID]; ok {
			continue
		}
		if _, ok := t.adoptedByID[k.SvcID]; ok {
			continue // a previous process's service, live until a Sync
		}
		stale = append(stale, k)
	}
	if err != nil {
		return err
	}
	return remove(t, t.affinity, stale)
}
