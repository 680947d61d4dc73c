package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/nat"
)

// monotonicNow is CLOCK_MONOTONIC, the clock of the datapath's affinity
// records.
func monotonicNow(t *testing.T) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// randomService is a service of one family with random backends (local,
// terminating, weighted), traffic policies, affinity and Maglev, at a
// ClusterIP and, at random, an external address.
func randomService(rng *rand.Rand, v6 bool, i int) nat.Service {
	addr := func(net byte, host int) netip.Addr {
		if v6 {
			return netip.AddrFrom16([16]byte{0xfd, 0, 0, net, 12: byte(i), 14: byte(host >> 8), 15: byte(host)})
		}
		return netip.AddrFrom4([4]byte{10, net, byte(i), byte(host)})
	}
	s := nat.Service{
		Frontends:     []nat.Frontend{{Addr: addr(96, 1), Port: 80, Protocol: nat.ProtoTCP}},
		ExternalLocal: rng.IntN(3) == 0,
		InternalLocal: rng.IntN(4) == 0,
		Maglev:        rng.IntN(2) == 0,
	}
	if rng.IntN(2) == 0 {
		s.Frontends = append(s.Frontends, nat.Frontend{Addr: addr(97, 1), Port: 80, Protocol: nat.ProtoTCP, External: true})
	}
	if rng.IntN(3) == 0 {
		s.Affinity = time.Duration(1+rng.IntN(100)) * time.Second
	}
	for b := range rng.IntN(7) {
		be := nat.Backend{Addr: addr(1, 10+b), Port: 8080, Local: rng.IntN(2) == 0, Terminating: rng.IntN(4) == 0}
		if s.Maglev {
			be.Weight = uint16(rng.IntN(4))
		}
		s.Backends = append(s.Backends, be)
	}
	return s
}

// TestServiceChoiceMatchesModel holds the kernel's backend choice to the
// Go model (nat.Table.Explain, which reads the kernel's affinity records
// and otherwise is nat.Choose): random services of both families, with
// every feature that decides a choice, and random client flows to each of
// their frontends. A flow the model gives no backend is refused by the
// kernel. Each flow's NAT entries are deleted after it, so that every
// flow is a new one; affinity records stay, so later flows of a client
// follow them.
func TestServiceChoiceMatchesModel(t *testing.T) {
	h := newLBHarness(t)
	rng := rand.New(rand.NewPCG(11, 12))
	reasons := map[nat.Reason]int{}
	const services, flows = 40, 60
	for i := range services {
		v6 := i%2 == 1
		svc := randomService(rng, v6, i)
		h.sync(map[string]nat.Service{"svc": svc})
		for range flows {
			f := svc.Frontends[rng.IntN(len(svc.Frontends))]
			client := netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(1 + rng.IntN(8))})
			if v6 {
				client = netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x50, 14: byte(rng.IntN(4)), 15: byte(1 + rng.IntN(8))})
			}
			flow := nat.Flow{
				Client:   netip.AddrPortFrom(client, uint16(1024+rng.IntN(60000))),
				Dest:     netip.AddrPortFrom(f.Addr, f.Port),
				Protocol: nat.ProtoTCP,
			}
			want, err := h.d.Services().Explain(flow, monotonicNow(t))
			if err != nil {
				t.Fatal(err)
			}
			reasons[want.Reason]++
			ret, got := h.send(bpf.HookIngress, tcpSeg(flow.Client.String(), flow.Dest.String(), testpkt.SYN, 1, 0))
			desc := fmt.Sprintf("service %d %+v, flow %v -> %v", i, svc, flow.Client, flow.Dest)
			if want.Reason == nat.ReasonNoBackend {
				if ret != tcActRedirect {
					t.Fatalf("%s: verdict %d, want the refusal the model's %v gives", desc, ret, want.Reason)
				}
				continue
			}
			_, dst := endpoints(t, got)
			if wantBE := netip.AddrPortFrom(want.Backend.Addr, want.Backend.Port); ret != tcActOK || dst != wantBE {
				t.Fatalf("%s: kernel sent it to %v (verdict %d), model to %v (%v)", desc, dst, ret, wantBE, want.Reason)
			}
			deleteNATFlow(t, h.d.state.ct, flow.Client, flow.Dest)
		}
	}
	t.Logf("model reasons over %d flows: %v", services*flows, reasons)
	for _, r := range []nat.Reason{nat.ReasonHash, nat.ReasonMaglev, nat.ReasonAffinity, nat.ReasonNoBackend} {
		if reasons[r] == 0 {
			t.Errorf("no flow was decided by %v: the generator misses a case", r)
		}
	}
}

// TestServiceMaglevMovesItsShare: through the kernel, a Maglev service of
// ten backends sends 2,000 flows somewhere; with one backend removed, the
// flows of the nine that stay keep their backend but for a small share
// (Maglev's disruption; a hash over the slots would move most of them),
// and the removed one's flows spread over the rest.
func TestServiceMaglevMovesItsShare(t *testing.T) {
	h := newLBHarness(t)
	svc := oneBackend("10.96.0.77:80", "10.1.7.1:8080", nat.ProtoTCP)
	svc.Maglev = true
	for i := 2; i <= 10; i++ {
		svc.Backends = append(svc.Backends, nat.Backend{Addr: netip.AddrFrom4([4]byte{10, 1, 7, byte(i)}), Port: 8080, Local: true})
	}
	const flows = 2000
	clients := make([]string, flows)
	for i := range clients {
		clients[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), uint16(20000+i)).String()
	}
	assign := func() []string {
		out := make([]string, flows)
		for i, c := range clients {
			out[i] = h.backendOf(c, "10.96.0.77:80")
			deleteNATFlow(t, h.d.state.ct, netip.MustParseAddrPort(c), netip.MustParseAddrPort("10.96.0.77:80"))
		}
		return out
	}
	h.sync(map[string]nat.Service{"mg": svc})
	before := assign()
	removed := "10.1.7.4:8080"
	smaller := svc
	smaller.Backends = nil
	for _, b := range svc.Backends {
		if netip.AddrPortFrom(b.Addr, b.Port).String() != removed {
			smaller.Backends = append(smaller.Backends, b)
		}
	}
	h.sync(map[string]nat.Service{"mg": smaller})
	after := assign()
	stayed, moved, orphans := 0, 0, 0
	for i := range clients {
		switch {
		case before[i] == removed:
			orphans++
			if after[i] == removed {
				t.Fatalf("flow %d still goes to the removed backend", i)
			}
		case before[i] == after[i]:
			stayed++
		default:
			moved++
		}
	}
	t.Logf("of %d flows: %d on the removed backend, %d of the others stayed, %d moved", flows, orphans, stayed, moved)
	if orphans == 0 || float64(moved) > 0.05*float64(stayed+moved) {
		t.Errorf("%d of %d flows of the remaining backends moved, want at most 5%%", moved, stayed+moved)
	}
}
