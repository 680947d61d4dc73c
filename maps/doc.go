// Package maps is the map layer sluice's conntrack, nat, ipsets and routes
// packages share: typed access to BPF maps with fixed-size keys and values,
// pinned maps that survive restarts and upgrades, live resizing of maps
// the datapath writes, a delta syncer, and a layout check of Go mirrors
// against C.
//
// # Typed maps
//
// Map[K, V] wraps an *ebpf.Map whose key and value encode to exactly K and
// V (encoding/binary layout, as cilium/ebpf marshals them; the generated
// structs of package bpf, with their structs.HostLayout marker and blank
// padding, work as they are). Besides
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
// iterates with BPF_MAP_GET_NEXT_KEY instead. Map and PerCPUMap read the
// same way, and so do migrations and Drain, on the map's raw bytes.
//
// Errors name the map once in front of cilium/ebpf's message, which names
// the operation ("map Hash(sl_ct)#7: lookup: key does not exist"), and
// wrap cilium/ebpf's errors, so errors.Is(err, ebpf.ErrKeyNotExist) works.
//
// # Pinned, versioned maps
//
// OpenOrCreate opens the map Params describe from its pin, named
// <Name>_v<Version>, or creates it, with the key and value BTF of Params
// when given (ParamsFromSpec takes it from a MapSpec). A pinned map of
// another capacity, type or flags is resized by copying, and a map of an
// earlier version is carried through one Upgrade per version step; either
// way every entry moves into the new map, per-CPU maps with every CPU's
// value. Arrays keep their indices: a smaller array drops those past its
// capacity and reports how many in OpenReport.Dropped. The old map is
// repinned as <pin>_old before the copy and unpinned after the new map is
// pinned, so a migration interrupted by a crash is redone by the next
// OpenOrCreate.
//
// OpenPinned is the reader's side: a debugging tool beside the owner opens
// a map of a name and version read-only, and learns from a wrapped
// ErrNotPinned or ErrOtherVersion what is missing, never creating or
// migrating anything.
//
// # Live resize
//
// A copy misses what the datapath writes while it runs, so a map the
// datapath writes all the time, such as a conntrack table, is resized live
// instead: OpenOrCreate with WithLiveResize, at an unchanged version
// (programs of another version cannot read the old layout, so a version
// change still copies). The protocol, with M the map pinned as
// <Name>_v<N> and the new capacity wanted:
//
//  1. OpenOrCreate repins M as <Name>_v<N>_draining, an atomic rename on
//     the bpffs (RENAME_NOREPLACE), creates the new map M' and pins it as
//     <Name>_v<N>. It returns M' with M in OpenReport.Draining and Action
//     Resized.
//  2. The caller loads and attaches programs that write only into M' and,
//     when a lookup misses in M', look the key up in M. A hit there may be
//     promoted: written into M', whose copy is then the newer one.
//  3. Once no program writes into M any more, the caller runs
//     Drain(M, M'): every entry of M is written into M' with
//     UpdateNoExist, then deleted from M. A key M' already holds was
//     promoted or re-created by the datapath and is left as it is.
//  4. FinishDrain removes the _draining pin (it refuses while M holds
//     entries), and the caller closes M. M is empty by then, so programs
//     that still look it up simply miss.
//
// A crash at any step leaves pins from which the next OpenOrCreate goes
// on, and every entry in at least one pinned map:
//
//   - During step 1, after the repin: only the _draining pin. OpenOrCreate
//     renames it back and starts the resize over (M' was empty).
//   - From the end of step 1 to step 4: both pins. OpenOrCreate returns
//     the pinned M' and M again (Resized, Recovered), and the caller
//     resumes at step 2. Drain writes an entry before deleting it, so an
//     interrupted Drain leaves entries in M, in M', or in both with the
//     same value, and the next Drain skips those M' has.
//   - After step 4: only the live pin; the resize is over (Reused).
//
// Without WithLiveResize, or when the map wanted is no longer M' (another
// capacity or version), OpenOrCreate drains a pending M into M' itself
// before it goes on. No entry is lost:
// the rename moves M's pin, never M's entries; M' takes the live name
// only once M is pinned as _draining; Drain deletes an entry from M only
// after M' holds it; and FinishDrain unpins M only when it is empty. And
// no newer entry is overwritten, because Drain never replaces a key M'
// has. Two duties fall on the caller: nothing may write into M once Drain
// runs (an entry written there behind the drain stays in M, and
// FinishDrain refuses until a second Drain moves it), and a delete while
// the drain runs must go to both maps and may still be undone by the
// drain, when Drain read the entry before the delete and writes it after;
// deleters that sweep again, like conntrack's expiry, remove it next time.
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
//     (Linux 3.15), which makes the repins before a migration and a live
//     resize atomic.
//   - Map names (Linux 4.15), limited to 15 characters.
//   - BTF for map keys and values (Linux 4.18) where Params carry it;
//     cilium/ebpf creates the map without BTF where the kernel refuses it.
//   - BTF in the object for CheckLayout; it reads BTF, not the kernel.
package maps
