// Package datapath is the runtime an agent holds: it loads sluice's TC
// datapath (package bpf), owns the maps it shares with policy programs,
// allocates policy and counter slots, and hands out typed handles.
//
// An agent opens the datapath once, describes each interface with
// SetInterface (its kind and its policies, compiled by package polprog),
// attaches TCIngress and TCEgress to the interfaces' TC hooks, and reads
// counters, conntrack and routes through the handles. Every change is
// make-before-break: SetInterface loads the new policy into fresh slots,
// switches the interface in one map update, waits until no packet can
// still be running the old policy, and only then frees it.
//
// # Maps and restarts
//
// The maps that carry state across a restart (conntrack, interfaces,
// counters, rule hits, IP sets, routes, the load-balancing maps, the
// sockets' storage of connect-time balancing) are opened through
// maps.OpenOrCreate under Options.PinDir, each with its own name, layout
// version and size. Per-CPU scratch maps are not pinned, and prog arrays
// are not shared: a restarted agent builds fresh programs and swaps them
// in, while the old ones keep running on their own prog arrays until it
// does. Each generation pins its own prog arrays, because the kernel
// empties a prog array once nothing but programs refers to it; so the
// policies of an agent that exited keep enforcing until the next one
// settles, which removes those pins. Each Open is a
// generation, numbered under a lock of PinDir: an interface's entry holds
// the records (flags and policy slots) of up to two generations, so the old
// process's programs and the new one's each read only their own while the
// new agent re-attaches. Settle then clears the older records and records
// its generation as the one whose programs run, which a later takeover
// never evicts. SetInterfaces configures many interfaces with a single wait
// for running packets.
//
// # Services
//
// The TC ingress programs balance services: Datapath.Services programs
// frontends and backends (package nat), Datapath.SNAT the node's
// addresses for flows that need source NAT. A new flow to a frontend is
// DNATed to the backend nat's model (nat.Choose) gives it before policy,
// which sees the backend as destination and the frontend as pre-NAT
// destination; an allowed flow's NAT entries are written with its
// conntrack entry, and its replies and ICMP errors are translated back. A
// frontend without a usable backend is answered at once with a TCP RST or
// an ICMP port unreachable.
//
// Connect-time balancing (Datapath.SockPrograms) is a second object,
// loaded with the TC one in every generation over the same service maps:
// cgroup sock_addr programs an embedder attaches to a cgroup v2 path. A
// connect or unconnected UDP sendmsg to a frontend goes to the backend
// the TC stage would choose (nat.ChooseConnect), and the socket keeps the
// translation in its storage for recvmsg and getpeername, which show the
// frontend. The connection is then a plain flow to its backend, which the
// TC programs track without NAT. A frontend without a usable backend fails
// the connect or sendmsg with ECONNREFUSED.
//
// The conntrack table grows while traffic flows (Datapath.ResizeConntrack):
// the programs find it through an array of tables, read the old table on
// a miss while entries move, and no tracked flow is lost or sent back to
// policy.
//
// # XDP
//
// A host interface's Interface.XDP tiers (untracked pre-DNAT deny policy)
// run at its XDP hook, where Datapath.XDP is attached (attach.AttachXDP),
// before an skb exists. Open loads the XDP object (bpf/xdp.c) with the TC
// one, in the same generation: its own jump map and continuations, pinned
// per generation like the TC ones, and an interface map (bpf.MapXDPIfaces)
// in the registry whose records name each generation's XDP policy, written
// make-before-break with the interface's entry. What the tiers deny is
// dropped and counted under the interface's ingress counters; everything
// else, malformed packets included, passes to TC, which decides it in
// full and counts it; except at an IPv6Pass interface, whose TC would pass
// an IPv6 packet the XDP parser cannot read past the tiers: XDP drops it,
// counted with the parser's reason. An interface without XDP tiers, or
// whose XDP slot is empty, passes everything to TC.
//
// # Kernel features
//
// CheckKernel probes for each: BPF_PROG_TYPE_SCHED_CLS and
// BPF_PROG_TYPE_XDP with bpf_xdp_load_bytes (Linux 5.18), hash, LRU hash,
// per-CPU array and hash, LPM trie, prog array and array-of-maps maps,
// BPF_F_NO_PREALLOC, bpf_tail_call, bpf_ktime_get_coarse_ns,
// bpf_skb_load_bytes, the v3 instruction set, bounded loops (the IPv6
// extension-header walk) and atomic compare-and-exchange; for
// connect-time balancing BPF_PROG_TYPE_CGROUP_SOCK_ADDR with the
// getpeername hooks (5.8), socket storage, bpf_get_socket_cookie,
// bpf_get_netns_cookie and bpf_set_retval (5.18). Open calls it
// first. The walk is a BTF-typed global function (Linux 5.6), which every
// kernel with bpf_ktime_get_coarse_ns (5.11) has.
// Freeing a replaced policy relies on an update of an array of maps
// returning only after an RCU grace period, which Linux has done since
// map-in-map maps exist (kernel/bpf/syscall.c, maybe_wait_bpf_programs).
//
// One feature is optional: BPF_FIB_LOOKUP_MARK (Linux 6.10), which Open
// probes with HaveFIBLookupMark. Where the kernel has it, the FIB step
// (the routing of a translated packet whose source became one of the
// node's addresses) passes the packet's skb mark to bpf_fib_lookup, so ip
// rules with fwmark choose its route; where it does not, the lookup runs
// without the mark (Datapath.FIBLookupMark says which). The probe runs
// (BPF_PROG_TEST_RUN) a program that calls bpf_fib_lookup with the flag
// and address family 0: a kernel that knows the flag answers
// -EAFNOSUPPORT, one that does not refuses it with -EINVAL. A packet the step
// cannot route (its TTL or hop limit expiring here, past the route's MTU,
// no route) is dropped, counted as bpf.ReasonDroppedFIBTTL,
// ReasonDroppedFIBMTU or ReasonDroppedFIBNoRoute.
package datapath
