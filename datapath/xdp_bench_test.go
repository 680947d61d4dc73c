package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicenet/sluice/attach"
	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/internal/testpkt"
	"github.com/sluicenet/sluice/polprog"
)

// tenDenyTiers are nine deny rules that miss on source network, then a
// deny of UDP to port 9999 (rule 10): the ten-rule shape of the TC
// benchmarks, as a tier of pre-DNAT (or XDP) deny policy.
func tenDenyTiers() []polprog.Tier {
	var rules []polprog.Rule
	for i := range 9 {
		rules = append(rules, polprog.Rule{
			ID: uint64(i + 1), Action: polprog.ActionDeny, Protocol: "udp",
			SrcNets:  []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("192.168.%d.0/24", i))},
			DstPorts: []polprog.PortRange{polprog.Port(uint16(1000 + i))},
		})
	}
	rules = append(rules, polprog.Rule{ID: 10, Action: polprog.ActionDeny, Protocol: "udp", DstPorts: []polprog.PortRange{polprog.Port(9999)}})
	return []polprog.Tier{{Name: "untracked", EndAction: polprog.EndPass, Policies: []polprog.Policy{{Name: "ten", Rules: rules}}}}
}

// BenchmarkXDPDrop measures the drop of a UDP datagram that ten-rule deny
// policy rejects, at XDP (Interface.XDP) and at TC (the same tiers as the
// host interface's pre-DNAT tiers), in the same sub-benchmark on the same
// frame, each beside its empty program (sl_xdp_pass, sl_tc_pass) in the
// kernel's repeat loop: ns/pkt and xdp-floor-ns/pkt for XDP, tc-ns/pkt
// and tc-floor-ns/pkt for TC, x-tc (XDP's ns over TC's) and Mpps, the
// drop rate of one CPU at XDP, 1000 over ns/pkt. Merging is off, so all
// ten rules run. IPv4 and IPv6.
func BenchmarkXDPDrop(b *testing.B) {
	tiers := tenDenyTiers()
	d := openXDP(b)
	d.opts.Policy = polprog.Options{MergeThreshold: -1}
	cfg := Interface{Kind: Host, XDP: tiers, Ingress: polprog.Rules{PreDNATTiers: tiers, Profiles: allowAllHost.Profiles}}
	if err := d.SetInterface(loIfindex, cfg); err != nil {
		b.Fatal(err)
	}
	frames := map[string][]byte{
		"ipv4": testpkt.MustBytes(b, testpkt.UDPv4(netip.MustParseAddrPort("10.8.0.1:40000"), netip.MustParseAddrPort("10.8.0.2:9999"), make([]byte, 64))),
		"ipv6": testpkt.MustBytes(b, testpkt.UDPv6(netip.MustParseAddrPort("[2001:db8:8::1]:40000"), netip.MustParseAddrPort("[2001:db8:8::2]:9999"), make([]byte, 64))),
	}
	run := func(b *testing.B, prog *ebpf.Program, frame []byte, want uint32) time.Duration {
		ret, per, err := prog.Benchmark(frame, b.N, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != want {
			b.Fatalf("%s returned %d, want %d", prog, ret, want)
		}
		return per
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		frame := frames[fam]
		b.Run(fam, func(b *testing.B) {
			xdpFloor := run(b, d.xdp.SlXdpPass, frame, xdpPass)
			xdp := run(b, d.XDP(), frame, xdpDrop)
			tcFloor := run(b, d.objs.SlTcPass, frame, tcActOK)
			tc := run(b, d.TCIngress(), frame, tcActShot)
			b.ReportMetric(float64(xdp.Nanoseconds()), "ns/pkt")
			b.ReportMetric(float64(xdpFloor.Nanoseconds()), "xdp-floor-ns/pkt")
			b.ReportMetric(float64(tc.Nanoseconds()), "tc-ns/pkt")
			b.ReportMetric(float64(tcFloor.Nanoseconds()), "tc-floor-ns/pkt")
			if tc > 0 {
				b.ReportMetric(float64(xdp)/float64(tc), "x-tc")
			}
			if xdp > 0 {
				b.ReportMetric(1e3/float64(xdp.Nanoseconds()), "Mpps")
			}
		})
	}
}

// BenchmarkXDPVethFlood floods UDP datagrams that deny policy rejects from
// a client namespace through a veth into the node, and reports the
// sender's wall-clock ns per datagram and the datagrams per second it
// managed, with the drop at the host interface's XDP hook (native mode;
// the XDP tiers) and then, in the same run, with XDP detached and the
// same tiers as the interface's pre-DNAT tiers at TC. Every datagram is
// checked counted as dropped by policy. A veth hands the receiver the
// sender's skb, so there is no skb allocation for XDP to save: the figure
// is what the earlier hook saves of the receive path (GRO, the TC
// hook's conntrack and route lookups), on the sender's CPU.
func BenchmarkXDPVethFlood(b *testing.B) {
	tiers := denyUDPPort(9999, 77)
	cfg := xdpHostConfig
	cfg.Ingress = polprog.Rules{PreDNATTiers: tiers, Profiles: allowAllHost.Profiles}
	d, _, client, _, detach := xdpNode(b, attach.XDPNative, cfg)
	flood := func(b *testing.B) {
		before, err := d.Counters(client.HostIfindex)
		if err != nil {
			b.Fatal(err)
		}
		payload := make([]byte, 64)
		b.ResetTimer()
		start := time.Now()
		err = client.NS.Do(func() error {
			c, err := net.Dial("udp4", "10.67.0.2:9999")
			if err != nil {
				return err
			}
			defer c.Close()
			for range b.N {
				if _, err := c.Write(payload); err != nil {
					return err
				}
			}
			return nil
		})
		elapsed := time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		after, err := d.Counters(client.HostIfindex)
		if err != nil {
			b.Fatal(err)
		}
		if n := after.Ingress[bpf.ReasonDroppedByPolicy] - before.Ingress[bpf.ReasonDroppedByPolicy]; n != uint64(b.N) {
			b.Fatalf("%d of %d datagrams counted dropped by policy", n, b.N)
		}
		b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N), "ns/pkt")
		b.ReportMetric(float64(b.N)/elapsed.Seconds()/1e6, "Mpps")
	}
	b.Run("xdp", flood)
	detach()
	b.Run("tc", flood)
}
