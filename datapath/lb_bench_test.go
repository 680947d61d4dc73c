package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/internal/testutil"
	"github.com/sluicenet/sluice/nat"
)

// BenchmarkServices measures kernel ns per packet through a frontend with
// 1, 1,000 and 100,000 services programmed (two backends each), under the
// 10-rule policy of BenchmarkDatapath, beside sl_tc_pass on the same
// packet (floor-ns/pkt, x-floor):
//
//   - first: a SYN of a distinct client per run to the last service's
//     frontend, through the service stage (lookup, choice, DNAT), policy
//     and the NAT entries' creation; the entries are deleted after each
//     run, outside the timed part.
//   - established: the client's next segment, found through the stub and
//     DNATed; single runs, since a repeat loop would run on the packet as
//     the first run translated it.
//   - established-plain: an established segment of a flow without NAT, in
//     single runs too, for the cost of the translation itself.
//
// The figures should not grow with the number of services: every lookup
// is a hash or an LPM lookup.
func BenchmarkServices(b *testing.B) {
	for _, n := range []int{1, 1000, 100000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { benchmarkServices(b, n) })
	}
}

func benchmarkServices(b *testing.B, n int) {
	testutil.RequirePrivileged(b)
	d, err := Open(Options{ConntrackEntries: 1 << 16, PolicySlots: 64, MaxInterfaces: 8,
		ServiceEntries: 1 << 17, BackendEntries: 1 << 18, RuleHitEntries: 1024, IPSetEntries: 1024})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	if err := d.Routes().Put(workloadRoute("0.0.0.0/0", loIfindex)); err != nil {
		b.Fatal(err)
	}
	if err := d.SetInterface(loIfindex, Interface{Kind: Workload, Ingress: tenRules(), Egress: tenRules()}); err != nil {
		b.Fatal(err)
	}
	svcs := make(map[string]nat.Service, n)
	var last netip.AddrPort
	for i := range n {
		front := netip.AddrFrom4([4]byte{10, 96 + byte(i>>16), byte(i >> 8), byte(i)})
		last = netip.AddrPortFrom(front, 80)
		svcs[fmt.Sprint("svc", i)] = nat.Service{
			Frontends: []nat.Frontend{{Addr: front, Port: 80, Protocol: nat.ProtoTCP}},
			Backends: []nat.Backend{
				{Addr: netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), Port: 80, Local: true},
				{Addr: netip.AddrFrom4([4]byte{12, byte(i >> 16), byte(i >> 8), byte(i)}), Port: 80, Local: true},
			},
		}
	}
	if err := d.Services().Sync(svcs); err != nil {
		b.Fatal(err)
	}
	ingress, pass := programOf(d, progIngress), programOf(d, progPass)
	ct := d.Conntrack().EBPF()
	client := netip.MustParseAddrPort("10.8.0.1:40000")
	syn := testpkt.MustBytes(b, testpkt.TCPv4(client, last, testpkt.SYN, nil))
	ack := testpkt.MustBytes(b, testpkt.TCPv4(client, last, testpkt.ACK, make([]byte, 64)))
	plainServer := netip.MustParseAddrPort("10.8.0.2:80")
	plainSyn := testpkt.MustBytes(b, testpkt.TCPv4(client, plainServer, testpkt.SYN, nil))
	plainAck := testpkt.MustBytes(b, testpkt.TCPv4(client, plainServer, testpkt.ACK, make([]byte, 64)))
	for _, f := range [][]byte{syn, plainSyn} {
		if ret, err := ingress.Run(&ebpf.RunOptions{Data: f}); err != nil || ret != tcActOK {
			b.Fatalf("opening SYN: verdict %d, %v", ret, err)
		}
	}
	// single runs prog on frame once per iteration (after vary, outside
	// the timed part) beside the floor.
	single := func(b *testing.B, frame []byte, vary func(i int, frame []byte)) {
		frame = append([]byte(nil), frame...)
		var total, floor time.Duration
		for i := range b.N {
			if vary != nil {
				vary(i, frame)
			}
			_, f, err := pass.Benchmark(frame, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			ret, t, err := ingress.Benchmark(frame, 1, nil)
			if err != nil || ret != tcActOK {
				b.Fatalf("run %d: verdict %d, %v", i, ret, err)
			}
			floor += f
			total += t
		}
		report(b, total/time.Duration(b.N), floor/time.Duration(b.N))
	}
	b.Run("first", func(b *testing.B) {
		var prev netip.AddrPort
		single(b, syn, func(i int, frame []byte) {
			if prev.IsValid() {
				deleteNATFlow(b, ct, prev, last)
			}
			src := netip.AddrFrom4([4]byte{10, 9, byte(i >> 16), byte(i >> 8)})
			port := uint16(1024 + i%60000)
			copy(frame[26:], src.AsSlice())
			binary.BigEndian.PutUint16(frame[34:], port)
			prev = netip.AddrPortFrom(src, port)
		})
	})
	b.Run("established", func(b *testing.B) { single(b, ack, nil) })
	b.Run("established-plain", func(b *testing.B) { single(b, plainAck, nil) })
}

// deleteNATFlow deletes the NAT entries of client's flow to frontend,
// whichever backend it went to.
func deleteNATFlow(b testing.TB, ct *ebpf.Map, client, frontend netip.AddrPort) {
	fwd, _ := ctKeyOf(testpkt.ProtoTCP, client, frontend)
	var stub bpf.CTValue
	if err := ct.Lookup(&fwd, &stub); err != nil {
		b.Fatalf("no stub for %v: %v", client, err)
	}
	if err := ct.Delete(&stub.NATPeer); err != nil {
		b.Fatal(err)
	}
	if err := ct.Delete(&fwd); err != nil {
		b.Fatal(err)
	}
}
