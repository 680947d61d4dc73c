package datapath

import (
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/internal/topo"
	"github.com/sluicenet/sluice/nat"
	"github.com/sluicenet/sluice/polprog"
)

// Attacks on connect-time balancing: a pod's process that calls its
// sockets in unusual orders, each run in the pod's cgroup by a sockScript.

// sockExtraIP is the family's ClusterIP plus n in its last byte: more
// frontends beside web's and empty's.
func (e *sockEnv) sockExtraIP(n byte) netip.Addr {
	b := netip.MustParseAddr(e.fam.clusterIP).AsSlice()
	b[len(b)-1] += n
	a, _ := netip.AddrFromSlice(b)
	return a
}

// syncWith programs e.services plus extra.
func (e *sockEnv) syncWith(t *testing.T, extra map[string]nat.Service) {
	t.Helper()
	svcs := e.services()
	for name, s := range extra {
		svcs[name] = s
	}
	if err := e.d.Services().Sync(svcs); err != nil {
		t.Fatal(err)
	}
}

// udpService is a ClusterIP service at addr:53/UDP over the named backends.
func (e *sockEnv) udpService(addr netip.Addr, backends ...string) nat.Service {
	s := nat.Service{Frontends: []nat.Frontend{{Addr: addr, Port: sockUDPPort, Protocol: nat.ProtoUDP}}}
	for _, name := range backends {
		s.Backends = append(s.Backends, nat.Backend{Addr: e.backendsByName[name], Port: sockBackendPort, Local: true})
	}
	return s
}

// TestAttack10SockConnectedSendto: a connected UDP socket that also sends
// (sendto with an address) to four other frontends keeps its own
// translation: getpeername still shows the frontend it connected to. The
// sends cannot be answered on a connected socket (the kernel delivers only
// its peer's datagrams), so they have nothing to remember; before the fix
// they filled the four entries and pushed the connect's out, and the
// socket showed its backend (and DestroyStaleSockets, which matches the
// peer against the entries, could no longer find it).
func TestAttack10SockConnectedSendto(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			extra := map[string]nat.Service{}
			steps := []sockStep{{Do: "connect", Dest: netip.AddrPortFrom(netip.MustParseAddr(fam.clusterIP), sockUDPPort)}}
			for i := range byte(4) {
				a := e.sockExtraIP(10 + i)
				extra["x"+a.String()] = e.udpService(a, "b1", "b2")
				steps = append(steps, sockStep{Do: "sendto", Dest: netip.AddrPortFrom(a, sockUDPPort)})
			}
			steps = append(steps, sockStep{Do: "peer"})
			e.syncWith(t, extra)
			res := runSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, []sockOp{{Kind: sockScript, Dest: steps[0].Dest, Steps: steps}})
			want := []string{"connect: ok", "sendto: ok", "sendto: ok", "sendto: ok", "sendto: ok", "peer: " + steps[0].Dest.String()}
			if diff := cmp.Diff(want, res[0].Steps); diff != "" {
				t.Errorf("connected socket that sent to four more frontends (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAttack10SockReconnectDirect: a UDP socket balanced once (connect to
// solo's frontend, whose one backend is b1), then disconnected
// (AF_UNSPEC) and connected straight to b1's own address, is a plain
// socket: getpeername shows b1, and when solo is deleted
// DestroyStaleSockets leaves it alone (b1 still answers it). Before the
// fix the old translation outlived the connect it was for: getpeername
// showed solo's frontend for b1, and the socket was aborted.
func TestAttack10SockReconnectDirect(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			solo := netip.AddrPortFrom(e.sockExtraIP(20), sockUDPPort)
			b1 := netip.AddrPortFrom(e.backendsByName["b1"], sockBackendPort)
			e.syncWith(t, map[string]nat.Service{"solo": e.udpService(solo.Addr(), "b1")})
			steps := []sockStep{
				{Do: "connect", Dest: solo}, {Do: "peer"}, {Do: "disconnect"},
				{Do: "connect", Dest: b1}, {Do: "peer"}, {Do: "hold"},
			}
			c := startSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, []sockOp{{Kind: sockScript, Dest: solo, Steps: steps}}, true)
			c.ready(t)
			e.syncWith(t, nil)
			var n int
			if err := e.client.NS.Do(func() (err error) { n, err = e.d.DestroyStaleSockets(); return }); err != nil {
				t.Fatal(err)
			}
			c.release(t)
			res := c.wait(t)
			want := []string{"connect: ok", "peer: " + solo.String(), "disconnect: ok", "connect: ok", "peer: " + b1.String(), "held"}
			if diff := cmp.Diff(want, res[0].Steps); diff != "" {
				t.Errorf("socket reconnected straight to b1 (-want +got):\n%s", diff)
			}
			if n != 0 || res[0].After != 0 || res[0].AfterReply != "b1" {
				t.Errorf("after solo's deletion: %d sockets aborted, errno %v, reply %q; want 0 aborted and b1's answer", n, res[0].After, res[0].AfterReply)
			}
		})
	}
}

