// Package maps is the map layer sluice's conntrack, nat, ipsets and routes
// packages share: typed access to BPF maps with fixed-size keys and values,
// pinned maps that survive restarts and upgrades, a delta syncer, and a
// layout check of Go mirrors against C.
//
// # Typed maps
//
// Map[K, V] wraps an *ebpf.Map whose key and value encode to exactly K and
// V (encoding/binary layout, as cilium/ebpf marshals them; bpf2go's
// structs with their structs.HostLayout marker work as they are). Besides
// Lookup, Update and Delete it offers LookupAndDelete, and BatchUpdate and
// BatchDelete, which use the kernel's batch commands and fall back to one
// syscall per element where the kernel refuses them. PerCPUMap[K, V]
// covers per-CPU maps, with one V per possible CPU.
//
// Whole-map reads share one chunked reader. Range (and All, its
// range-over-func form, which reports its error through a pointer) reads
// a bounded number of entries at a time with BPF_MAP_LOOKUP_BATCH into one
// 256 KiB buffer, so a sweep of a huge map takes fixed memory; Dump reads
// the same way straight into the slices it returns. Where a hash bucket
// outgrows the buffer the kernel answers ENOSPC and the reader doubles the
// buffer; where the kernel has no batch lookup for the map the reader
// iterates with BPF_MAP_GET_NEXT_KEY instead.
//
// # Pinned, versioned maps
//
// OpenOrCreate opens the map Params describe from its pin, named
// <Name>_v<Version>, or creates it. A pinned map of another capacity, type
// or flags is resized by copying, and a map of an earlier version is
// carried through one Upgrade per version step; either way every entry
// moves into the new map. The old map is repinned as <pin>_old before the
// copy and unpinned after the new map is pinned, so a migration
// interrupted by a crash is redone by the next OpenOrCreate.
//
// # Delta sync
//
// Syncer.Apply takes the desired contents of a map, reads what the kernel
// holds, and deletes, adds and changes only what differs, reporting the
// counts in SyncStats. nat, ipsets and routes program the kernel through
// it; a second Apply of the same state writes nothing.
//
// # Layout check
//
// CheckLayout compares a Go struct with a C struct or union in a
// collection's BTF, member by member, so that no offset is typed by hand
// twice and every package's tests can prove its mirrors right.
//
// # Kernel features
//
//   - BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH and BPF_MAP_DELETE_BATCH
//     (Linux 5.6 for hash and array maps; other map types gained them
//     later, and some, such as devmaps and cpumaps, have none). Batch
//     support is probed by trying each command on each map, never by
//     comparing kernel versions: a command the kernel answers with
//     ENOTSUPP is not tried on that map again (Map.BatchSupport).
//   - BPF_MAP_LOOKUP_AND_DELETE_ELEM for Map.LookupAndDelete (Linux 5.14
//     for hash maps); where it is missing the error wraps
//     ebpf.ErrNotSupported and the caller chooses the fallback.
//   - BPF_F_NO_PREALLOC, which LPM tries require (Linux 4.11 for LPM).
//   - A bpffs mount for pins, and renameat2 with RENAME_NOREPLACE on it
//     (Linux 3.15), which makes the repin before a migration atomic.
//   - Map names (Linux 4.15), limited to 15 characters.
//   - BTF in the object for CheckLayout; it reads BTF, not the kernel.
package maps
