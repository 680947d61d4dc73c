// Package nat holds service load balancing's tables: the maps the
// datapath's service stage reads, programmed by Table, and Maglev lookup
// tables.
//
// # Maps
//
// The layouts are the generated mirrors of bpf/include/sluice/nat.h. A
// frontend (bpf.SvcKey: address, port, protocol; a NodePort has its
// family's unspecified address) leads to a bpf.Svc: the service's ID, the
// base of its current backend list, the list's counts and the frontend's
// flags. The list's slots, (ID, base+i), hold backend IDs, and the backends
// map gives each ID its address and port. Slots are ordered serving local,
// serving remote, terminating local, terminating remote, so that a traffic
// policy Local or the terminating fallback is a range of the list; within
// a group, by address and port. Source ranges are an LPM trie keyed by
// service ID and family. Members (service ID, backend ID) say whether each
// backend of the current list is serving and local, which decides whether
// a client's affinity still fits, so only a service with affinity has
// them; a Maglev service has a table per list
// (service ID, slot base) over its serving backends, by weight.
//
// # Table
//
// Table.Upsert, Delete, Apply and Sync program services make-before-break: new
// backends, then the new list (its members, slots and Maglev table) in the
// half of the service's slot space the current list does not use, then
// each frontend flipped to it in one map update, then the old list, its
// Maglev table, the members of backends that left and the backends no
// service holds deleted. A packet therefore always meets one whole list,
// never a hole, and a live service never shows zero backends in between.
// The kernel maps are the record: a Table over maps a previous process
// programmed adopts its service and backend IDs, members and Maglev
// tables, a Sync of unchanged services writes nothing, and Sync removes
// what no desired service accounts for. Sync is given every service and
// compares each with what it programmed; Apply is given the changed ones
// (and the names of the deleted), for an agent that learns of changes one
// by one. A deleted service's client affinities are deleted after its
// frontends, so that a service given its ID later inherits no clients.
//
// # Costs
//
// Measured on a two-vCPU machine shared with other test suites
// (docs/benchmarks.md): a Sync of 10,000 services with 5 backends each
// into empty maps writes 110,000 entries (a frontend per service, a
// backend and a slot per backend; a member more per backend of a service
// with affinity) in 77-94 ms while the machine is otherwise idle (a
// median of 280 ms at a load average of 12), most of it the kernel's
// inserts. A Sync of the same 10,000 with one changed takes 2.0-2.5 ms,
// nearly all of it comparing every service; an Apply or Upsert of that
// one service 20-30 µs. The deletion of a service with affinity reads
// the affinity map once (about 10 ms with 65,536 clients recorded).
//
// # Choosing a backend
//
// Choose is the reference model of the datapath's service stage: the
// frontend a flow meets, source ranges, the group its traffic policy
// allows, affinity, Maglev and the flow hash (FlowHash) decide its backend.
// It needs no privilege. Table.Explain applies it to the services a Table
// programmed and the client's affinity record in the kernel.
// Table.Adopted reads the services of maps another process programmed
// back into the model (by service ID), with the reading a Table adopts
// them by, for a debugging tool's Choose.
// ChooseConnect and Table.ExplainConnect are the same choice at a socket's
// connect (connect-time balancing), with the socket's cookie in the hash
// (ConnectHash) and its bound source or network namespace as the client.
//
// # Maglev
//
// Maglev builds consistent-hashing tables that spread a service's flows
// over its backends in proportion to their weights and, when a backend
// comes or goes, move little more than the share that must move.
//
// # Kernel features
//
// BPF_MAP_TYPE_HASH with BPF_F_NO_PREALLOC, BPF_MAP_TYPE_LRU_HASH (affinity)
// and BPF_MAP_TYPE_LPM_TRIE (source ranges).
package nat