// TestAttack10SockPktinfoSourceRanges: source ranges are decided on the
// source a datagram really leaves with. A pod whose namespace has a
// second address outside the frontend's source ranges binds its socket to
// its address inside them, and sends to the frontend from the outside
// one (IP_PKTINFO, IPV6_PKTINFO): the send is refused (EPERM), as it is
// from a socket bound to the outside address. Before the fix the bound
// address was judged and the datagram balanced.
func TestAttack10SockPktinfoSourceRanges(t *testing.T) {
	testSockPktinfoSourceRanges(t, false)
}

// TestAttack10SockPktinfoConnected: as TestAttack10SockPktinfoSourceRanges,
// but the socket connects to the frontend from inside the ranges and then
// sends from outside them (send with IP_PKTINFO, no address): no socket
// hook runs on a connected socket's send, so the datagram goes to the
// backend from the outside address. The TC stage sees a plain flow to a
// backend (which the pod may reach by its own address anyway, under
// policy); only the frontend's source ranges are bypassed.
func TestAttack10SockPktinfoConnected(t *testing.T) {
	t.Skip("finding: a socket connected to a frontend from inside its source ranges sends from outside them with IP_PKTINFO; no hook runs on a connected send")
	testSockPktinfoSourceRanges(t, true)
}

func testSockPktinfoSourceRanges(t *testing.T, connected bool) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			in := e.client.Addr
			out := netip.MustParseAddr("10.69.0.100")
			if in.Is6() {
				out = netip.MustParseAddr("fd00:69::100")
			}
			if err := e.client.NS.AddrAdd("eth0", netip.PrefixFrom(out, out.BitLen())); err != nil {
				t.Fatal(err)
			}
			lb := netip.AddrPortFrom(e.sockExtraIP(30), sockUDPPort)
			ranged := e.udpService(lb.Addr(), "b1", "b2")
			ranged.Frontends[0].External = true
			ranged.SourceRanges = []netip.Prefix{netip.PrefixFrom(in, in.BitLen())}
			e.syncWith(t, map[string]nat.Service{"ranged": ranged})
			ops := []sockOp{
				{Kind: sockScript, Dest: lb, Steps: []sockStep{{Do: "bind", Src: out}, {Do: "sendto", Dest: lb}}},
				{Kind: sockScript, Dest: lb, Steps: []sockStep{{Do: "bind", Src: in}, {Do: "sendto", Dest: lb}, {Do: "recv"}}},
				{Kind: sockScript, Dest: lb, Steps: []sockStep{{Do: "bind", Src: in}, {Do: "sendto", Dest: lb, Src: out}}},
			}
			if connected {
				// Connected inside the ranges, then sending from outside.
				ops = append(ops, sockOp{Kind: sockScript, Dest: lb, Steps: []sockStep{{Do: "bind", Src: in}, {Do: "connect", Dest: lb}, {Do: "send", Src: out}}})
			}
			res := runSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, ops)
			if r := res[1].Steps; len(r) == 3 && r[2] != "recv: b1 from "+lb.String() && r[2] != "recv: b2 from "+lb.String() {
				t.Errorf("in-range send's reply: %q, want a backend's name from %v", r[2], lb)
			}
			var got [][]string
			for _, r := range res {
				got = append(got, append([]string(nil), r.Steps...))
			}
			// The one balanced send's reply shows the frontend from either backend.
			if len(got[1]) == 3 {
				got[1][2] = ""
			}
			want := [][]string{
				{"bind: ok", "sendto: EPERM"},
				{"bind: ok", "sendto: ok", ""},
				{"bind: ok", "sendto: EPERM"},
			}
			if connected {
				want = append(want, []string{"bind: ok", "connect: ok", "send: EPERM"})
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("sends to a frontend with source ranges (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAttack10SockDestroyReusedID: an ID freed while a socket still
// points at its backend can name something else after a restart (a new
// Table starts its IDs after the highest the maps hold).
//   - backend: solo's one backend b1 (ID 1) leaves while a pod's socket is
//     connected to it; the agent restarts; solo gets b2, which the new
//     Table gives ID 1 again: (solo, 1) is a member, but of another
//     address.
//   - service: solo (ID 1) is deleted; the agent restarts; another service
//     at another address gets ID 1 and b1 (ID 1 again): (1, 1) is a member,
//     but solo's frontend is gone.
//
// DestroyStaleSockets must abort the socket either way. Before the fix the
// iterator trusted the IDs alone.
func TestAttack10SockDestroyReusedID(t *testing.T) {
	fam := sockFamilies[0]
	e := newSockEnv(t, fam)
	solo := netip.AddrPortFrom(e.sockExtraIP(40), sockUDPPort)
	other := netip.AddrPortFrom(e.sockExtraIP(41), sockUDPPort)
	for _, tc := range []struct {
		name   string
		before map[string]nat.Service // synced by the old agent after the socket's connect
		after  map[string]nat.Service // synced by the restarted one
	}{
		{"backend", map[string]nat.Service{"solo": e.udpService(solo.Addr())}, map[string]nat.Service{"solo": e.udpService(solo.Addr(), "b2")}},
		{"service", map[string]nat.Service{}, map[string]nat.Service{"other": e.udpService(other.Addr(), "b1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{PinDir: filepath.Join(testutil.TempBPFFS(t), "sluice"), ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64}
			old, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			sync := func(d *Datapath, svcs map[string]nat.Service) {
				t.Helper()
				if err := d.Services().Sync(svcs); err != nil {
					t.Fatal(err)
				}
			}
			sync(old, map[string]nat.Service{"solo": e.udpService(solo.Addr(), "b1")})
			// Not under e.cgroup, whose programs (e.d's) would balance too.
			cgroup := testutil.TempCgroup(t)
			links := attachSock(t, cgroup, old)
			c := startSockClient(t, cgroup, e.client.NS.Name, old.state.sockNAT, []sockOp{{Kind: sockUDPHold, Dest: solo}}, true)
			c.ready(t)
			sync(old, tc.before)
			next, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer next.Close()
			links.replace(t, next)
			if err := old.Close(); err != nil {
				t.Fatal(err)
			}
			sync(next, tc.after)
			var n int
			if err := e.client.NS.Do(func() (err error) { n, err = next.DestroyStaleSockets(); return }); err != nil {
				t.Fatal(err)
			}
			c.release(t)
			res := c.wait(t)
			if res[0].Reply != "b1" {
				t.Fatalf("the held socket reached %q (errno %v), want b1", res[0].Reply, res[0].Errno)
			}
			if n != 1 || res[0].After != syscall.ECONNABORTED {
				t.Errorf("socket balanced as (service %d, backend %d): %d sockets aborted, then errno %v, reply %q; want 1 aborted and ECONNABORTED",
					res[0].NAT.Entries[0].SvcID, res[0].NAT.Entries[0].BackendID, n, res[0].After, res[0].AfterReply)
			}
		})
	}
}

// denyRules deny traffic whose peer (destination at egress, source at
// ingress) is addr, and allow the rest.
func denyRules(addr netip.Addr, egress bool) polprog.Rules {
	deny := polprog.Rule{ID: 1, Action: polprog.ActionDeny}
	if egress {
		deny.DstNets = []netip.Prefix{netip.PrefixFrom(addr, addr.BitLen())}
	} else {
		deny.SrcNets = []netip.Prefix{netip.PrefixFrom(addr, addr.BitLen())}
	}
	return polprog.Rules{Tiers: []polprog.Tier{{
		Name:     "default",
		Policies: []polprog.Policy{{Name: "deny-one", Rules: []polprog.Rule{deny, {ID: 2, Action: polprog.ActionAllow}}}},
	}}}
}

// TestAttack10SockPolicyAtTC: a flow balanced at connect time skips no
// policy: its packets meet the client's egress policy with the backend's
// address, and the backend's ingress policy. With the client's egress
// denying b1, the pod's connected UDP sockets balanced to b1 hear nothing
// and those on b2 are answered; with b2's ingress denying the client
// instead, the reverse.
func TestAttack10SockPolicyAtTC(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			web := netip.AddrPortFrom(netip.MustParseAddr(fam.clusterIP), sockUDPPort)
			var ops []sockOp
			for range 12 {
				ops = append(ops, sockOp{Kind: sockScript, Dest: web, Steps: []sockStep{{Do: "connect", Dest: web}, {Do: "send"}, {Do: "recv"}}})
			}
			var b2 *topo.Workload
			for _, w := range e.node.Workloads {
				if w.Addr == e.backendsByName["b2"] {
					b2 = w
				}
			}
			for _, phase := range []struct {
				name               string
				clientEgress, b2In polprog.Rules
				denied             string
			}{
				{"client egress denies b1", denyRules(e.backendsByName["b1"], true), allowAllRules, "b1"},
				{"b2 ingress denies the client", allowAllRules, denyRules(e.client.Addr, false), "b2"},
			} {
				if err := e.d.SetInterface(e.client.HostIfindex, Interface{Kind: Workload, Egress: phase.clientEgress, Ingress: allowAllRules}); err != nil {
					t.Fatal(err)
				}
				if err := e.d.SetInterface(b2.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules, Ingress: phase.b2In}); err != nil {
					t.Fatal(err)
				}
				res := runSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, ops)
				on := map[string]int{}
				for i, r := range res {
					be := netip.AddrFrom16(r.NAT.Entries[0].Backend).Unmap()
					name := "b1"
					if be == e.backendsByName["b2"] {
						name = "b2"
					}
					on[name]++
					want := []string{"connect: ok", "send: ok", "recv: " + name + " from " + web.String()}
					if name == phase.denied {
						want[2] = "recv: EAGAIN"
					}
					if !r.HasNAT || (be != e.backendsByName["b1"] && be != e.backendsByName["b2"]) {
						t.Errorf("%s: socket %d: storage %v (%v), want a backend", phase.name, i, r.NAT, r.HasNAT)
					} else if diff := cmp.Diff(want, r.Steps); diff != "" {
						t.Errorf("%s: socket %d on %s (-want +got):\n%s", phase.name, i, name, diff)
					}
				}
				if on["b1"] == 0 || on["b2"] == 0 {
					t.Fatalf("%s: sockets per backend %v: the test needs both", phase.name, on)
				}
			}
		})
	}
}

