package datapath

import (
	"net/netip"
	"testing"

	"github.com/sluicenet/sluice/internal/testutil"
)

// BenchmarkSockConnect is the cost of connect-time balancing to an
// application: a UDP socket opened, connected and closed, timed in a
// child process, for a connect to a ClusterIP (balanced: the frontend
// lookup, the choice, the socket's storage), for one to a backend's own
// address with the programs attached (the lookup that finds no frontend),
// and, the floor, for the same connect from a cgroup without them. The
// children alternate for five rounds and each figure is its fastest
// round, so that the ratios to the floor compare one moment's machine.
// ns/op is the balanced connect.
func BenchmarkSockConnect(b *testing.B) {
	testutil.RequirePrivileged(b)
	e := newSockEnv(b, sockFamilies[0])
	floor := testutil.TempCgroup(b)
	cluster := netip.AddrPortFrom(netip.MustParseAddr(e.fam.clusterIP), sockUDPPort)
	backend := netip.AddrPortFrom(e.backendsByName["b1"], sockBackendPort)
	const rounds = 5
	n := max(b.N/rounds, 1000)
	best := [3]float64{}
	for range rounds {
		res := runSockClient(b, e.pod, e.client.NS.Name, e.d.state.sockNAT, []sockOp{
			{Kind: sockUDPConnectLoop, Dest: cluster, Repeat: n},
			{Kind: sockUDPConnectLoop, Dest: backend, Repeat: n},
		})
		res = append(res, runSockClient(b, floor, e.client.NS.Name, e.d.state.sockNAT, []sockOp{
			{Kind: sockUDPConnectLoop, Dest: backend, Repeat: n},
		})...)
		for i, r := range res {
			if ns := float64(r.Nanos) / float64(n); best[i] == 0 || ns < best[i] {
				best[i] = ns
			}
		}
	}
	b.ReportMetric(best[0], "ns/op")
	b.ReportMetric(best[1], "ns/passed-connect")
	b.ReportMetric(best[2], "ns/floor-connect")
	b.ReportMetric(best[0]/best[2], "balanced/floor")
	b.ReportMetric(best[1]/best[2], "passed/floor")
}
