package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"syscall"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
)

// TestSockChoiceMatchesModel holds connect-time balancing to its Go model
// (nat.ChooseConnect, and Table.ExplainConnect where no affinity is
// involved): random services of both families with every feature that
// decides a choice (serving, terminating and local backends, traffic
// policies, affinity, weighted Maglev, source ranges at external
// frontends), and UDP sockets connecting to each frontend, unbound and
// bound to the client's address, from a process in the test's cgroup.
// The backend each socket was sent to is read from its storage; a choice
// without a backend must fail the connect (ECONNREFUSED, or EPERM outside
// the source ranges), and a frontend with source ranges leaves an unbound
// socket untranslated. The model replays the sockets in order, with the
// affinity each earlier choice recorded.
func TestSockChoiceMatchesModel(t *testing.T) {
	testutil.RequirePrivileged(t)
	client := testutil.NewNetNS(t)
	peer := testutil.NewNetNS(t)
	for _, ns := range []*testutil.NetNS{client, peer} {
		ns.Sysctl(t, "net/ipv6/conf/default/accept_dad", "0")
		ns.Sysctl(t, "net/ipv6/conf/all/accept_dad", "0")
	}
	client4, client6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("fd00:50::1")
	testutil.ConnectVeth(t, client, "sm0", netip.PrefixFrom(client4, 24), peer, "sm1", netip.MustParsePrefix("192.0.2.2/24"))
	if err := client.AddrAdd("sm0", netip.PrefixFrom(client6, 64)); err != nil {
		t.Fatal(err)
	}
	if err := peer.AddrAdd("sm1", netip.MustParsePrefix("fd00:50::2/64")); err != nil {
		t.Fatal(err)
	}
	client.AddRoute(t, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("192.0.2.2"), "sm0")
	client.AddRoute(t, netip.MustParsePrefix("::/0"), netip.MustParseAddr("fd00:50::2"), "sm0")

	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cgroup := testutil.TempCgroup(t)
	attachSock(t, cgroup, d)

	rng := rand.New(rand.NewPCG(21, 22))
	services := map[string]nat.Service{}
	type target struct {
		service string
		dest    netip.AddrPort
	}
	var targets []target
	var ops []sockOp
	for i := range 48 {
		v6 := i%2 == 1
		svc := randomService(rng, v6, i)
		clientAddr, inside, outside := client4, "192.0.2.0/24", "198.51.100.0/24"
		if v6 {
			clientAddr, inside, outside = client6, "fd00:50::/64", "fd00:51::/64"
		}
		if rng.IntN(3) == 0 {
			svc.SourceRanges = []netip.Prefix{netip.MustParsePrefix(outside)}
			if rng.IntN(2) == 0 {
				svc.SourceRanges = append(svc.SourceRanges, netip.MustParsePrefix(inside))
			}
		}
		for j := range svc.Frontends {
			svc.Frontends[j].Protocol = nat.ProtoUDP
		}
		name := fmt.Sprintf("svc%02d", i)
		services[name] = svc
		for _, f := range svc.Frontends {
			dest := netip.AddrPortFrom(f.Addr, f.Port)
			for k := range 4 {
				op := sockOp{Kind: sockUDPConnectOnly, Dest: dest}
				if k == 3 {
					op.Bind = clientAddr
				}
				ops = append(ops, op)
				targets = append(targets, target{name, dest})
			}
		}
	}
	if err := d.Services().Sync(services); err != nil {
		t.Fatal(err)
	}
	res := runSockClient(t, cgroup, client.Name, d.state.sockNAT, ops)

	type affKey struct {
		service string
		client  netip.Addr
	}
	affs := map[affKey]*nat.AffinityRecord{}
	reasons := map[nat.Reason]int{}
	for i, r := range res {
		op, tg := ops[i], targets[i]
		flow := nat.ConnectFlow{Socket: r.Socket, NetNS: r.NetNS, Source: op.Bind, Dest: op.Dest, Protocol: nat.ProtoUDP}
		// Connect-time affinity is the namespace's, whatever the bind.
		who := nat.SocketAddr(r.NetNS)
		now := monotonicNow(t)
		want := nat.ChooseConnect(services, flow, affs[affKey{tg.service, who}], now)
		reasons[want.Reason]++
		desc := fmt.Sprintf("socket %d (%s %+v), bound to %v, to %v", i, tg.service, services[tg.service], op.Bind, op.Dest)
		if want.Service != tg.service {
			t.Fatalf("%s: the model finds service %q", desc, want.Service)
		}
		if services[tg.service].Affinity == 0 {
			explained, err := d.Services().ExplainConnect(flow, now)
			if err != nil {
				t.Fatal(err)
			}
			if explained != want {
				t.Errorf("%s: ExplainConnect %+v, ChooseConnect %+v", desc, explained, want)
			}
		}
		switch want.Reason {
		case nat.ReasonHash, nat.ReasonMaglev, nat.ReasonAffinity:
			entry := r.NAT.Entries[0]
			got := netip.AddrPortFrom(netip.AddrFrom16(entry.Backend).Unmap(), entry.BackendPort)
			wantBE := netip.AddrPortFrom(want.Backend.Addr, want.Backend.Port)
			if r.Errno != 0 || !r.HasNAT || got != wantBE || r.Peer != op.Dest {
				t.Fatalf("%s: errno %v, storage %v (%v), peer %v; the model sends it to %v (%v)", desc, r.Errno,
					got, r.HasNAT, r.Peer, wantBE, want.Reason)
			}
			if services[tg.service].Affinity > 0 {
				affs[affKey{tg.service, who}] = &nat.AffinityRecord{Backend: wantBE, LastUsed: now}
			}
		case nat.ReasonNoBackend, nat.ReasonSourceRange:
			errno := syscall.ECONNREFUSED
			if want.Reason == nat.ReasonSourceRange {
				errno = syscall.EPERM
			}
			if r.Errno != errno || r.HasNAT {
				t.Fatalf("%s: errno %v, storage %v; the model's %v wants %v", desc, r.Errno, r.HasNAT, want.Reason, errno)
			}
		case nat.ReasonSourceUnknown:
			if r.Errno != 0 || r.HasNAT || r.Peer != op.Dest {
				t.Fatalf("%s: errno %v, storage %v, peer %v; the model's %v wants it untranslated", desc, r.Errno,
					r.HasNAT, r.Peer, want.Reason)
			}
		default:
			t.Fatalf("%s: the model's %v", desc, want.Reason)
		}
	}
	t.Logf("model reasons over %d sockets: %v", len(res), reasons)
	for _, r := range []nat.Reason{nat.ReasonHash, nat.ReasonMaglev, nat.ReasonAffinity, nat.ReasonNoBackend,
		nat.ReasonSourceRange, nat.ReasonSourceUnknown} {
		if reasons[r] == 0 {
			t.Errorf("no socket was decided by %v: the generator misses a case", r)
		}
	}
}