// TestAttack10SockSharedBackend: an unconnected UDP socket that sends to
// two frontends of different services over one backend (b1:8080) hears
// both answers from the same address and port. recvmsg shows the first
// remembered frontend for both: the answer to sb's request claims to be
// from sa, and a client that checks the answer's source (a DNS resolver)
// drops it. The two answers cannot be told apart by address; an ordering
// rule (most recent first) would only move the error to interleaved
// requests.
func TestAttack10SockSharedBackend(t *testing.T) {
	t.Skip("finding: an unconnected socket's replies from a backend two of its frontends share show the first frontend (recvmsg cannot tell them apart)")
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			sa := netip.AddrPortFrom(e.sockExtraIP(50), sockUDPPort)
			sb := netip.AddrPortFrom(e.sockExtraIP(51), sockUDPPort)
			e.syncWith(t, map[string]nat.Service{"sa": e.udpService(sa.Addr(), "b1"), "sb": e.udpService(sb.Addr(), "b1")})
			res := runSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, []sockOp{{Kind: sockScript, Dest: sa, Steps: []sockStep{
				{Do: "sendto", Dest: sa}, {Do: "recv"}, {Do: "sendto", Dest: sb}, {Do: "recv"},
			}}})
			want := []string{"sendto: ok", "recv: b1 from " + sa.String(), "sendto: ok", "recv: b1 from " + sb.String()}
			if diff := cmp.Diff(want, res[0].Steps); diff != "" {
				t.Errorf("one socket to two frontends over one backend (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAttack10SockFastOpen: a TCP fast open (sendto with MSG_FASTOPEN, no
// connect) to the ClusterIP passes the connect hook like a connect: it
// reaches a backend, getpeername shows the frontend once the handshake
// is done (a fast open's sendto returns in SYN_SENT, where getpeername
// says ENOTCONN), and both backends are reached over the sockets.
func TestAttack10SockFastOpen(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			web := netip.AddrPortFrom(netip.MustParseAddr(fam.clusterIP), sockTCPPort)
			var ops []sockOp
			for range 12 {
				ops = append(ops, sockOp{Kind: sockScriptTCP, Dest: web, Steps: []sockStep{{Do: "sendto", Dest: web}, {Do: "recv"}, {Do: "peer"}}})
			}
			on := map[string]bool{}
			for i, r := range runSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, ops) {
				name := ""
				if len(r.Steps) == 3 {
					name = strings.TrimPrefix(r.Steps[1], "recv: ")
				}
				on[name] = true
				want := []string{"sendto: ok", "recv: " + name, "peer: " + web.String()}
				if _, ok := e.backendsByName[name]; !ok {
					want[1] = "recv: b1 or b2"
				}
				if diff := cmp.Diff(want, r.Steps); diff != "" {
					t.Errorf("fast open %d (-want +got):\n%s", i, diff)
				}
			}
			if !on["b1"] || !on["b2"] {
				t.Errorf("fast opens reached %v, want both backends", on)
			}
		})
	}
}

