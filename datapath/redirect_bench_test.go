package datapath

import (
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/sluicenet/sluice/nat"
)

// BenchmarkRedirectLocalUDP measures what RedirectLocal saves a UDP
// request and its response through a ClusterIP to a backend of the same
// node: the established packets go from interface to interface by
// bpf_redirect_neigh instead of through the host's routing. Each
// iteration is a pair of samples of rrPerSample round trips on one
// connected socket, one routed and one redirected, in alternating order,
// so that the drift of a shared machine falls on both alike. It reports
// the median µs per round trip of each mode and the median and quartiles
// of the pairs' differences (routed minus redirected; positive: the
// redirect saves). Before it samples, it shows that the redirected
// round trips do skip the host's routing: with the node's forwarding off
// they go through and the routed ones do not. Run it with many
// iterations, e.g. -benchtime 300x.
func BenchmarkRedirectLocalUDP(b *testing.B) {
	const rrPerSample = 100
	node, client, server := nodePair(b, "10.72.0.1", "10.72.0.2")
	d, err := Open(Options{ConntrackEntries: 1 << 12, MaxInterfaces: 8, PolicySlots: 64})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for _, w := range node.Workloads {
		attachWorkload(b, node, d, w)
	}
	if err := d.Services().Sync(map[string]nat.Service{"rr": oneBackend("10.96.72.1:53", "10.72.0.2:5353", nat.ProtoUDP)}); err != nil {
		b.Fatal(err)
	}
	var pc net.PacketConn
	if err := server.NS.Do(func() (err error) { pc, err = net.ListenPacket("udp4", "10.72.0.2:5353"); return }); err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if _, err := pc.WriteTo(buf[:n], from); err != nil {
				return
			}
		}
	}()
	var c net.Conn
	if err := client.NS.Do(func() (err error) { c, err = net.Dial("udp4", "10.96.72.1:53"); return }); err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	setRedirect := func(redirect bool) {
		for _, w := range node.Workloads {
			if err := d.SetInterface(w.HostIfindex, Interface{Kind: Workload, Egress: allowAllRules, Ingress: allowAllRules, RedirectLocal: redirect}); err != nil {
				b.Fatal(err)
			}
		}
	}
	buf := make([]byte, 1)
	// sample returns the µs per round trip of n request/response pairs.
	sample := func(n int) float64 {
		start := time.Now()
		for range n {
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := c.Read(buf); err != nil {
				b.Fatal(fmt.Errorf("no response: %w", err))
			}
		}
		return float64(time.Since(start).Nanoseconds()) / float64(n) / 1000
	}
	for _, redirect := range []bool{false, true} {
		setRedirect(redirect)
		sample(rrPerSample) // the flow is established, and both paths warm
	}
	// The redirected samples do skip the host's routing: with the node's
	// forwarding off, a round trip goes through redirected only.
	if err := node.NS.Sysctl("net/ipv4/ip_forward", "0"); err != nil {
		b.Fatal(err)
	}
	for _, redirect := range []bool{true, false} {
		setRedirect(redirect)
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Write(buf)
		if err == nil {
			_, err = c.Read(buf)
		}
		if redirect != (err == nil) {
			b.Fatalf("forwarding off, redirect %v: round trip error %v", redirect, err)
		}
	}
	if err := node.NS.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		b.Fatal(err)
	}
	var routed, redirected, diffs []float64
	first := false
	for b.Loop() {
		var got [2]float64
		for _, redirect := range []bool{first, !first} {
			setRedirect(redirect)
			i := 0
			if redirect {
				i = 1
			}
			got[i] = sample(rrPerSample)
		}
		first = !first
		routed = append(routed, got[0])
		redirected = append(redirected, got[1])
		diffs = append(diffs, got[0]-got[1])
	}
	b.ReportMetric(quantile(routed, 0.5), "routed-µs/rr")
	b.ReportMetric(quantile(redirected, 0.5), "redirect-µs/rr")
	b.ReportMetric(quantile(diffs, 0.25), "saved-q1-µs/rr")
	b.ReportMetric(quantile(diffs, 0.5), "saved-median-µs/rr")
	b.ReportMetric(quantile(diffs, 0.75), "saved-q3-µs/rr")
}

// quantile returns the q quantile of xs (nearest rank), 0 for none.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	return s[min(len(s)-1, int(q*float64(len(s))))]
}
