package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
	"github.com/sluicenet/sluice/routes"
)

// BenchmarkDatapath measures kernel ns per packet of the datapath's paths
// under a 10-rule polprog policy, each beside the empty program sl_tc_pass
// measured in the same sub-benchmark on the same packet (floor-ns/pkt, and
// x-floor as the ratio):
//
//   - established: a TCP ACK of an approved flow, in the kernel's repeat
//     loop (one skb run b.N times; the datapath does not change it).
//   - syn-recheck: a TCP SYN of an existing flow, which runs policy and
//     updates the entry, in the repeat loop.
//   - new-flow: a SYN of a distinct 5-tuple per iteration, one test run
//     each (a repeat loop would reuse one tuple), through policy and entry
//     creation. The entry is deleted after each run, outside the timed
//     part, so the table stays at a steady size. Single runs carry the
//     test harness's fixed cost; the floor here is single runs too.
//   - malformed-drop: a TCP header with data offset 4, in the repeat loop.
//
// lo is a workload interface: a new flow's source is reverse-path checked
// against the routes map. BenchmarkDatapathHost runs the same paths with
// lo as a host interface, where a new flow's source and destination are
// looked up for the host flags and the server is the host.
func BenchmarkDatapath(b *testing.B) { benchmarkDatapath(b, Workload, false) }

// BenchmarkDatapathHost is BenchmarkDatapath at a host interface.
func BenchmarkDatapathHost(b *testing.B) { benchmarkDatapath(b, Host, false) }

// BenchmarkDatapathIPv6 is BenchmarkDatapath in IPv6, at a workload
// interface that enforces it (the same ten rules; their IPv4 source
// networks miss).
func BenchmarkDatapathIPv6(b *testing.B) { benchmarkDatapath(b, Workload, true) }

func benchmarkDatapath(b *testing.B, kind Kind, v6 bool) {
	rules := tenRules()
	if kind == Host {
		// The ten rules decide traffic to the host, which it is here.
		rules.ForHost = true
	}
	var dp *Datapath
	client := netip.MustParseAddrPort("10.8.0.1:40000")
	server := netip.MustParseAddrPort("10.8.0.2:80")
	tcp := testpkt.TCPv4
	// srcAt and portAt are the offsets of the source address and port
	// that each new-flow run rewrites.
	srcAt, portAt := 26, 34
	if v6 {
		dp = loadIPv6WithPolicy(b, rules, polprog.Options{MergeThreshold: -1})
		client = netip.MustParseAddrPort("[2001:db8:8::1]:40000")
		server = netip.MustParseAddrPort("[2001:db8:8::2]:80")
		tcp, srcAt, portAt = testpkt.TCPv6, 22, 54
	} else {
		dp = loadWithPolicyAs(b, kind, rules, polprog.Options{MergeThreshold: -1})
	}
	ingress, pass := programOf(dp, progIngress), programOf(dp, progPass)
	if kind == Host {
		if err := dp.Routes().Put(routes.Route{Prefix: netip.PrefixFrom(server.Addr(), 32), Flags: routes.FlagLocalHost}); err != nil {
			b.Fatal(err)
		}
	}
	synFrame := testpkt.MustBytes(b, tcp(client, server, testpkt.SYN, nil))
	ackFrame := testpkt.MustBytes(b, tcp(client, server, testpkt.ACK, make([]byte, 64)))
	bad := tcp(client, server, testpkt.ACK, nil)
	bad.TCP.DataOffset = 4
	badFrame := testpkt.MustBytes(b, bad)

	if ret, err := ingress.Run(&ebpf.RunOptions{Data: synFrame}); err != nil || ret != tcActOK {
		b.Fatalf("opening SYN: verdict %d, %v", ret, err)
	}
	loop := func(b *testing.B, frame []byte, wantRet uint32) {
		_, floor, err := pass.Benchmark(frame, b.N, nil)
		if err != nil {
			b.Fatal(err)
		}
		ret, d, err := ingress.Benchmark(frame, b.N, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != wantRet {
			b.Fatalf("verdict %d, want %d", ret, wantRet)
		}
		report(b, d, floor)
	}
	b.Run("established", func(b *testing.B) { loop(b, ackFrame, tcActOK) })
	b.Run("syn-recheck", func(b *testing.B) { loop(b, synFrame, tcActOK) })
	b.Run("malformed-drop", func(b *testing.B) { loop(b, badFrame, tcActShot) })
	b.Run("new-flow", func(b *testing.B) {
		ct := dp.Conntrack().EBPF()
		frame := append([]byte(nil), synFrame...)
		var total, floor time.Duration
		for i := range b.N {
			// A distinct source address and port per run; the TCP
			// checksum goes stale, which no path here reads.
			src := netip.AddrFrom4([4]byte{10, 9, byte(i >> 16), byte(i >> 8)})
			if v6 {
				src = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 9, 13: byte(i >> 16), 14: byte(i >> 8)})
			}
			port := uint16(1024 + i%60000)
			copy(frame[srcAt:], src.AsSlice())
			binary.BigEndian.PutUint16(frame[portAt:], port)

			_, f, err := pass.Benchmark(frame, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			ret, d, err := ingress.Benchmark(frame, 1, nil)
			if err != nil || ret != tcActOK {
				b.Fatalf("run %d: verdict %d, %v", i, ret, err)
			}
			floor += f
			total += d
			key := ctKey(src, port, server)
			if err := ct.Delete(&key); err != nil {
				b.Fatalf("run %d: delete conntrack entry: %v", i, err)
			}
		}
		report(b, total/time.Duration(b.N), floor/time.Duration(b.N))
	})
}

func report(b *testing.B, perPkt, floor time.Duration) {
	b.ReportMetric(float64(perPkt.Nanoseconds()), "ns/pkt")
	b.ReportMetric(float64(floor.Nanoseconds()), "floor-ns/pkt")
	if floor > 0 {
		b.ReportMetric(float64(perPkt)/float64(floor), "x-floor")
	}
}

// ctKey is the canonical TCP key of src:port to server.
func ctKey(src netip.Addr, port uint16, server netip.AddrPort) bpf.CTKey {
	k, _ := ctKeyOf(testpkt.ProtoTCP, netip.AddrPortFrom(src, port), server)
	return k
}