// TestAttack10SockAffinityFreebind: a pod's process may bind any address
// without privilege (IP_FREEBIND), and a UDP connect sends nothing; yet
// each such connect to a frontend with affinity writes an affinity record
// for the address it claimed, even when the connect then fails. 64 connects from 64 addresses that are not
// the pod's must not leave 64 records: the affinity map is an LRU shared
// by every client of the node, which a pod can so flush (and it can set
// the backend of another pod's address). The TC stage records affinity
// only for a flow's real packets, once policy allowed them.
func TestAttack10SockAffinityFreebind(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			sticky := netip.AddrPortFrom(e.sockExtraIP(60), sockUDPPort)
			s := e.udpService(sticky.Addr(), "b1", "b2")
			s.Affinity = time.Hour
			e.syncWith(t, map[string]nat.Service{"sticky": s})
			fake := netip.MustParsePrefix("10.69.200.0/24")
			if fam.name == "ipv6" {
				fake = netip.MustParsePrefix("fd00:69:200::/120")
			}
			var ops []sockOp
			for a, i := fake.Addr(), 0; i < 64; a, i = a.Next(), i+1 {
				ops = append(ops, sockOp{Kind: sockScript, Dest: sticky, Steps: []sockStep{{Do: "freebind"}, {Do: "bind", Src: a}, {Do: "connect", Dest: sticky}}})
			}
			for i, r := range runSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, ops) {
				// An IPv4 connect from an address no route has fails
				// (ENETUNREACH), after the hook.
				if diff := cmp.Diff([]string{"freebind: ok", "bind: ok"}, r.Steps[:2]); diff != "" {
					t.Fatalf("socket %d (-want +got):\n%s", i, diff)
				}
			}
			var k bpf.AffinityKey
			var v bpf.Affinity
			n := 0
			for it := e.d.state.affinity.Iterate(); it.Next(&k, &v); {
				if fake.Contains(netip.AddrFrom16(k.Client).Unmap()) {
					n++
				}
			}
			if n != 0 {
				t.Errorf("%d affinity records for addresses the pod does not have, want 0", n)
			}
		})
	}
}

