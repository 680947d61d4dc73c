// Package attach attaches BPF programs to the TC and XDP hooks of network
// interfaces and to the hooks of cgroup v2 directories, replaces them
// atomically, detaches them, and lists what it attached: the attach
// helpers an agent combines with its own programs.
//
// # Pins and restarts
//
// An [Attacher] pins every link it creates under the bpffs directory given
// to [Open]: <pinDir>/links/tc-ingress-<ifname>, tc-egress-<ifname> and
// xdp-<ifname>, and cgroup-<attach type>-<escaped cgroup path> (for
// example cgroup-connect4-%2Fsys%2Ffs%2Fcgroup%2Fagent). The pin, not the
// process, keeps a program attached, so a restarted agent that opens the
// same directory finds the links and replaces their programs with
// link.Update: packets and socket calls never meet a hook without a
// program. A pin whose link lost its interface or cgroup (deleted, moved
// to another network namespace, or replaced by another of the same name
// or path) is removed and the program attached afresh. A pin follows its
// interface through a rename: the next attach or detach under the new
// name finds it by the interface index and moves it, so a renamed
// interface neither gets a second program nor loses its own to a new
// interface of its old name. A cgroup path is resolved through its
// symlinks, and a pin made through another mount point of the same cgroup
// is found by the cgroup's ID and moved, so one cgroup has one link of
// ours on a hook however it is named. Everything under the pin directory's links/
// sub-directory is this library's; List reports those pins and nothing
// else of the kind.
//
// Each method holds an exclusive flock on the pin directory while it runs,
// so two processes sharing a pin directory (an agent and its successor
// during a rolling restart) never interleave an attach, replace or detach.
// The lock is on the directory itself (bpffs holds no regular files), and
// the kernel lets go of it when its holder dies, so a crashed agent blocks
// no successor; a waiter whose directory was removed and made again takes
// the new directory's lock. AttachTC, DetachTC and List also hold an exclusive flock on
// the calling thread's network namespace (/proc/thread-self/ns/net): the
// clsact qdiscs and filters there are shared by every Attacher, whatever
// its pin directory.
//
// # Cgroup hooks
//
// AttachCgroup takes the attach types of the Hook constants from
// [HookConnect4] on: the sock_addr hooks (connect, sendmsg, recvmsg,
// getpeername, getsockname and bind, IPv4 and IPv6, the hooks of
// connect-time load balancing), post_bind, sock_create and sock_release,
// the cgroup skb ingress and egress, sock_ops, getsockopt and setsockopt,
// sysctl and device. Each link is a multi-attach cgroup bpf_link (5.7+):
// other agents' programs on the same cgroup and hook run beside ours. The
// path must be a directory on a cgroup v2 mount ([ErrNoCgroup2]
// otherwise; the error says where /proc/mounts has cgroup v2), and the
// program of the hook's type, loaded with the hook's expected attach type
// ([ErrProgramType]; the kernel checks the latter on every replace too).
// The unix socket hooks are not among them.
//
// # Kernel features, and how they are probed
//
// Versions are never compared; each feature is tried:
//
//   - TCX (CONFIG_NET_XGRESS, upstream 6.6, backported by some
//     distributions): AttachTC creates a TCX link with link.AttachTCX. If
//     that fails with an error wrapping ebpf.ErrNotSupported (cilium/ebpf
//     probes the kernel when the attach fails), AttachTC falls back to a
//     clsact qdisc with a direct-action cls_bpf filter (CONFIG_NET_CLS_ACT,
//     CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_BPF) through netlink. The
//     filter is this library's by its fixed handle ([ClsactHandle]),
//     priority ([ClsactPriority]) and name prefix ([FilterNamePrefix]),
//     and an Attacher's by a marker directory under <pinDir>/filters, so
//     that agents with pin directories of their own never take each
//     other's filters (the second gets [ErrOccupied]);
//     netlink's filter replace on the same parent, handle, priority and
//     protocol swaps its program in place. The clsact qdisc is created if
//     the interface has none, and deleted with the last filter only if this
//     library created it (recorded by a marker directory under
//     <pinDir>/qdiscs). Adding or deleting a clsact qdisc deactivates the
//     device for a moment and drops the packets in flight, so it happens
//     only on the first attach and the last detach, never on a replace.
//     A [Position] option (First, Last) puts a TCX program before or
//     after the other TCX programs on the hook when its link is created
//     (link.Head, link.Tail); the clsact fallback refuses it with
//     [ErrPosition] rather than pick priorities for filters of other
//     agents it does not know.
//     When TCX becomes available (a kernel upgrade) the next AttachTC
//     moves the hook to TCX and then deletes the filter (TCX programs run
//     before legacy filters, so there is no gap); the qdisc stays until
//     DetachTC.
//   - XDP links (5.9+) and BPF_LINK_UPDATE: AttachXDP creates an XDP link
//     in driver (native) mode and, with [XDPAuto], falls back to generic
//     mode if the driver refuses. The mode in force is read back from the
//     kernel (IFLA_XDP_ATTACHED) and reported in [Attachment.Mode].
//   - Pinned links and bpffs: [Open] fails with [ErrNoBPFFS] unless the
//     directory is on a bpffs mount.
//
// TC programs must be of type ebpf.SchedCLS and XDP programs of type
// ebpf.XDP ([ErrProgramType] otherwise). TC_ACT_OK, TC_ACT_SHOT and
// TC_ACT_REDIRECT equal TCX_PASS, TCX_DROP and TCX_REDIRECT, so one program
// works in both TC modes. Note that a TCX program returning TCX_PASS ends
// the hook: legacy filters of other agents on the same interface do not
// run after it.
//
// # Network namespaces
//
// Interface indexes, netlink requests and bpf_link creation all resolve in
// the network namespace of the calling thread. To attach in another
// namespace, call the Attacher on a thread locked into it, and give each
// namespace its own pin directory (pin names carry only the interface
// name; an attach that finds the pin of its interface's name and index
// holding a link of another namespace's interface fails with
// [ErrOccupied] rather than replace that namespace's program). Cgroup
// hooks do not depend on the network namespace: a cgroup's programs run
// for its processes' sockets in every namespace.
package attach
