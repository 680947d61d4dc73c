// Package routes reads and writes sluice's routes map, the LPM trie
// bpf.MapRoutes ("sl_routes"): what the datapath knows about an address.
// The datapath reads it and never writes it.
//
// # Layout
//
// Key and Value are named types over the generated mirrors of struct
// sl_route_key and struct sl_route in bpf/include/sluice/routes.h; the
// tests check them against the object's BTF with maps.CheckLayout. A key
// is a prefix length in bits, counted from a 32-bit family that is always
// matched, and 16 address bytes in network order. IPv6 prefixes are
// stored as they are; an IPv4 prefix a.b.c.d/n is stored IPv4-mapped,
// ::ffff:a.b.c.d, with length 32+96+n, so one trie serves both families
// and the datapath looks every address up with its family, its 16-byte
// (IPv4-mapped) form and length 160. Because the family is matched first,
// an IPv6 route whose prefix contains ::ffff:0:0/96, such as the IPv6
// default route ::/0, never covers an IPv4 address. Keys are written with
// the address masked to the prefix length; Key.Prefix says how keys of
// other writers are read.
//
// Route is the Go form of an entry; Route.Encode and Decode convert.
//
// # Flags
//
// A route has one kind:
//
//   - FlagLocalWorkload: a workload on this node. Ifindex is its
//     host-side interface. The datapath's reverse-path check lets a
//     packet in from a workload interface only if the longest route to
//     its source is of this kind and names that interface (RPFAllows).
//   - FlagLocalHost: an address of this node. Host-endpoint policy sees a
//     packet whose source or destination has such a route as from or to
//     the host (HostFlags).
//   - FlagRemoteWorkload and FlagRemoteHost: a workload on, or an address
//     of, another node; NextHop is that node.
//
// FlagTunneled may join a remote kind: the node is reached through a
// tunnel to NextHop. Route.Validate rejects every other combination.
//
// # Map, Table and the datapath
//
// Map wraps the kernel map: Lookup of an address (longest prefix match,
// as the datapath does it), Get, Put and Delete of one prefix, All and
// Routes to read it, and Sync, which makes it hold exactly a set of
// routes with the fewest writes (maps.Syncer). Table is the pure-Go
// reference of the same lookup; RPFAllows and HostFlags model the two
// decisions the datapath takes from it, for tests of the datapath. A
// differential test holds the kernel's lookups to Table on random routes
// and addresses.
//
// # Kernel features
//
//   - BPF_MAP_TYPE_LPM_TRIE (Linux 4.11), which must be created with
//     BPF_F_NO_PREALLOC, as the datapath declares it; NewMap accepts
//     only an LPM trie.
//   - BPF_MAP_GET_NEXT_KEY on LPM tries (Linux 4.16), which Get uses to
//     tell an exact entry from a covering one and which the reads fall
//     back to.
//   - BPF_MAP_LOOKUP_BATCH and the other batch commands on LPM tries,
//     which maps.Map probes by trying and replaces with per-element
//     syscalls where the kernel lacks them.
package routes