// TestAttack10SockFailedReconnect: a connected UDP socket balanced to a
// backend that connects again, to an address the kernel refuses after the
// connect hook (IPv4: the broadcast address without SO_BROADCAST, EACCES;
// an IPV6_V6ONLY socket: an IPv4-mapped address, ENETUNREACH), keeps its
// peer, and so its translation: getpeername still shows the frontend.
func TestAttack10SockFailedReconnect(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			web := netip.AddrPortFrom(netip.MustParseAddr(fam.clusterIP), sockUDPPort)
			steps := []sockStep{{Do: "connect", Dest: web}, {Do: "connect", Dest: netip.MustParseAddrPort("255.255.255.255:9")}, {Do: "peer"}}
			want := []string{"connect: ok", "connect: EACCES", "peer: " + web.String()}
			if fam.name == "ipv6" {
				steps = append([]sockStep{{Do: "v6only"}}, steps...)
				steps[2].Dest = netip.MustParseAddrPort("[::ffff:10.1.2.3]:9")
				want = append([]string{"v6only: ok"}, "connect: ok", "connect: ENETUNREACH", "peer: "+web.String())
			}
			res := runSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, []sockOp{{Kind: sockScript, Dest: web, Steps: steps}})
			if diff := cmp.Diff(want, res[0].Steps); diff != "" {
				t.Errorf("failed reconnect (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAttack10SockDestroyNodePort: DestroyStaleSockets finds a NodePort
// socket's service through the NodePort's wildcard frontend (the socket
// connected to a node address): once b1 leaves web, exactly the pod's
// sockets on b1 are aborted, and those on b2 go on.
func TestAttack10SockDestroyNodePort(t *testing.T) {
	for _, fam := range sockFamilies {
		t.Run(fam.name, func(t *testing.T) {
			e := newSockEnv(t, fam)
			var ops []sockOp
			for range 12 {
				ops = append(ops, sockOp{Kind: sockUDPHold, Dest: netip.AddrPortFrom(netip.MustParseAddr(fam.node), sockNodeUDPPort)})
			}
			c := startSockClient(t, e.pod, e.client.NS.Name, e.d.state.sockNAT, ops, true)
			c.ready(t)
			svcs := e.services()
			web := svcs["web"]
			web.Backends = web.Backends[1:]
			svcs["web"] = web
			if err := e.d.Services().Sync(svcs); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := e.client.NS.Do(func() (err error) { n, err = e.d.DestroyStaleSockets(); return }); err != nil {
				t.Fatal(err)
			}
			c.release(t)
			onB1 := 0
			for i, r := range c.wait(t) {
				switch {
				case r.Reply == "b1" && r.After == syscall.ECONNABORTED:
					onB1++
				case r.Reply == "b2" && r.After == 0 && r.AfterReply == "b2":
				default:
					t.Errorf("NodePort socket %d: reply %q (errno %v), after the destroy errno %v, reply %q", i, r.Reply, r.Errno, r.After, r.AfterReply)
				}
			}
			if onB1 == 0 || onB1 == len(ops) || n != onB1 {
				t.Errorf("%d of %d sockets on b1 aborted, %d aborted in all: want both backends used and only b1's aborted", onB1, len(ops), n)
			}
		})
	}
}
