// Package conntrack reads, writes and garbage-collects sluice's connection
// tracking table: an LRU hash of struct sl_ct_key to struct sl_ct_value
// that the C datapath fills (the live table of bpf.MapConntrackTables;
// datapath.Datapath.Conntrack hands it out).
//
// # Layout
//
// Key, Value and Leg are named types over the generated mirrors of struct
// sl_ct_key, sl_ct_value and sl_ct_leg in bpf/include/sluice/conntrack.h,
// so no offset is written twice; the tests check them against the
// object's BTF with maps.CheckLayout.
//
// # Canonical keys
//
// One entry covers both directions of a flow: the key names the flow's
// "lower" endpoint A and the other endpoint B. The datapath
// (sl_ct_key_fill in bpf/include/sluice/ct_ops.h) orders endpoints exactly
// as NewKey does, and a test holds the two together on random flows:
//
//	lower(x, y) = be128(x.addr) < be128(y.addr) ||
//	              (x.addr == y.addr && x.port < y.port)
//
// that is, addresses, 16 bytes with IPv4 stored IPv4-mapped, compare as
// big-endian (network order) unsigned 128-bit numbers, and ports, stored
// in host order, break ties. Both endpoints of a key have one family. The
// source is A unless the destination is lower; a flow from an endpoint to
// itself keeps the source as A. An ICMP or ICMPv6 echo is keyed by EchoPorts (with
// ProtoICMP or ProtoICMPv6): the identifier on the requester's side and the identifier plus one on the other, so that a
// request and its reply share a key and no request in the opposite
// direction, whatever its identifier, does.
// ICMP and ICMPv6 messages other than echoes are never tracked.
//
// # Entry types
//
// A flow without NAT has one Normal entry. A DNATed flow has two: a
// NATForward entry keyed by the pre-DNAT tuple, whose NATPeer is the
// reverse entry's key, and a NATReverse entry keyed by the post-DNAT tuple,
// which holds the flow's state (legs, last_seen, the original destination)
// and whose NATPeer points back. The datapath must refresh the reverse
// entry for packets of both directions; the forward entry only redirects.
//
// # Garbage collection
//
// A Scanner sweeps the table on an interval. Liveness (Timeouts, per
// protocol and TCP state, against last_seen) decides first; embedder
// Checks, such as "the backend is gone", run after. Checks see the
// entries that hold state (Normal and NATReverse); deleting a reverse
// entry deletes its forward entry too, and a forward entry whose reverse
// entry is missing is judged on its own last_seen. An entry whose
// last_seen moved between the check and the delete is kept (see
// Scanner.removeUnless for the race that remains). Each sweep
// reports how full the table is (ScanStats.Fullness), so an embedder can
// grow it through the maps migration before LRU eviction starts dropping
// live flows.
//
// Times are CLOCK_MONOTONIC_COARSE nanoseconds, the clock of
// bpf_ktime_get_coarse_ns, held as time.Duration since boot.
//
// # Kernel features
//
//   - BPF_MAP_TYPE_LRU_HASH (Linux 4.10) for the table itself; NewMap also
//     accepts a plain hash map.
//   - BPF_MAP_LOOKUP_BATCH on hash maps (5.6) to read the table in chunks
//     that stay consistent while the datapath inserts and evicts. Without
//     it Map falls back to BPF_MAP_GET_NEXT_KEY iteration, which can
//     restart, and so see entries twice, when entries vanish meanwhile.
//   - BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps (5.14), which narrows
//     the race between the scanner's refresh check and its delete. The
//     Scanner probes it by trying and falls back to a lookup followed by a
//     delete.
package conntrack
